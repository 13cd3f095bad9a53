// Moving data between compact tensors (only the active channels, in range order) and full-size
// tensors, touching only the active block wherever possible.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "channel_ranges.h"

namespace dvn {

// The active channels of `t` along `dim`: a view for one range, else a concatenated copy.
at::Tensor gather_channels(const at::Tensor& t, int64_t dim, const ChannelRanges& r);

// weight[out_idx][:, in_idx] for a (C_out, C_in, ...) weight: a strided view when both sides
// have one range, else a copy of the active block only (never of the full weight).
at::Tensor gather_block(const at::Tensor& weight, const ChannelRanges& out,
                        const ChannelRanges& in);

// The active block of a (C_out, C_in, 1, 1) weight as a (C_out_active, C_in_active) matrix: a
// strided view when both sides have one range, else a copy of the block.
at::Tensor block_matrix(const at::Tensor& weight, const ChannelRanges& out,
                        const ChannelRanges& in);

// A full-size (C_out, C_in, ...) tensor holding `block` at the active block and zeros
// elsewhere; `like` gives sizes, dtype, device and memory format. Each element is written
// once: the inactive part is zero-filled, the block copied in.
at::Tensor scatter_block(const at::Tensor& block, const at::Tensor& like,
                         const ChannelRanges& out, const ChannelRanges& in);

// A 1-D tensor of `channels` elements: `compact` at the ranges, zeros elsewhere.
at::Tensor scatter_channels(const at::Tensor& compact, int64_t channels, const ChannelRanges& r);

// The layout the kernels give a result that follows `t`: channels_last when `t` is strictly
// channels_last (dense in that format and not also contiguous), else contiguous. Mirrored by
// dvn_kernels.channels.follow_format.
at::MemoryFormat follow_format(const at::Tensor& t);

}  // namespace dvn
