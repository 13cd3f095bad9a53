#include "blocks.h"

#include <ATen/ATen.h>

namespace dvn {
namespace {

// Zero-fills t[start:stop] along `dim` for every channel in [0, channels) outside `r`.
void zero_gaps(at::Tensor& t, int64_t dim, const ChannelRanges& r, int64_t channels) {
  int64_t pos = 0;
  for (int i = 0; i < r.count(); ++i) {
    if (r.start(i) > pos) t.narrow(dim, pos, r.start(i) - pos).zero_();
    pos = r.start(i) + r.length(i);
  }
  if (channels > pos) t.narrow(dim, pos, channels - pos).zero_();
}

}  // namespace

at::Tensor gather_channels(const at::Tensor& t, int64_t dim, const ChannelRanges& r) {
  if (r.count() == 1) return t.narrow(dim, r.start0, r.length0);
  return at::cat({t.narrow(dim, r.start0, r.length0), t.narrow(dim, r.start1, r.length1)}, dim);
}

at::Tensor gather_block(const at::Tensor& weight, const ChannelRanges& out,
                        const ChannelRanges& in) {
  if (out.count() == 1 && in.count() == 1) {  // one view instead of two narrows
    auto sizes = weight.sizes().vec();
    sizes[0] = out.length0;
    sizes[1] = in.length0;
    return weight.as_strided(sizes, weight.strides(), weight.storage_offset() +
                                                           out.start0 * weight.stride(0) +
                                                           in.start0 * weight.stride(1));
  }
  return gather_channels(gather_channels(weight, 0, out), 1, in);
}

at::Tensor block_matrix(const at::Tensor& weight, const ChannelRanges& out,
                        const ChannelRanges& in) {
  if (out.count() == 1 && in.count() == 1) {
    return weight.as_strided({out.length0, in.length0}, {weight.stride(0), weight.stride(1)},
                             weight.storage_offset() + out.start0 * weight.stride(0) +
                                 in.start0 * weight.stride(1));
  }
  return gather_block(weight, out, in).flatten(1);
}

at::Tensor scatter_block(const at::Tensor& block, const at::Tensor& like,
                         const ChannelRanges& out, const ChannelRanges& in) {
  auto full = at::empty(like.sizes(), like.options().memory_format(follow_format(like)));
  zero_gaps(full, 0, out, like.size(0));
  int64_t row = 0;
  for (int o = 0; o < out.count(); ++o) {
    auto rows = full.narrow(0, out.start(o), out.length(o));
    zero_gaps(rows, 1, in, like.size(1));
    auto block_rows = block.narrow(0, row, out.length(o));
    int64_t col = 0;
    for (int i = 0; i < in.count(); ++i) {
      rows.narrow(1, in.start(i), in.length(i)).copy_(block_rows.narrow(1, col, in.length(i)));
      col += in.length(i);
    }
    row += out.length(o);
  }
  return full;
}

at::Tensor scatter_channels(const at::Tensor& compact, int64_t channels, const ChannelRanges& r) {
  auto full = at::empty({channels}, compact.options());
  zero_gaps(full, 0, r, channels);
  int64_t offset = 0;
  for (int i = 0; i < r.count(); ++i) {
    full.narrow(0, r.start(i), r.length(i)).copy_(compact.narrow(0, offset, r.length(i)));
    offset += r.length(i);
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
