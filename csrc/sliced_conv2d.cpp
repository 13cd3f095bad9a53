// Schemas of the sliced convolution ops. Device kernels register in cpu/ and cuda/, the
// autograd formula in sliced_conv2d_autograd.cpp; the fake (meta) implementations are
// registered from Python in dvn_kernels/native.py, as in pytorch/extension-cpp.
//
// Segments are flat int lists [start0, length0, start1, length1, ...] of weight channels;
// x, the output and the gradient of x are compact (only the active channels, in segment
// order); weight, bias and their gradients are full size.
#include <torch/library.h>

TORCH_LIBRARY(dvn_kernels, m) {
  m.def(
      "sliced_conv2d(Tensor x, Tensor weight, Tensor? bias, int[] in_segments, "
      "int[] out_segments, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Gradients of x (compact, x's layout), weight and bias (full size, zero outside the
  // active block) in one call; an output not asked for by output_mask is an empty tensor.
  m.def(
      "sliced_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, int[] in_segments, "
      "int[] out_segments, int[2] stride, int[2] padding, int[2] dilation, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
