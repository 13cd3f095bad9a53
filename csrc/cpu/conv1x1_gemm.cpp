#include "conv1x1_gemm.h"

#include <ATen/ATen.h>

namespace dvn::cpu {
namespace {

bool strided(const ConvProblem& p) { return p.stride[0] != 1 || p.stride[1] != 1; }

// The input pixels a strided 1x1 convolution reads: a view.
at::Tensor subsample(const at::Tensor& t, const ConvProblem& p) {
  if (!strided(p)) return t;
  return t.slice(2, 0, p.height, p.stride[0]).slice(3, 0, p.width, p.stride[1]);
}

bool channels_last(const at::Tensor& t) {
  return follow_format(t) == at::MemoryFormat::ChannelsLast;
}

// (N, C, P, Q) as an (N*P*Q, C) matrix of pixels: a view for channels_last tensors.
at::Tensor pixel_rows(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

// (N, C, P, Q) as N (C, P*Q) matrices: a view for contiguous tensors.
at::Tensor channel_rows(const at::Tensor& t) {
  return t.reshape({t.size(0), t.size(1), -1});
}

// Places the gradient of the subsampled pixels into a zero (N, C, H, W) tensor.
at::Tensor unsubsample(const at::Tensor& g, const ConvProblem& p, at::MemoryFormat fmt) {
  if (!strided(p)) return g;
  auto full = at::zeros({p.batch, g.size(1), p.height, p.width}, g.options().memory_format(fmt));
  subsample(full, p).copy_(g);
  return full;
}

}  // namespace

bool gemm_applies(const ConvProblem& p) {
  return p.kernel_h == 1 && p.kernel_w == 1 && p.padding[0] == 0 && p.padding[1] == 0;
}

// Batches of per-image products run only on feature maps of at least this many output pixels:
// below, each product is a matrix of a few columns, which BLAS runs far below its speed
// (MobileNetV2's 1x1 convs at 2x2, batch 16: 7-9x slower than oneDNN; at 4x4 1.3-1.6x).
constexpr int64_t kBatchedGemmMinPixels = 64;

bool batched_gemm_pays(const ConvProblem& p) {
  return p.batch == 1 || int64_t(p.out_height) * p.out_width >= kBatchedGemmMinPixels;
}

bool gemm_forward_applies(const ConvProblem& p, const at::Tensor& x) {
  return gemm_applies(p) && x.is_contiguous() && (!strided(p) || p.batch == 1) &&
         batched_gemm_pays(p);
}

bool gemm_grad_input_applies(const ConvProblem& p, const at::Tensor& x) {
  return gemm_applies(p) && !channels_last(x) && batched_gemm_pays(p);
}

at::Tensor conv1x1_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias_block,
                           const ConvProblem& p) {
  const auto xs = subsample(x, p);
  if (channels_last(x)) {
    const auto rows = pixel_rows(xs);
    auto y = bias_block.defined() ? at::addmm(bias_block, rows, w.t()) : at::mm(rows, w.t());
    return y.view({p.batch, p.out_height, p.out_width, p.out_channels}).permute({0, 3, 1, 2});
  }
  at::Tensor y;
  if (p.batch == 1 && xs.is_contiguous()) {  // one product, no batch of one (batch-1 inference)
    const auto rows = xs.view({p.in_channels, p.out_height * p.out_width});
    y = bias_block.defined() ? at::addmm(bias_block.view({-1, 1}), w, rows) : at::mm(w, rows);
  } else {
    y = at::bmm(w.expand({p.batch, p.out_channels, p.in_channels}), channel_rows(xs));
    if (bias_block.defined()) y.add_(bias_block.view({1, -1, 1}));
  }
  return y.view({p.batch, p.out_channels, p.out_height, p.out_width});
}

at::Tensor conv1x1_grad_input(const at::Tensor& grad_out, const at::Tensor& w,
                              const ConvProblem& p, at::MemoryFormat fmt) {
  at::Tensor g;
  if (channels_last(grad_out)) {
    g = at::mm(pixel_rows(grad_out), w);
    g = g.view({p.batch, p.out_height, p.out_width, p.in_channels}).permute({0, 3, 1, 2});
  } else {
    g = at::bmm(w.t().expand({p.batch, p.in_channels, p.out_channels}), channel_rows(grad_out));
    g = g.view({p.batch, p.in_channels, p.out_height, p.out_width});
  }
  return unsubsample(g, p, fmt);
}

}  // namespace dvn::cpu
