#include "segments.h"

#include <ATen/ATen.h>

namespace dvn {

Segments parse_segments(at::IntArrayRef flat, int64_t channels, const char* name) {
  TORCH_CHECK_VALUE(!flat.empty(), name, ": at least one segment is required, got none");
  TORCH_CHECK_VALUE(flat.size() % 2 == 0, name,
                    ": expected a flat list [start0, length0, start1, length1, ...], got ",
                    flat.size(), " values");
  Segments segments;
  segments.reserve(flat.size() / 2);
  int64_t end = 0;
  for (size_t i = 0; i < flat.size(); i += 2) {
    const int64_t start = flat[i];
    const int64_t length = flat[i + 1];
    const size_t k = i / 2;
    TORCH_CHECK_VALUE(length > 0, name, ": segment ", k, " (start=", start, ", length=", length,
                      ") must have a positive length");
    TORCH_CHECK_VALUE(start >= 0 && start + length <= channels, name, ": segment ", k,
                      " (start=", start, ", length=", length, ") lies outside the ", channels,
                      " channels of the weight");
    TORCH_CHECK_VALUE(k == 0 || start >= end, name, ": segment ", k, " (start=", start,
                      ") overlaps or precedes the previous segment, which ends at ", end,
                      "; segments must be sorted and disjoint");
    segments.push_back({start, length});
    end = start + length;
  }
  return segments;
}

int64_t total_length(const Segments& segments) {
  int64_t total = 0;
  for (const auto& s : segments) total += s.length;
  return total;
}

Segments complement(const Segments& segments, int64_t channels) {
  Segments gaps;
  int64_t pos = 0;
  for (const auto& s : segments) {
    if (s.start > pos) gaps.push_back({pos, s.start - pos});
    pos = s.start + s.length;
  }
  if (channels > pos) gaps.push_back({pos, channels - pos});
  return gaps;
}

at::Tensor gather_channels(const at::Tensor& t, int64_t dim, const Segments& segments) {
  if (segments.size() == 1) return t.narrow(dim, segments[0].start, segments[0].length);
  std::vector<at::Tensor> parts;
  parts.reserve(segments.size());
  for (const auto& s : segments) parts.push_back(t.narrow(dim, s.start, s.length));
  return at::cat(parts, dim);
}

at::Tensor gather_block(const at::Tensor& weight, const Segments& out, const Segments& in) {
  return gather_channels(gather_channels(weight, 0, out), 1, in);
}

at::Tensor scatter_block(const at::Tensor& block, const at::Tensor& like, const Segments& out,
                         const Segments& in) {
  auto full = at::empty(like.sizes(), like.options().memory_format(follow_format(like)));
  for (const auto& gap : complement(out, like.size(0))) full.narrow(0, gap.start, gap.length).zero_();
  const auto in_gaps = complement(in, like.size(1));
  int64_t row = 0;
  for (const auto& o : out) {
    auto rows = full.narrow(0, o.start, o.length);
    auto block_rows = block.narrow(0, row, o.length);
    for (const auto& gap : in_gaps) rows.narrow(1, gap.start, gap.length).zero_();
    int64_t col = 0;
    for (const auto& i : in) {
      rows.narrow(1, i.start, i.length).copy_(block_rows.narrow(1, col, i.length));
      col += i.length;
    }
    row += o.length;
  }
  return full;
}

at::Tensor scatter_channels(const at::Tensor& compact, int64_t channels,
                            const Segments& segments) {
  auto full = at::empty({channels}, compact.options());
  for (const auto& gap : complement(segments, channels)) {
    full.narrow(0, gap.start, gap.length).zero_();
  }
  int64_t offset = 0;
  for (const auto& s : segments) {
    full.narrow(0, s.start, s.length).copy_(compact.narrow(0, offset, s.length));
    offset += s.length;
  }
  return full;
}

at::MemoryFormat follow_format(const at::Tensor& t) {
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

}  // namespace dvn
