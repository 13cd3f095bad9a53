// Channel segments: sorted, disjoint (start, length) ranges of a weight's channel axis.
//
// Python passes segments as a flat int list [s0, l0, s1, l1, ...]. These helpers parse and
// check that list and move data between compact tensors (only the active channels, in
// segment order) and full-size tensors, touching only the active block wherever they can.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace dvn {

struct Segment {
  int64_t start;
  int64_t length;
};

using Segments = std::vector<Segment>;

// Parses a flat [s0, l0, s1, l1, ...] list; throws a c10::Error naming `name` when the list is
// empty, of odd length, has a zero or negative length, is unsorted or overlapping, or leaves
// [0, channels).
Segments parse_segments(at::IntArrayRef flat, int64_t channels, const char* name);

// Sum of the segment lengths: the compact channel count.
int64_t total_length(const Segments& segments);

// The ranges of [0, channels) that no segment covers, in order.
Segments complement(const Segments& segments, int64_t channels);

// The active channels of `t` along `dim`: a view for one segment, else a concatenated copy.
at::Tensor gather_channels(const at::Tensor& t, int64_t dim, const Segments& segments);

// weight[out_idx][:, in_idx] for a (C_out, C_in, ...) weight: a strided view when both sides
// have one segment, else a copy of the active block only (never of the full weight).
at::Tensor gather_block(const at::Tensor& weight, const Segments& out, const Segments& in);

// A full-size (C_out, C_in, ...) tensor holding `block` at the active block and zeros
// elsewhere; `like` gives sizes, dtype, device and memory format. Each element is written
// once: the complement is zero-filled, the block copied in.
at::Tensor scatter_block(const at::Tensor& block, const at::Tensor& like, const Segments& out,
                         const Segments& in);

// A 1-D tensor of `channels` elements: `compact` at the segments, zeros elsewhere.
at::Tensor scatter_channels(const at::Tensor& compact, int64_t channels,
                            const Segments& segments);

// The layout the kernels give a result that follows `t`: channels_last when `t` is strictly
// channels_last (dense in that format and not also contiguous), else contiguous. Mirrored by
// the fake implementations in dvn_kernels/native.py.
at::MemoryFormat follow_format(const at::Tensor& t);

}  // namespace dvn
