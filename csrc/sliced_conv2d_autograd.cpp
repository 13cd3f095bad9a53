// Autograd of dvn_kernels::sliced_conv2d, registered in C++ for every device.
//
// A C++ autograd kernel (as in torchvision's ops) rather than torch.library.register_autograd
// in Python (as dvn_kernels/ops.py does for the Triton op): the Python formula cost ~150 us per
// forward+backward, as much as a level-1 convolution's own backward on small layers. The node
// saves x, the weight and the spec string (no per-argument lists). torch.compile traces it through the fake implementations
// registered in dvn_kernels/ops.py. Double backward is not supported.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

namespace dvn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, c10::string_view spec) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dvn_kernels::sliced_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view)>();
  return op.call(x, weight, bias, spec);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    c10::string_view spec, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dvn_kernels::sliced_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
              std::array<bool, 3>)>();
  return op.call(grad_out, x, weight, spec, output_mask);
}

class SlicedConv2d : public torch::autograd::Function<SlicedConv2d> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view spec) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight});
    ctx->saved_data["spec"] = std::string(spec);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return call_forward(x, weight, bias, spec);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& spec = ctx->saved_data["spec"].toStringRef();
    // An absent bias has no gradient edge: needs_input_grad(2) may not be asked then. The same
    // formula as grad_mask in dvn_kernels/ops.py (the Triton op's autograd).
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::Tensor gx, gw, gb;
    if (mask[0] || mask[1] || mask[2]) {
      std::tie(gx, gw, gb) = call_backward(grad_outputs[0], saved[0], saved[1], spec, mask);
    }
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(),
            mask[2] ? gb : at::Tensor(), at::Tensor()};
  }
};

// Autograd of the backward op itself: runs it, and makes a second backward through it fail
// with a clear message instead of differentiating the kernel's internals.
class BackwardNotDifferentiable : public torch::autograd::Function<BackwardNotDifferentiable> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out,
                               const at::Tensor& x, const at::Tensor& weight,
                               c10::string_view spec, std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gw, gb] = call_backward(grad_out, x, weight, spec, output_mask);
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
    c10::string_view spec, std::array<bool, 3> output_mask) {
  const auto out = BackwardNotDifferentiable::apply(grad_out, x, weight, spec, output_mask);
  return {out[0], out[1], out[2]};
}

at::Tensor sliced_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view spec) {
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad() || bias_grad)) {
    // Inference: skip the autograd node (a few microseconds per call at batch 1).
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, weight, bias, spec);
  }
  return SlicedConv2d::apply(x, weight, bias, spec);
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, Autograd, m) {
  m.impl("sliced_conv2d", &sliced_conv2d_autograd);
  m.impl("sliced_conv2d_backward", &sliced_conv2d_backward_autograd);
}

}  // namespace dvn
