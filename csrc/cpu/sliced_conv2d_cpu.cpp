// CPU kernels of dvn_kernels::sliced_conv2d and its backward.
//
// Only the active block is computed. 1x1 convolutions run as GEMMs on the weight's strided
// view (conv1x1_gemm.cpp); other kernels run oneDNN (through ATen's convolution) on the active
// block of the weight, which ATen packs per call: a copy of the active block only, small
// beside the convolution itself (C_out*C_in*kh*kw versus N*P*Q times that in FLOPs). The
// weight gradient is computed compact and written once into a full-size tensor whose inactive
// part is zero-filled.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../conv_problem.h"
#include "../segments.h"
#include "conv1x1_gemm.h"

namespace dvn::cpu {
namespace {

at::Tensor checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& weight,
                        const ConvProblem& p) {
  if (!bias.has_value() || !bias->defined()) return {};
  check_same_type(*bias, "bias", weight, "weight");
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0),
                    "bias: expected shape (", weight.size(0), ",) matching weight's C_out, got ",
                    bias->sizes());
  return gather_channels(*bias, 0, p.out);
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": the cpu kernel needs CPU tensors, got ",
                    t.device());
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, at::IntArrayRef in_segments,
                   at::IntArrayRef out_segments, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation) {
  check_cpu(x, "x");
  check_same_type(x, "x", weight, "weight");
  const auto p = make_problem(x.sizes(), weight, in_segments, out_segments, stride, padding,
                              dilation);
  const auto b = checked_bias(bias, weight, p);
  const auto fmt = follow_format(x);
  if (p.batch == 0) return at::empty(p.output_sizes(), x.options().memory_format(fmt));
  const auto w = gather_block(weight, p.out, p.in);
  at::Tensor y;
  if (gemm_applies(p)) {
    y = conv1x1_forward(x, w, b, p);
  } else {
    y = at::convolution(x, w, b, p.stride, p.padding, p.dilation, /*transposed=*/false,
                        /*output_padding=*/{0, 0}, /*groups=*/1);
  }
  return y.contiguous(fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef in_segments, at::IntArrayRef out_segments, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  check_cpu(x, "x");
  const auto p = make_backward_problem(grad_out, x, weight, in_segments, out_segments, stride,
                                       padding, dilation);
  const auto [need_x, need_w, need_b] = output_mask;
  const auto x_fmt = follow_format(x);
  at::Tensor gx, gw, gb;
  if (p.batch == 0) {
    gx = at::zeros(x.sizes(), x.options().memory_format(x_fmt));
    gw = at::zeros({p.out_channels, p.in_channels, p.kernel_h, p.kernel_w}, weight.options());
    gb = at::zeros({p.out_channels}, weight.options());
  } else if (gemm_applies(p)) {
    if (need_x) gx = conv1x1_grad_input(grad_out, gather_block(weight, p.out, p.in), p, x_fmt);
    if (need_w) gw = conv1x1_grad_weight(grad_out, x, p);
    if (need_b) gb = grad_out.sum({0, 2, 3});
  } else {
    // convolution_backward reads the weight's values only for grad_input; otherwise an
    // uninitialised block of the right size saves the gather.
    const auto w = need_x ? gather_block(weight, p.out, p.in)
                          : at::empty({p.out_channels, p.in_channels, p.kernel_h, p.kernel_w},
                                      weight.options());
    const auto bias_sizes = need_b ? std::optional<at::IntArrayRef>(at::IntArrayRef(
                                         &p.out_channels, 1))
                                   : std::nullopt;
    std::tie(gx, gw, gb) = at::convolution_backward(
        grad_out, x, w, bias_sizes, p.stride, p.padding, p.dilation, /*transposed=*/false,
        /*output_padding=*/{0, 0}, /*groups=*/1, {need_x, need_w, need_b});
  }
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  const auto none = [&] { return at::empty({0}, weight.options()); };
  return {need_x ? gx.contiguous(x_fmt) : none(),
          need_w ? scatter_block(gw, weight, p.out, p.in) : none(),
          need_b ? scatter_channels(gb, weight.size(0), p.out) : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, CPU, m) {
  m.impl("sliced_conv2d", &forward);
  m.impl("sliced_conv2d_backward", &backward);
}

}  // namespace dvn::cpu
