// The checked geometry of one sliced convolution, shared by every kernel of the extension.
//
// The ops take their configuration as one spec string, made once per configuration in Python
// (dvn_kernels/spec.py, format_spec) and parsed here in constant time on each call:
//
//   "in=0+16,32+16 out=0+16 stride=1,1 padding=1,1 dilation=1,1 groups=1"
//
// `in` and `out` hold one or two channel ranges start+length of the weight (sorted, disjoint);
// stride, padding and dilation are (height, width). A ConvProblem is the C++ twin of Python's
// KernelSpec (dvn_kernels/spec.py), plus the sizes of the call's tensors; its ChannelRanges are
// the twins of ChannelSegments. One string instead of five int lists because the Python binding
// of torch.ops converts every int list element by element: five lists cost ~3.5 us per call,
// the string ~0.2 us (measured; F.conv2d takes ~3 us in all).
// The checks here keep a direct call of torch.ops.dvn_kernels.* from crashing or reading out
// of bounds; Python's entry points run the same checks in dvn_kernels/ops.py (check_call).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <vector>

#include "channel_ranges.h"

namespace dvn {

struct ConvProblem {
  ChannelRanges in;   // active input channels of the weight
  ChannelRanges out;  // active output channels of the weight
  int64_t groups = 1;         // the weight's groups (spec): weight is (C_out, C_in / groups, ...)
  int64_t active_groups = 1;  // groups the ranges hold (whole groups, the same on both sides)
  std::array<int64_t, 2> stride{1, 1}, padding{0, 0}, dilation{1, 1};
  int64_t batch = 0;
  int64_t in_channels = 0;   // compact: in.total()
  int64_t out_channels = 0;  // compact: out.total()
  int64_t height = 0, width = 0;          // input spatial size
  int64_t out_height = 0, out_width = 0;  // output spatial size
  int64_t kernel_h = 0, kernel_w = 0;

  // The compact output's sizes: (batch, out_channels, out_height, out_width).
  std::vector<int64_t> output_sizes() const {
    return {batch, out_channels, out_height, out_width};
  }
};

// Parses `spec`, checks it against `weight` (4-D, floating; ranges inside its channels; with
// groups, ranges of whole groups, the same groups on both sides) and the compact input sizes
// `x_sizes` against it, and computes the output size. Throws a c10 error naming the bad argument.
ConvProblem make_problem(at::IntArrayRef x_sizes, const at::Tensor& weight,
                         c10::string_view spec);

// Checks that `t` has the dtype and device of `like`, naming both arguments.
void check_same_type(const at::Tensor& t, const char* name, const at::Tensor& like,
                     const char* like_name);

// The checks every device's backward makes before its own: grad_out and x of weight's dtype
// and device, the problem as make_problem checks it, and grad_out of its compact output shape.
ConvProblem make_backward_problem(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& weight, c10::string_view spec);

}  // namespace dvn
