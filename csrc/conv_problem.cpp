#include "conv_problem.h"

#include <ATen/ATen.h>

namespace dvn {
namespace {

std::array<int64_t, 2> pair_arg(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, name, ": expected 2 values (height, width), got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, name, ": values must be >= ",
                    min_value, ", got (", v[0], ", ", v[1], ")");
  return {v[0], v[1]};
}

}  // namespace

ConvProblem make_problem(at::IntArrayRef x_sizes, const at::Tensor& weight,
                         at::IntArrayRef in_segments, at::IntArrayRef out_segments,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight: expected a 4-D (C_out, C_in, kh, kw) tensor, got ",
                    weight.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "weight: expected a floating point dtype, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(x_sizes.size() == 4, "x: expected a 4-D (N, C, H, W) tensor, got ",
                    x_sizes.size(), "-D");
  ConvProblem p;
  p.in = parse_segments(in_segments, weight.size(1), "in_segments");
  p.out = parse_segments(out_segments, weight.size(0), "out_segments");
  p.in_channels = total_length(p.in);
  p.out_channels = total_length(p.out);
  TORCH_CHECK_VALUE(x_sizes[1] == p.in_channels, "x: has ", x_sizes[1],
                    " channels but in_segments select ", p.in_channels);
  p.batch = x_sizes[0];
  p.height = x_sizes[2];
  p.width = x_sizes[3];
  p.kernel_h = weight.size(2);
  p.kernel_w = weight.size(3);
  p.stride = pair_arg(stride, "stride", 1);
  p.padding = pair_arg(padding, "padding", 0);
  p.dilation = pair_arg(dilation, "dilation", 1);
  const int64_t span_h = p.dilation[0] * (p.kernel_h - 1) + 1;
  const int64_t span_w = p.dilation[1] * (p.kernel_w - 1) + 1;
  const int64_t padded_h = p.height + 2 * p.padding[0];
  const int64_t padded_w = p.width + 2 * p.padding[1];
  TORCH_CHECK_VALUE(padded_h >= span_h && padded_w >= span_w, "x: padded input size (", padded_h,
                    ", ", padded_w, ") is smaller than the dilated kernel (", span_h, ", ", span_w,
                    ")");
  p.out_height = (padded_h - span_h) / p.stride[0] + 1;
  p.out_width = (padded_w - span_w) / p.stride[1] + 1;
  return p;
}

void check_same_type(const at::Tensor& t, const char* name, const at::Tensor& like,
                     const char* like_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, ": dtype ", t.scalar_type(),
                   " does not match ", like_name, "'s dtype ", like.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), name, ": device ", t.device(),
                    " does not match ", like_name, "'s device ", like.device());
}

ConvProblem make_backward_problem(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& weight, at::IntArrayRef in_segments,
                                  at::IntArrayRef out_segments, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_same_type(grad_out, "grad_out", weight, "weight");
  check_same_type(x, "x", weight, "weight");
  const auto p = make_problem(x.sizes(), weight, in_segments, out_segments, stride, padding,
                              dilation);
  const bool ok = grad_out.dim() == 4 && grad_out.size(0) == p.batch &&
                  grad_out.size(1) == p.out_channels && grad_out.size(2) == p.out_height &&
                  grad_out.size(3) == p.out_width;
  TORCH_CHECK_VALUE(ok, "grad_out: expected shape (", p.batch, ", ", p.out_channels, ", ",
                    p.out_height, ", ", p.out_width, "), got ", grad_out.sizes());
  return p;
}

}  // namespace dvn
