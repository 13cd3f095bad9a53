// CUDA kernels of dvn_kernels::sliced_conv2d and its backward: torch glue around the
// torch-free implicit-GEMM launchers of sliced_conv2d_kernels.h. Grouped convolutions run one
// GEMM per active group (the ranges hold whole groups: make_problem checks), depthwise ones
// (one input channel per group) the direct kernels.
//
// Layouts: the kernels read and write compact activations as dense NHWC. x and grad_out are
// made channels_last-contiguous here (free when they already are: a copy of an NCHW input), and
// results come back in the layout the input had (a copy back for NCHW). The full weight is read
// in place with its own strides; the full weight gradient is allocated here (dense, in the
// weight's layout) and written once by the wgrad reduction. Every side has one or two channel
// ranges (dvn_kernels gathers more before dispatch), read in place.
// float32 uses TF32 tensor cores when torch.backends.cudnn.allow_tf32 is True (PyTorch's
// default for convolutions), exact float32 FMAs otherwise.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <limits>
#include <tuple>

#include "../blocks.h"
#include "../conv_problem.h"
#include "cuda_check.h"
#include "sliced_conv2d_kernels.h"

namespace dvn::cuda {
namespace {

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cuda(), name, ": the cuda kernel needs CUDA tensors, got ",
                    t.device());
}

DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    default:
      TORCH_CHECK_TYPE(false, "x: the cuda kernels support float16, bfloat16, float32 and "
                       "float64, got ", t.scalar_type());
  }
  return DType::Float32;  // not reached
}

Math math_for(DType t) {
  return t == DType::Float32 && !at::globalContext().allowTF32CuDNN() ? Math::Exact
                                                                       : Math::TensorCore;
}

int elements_per_16_bytes(const at::Tensor& t) { return int(16 / t.element_size()); }

// DVN_CUDA_POISON_OUTPUTS=1 fills every output with NaN before the kernels run, so that tests
// see elements no kernel wrote.
// Read on every call (a getenv beside a kernel launch) so that tests can switch it.
void poison(at::Tensor& t) {
  const char* v = std::getenv("DVN_CUDA_POISON_OUTPUTS");
  if (v != nullptr && v[0] == '1' && t.numel() > 0) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

// The full weight as the kernels read it: in place, with its strides and channel ranges. A
// grouped weight's second dimension is a group's input channels, all of them active.
WeightView weight_view(const at::Tensor& weight, const ConvProblem& p) {
  WeightView view;
  view.out = p.out;
  view.in = p.groups > 1 ? ChannelRanges{0, int32_t(weight.size(1)), 0, 0} : p.in;
  for (int i = 0; i < 4; ++i) view.stride[i] = weight.stride(i);
  return view;
}

// Depthwise (one input channel per group): the direct kernels instead of the implicit GEMM.
bool depthwise(const ConvProblem& p, const at::Tensor& weight) {
  return p.groups > 1 && weight.size(1) == 1;
}

// The kernels index GEMM rows, columns and reduction steps with 32-bit integers. Grouped: c and
// k are one group's channels, groups the active groups (the ranges hold whole groups).
Geometry checked_geometry(const ConvProblem& p, const at::Tensor& weight) {
  constexpr int64_t kMax = INT32_MAX - 1024;  // room for tiles overhanging the edges
  const int64_t rs = p.kernel_h * p.kernel_w;
  const int64_t biggest = std::max({p.batch * p.height * p.width, p.batch * p.out_height * p.out_width,
                                    rs * p.in_channels, rs * p.out_channels,
                                    p.height + 2 * p.padding[0], p.width + 2 * p.padding[1]});
  TORCH_CHECK_VALUE(biggest <= kMax, "x: the problem is too large for the cuda kernels' 32-bit "
                    "GEMM indices (", biggest, " > ", kMax, "); use backend='reference'");
  Geometry g;
  g.n = int32_t(p.batch);
  g.h = int32_t(p.height);
  g.w = int32_t(p.width);
  g.c = int32_t(p.in_channels);
  g.k = int32_t(p.out_channels);
  g.p = int32_t(p.out_height);
  g.q = int32_t(p.out_width);
  g.r = int32_t(p.kernel_h);
  g.s = int32_t(p.kernel_w);
  g.stride_h = int32_t(p.stride[0]);
  g.stride_w = int32_t(p.stride[1]);
  g.pad_h = int32_t(p.padding[0]);
  g.pad_w = int32_t(p.padding[1]);
  g.dil_h = int32_t(p.dilation[0]);
  g.dil_w = int32_t(p.dilation[1]);
  if (p.groups > 1) {
    g.c = int32_t(weight.size(1));
    g.k = int32_t(weight.size(0) / p.groups);
    g.groups = int32_t(p.active_groups);
    TORCH_INTERNAL_ASSERT(c_pitch(g) == p.in_channels && k_pitch(g) == p.out_channels,
                          "grouped geometry: the ranges must hold whole groups");
  }
  return g;
}

uintptr_t address(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

int sm_count() {
  int device = 0, sms = 0;
  DVN_CUDA_CHECK(cudaGetDevice(&device), "cudaGetDevice");
  DVN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                 "cudaDeviceGetAttribute(multiprocessor count)");
  return sms;
}

at::Tensor checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& weight) {
  if (!bias.has_value() || !bias->defined()) return {};
  check_same_type(*bias, "bias", weight, "weight");
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0),
                    "bias: expected shape (", weight.size(0), ",) matching weight's C_out, got ",
                    bias->sizes());
  return *bias;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, c10::string_view spec) {
  check_cuda(x, "x");
  check_same_type(x, "x", weight, "weight");
  const auto p = make_problem(x.sizes(), weight, spec);
  const DType dtype = kernel_dtype(x);
  const auto b = checked_bias(bias, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = follow_format(x);
  if (p.batch == 0) return at::empty(p.output_sizes(), x.options().memory_format(fmt));
  ConvGemmParams prm;
  prm.g = checked_geometry(p, weight);
  const auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty(p.output_sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  poison(y);
  const int vec = elements_per_16_bytes(x);
  prm.w = weight_view(weight, p);
  prm.a = xc.data_ptr();
  prm.b = weight.data_ptr();
  prm.d = y.data_ptr();
  prm.bias = b.defined() ? b.data_ptr() : nullptr;
  prm.bias_stride = b.defined() ? b.stride(0) : 0;
  prm.vec_a = a_vectorizable(Pass::Fprop, prm.g, address(xc), vec);
  prm.vec_b = b_vectorizable(Pass::Fprop, prm.g, prm.w, address(weight), vec);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  DVN_CUDA_CHECK(depthwise(p, weight) ? launch_depthwise_fprop(prm, dtype, stream)
                                      : launch_fprop(prm, dtype, math_for(dtype), stream),
                 "the sliced_conv2d forward kernel");
  return y.contiguous(fmt);
}

at::Tensor grad_input(const at::Tensor& gyc, const at::Tensor& x, const at::Tensor& weight,
                      const ConvProblem& p, DType dtype) {
  ConvGemmParams prm;
  prm.g = checked_geometry(p, weight);
  auto dx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  poison(dx);
  const int vec = elements_per_16_bytes(x);
  prm.w = weight_view(weight, p);
  prm.a = gyc.data_ptr();
  prm.b = weight.data_ptr();
  prm.d = dx.data_ptr();
  prm.vec_a = a_vectorizable(Pass::Dgrad, prm.g, address(gyc), vec);
  prm.vec_b = b_vectorizable(Pass::Dgrad, prm.g, prm.w, address(weight), vec);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  DVN_CUDA_CHECK(depthwise(p, weight) ? launch_depthwise_dgrad(prm, dtype, stream)
                                      : launch_dgrad(prm, dtype, math_for(dtype), stream),
                 "the sliced_conv2d grad-input kernel");
  return dx.contiguous(follow_format(x));
}

at::Tensor grad_weight(const at::Tensor& gyc, const at::Tensor& x, const at::Tensor& weight,
                       const ConvProblem& p, DType dtype) {
  ConvGemmParams prm;
  prm.g = checked_geometry(p, weight);
  prm.w = weight_view(weight, p);
  const auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const GemmShape shape = gemm_shape(Pass::Wgrad, prm.g);
  const bool dw = depthwise(p, weight);
  const auto acc_type = dtype == DType::Float64 ? at::kDouble : at::kFloat;
  const int64_t acc_bytes = dtype == DType::Float64 ? 8 : 4;
  // One split's workspace: every active group's K x (R*S*C) block.
  const int64_t rows = k_pitch(prm.g);
  // At most 64 splits (grid z: groups x splits <= 65535) and a workspace of at most 256 MiB.
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(256) << 20) / (rows * shape.n * acc_bytes));
  const int32_t max_splits = int32_t(std::min<int64_t>(
      {64, by_memory, dw ? 65535 : std::max<int64_t>(1, 65535 / prm.g.groups)}));
  if (dw) {
    // Splits over output pixels, at least 256 each.
    prm.split = depthwise_split(prm.g, sm_count(), 256, max_splits);
  } else {
    // Splits of at least 4 K tiles each.
    const int64_t bm = block_m(Pass::Wgrad, prm.g);
    const int64_t tiles = ((shape.m + bm - 1) / bm) * ((shape.n + kBlockN - 1) / kBlockN) *
                          prm.g.groups;
    prm.split = choose_split_k(shape.k, block_k(dtype), tiles, sm_count(), 4, max_splits);
  }
  auto workspace = at::empty({prm.split.splits, rows, shape.n}, x.options().dtype(acc_type));
  poison(workspace);
  // The dense full gradient, in the weight's layout.
  auto gw = at::empty(weight.sizes(), weight.options().memory_format(follow_format(weight)));
  poison(gw);
  const bool channels_last = follow_format(weight) == at::MemoryFormat::ChannelsLast;
  const int vec = elements_per_16_bytes(x);
  prm.a = gyc.data_ptr();
  prm.b = xc.data_ptr();
  prm.d = workspace.data_ptr();
  prm.vec_a = a_vectorizable(Pass::Wgrad, prm.g, address(gyc), vec);
  prm.vec_b = b_vectorizable(Pass::Wgrad, prm.g, prm.w, address(xc), vec);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  DVN_CUDA_CHECK(dw ? launch_depthwise_wgrad(prm, dtype, gw.data_ptr(), int32_t(gw.size(0)),
                                             int32_t(gw.size(1)), channels_last, stream)
                    : launch_wgrad(prm, dtype, math_for(dtype), gw.data_ptr(),
                                   int32_t(gw.size(0)), int32_t(gw.size(1)), channels_last,
                                   stream),
                 "the sliced_conv2d grad-weight kernels");
  return gw;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out,
                                                        const at::Tensor& x,
                                                        const at::Tensor& weight,
                                                        c10::string_view spec,
                                                        std::array<bool, 3> output_mask) {
  check_cuda(x, "x");
  const auto p = make_backward_problem(grad_out, x, weight, spec);
  const DType dtype = kernel_dtype(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [need_x, need_w, need_b] = output_mask;
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  const auto none = [&] { return at::empty({0}, weight.options()); };
  if (p.batch == 0) {
    return {need_x ? at::zeros(x.sizes(), x.options().memory_format(follow_format(x))) : none(),
            need_w ? at::zeros(weight.sizes(), weight.options().memory_format(follow_format(weight)))
                   : none(),
            need_b ? at::zeros({weight.size(0)}, weight.options()) : none()};
  }
  at::Tensor gyc;
  if (need_x || need_w) gyc = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  return {need_x ? grad_input(gyc, x, weight, p, dtype) : none(),
          need_w ? grad_weight(gyc, x, weight, p, dtype) : none(),
          // The bias gradient is a plain channel sum (ATen's reduction, float32 accumulation).
          need_b ? scatter_channels(grad_out.sum({0, 2, 3}), weight.size(0), p.out) : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, CUDA, m) {
  m.impl("sliced_conv2d", &forward);
  m.impl("sliced_conv2d_backward", &backward);
}

}  // namespace dvn::cuda
