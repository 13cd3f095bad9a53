#include "conv_im2col.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cstring>

namespace dvn::cpu {
namespace {

// im2col of output rows [r0, r1) and column-matrix rows [k0, k1) of one contiguous (C, H, W)
// image into contiguous (C * kh * kw, (r1 - r0) * Q) columns `cols`. Rows are copied in runs
// along the width (a memcpy per output row at stride 1), zeros where the window hangs over the
// padding. at::im2col, written for nn.Unfold, computes every element's source index and was
// measured 3x slower than the convolution's GEMM at these sizes.
template <typename T>
void unfold_rows(const T* x, T* cols, const ConvProblem& p, int64_t r0, int64_t r1, int64_t k0,
                 int64_t k1) {
  const int64_t kh = p.kernel_h, kw = p.kernel_w, h = p.height, w = p.width;
  const int64_t ow = p.out_width, span = (r1 - r0) * ow;
  const int64_t sh = p.stride[0], sw = p.stride[1], ph = p.padding[0], pw = p.padding[1];
  const int64_t dh = p.dilation[0], dw = p.dilation[1];
  for (int64_t row = k0; row < k1; ++row) {
    const int64_t c = row / (kh * kw), i = (row / kw) % kh, j = row % kw;
    const T* plane = x + c * h * w;
    T* out = cols + row * span;
    // Output columns whose input column lies inside the image: [lo, hi).
    const int64_t offset = j * dw - pw;  // input column of output column 0
    const int64_t lo = std::min(ow, std::max<int64_t>(0, (-offset + sw - 1) / sw));
    const int64_t hi = std::max(lo, std::min(ow, (w - offset + sw - 1) / sw));
    for (int64_t r = r0; r < r1; ++r, out += ow) {
      const int64_t y = r * sh - ph + i * dh;
      if (y < 0 || y >= h) {
        std::fill(out, out + ow, T(0));
        continue;
      }
      const T* src = plane + y * w;  // input column of output q: offset + q * sw
      std::fill(out, out + lo, T(0));
      if (sw == 1) {
        std::memcpy(out + lo, src + offset + lo, sizeof(T) * (hi - lo));
      } else {
        for (int64_t q = lo; q < hi; ++q) out[q] = src[offset + q * sw];
      }
      std::fill(out + hi, out + ow, T(0));
    }
  }
}

void unfold(const at::Tensor& x, at::Tensor& cols, const ConvProblem& p, int64_t r0, int64_t r1,
            int64_t k0, int64_t k1) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sliced_conv2d_im2col", [&] {
    unfold_rows(x.const_data_ptr<scalar_t>(), cols.mutable_data_ptr<scalar_t>(), p, r0, r1, k0,
                k1);
  });
}

// y (C_out_active, span) = weight[out][:, in] (flattened) @ cols (C_in_active * kh * kw, span)
// (+ bias): a GEMM per (output range, input range) pair on strided views of the full weight.
void multiply(at::Tensor y, const at::Tensor& cols, const at::Tensor& weight,
              const at::Tensor& bias_block, const ConvProblem& p) {
  const int64_t taps = p.kernel_h * p.kernel_w;
  const int64_t row_stride = weight.stride(0);  // C_in * kh * kw
  int64_t row = 0;
  for (int o = 0; o < p.out.count(); ++o) {
    auto y_rows = y.narrow(0, row, p.out.length(o));
    int64_t col = 0;
    for (int i = 0; i < p.in.count(); ++i) {
      // weight[out range o][in range i] flattened to (rows, channels * taps): a strided view.
      const auto w = weight.as_strided(
          {p.out.length(o), p.in.length(i) * taps}, {row_stride, 1},
          weight.storage_offset() + p.out.start(o) * row_stride + p.in.start(i) * taps);
      const auto c = cols.narrow(0, col * taps, p.in.length(i) * taps);
      if (i == 0) {
        at::mm_out(y_rows, w, c);
      } else {
        y_rows.addmm_(w, c);
      }
      col += p.in.length(i);
    }
    row += p.out.length(o);
  }
  if (bias_block.defined()) y.add_(bias_block.view({-1, 1}));
}

}  // namespace

bool im2col_applies(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight) {
  const auto dtype = x.scalar_type();
  return (dtype == at::kFloat || dtype == at::kDouble) && p.batch == 1 &&
         p.in_channels * p.height * p.width <= 20480 && !(p.kernel_h > 3 && p.kernel_w > 3) &&
         x.is_contiguous() && weight.is_contiguous();
}

at::Tensor im2col_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias_block, const ConvProblem& p) {
  const int64_t rows = p.in_channels * p.kernel_h * p.kernel_w;
  const int64_t pixels = p.out_height * p.out_width;
  auto y = at::empty({p.out_channels, pixels}, x.options());
  if (at::get_num_threads() > 1 && p.out_channels <= pixels && p.out_height > 1) {
    // Bands of output rows, one parallel region: each thread unfolds its band and multiplies
    // it on one thread, reading columns it has just written (and the whole weight block: the
    // cheaper side to read twice when it has no more rows than the image has pixels).
    // A band: at least ~32 K column elements.
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (rows * p.out_width));
    // The bands call ATen ops: OpenMP's threads take the caller's thread-local state (below
    // autograd, grad mode, ...), as at::launch does.
    const at::ThreadLocalState caller;
    at::parallel_for(0, p.out_height, grain, [&](int64_t r0, int64_t r1) {
      const at::ThreadLocalStateGuard state(caller);
      const int64_t span = (r1 - r0) * p.out_width;
      auto cols = at::empty({rows, span}, x.options());
      unfold(x, cols, p, r0, r1, 0, rows);
      multiply(y.narrow(1, r0 * p.out_width, span), cols, weight, bias_block, p);
    });
  } else {
    // Few pixels beside the output channels (or one thread): unfold once, in parallel over the
    // column matrix's rows, then GEMMs that split the output channels among the threads.
    auto cols = at::empty({rows, pixels}, x.options());
    at::parallel_for(0, rows, 16, [&](int64_t k0, int64_t k1) {
      unfold(x, cols, p, 0, p.out_height, k0, k1);  // raw pointers only: no thread-local state
    });
    multiply(y, cols, weight, bias_block, p);
  }
  return y.view({1, p.out_channels, p.out_height, p.out_width});
}

}  // namespace dvn::cpu
