// CPU kernels of dvn_kernels::sliced_conv2d and its backward.
//
// Only the active block is computed. Some 1x1 passes run as GEMMs on the weight's strided view
// (conv1x1_gemm.cpp: where they beat oneDNN); small single images run as im2col + GEMMs on the
// weight in place (conv_im2col.cpp); everything else runs oneDNN (through ATen's convolution)
// on the active block of the weight, which ATen packs per call: a copy of the active block
// only, small beside a convolution that large. The weight gradient is computed compact and
// written once into a full-size tensor whose inactive part is zero-filled.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../blocks.h"
#include "../conv_problem.h"
#include "conv1x1_gemm.h"
#include "conv_im2col.h"

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

// `t` as ATen's CPU convolution can take it without crashing: NCHW instead of channels_last
// when its height or width is 1. torch 2.14.1's oneDNN convolution kills the process with a
// segmentation fault on some channels_last inputs of width 1 (1x1 kernel, bias, stride > 1,
// padding, dilation, batch >= 2; found by fuzzing); the same call in NCHW runs correctly.
// Mirrors dvn_kernels.channels.oneDNN_safe.
bool degenerate_channels_last(const at::Tensor& t) {
  return (t.size(2) == 1 || t.size(3) == 1) &&
         follow_format(t) == at::MemoryFormat::ChannelsLast;
}

at::Tensor onednn_safe(const at::Tensor& t) {
  return degenerate_channels_last(t) ? t.contiguous() : t;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": the cpu kernel needs CPU tensors, got ",
                    t.device());
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, c10::string_view spec) {
  check_cpu(x, "x");
  check_same_type(x, "x", weight, "weight");
  const auto p = make_problem(x.sizes(), weight, spec);
  const auto b = checked_bias(bias, weight, p);
  const auto fmt = follow_format(x);
  if (p.batch == 0) return at::empty(p.output_sizes(), x.options().memory_format(fmt));
  at::Tensor y;
  if (p.groups > 1) {
    // Grouped (depthwise too): oneDNN on the active groups' rows, one group per active group.
    y = at::convolution(onednn_safe(x), gather_channels(weight, 0, p.out), b, p.stride,
                        p.padding, p.dilation, /*transposed=*/false, /*output_padding=*/{0, 0},
                        p.active_groups);
  } else if (gemm_forward_applies(p, x)) {
    y = conv1x1_forward(x, block_matrix(weight, p.out, p.in), b, p);
  } else if (im2col_applies(p, x, weight)) {
    y = im2col_forward(x, weight, b, p);
  } else {
    y = at::convolution(onednn_safe(x), gather_block(weight, p.out, p.in), b, p.stride,
                        p.padding, p.dilation, /*transposed=*/false, /*output_padding=*/{0, 0},
                        /*groups=*/1);
  }
  return y.contiguous(fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out,
                                                        const at::Tensor& x,
                                                        const at::Tensor& weight,
                                                        c10::string_view spec,
                                                        std::array<bool, 3> output_mask) {
  check_cpu(x, "x");
  const auto p = make_backward_problem(grad_out, x, weight, spec);
  const auto [need_x, need_w, need_b] = output_mask;
  const auto x_fmt = follow_format(x);
  at::Tensor gx, gw, gb;
  if (p.batch == 0) {
    gx = at::zeros(x.sizes(), x.options().memory_format(x_fmt));
    gw = at::zeros({p.out_channels, p.groups > 1 ? weight.size(1) : p.in_channels, p.kernel_h,
                    p.kernel_w}, weight.options());
    gb = at::zeros({p.out_channels}, weight.options());
  } else if (p.groups > 1) {
    const auto w = need_x ? gather_channels(weight, 0, p.out)
                          : at::empty({p.out_channels, weight.size(1), p.kernel_h, p.kernel_w},
                                      weight.options());
    const auto bias_sizes = need_b ? std::optional<at::IntArrayRef>(at::IntArrayRef(
                                         &p.out_channels, 1))
                                   : std::nullopt;
    const bool nchw = degenerate_channels_last(x) || degenerate_channels_last(grad_out);
    std::tie(gx, gw, gb) = at::convolution_backward(
        nchw ? grad_out.contiguous() : grad_out, nchw ? x.contiguous() : x, w, bias_sizes,
        p.stride, p.padding, p.dilation, /*transposed=*/false, /*output_padding=*/{0, 0},
        p.active_groups, {need_x, need_w, need_b});
  } else {
    const bool gemm_x = need_x && gemm_grad_input_applies(p, x);
    if (gemm_x) gx = conv1x1_grad_input(grad_out, block_matrix(weight, p.out, p.in), p, x_fmt);
    const bool onednn_x = need_x && !gemm_x;
    if (onednn_x || need_w || need_b) {
      // convolution_backward reads the weight's values only for grad_input; otherwise an
      // uninitialised block of the right size saves the gather.
      const auto w = onednn_x ? gather_block(weight, p.out, p.in)
                              : at::empty({p.out_channels, p.in_channels, p.kernel_h,
                                           p.kernel_w}, weight.options());
      const auto bias_sizes = need_b ? std::optional<at::IntArrayRef>(at::IntArrayRef(
                                           &p.out_channels, 1))
                                     : std::nullopt;
      const bool nchw = degenerate_channels_last(x) || degenerate_channels_last(grad_out);
      at::Tensor gx_dnn;
      std::tie(gx_dnn, gw, gb) = at::convolution_backward(
          nchw ? grad_out.contiguous() : grad_out, nchw ? x.contiguous() : x, w, bias_sizes,
          p.stride, p.padding, p.dilation, /*transposed=*/false, /*output_padding=*/{0, 0},
          /*groups=*/1, {onednn_x, need_w, need_b});
      if (onednn_x) gx = gx_dnn;
    }
  }
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  const auto none = [&] { return at::empty({0}, weight.options()); };
  // A grouped weight's second dimension is the group's input channels: all of them active.
  const ChannelRanges w_in = p.groups > 1 ? ChannelRanges{0, int32_t(weight.size(1)), 0, 0} : p.in;
  return {need_x ? gx.contiguous(x_fmt) : none(),
          need_w ? scatter_block(gw, weight, p.out, w_in) : none(),
          need_b ? scatter_channels(gb, weight.size(0), p.out) : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, CPU, m) {
  m.impl("sliced_conv2d", &forward);
  m.impl("sliced_conv2d_backward", &backward);
}

}  // namespace dvn::cpu
