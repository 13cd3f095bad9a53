#include "conv_problem.h"

#include <ATen/ATen.h>

#include <limits>
#include <string>

namespace dvn {
namespace {

constexpr const char* kFormat =
    "expected \"in=S+L[,S+L] out=S+L[,S+L] stride=H,W padding=H,W dilation=H,W groups=G\" "
    "(channel ranges as start+length)";

// A cursor over the spec string; every failure names the spec and where it went wrong.
class SpecReader {
 public:
  explicit SpecReader(c10::string_view s) : s_(s) {}

  void key(const char* name) {
    size_t at = pos_;
    bool ok = pos_ == 0 || (at < s_.size() && s_[at++] == ' ');
    for (const char* c = name; ok && *c; ++c) ok = at < s_.size() && s_[at++] == *c;
    ok = ok && at < s_.size() && s_[at++] == '=';
    if (!ok) fail(std::string("'") + (pos_ > 0 ? " " : "") + name + "='");
    pos_ = at;
  }

  void literal(char c) {
    if (pos_ >= s_.size() || s_[pos_] != c) fail(std::string("'") + c + "'");
    ++pos_;
  }

  bool next_is(char c) const { return pos_ < s_.size() && s_[pos_] == c; }

  int64_t number() {
    const size_t begin = pos_;
    int64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      if (v > (std::numeric_limits<int32_t>::max() - 9) / 10) fail("a number below 2^31");
      v = v * 10 + (s_[pos_] - '0');
      ++pos_;
    }
    if (pos_ == begin) fail("a non-negative integer");
    return v;
  }

  std::array<int64_t, 2> pair(const char* name) {
    key(name);
    const int64_t a = number();
    literal(',');
    return {a, number()};
  }

  // The ranges after "<name>=", each start+length; errors call them `label` (in_segments,
  // out_segments).
  ChannelRanges ranges(const char* name, const char* label) {
    key(name);
    int64_t starts[2] = {0, 0}, lengths[2] = {0, 0};
    int n = 0;
    do {
      if (n > 0) literal(',');
      if (n == 2) fail("at most two ranges");
      starts[n] = number();
      literal('+');
      lengths[n] = number();
      ++n;
    } while (next_is(','));
    for (int i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(lengths[i] > 0, "spec: ", label, " range ", i, " (", starts[i], "+",
                        lengths[i], ") is empty in '", s_, "'");
      TORCH_CHECK_VALUE(starts[i] + lengths[i] <= std::numeric_limits<int32_t>::max(), "spec: ",
                        label, " range ", i, " (", starts[i], "+", lengths[i],
                        ") ends at or beyond 2^31 in '", s_, "'");
    }
    TORCH_CHECK_VALUE(n == 1 || starts[1] >= starts[0] + lengths[0], "spec: ", label,
                      " ranges must be sorted and disjoint, got ", starts[0], "+", lengths[0],
                      " then ", starts[1], "+", lengths[1], " in '", s_, "'");
    ChannelRanges r;
    r.start0 = int32_t(starts[0]);
    r.length0 = int32_t(lengths[0]);
    if (n == 2) {
      r.start1 = int32_t(starts[1]);
      r.length1 = int32_t(lengths[1]);
    }
    return r;
  }

  void finish() const {
    if (pos_ != s_.size()) fail("the end of the spec");
  }

 private:
  [[noreturn]] void fail(const std::string& wanted) const {
    C10_THROW_ERROR(ValueError, c10::str("spec: expected ", wanted, " at position ", pos_,
                                         " of '", s_, "'; ", kFormat));
  }

  c10::string_view s_;
  size_t pos_ = 0;
};

void check_within(const ChannelRanges& r, int64_t channels, const char* name, const char* what) {
  TORCH_CHECK_VALUE(r.end() <= channels, name, ": channel range ends at ", r.end(),
                    ", outside the ", channels, " ", what, " channels of the weight");
}

// The number of groups the ranges hold, when both sides hold the same whole groups (group sizes
// c_in_g and c_out_g); throws otherwise: the kernels compute whole groups only.
int64_t whole_groups(const ChannelRanges& in, const ChannelRanges& out, int64_t c_in_g,
                     int64_t c_out_g) {
  bool ok = in.count() == out.count();
  for (int i = 0; ok && i < in.count(); ++i) {
    ok = in.start(i) % c_in_g == 0 && in.length(i) % c_in_g == 0 &&
         out.start(i) % c_out_g == 0 && out.length(i) % c_out_g == 0 &&
         in.start(i) / c_in_g == out.start(i) / c_out_g &&
         in.length(i) / c_in_g == out.length(i) / c_out_g;
  }
  TORCH_CHECK_VALUE(ok, "groups: the kernels compute whole groups, the same on both sides (",
                    c_in_g, " input and ", c_out_g, " output channels each); in_segments and "
                    "out_segments cut through a group or differ; backends 'reference' and "
                    "'masked' compute any segments");
  return out.total() / c_out_g;
}

}  // namespace

ConvProblem make_problem(at::IntArrayRef x_sizes, const at::Tensor& weight,
                         c10::string_view spec) {
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight: expected a 4-D (C_out, C_in, kh, kw) tensor, got ",
                    weight.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "weight: expected a floating point dtype, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(x_sizes.size() == 4, "x: expected a 4-D (N, C, H, W) tensor, got ",
                    x_sizes.size(), "-D");
  ConvProblem p;
  SpecReader reader(spec);
  p.in = reader.ranges("in", "in_segments");
  p.out = reader.ranges("out", "out_segments");
  p.stride = reader.pair("stride");
  p.padding = reader.pair("padding");
  p.dilation = reader.pair("dilation");
  reader.key("groups");
  p.groups = reader.number();
  reader.finish();
  TORCH_CHECK_VALUE(p.stride[0] >= 1 && p.stride[1] >= 1 && p.dilation[0] >= 1 &&
                        p.dilation[1] >= 1,
                    "spec: stride and dilation must be >= 1 in '", spec, "'");
  TORCH_CHECK_VALUE(p.groups >= 1, "groups: must be >= 1, got ", p.groups);
  TORCH_CHECK_VALUE(weight.size(0) % p.groups == 0, "groups: weight's C_out=", weight.size(0),
                    " is not divisible by groups=", p.groups);
  check_within(p.in, weight.size(1) * p.groups, "in_segments", "input");
  check_within(p.out, weight.size(0), "out_segments", "output");
  if (p.groups > 1) {
    p.active_groups = whole_groups(p.in, p.out, weight.size(1), weight.size(0) / p.groups);
  }
  p.in_channels = p.in.total();
  p.out_channels = p.out.total();
  TORCH_CHECK_VALUE(x_sizes[1] == p.in_channels, "x: has ", x_sizes[1],
                    " channels but in_segments select ", p.in_channels);
  p.batch = x_sizes[0];
  p.height = x_sizes[2];
  p.width = x_sizes[3];
  p.kernel_h = weight.size(2);
  p.kernel_w = weight.size(3);
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
                                  const at::Tensor& weight, c10::string_view spec) {
  check_same_type(grad_out, "grad_out", weight, "weight");
  check_same_type(x, "x", weight, "weight");
  const auto p = make_problem(x.sizes(), weight, spec);
  const bool ok = grad_out.dim() == 4 && grad_out.size(0) == p.batch &&
                  grad_out.size(1) == p.out_channels && grad_out.size(2) == p.out_height &&
                  grad_out.size(3) == p.out_width;
  TORCH_CHECK_VALUE(ok, "grad_out: expected shape (", p.batch, ", ", p.out_channels, ", ",
                    p.out_height, ", ", p.out_width, "), got ", grad_out.sizes());
  return p;
}

}  // namespace dvn
