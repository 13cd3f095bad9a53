// The checked geometry of one sliced convolution, shared by every kernel of the extension.
//
// The Python wrapper validates arguments with friendlier messages first; these checks keep a
// direct call of torch.ops.dvn_kernels.* from crashing or reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <vector>

#include "segments.h"

namespace dvn {

struct ConvProblem {
  Segments in;   // active input channels of the weight
  Segments out;  // active output channels of the weight
  int64_t batch = 0;
  int64_t in_channels = 0;   // compact: total length of `in`
  int64_t out_channels = 0;  // compact: total length of `out`
  int64_t height = 0, width = 0;          // input spatial size
  int64_t out_height = 0, out_width = 0;  // output spatial size
  int64_t kernel_h = 0, kernel_w = 0;
  std::array<int64_t, 2> stride{}, padding{}, dilation{};

  // The compact output's sizes: (batch, out_channels, out_height, out_width).
  std::vector<int64_t> output_sizes() const {
    return {batch, out_channels, out_height, out_width};
  }
};

// Checks `weight` (4-D, floating), the segments against it, the compact input size `x_sizes`
// against the input segments, and stride/padding/dilation; computes the output size.
ConvProblem make_problem(at::IntArrayRef x_sizes, const at::Tensor& weight,
                         at::IntArrayRef in_segments, at::IntArrayRef out_segments,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation);

// Checks that `t` has the dtype and device of `like`, naming both arguments.
void check_same_type(const at::Tensor& t, const char* name, const at::Tensor& like,
                     const char* like_name);

// The checks every device's backward makes before its own: grad_out and x of weight's dtype
// and device, the problem as make_problem checks it, and grad_out of its compact output shape.
ConvProblem make_backward_problem(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& weight, at::IntArrayRef in_segments,
                                  at::IntArrayRef out_segments, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation);

}  // namespace dvn
