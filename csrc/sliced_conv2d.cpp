// Schemas of the sliced convolution ops. Device kernels register in cpu/ and cuda/, the
// autograd formula in sliced_conv2d_autograd.cpp; the fake (meta) implementations are
// registered from Python in dvn_kernels/ops.py, as in pytorch/extension-cpp. The two schema
// strings below are FORWARD_SCHEMA and BACKWARD_SCHEMA of dvn_kernels/ops.py, which the Triton
// ops declare too (tests/test_op_contract.py checks that they stay identical).
//
// `spec` holds the active channel ranges (one or two per side, start+length) and the geometry;
// see conv_problem.h. x, the output and the gradient of x are compact (only the active channels,
// in range order); weight, bias and their gradients are full size.
#include <torch/library.h>

TORCH_LIBRARY(dvn_kernels, m) {
  m.def("sliced_conv2d(Tensor x, Tensor weight, Tensor? bias, str spec) -> Tensor");
  // Gradients of x (compact, x's layout), weight and bias (full size, zero outside the
  // active block) in one call; an output not asked for by output_mask is an empty tensor.
  m.def(
      "sliced_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str spec, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // A 3x3 stride-1 convolution of a padded NHWC input, as a direct CPU kernel: the compiled
  // runtime's small levels (cpu/direct_conv.cpp; fake implementation in dvn_kernels/direct.py).
  m.def("direct_conv3x3_nhwc(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}
