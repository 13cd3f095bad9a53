// Index math of the sliced convolution as three implicit GEMMs (CUTLASS's mapping), shared by
// the CUDA kernels and a host test (csrc/tests/test_conv_gemm_index.cpp) that checks it against
// a direct convolution on the CPU. Free of torch and CUDA headers: plain integers only.
//
// Activations (x, y, grad_x, grad_y) are compact and dense NHWC (channels innermost); the
// weight and its gradient are the FULL (C_out, C_in, R, S) tensors with arbitrary element
// strides, addressed through their channel ranges (compact channel -> weight channel).
//
// Grouped convolutions run one GEMM per active group (the launch's grid z): g.c and g.k are a
// group's input and output channels, g.groups the active groups, so a pixel of the activations
// holds g.c * g.groups (x) or g.k * g.groups (y) channels. The kernel points A, B and D at its
// group's channels and sets WeightView::out_base; the weight's second dimension is the group's
// input channels (an identity input map).
//
//   pass   GEMM M      GEMM N      GEMM K      A[m][k]            B[k][n]
//   fprop  N*P*Q       K (out)     R*S*C       x (im2col)         weight[n][c][r][s]
//   dgrad  N*H*W       C (in)      R*S*K       grad_y (col2im)    weight[k][n][r][s]
//   wgrad  K (out)     R*S*C       N*P*Q       grad_y[pixel][m]   x (im2col)
//
// GEMM K is ordered (r, s, channel) with the channel innermost, so runs of channels are
// contiguous in NHWC memory (16-byte vector loads); wgrad splits its K (pixels) across CTAs.
#pragma once

#include <cstdint>

#include "../channel_ranges.h"

namespace dvn::cuda {

enum class Pass : int { Fprop = 0, Dgrad = 1, Wgrad = 2 };

struct Geometry {
  int32_t n = 0, h = 0, w = 0;  // batch, input height and width
  int32_t c = 0, k = 0;         // compact input and output channels (of one group)
  int32_t p = 0, q = 0;         // output height and width
  int32_t r = 0, s = 0;         // kernel height and width
  int32_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int32_t groups = 1;           // active groups (grouped convolutions; 1 otherwise)
};

// Channels per pixel of the compact NHWC input and output tensors (all active groups).
DVN_HD int64_t c_pitch(const Geometry& g) { return int64_t(g.c) * g.groups; }
DVN_HD int64_t k_pitch(const Geometry& g) { return int64_t(g.k) * g.groups; }

// The full weight (or its gradient): element strides of (C_out, C_in, R, S) and the active
// channel ranges of each side (compact channel -> weight channel: ChannelRanges::physical);
// out_base: the compact output channel of the GEMM's first column (a group's first).
struct WeightView {
  int64_t stride[4] = {0, 0, 0, 0};
  ChannelRanges out, in;
  int32_t out_base = 0;
};

DVN_HD int64_t weight_offset(const WeightView& wv, int32_t k, int32_t c, int32_t r, int32_t s) {
  return int64_t(wv.out.physical(wv.out_base + k)) * wv.stride[0] +
         int64_t(wv.in.physical(c)) * wv.stride[1] + int64_t(r) * wv.stride[2] +
         int64_t(s) * wv.stride[3];
}

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
};

DVN_HD GemmShape gemm_shape(Pass pass, const Geometry& g) {
  const int64_t npq = int64_t(g.n) * g.p * g.q, nhw = int64_t(g.n) * g.h * g.w;
  const int64_t rs = int64_t(g.r) * g.s;
  switch (pass) {
    case Pass::Fprop: return {npq, g.k, rs * g.c};
    case Pass::Dgrad: return {nhw, g.c, rs * g.k};
    default: return {g.k, rs * g.c, npq};
  }
}

// Where one group's GEMM starts in each operand (element offsets), for grouped convolutions
// (the launch's grid z picks the group): A and D at the group's first channel of the compact
// NHWC tensors, B (wgrad: x) likewise, the weight through WeightView::out_base = out. The wgrad
// workspace holds the groups' (K x N) blocks one after another: row group * K + m.
struct GroupBase {
  int64_t a = 0, b = 0, d = 0;
  int32_t out = 0;
};

template <Pass P>
DVN_HD GroupBase group_base(const Geometry& g, int32_t group) {
  GroupBase o;
  o.out = group * g.k;
  if constexpr (P == Pass::Fprop) {
    o.a = int64_t(group) * g.c;
    o.d = int64_t(group) * g.k;
  } else if constexpr (P == Pass::Dgrad) {
    o.a = int64_t(group) * g.k;
    o.d = int64_t(group) * g.c;
  } else {
    o.a = int64_t(group) * g.k;
    o.b = int64_t(group) * g.c;
    o.d = int64_t(group) * g.k * gemm_shape(P, g).n;
  }
  return o;
}

// Each element address is split into a part fixed by the element's M (A) or N (B) index, which a
// thread computes once per tile row/column it loads, and a part moving with the GEMM K index,
// computed per K tile. `Fixed` holds the first; its fields mean what each pass says below.
struct Fixed {
  int64_t base = 0;
  int32_t y = 0, x = 0;
  bool valid = false;
};

template <Pass P>
DVN_HD Fixed a_fixed(const Geometry& g, int32_t m) {
  Fixed f;
  if constexpr (P == Pass::Fprop) {
    // m = output pixel (n, p, q): base = n, (y, x) = its window's top-left input pixel.
    f.valid = m < g.n * g.p * g.q;
    const int32_t q = m % g.q, np = m / g.q, p = np % g.p, n = np / g.p;
    f.base = n;
    f.y = p * g.stride_h - g.pad_h;
    f.x = q * g.stride_w - g.pad_w;
  } else if constexpr (P == Pass::Dgrad) {
    // m = input pixel (n, h, w): base = n, (y, x) = (h + pad_h, w + pad_w).
    f.valid = m < g.n * g.h * g.w;
    const int32_t w = m % g.w, nh = m / g.w, h = nh % g.h, n = nh / g.h;
    f.base = n;
    f.y = h + g.pad_h;
    f.x = w + g.pad_w;
  } else {
    // m = output channel: base = m.
    f.valid = m < g.k;
    f.base = m;
  }
  return f;
}

// Element (m, kk) of A from a_fixed(m): its element offset into A's tensor; false where it is a
// zero (padding, a stride hole of dgrad, or outside the GEMM). kk must be >= 0.
template <Pass P>
DVN_HD bool a_moving(const Geometry& g, const Fixed& f, int32_t kk, int64_t* off) {
  if constexpr (P == Pass::Fprop) {
    // A = im2col(x): kk = (r, s, c); x is NHWC with g.c channels.
    if (!f.valid || kk >= g.r * g.s * g.c) return false;
    const int32_t c = kk % g.c, rs = kk / g.c, s = rs % g.s, r = rs / g.s;
    const int32_t h = f.y + r * g.dil_h, w = f.x + s * g.dil_w;
    if (h < 0 || h >= g.h || w < 0 || w >= g.w) return false;
    *off = ((f.base * g.h + h) * g.w + w) * c_pitch(g) + c;
    return true;
  } else if constexpr (P == Pass::Dgrad) {
    // A = grad_y gathered for the input pixel, kk = (r, s, k): the output pixel (p, q) with
    // p * stride - pad + r * dil == h, when it exists.
    if (!f.valid || kk >= g.r * g.s * g.k) return false;
    const int32_t k = kk % g.k, rs = kk / g.k, s = rs % g.s, r = rs / g.s;
    const int32_t ph = f.y - r * g.dil_h, pw = f.x - s * g.dil_w;
    if (ph < 0 || pw < 0 || ph % g.stride_h != 0 || pw % g.stride_w != 0) return false;
    const int32_t p = ph / g.stride_h, q = pw / g.stride_w;
    if (p >= g.p || q >= g.q) return false;
    *off = ((f.base * g.p + p) * g.q + q) * k_pitch(g) + k;
    return true;
  } else {
    // A = grad_y^T: kk = output pixel (n, p, q); grad_y is NPQK.
    if (!f.valid || kk >= g.n * g.p * g.q) return false;
    *off = int64_t(kk) * k_pitch(g) + f.base;
    return true;
  }
}

template <Pass P>
DVN_HD Fixed b_fixed(const Geometry& g, const WeightView& wv, int32_t n) {
  Fixed f;
  if constexpr (P == Pass::Fprop) {
    // n = output channel: base = its weight row.
    f.valid = n < g.k;
    if (f.valid) f.base = int64_t(wv.out.physical(wv.out_base + n)) * wv.stride[0];
  } else if constexpr (P == Pass::Dgrad) {
    // n = input channel: base = its weight column.
    f.valid = n < g.c;
    if (f.valid) f.base = int64_t(wv.in.physical(n)) * wv.stride[1];
  } else {
    // n = (r, s, c): base = c, (y, x) = the tap's offset from a window's top-left pixel.
    f.valid = n < g.r * g.s * g.c;
    const int32_t c = n % g.c, rs = n / g.c, s = rs % g.s, r = rs / g.s;
    f.base = c;
    f.y = r * g.dil_h - g.pad_h;
    f.x = s * g.dil_w - g.pad_w;
  }
  return f;
}

// Element (kk, n) of B from b_fixed(n): its element offset into the weight (fprop, dgrad) or x
// (wgrad); false where it is a zero.
template <Pass P>
DVN_HD bool b_moving(const Geometry& g, const WeightView& wv, const Fixed& f, int32_t kk,
                     int64_t* off) {
  if constexpr (P == Pass::Fprop) {
    // kk = (r, s, c).
    if (!f.valid || kk >= g.r * g.s * g.c) return false;
    const int32_t c = kk % g.c, rs = kk / g.c, s = rs % g.s, r = rs / g.s;
    *off = f.base + int64_t(wv.in.physical(c)) * wv.stride[1] + int64_t(r) * wv.stride[2] +
           int64_t(s) * wv.stride[3];
    return true;
  } else if constexpr (P == Pass::Dgrad) {
    // kk = (r, s, k).
    if (!f.valid || kk >= g.r * g.s * g.k) return false;
    const int32_t k = kk % g.k, rs = kk / g.k, s = rs % g.s, r = rs / g.s;
    *off = f.base + int64_t(wv.out.physical(wv.out_base + k)) * wv.stride[0] +
           int64_t(r) * wv.stride[2] + int64_t(s) * wv.stride[3];
    return true;
  } else {
    // B = im2col(x)^T: kk = output pixel (n, p, q).
    if (!f.valid || kk >= g.n * g.p * g.q) return false;
    const int32_t q = kk % g.q, np = kk / g.q, p = np % g.p, b = np / g.p;
    const int32_t h = p * g.stride_h + f.y, w = q * g.stride_w + f.x;
    if (h < 0 || h >= g.h || w < 0 || w >= g.w) return false;
    *off = ((int64_t(b) * g.h + h) * g.w + w) * c_pitch(g) + f.base;
    return true;
  }
}

// Element (m, kk) of A and (kk, n) of B in one call (the element-wise loads and the tests).
template <Pass P>
DVN_HD bool a_offset(const Geometry& g, int32_t m, int32_t kk, int64_t* off) {
  return a_moving<P>(g, a_fixed<P>(g, m), kk, off);
}

template <Pass P>
DVN_HD bool b_offset(const Geometry& g, const WeightView& wv, int32_t kk, int32_t n,
                     int64_t* off) {
  return b_moving<P>(g, wv, b_fixed<P>(g, wv, n), kk, off);
}

// Element offset of D[m][n] in the compact NHWC output (fprop: y, dgrad: grad_x; `pitch` its
// channels per pixel); wgrad writes D into a (splits, M x groups, N) workspace instead, reduced
// through wgrad_source.
DVN_HD int64_t d_offset(int64_t pitch, int32_t m, int32_t n) { return int64_t(m) * pitch + n; }

// wgrad's reduction walks the dense full weight gradient (C_out, C_in, R, S), stored contiguous
// (KCRS) or channels_last (KRSC), element by element in memory order: element `i` takes
// D[m][n] at m * N + n (the value this returns), or zero where it is outside the active block
// (-1). So every element of the full gradient is written exactly once, by one kernel. Grouped:
// C_in is a group's input channels (identity input map) and m the compact output channel.
DVN_HD int64_t wgrad_source(const Geometry& g, const ChannelRanges& out, const ChannelRanges& in,
                            int32_t full_out, int32_t full_in, bool channels_last, int64_t i) {
  int64_t k, c, r, s;
  if (channels_last) {
    c = i % full_in; i /= full_in;
    s = i % g.s; i /= g.s;
    r = i % g.r; k = i / g.r;
  } else {
    s = i % g.s; i /= g.s;
    r = i % g.r; i /= g.r;
    c = i % full_in; k = i / full_in;
  }
  if (k >= full_out) return -1;
  const int32_t kc = out.compact(int32_t(k)), cc = in.compact(int32_t(c));
  if (kc < 0 || cc < 0) return -1;
  return int64_t(kc) * (int64_t(g.r) * g.s * g.c) + (r * g.s + s) * g.c + cc;
}

// --- Vector loads ----------------------------------------------------------------------------
// Tiles are loaded in runs of `vec` elements along each operand's contiguous dimension: A's K
// for fprop/dgrad, A's M for wgrad, B's K for fprop, B's N for dgrad and wgrad. A run starts at
// a multiple of `vec` (tiles are multiples of it), so it is one aligned 16-byte access exactly
// when the channel count that dimension runs over (innermost in the GEMM index) is a multiple
// of `vec` and the base pointer is 16-byte aligned; the run then shares one pixel / (r, s),
// hence one zero-or-valid predicate. For the weight it also needs unit channel stride and
// segments that start and end on multiples of `vec`.

// Vector loads of A (activations, dense NHWC compact): the channels A's run goes over.
inline bool a_vectorizable(Pass pass, const Geometry& g, uintptr_t ptr, int32_t vec) {
  const int32_t channels = pass == Pass::Fprop ? g.c : g.k;
  return vec > 1 && ptr % 16 == 0 && channels % vec == 0;
}

// Vector loads of B: the weight in fprop/dgrad (runs along input channels), x in wgrad.
inline bool b_vectorizable(Pass pass, const Geometry& g, const WeightView& wv, uintptr_t ptr,
                           int32_t vec) {
  if (vec <= 1 || ptr % 16 != 0 || g.c % vec != 0) return false;
  if (pass == Pass::Wgrad) return true;
  return wv.stride[1] == 1 && wv.stride[0] % vec == 0 && wv.stride[2] % vec == 0 &&
         wv.stride[3] % vec == 0 && wv.in.aligned(vec);
}

// --- Split-K of wgrad --------------------------------------------------------------------------
// GEMM K (N*P*Q) is cut into `splits` ranges of whole K tiles; split z covers K tiles
// [z * tiles_per_split, min((z + 1) * tiles_per_split, k_tiles)). No range is empty.
struct SplitK {
  int32_t splits = 1, tiles_per_split = 0;
};

// `units` (K tiles, or pixels) cut into at most `max_splits` ranges of at least `min_per_split`
// units each, enough for about two waves of `ctas_per_split` CTAs per range.
inline SplitK balanced_split(int64_t units, int64_t ctas_per_split, int32_t sm_count,
                             int64_t min_per_split, int32_t max_splits) {
  if (units <= 0) return {1, 0};
  int64_t want = (2 * int64_t(sm_count) + ctas_per_split - 1) / ctas_per_split;
  const int64_t most = units / (min_per_split > 0 ? min_per_split : 1);
  if (want > most) want = most;
  if (want > max_splits) want = max_splits;
  if (want < 1) want = 1;
  const int64_t per = (units + want - 1) / want;
  return {int32_t((units + per - 1) / per), int32_t(per)};
}

inline SplitK choose_split_k(int64_t gemm_k, int32_t block_k, int64_t output_tiles,
                             int32_t sm_count, int32_t min_tiles_per_split, int32_t max_splits) {
  return balanced_split((gemm_k + block_k - 1) / block_k, output_tiles, sm_count,
                        min_tiles_per_split, max_splits);
}

// Depthwise wgrad (depthwise_kernel.cuh) splits the output pixels instead of K tiles: about two
// waves of CTAs, each with at least `min_pixels` pixels, at most `max_splits` splits;
// tiles_per_split counts pixels here.
inline SplitK depthwise_split(const Geometry& g, int sm_count, int64_t min_pixels,
                              int32_t max_splits) {
  return balanced_split(int64_t(g.n) * g.p * g.q, ((k_pitch(g) + 31) / 32) * g.r * g.s,
                        sm_count, min_pixels, max_splits);
}

DVN_HD void split_k_range(int64_t k_tiles, int32_t tiles_per_split, int32_t z, int64_t* first,
                          int64_t* last) {
  *first = int64_t(z) * tiles_per_split;
  const int64_t end = *first + tiles_per_split;
  *last = end < k_tiles ? end : k_tiles;
}

}  // namespace dvn::cuda
