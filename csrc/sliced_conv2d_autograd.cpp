// Autograd of dvn_kernels::sliced_conv2d, registered in C++ for every device.
//
// A C++ autograd kernel (as in torchvision's ops) rather than torch.library.register_autograd
// in Python: the Python formula cost ~150 us per forward+backward, as much as a level-1
// convolution's own backward on small layers. torch.compile traces it through the fake
// implementations registered in dvn_kernels/native.py. Double backward is not supported.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace dvn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef in_segments,
                        at::IntArrayRef out_segments, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dvn_kernels::sliced_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef)>();
  return op.call(x, weight, bias, in_segments, out_segments, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef in_segments, at::IntArrayRef out_segments, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dvn_kernels::sliced_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
              at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
              std::array<bool, 3>)>();
  return op.call(grad_out, x, weight, in_segments, out_segments, stride, padding, dilation,
                 output_mask);
}

class SlicedConv2d : public torch::autograd::Function<SlicedConv2d> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef in_segments,
                            at::IntArrayRef out_segments, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["in_segments"] = in_segments.vec();
    ctx->saved_data["out_segments"] = out_segments.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return call_forward(x, weight, bias, in_segments, out_segments, stride, padding, dilation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::Tensor gx, gw, gb;
    if (mask[0] || mask[1] || mask[2]) {
      std::tie(gx, gw, gb) = call_backward(
          grad_outputs[0], saved[0], saved[1], ctx->saved_data["in_segments"].toIntVector(),
          ctx->saved_data["out_segments"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
          ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
          mask);
    }
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(),
            mask[2] ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Autograd of the backward op itself: runs it, and makes a second backward through it fail
// with a clear message instead of differentiating the kernel's internals.
class BackwardNotDifferentiable : public torch::autograd::Function<BackwardNotDifferentiable> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out,
                               const at::Tensor& x, const at::Tensor& weight,
                               at::IntArrayRef in_segments, at::IntArrayRef out_segments,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gw, gb] = call_backward(grad_out, x, weight, in_segments, out_segments, stride,
                                      padding, dilation, output_mask);
    return {gx, gw, gb};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "sliced_conv2d: double backward (gradients of gradients) is not "
                                "supported by the native kernels; use backend='reference'");
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> sliced_conv2d_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef in_segments, at::IntArrayRef out_segments, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const auto out = BackwardNotDifferentiable::apply(grad_out, x, weight, in_segments,
                                                    out_segments, stride, padding, dilation,
                                                    output_mask);
  return {out[0], out[1], out[2]};
}

at::Tensor sliced_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef in_segments, at::IntArrayRef out_segments,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad() || bias_grad)) {
    // Inference: skip the autograd node (a few microseconds per call at batch 1).
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, weight, bias, in_segments, out_segments, stride, padding, dilation);
  }
  return SlicedConv2d::apply(x, weight, bias, in_segments, out_segments, stride, padding,
                             dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, Autograd, m) {
  m.impl("sliced_conv2d", &sliced_conv2d_autograd);
  m.impl("sliced_conv2d_backward", &sliced_conv2d_backward_autograd);
}

}  // namespace dvn
