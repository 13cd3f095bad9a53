// Host test of the CUDA kernels' index math (csrc/cuda/conv_gemm.h), no GPU and no torch:
// each pass computed as the kernels map it (A/B element offsets, tiles, split-K ranges, the
// wgrad reduction into the full weight gradient) must equal a direct convolution over random
// geometries, segment maps (one and two segments), weight strides and gradient layouts; every 16-byte run the
// loaders would issue as one vector copy must be contiguous, aligned and share one predicate.
//   g++ -std=c++17 -O1 -I csrc csrc/tests/test_conv_gemm_index.cpp -o t && ./t
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cuda/conv_gemm.h"

using dvn::ChannelRanges;
using namespace dvn::cuda;

namespace {

int failures = 0;
int checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok && failures++ < 20) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
  uint32_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return uint32_t(state >> 33);
  }
  int range(int lo, int hi) { return lo + int(next() % uint32_t(hi - lo + 1)); }  // [lo, hi]
  double value() { return double(next() % 2001) / 1000.0 - 1.0; }
};

// A random map of `total` compact channels into `full` weight channels: one or two segments,
// starts (and lengths) multiples of `align`.
ChannelRanges random_segments(Rng& rng, int total, int full, int align, bool two) {
  ChannelRanges s;
  if (!two || total < 2 * align) {
    s.start0 = align * rng.range(0, (full - total) / align);
    s.length0 = total;
    return s;
  }
  s.length0 = align * rng.range(1, total / align - 1);
  s.length1 = total - s.length0;
  const int gap = align * rng.range(1, (full - total) / align);  // >= 1 channel between them
  s.start0 = align * rng.range(0, (full - total - gap) / align);
  s.start1 = s.start0 + s.length0 + gap;
  return s;
}

struct Case {
  Geometry g;
  int full_out = 0, full_in = 0;
  WeightView w;       // weight
  bool grad_channels_last = false;  // layout of the dense full weight gradient
  int vec = 1;        // elements per 16-byte copy of the dtype this case stands for
  std::string name;
};

// Strides of a (K, C, R, S) tensor: contiguous, channels_last, or padded (a view of a bigger one).
void fill_strides(Rng& rng, int64_t* st, int k, int c, int r, int s, int kind) {
  (void)k;
  if (kind == 0) {  // KCRS contiguous
    st[3] = 1; st[2] = s; st[1] = int64_t(r) * s; st[0] = int64_t(c) * r * s;
  } else if (kind == 1) {  // channels_last: KRSC
    st[1] = 1; st[3] = c; st[2] = int64_t(s) * c; st[0] = int64_t(r) * s * c;
  } else {  // channels_last with every stride padded (still a multiple of 8)
    const int cp = c + 8 * rng.range(1, 2);
    st[1] = 1; st[3] = cp; st[2] = int64_t(s + 1) * cp; st[0] = int64_t(r + 1) * (s + 1) * cp;
  }
}

int64_t extent(const int64_t* st, int k, int c, int r, int s) {
  return (k - 1) * st[0] + (c - 1) * st[1] + (r - 1) * st[2] + (s - 1) * st[3] + 1;
}

Case random_case(Rng& rng, int index) {
  Case cs;
  Geometry& g = cs.g;
  const int vecs[] = {1, 2, 4, 8};
  cs.vec = vecs[rng.range(0, 3)];
  const int align = rng.range(0, 1) ? cs.vec : 1;  // channel counts/starts aligned or not
  g.n = rng.range(1, 2);
  g.r = rng.range(1, 3);
  g.s = rng.range(1, 3);
  g.stride_h = rng.range(1, 3);
  g.stride_w = rng.range(1, 2);
  g.dil_h = rng.range(1, 2);
  g.dil_w = rng.range(1, 2);
  g.pad_h = rng.range(0, 2);
  g.pad_w = rng.range(0, 2);
  g.h = rng.range(std::max(1, (g.r - 1) * g.dil_h + 1 - 2 * g.pad_h), 9);
  g.w = rng.range(std::max(1, (g.s - 1) * g.dil_w + 1 - 2 * g.pad_w), 8);
  g.p = (g.h + 2 * g.pad_h - g.dil_h * (g.r - 1) - 1) / g.stride_h + 1;
  g.q = (g.w + 2 * g.pad_w - g.dil_w * (g.s - 1) - 1) / g.stride_w + 1;
  g.c = align * rng.range(1, 12 / align + 1);
  g.k = align * rng.range(1, 12 / align + 1);
  const bool two_in = rng.range(0, 1), two_out = rng.range(0, 1);
  cs.full_in = g.c + align * rng.range(two_in ? 1 : 0, 3);
  cs.full_out = g.k + align * rng.range(two_out ? 1 : 0, 3);
  cs.w.in = random_segments(rng, g.c, cs.full_in, align, two_in);
  cs.w.out = random_segments(rng, g.k, cs.full_out, align, two_out);
  fill_strides(rng, cs.w.stride, cs.full_out, cs.full_in, g.r, g.s, rng.range(0, 2));
  cs.grad_channels_last = rng.range(0, 1);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "case %d: n=%d c=%d k=%d hw=%dx%d rs=%dx%d stride=%d,%d pad=%d,%d dil=%d,%d "
                "in=(%d,%d|%d,%d) out=(%d,%d|%d,%d) vec=%d",
                index, g.n, g.c, g.k, g.h, g.w, g.r, g.s, g.stride_h, g.stride_w, g.pad_h,
                g.pad_w, g.dil_h, g.dil_w, cs.w.in.start0, cs.w.in.length0, cs.w.in.start1,
                cs.w.in.length1, cs.w.out.start0, cs.w.out.length0, cs.w.out.start1,
                cs.w.out.length1, cs.vec);
  cs.name = buf;
  return cs;
}

bool close(double a, double b) { return std::fabs(a - b) <= 1e-9 * (1 + std::fabs(b)); }

// Direct convolutions over compact NHWC activations and the full strided weight.
struct Tensors {
  std::vector<double> x, w, gy;  // x: N H W C, w: full strided, gy: N P Q K
};

void direct(const Case& cs, const Tensors& t, std::vector<double>* y, std::vector<double>* gx,
            std::vector<double>* gw_block) {
  const Geometry& g = cs.g;
  y->assign(size_t(g.n) * g.p * g.q * g.k, 0.0);
  gx->assign(size_t(g.n) * g.h * g.w * g.c, 0.0);
  gw_block->assign(size_t(g.k) * g.c * g.r * g.s, 0.0);  // (k, c, r, s) compact
  for (int n = 0; n < g.n; ++n)
    for (int p = 0; p < g.p; ++p)
      for (int q = 0; q < g.q; ++q)
        for (int r = 0; r < g.r; ++r)
          for (int s = 0; s < g.s; ++s) {
            const int h = p * g.stride_h - g.pad_h + r * g.dil_h;
            const int w = q * g.stride_w - g.pad_w + s * g.dil_w;
            if (h < 0 || h >= g.h || w < 0 || w >= g.w) continue;
            for (int k = 0; k < g.k; ++k)
              for (int c = 0; c < g.c; ++c) {
                const double wt = t.w[weight_offset(cs.w, k, c, r, s)];
                const size_t xi = ((size_t(n) * g.h + h) * g.w + w) * g.c + c;
                const size_t yi = ((size_t(n) * g.p + p) * g.q + q) * g.k + k;
                (*y)[yi] += t.x[xi] * wt;
                (*gx)[xi] += t.gy[yi] * wt;
                (*gw_block)[((size_t(k) * g.c + c) * g.r + r) * g.s + s] += t.gy[yi] * t.x[xi];
              }
          }
}

// D = A * B as the kernels index it, over tiles of the GEMM padded to (bm, bn, bk), summing K
// tiles [kt_first, kt_last).
template <Pass P>
double gemm_element(const Case& cs, const Tensors& t, int32_t m, int32_t n, int64_t kt_first,
                    int64_t kt_last, int bk) {
  const double* a = P == Pass::Fprop ? t.x.data() : t.gy.data();
  const double* b = P == Pass::Wgrad ? t.x.data() : t.w.data();
  double sum = 0;
  for (int64_t kk = kt_first * bk; kk < kt_last * bk; ++kk) {
    int64_t ao = -1, bo = -1;
    const bool av = a_offset<P>(cs.g, m, int32_t(kk), &ao);
    const bool bv = b_offset<P>(cs.g, cs.w, int32_t(kk), n, &bo);
    if (av && bv) sum += a[ao] * b[bo];
  }
  return sum;
}

// Every aligned run of `vec` elements along the operand's contiguous dimension, over the padded
// GEMM: one predicate, consecutive offsets, first offset a multiple of vec.
template <Pass P, bool kOperandA>
void check_vector_runs(const Case& cs, int64_t rows, int64_t cols, bool runs_along_cols) {
  const int vec = cs.vec;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; j += runs_along_cols ? vec : 1) {
      if (!runs_along_cols && i % vec != 0) continue;
      int64_t first = 0;
      bool first_valid = false;
      for (int e = 0; e < vec; ++e) {
        const int32_t ri = int32_t(runs_along_cols ? i : i + e);
        const int32_t cj = int32_t(runs_along_cols ? j + e : j);
        int64_t off = -1;
        // rows/cols are (m, kk) for A and (kk, n) for B.
        const bool valid = kOperandA ? a_offset<P>(cs.g, ri, cj, &off)
                                     : b_offset<P>(cs.g, cs.w, ri, cj, &off);
        if (e == 0) {
          first = off;
          first_valid = valid;
          if (valid) expect(off % vec == 0, cs.name + ": vector run misaligned");
        } else {
          expect(valid == first_valid, cs.name + ": vector run mixes zeros and values");
          if (valid && first_valid) expect(off == first + e, cs.name + ": vector run not contiguous");
        }
      }
    }
}

void run_case(const Case& cs, Rng& rng) {
  const Geometry& g = cs.g;
  Tensors t;
  t.x.resize(size_t(g.n) * g.h * g.w * g.c);
  t.gy.resize(size_t(g.n) * g.p * g.q * g.k);
  t.w.assign(size_t(extent(cs.w.stride, cs.full_out, cs.full_in, g.r, g.s)),
             std::numeric_limits<double>::quiet_NaN());  // only the active block may be read
  for (auto& v : t.x) v = rng.value();
  for (auto& v : t.gy) v = rng.value();
  for (int k = 0; k < g.k; ++k)
    for (int c = 0; c < g.c; ++c)
      for (int r = 0; r < g.r; ++r)
        for (int s = 0; s < g.s; ++s) t.w[weight_offset(cs.w, k, c, r, s)] = rng.value();
  std::vector<double> y, gx, gw_block;
  direct(cs, t, &y, &gx, &gw_block);

  const int bm = 16, bn = 8, bk = 8;  // small tiles: many partial tiles and splits
  // fprop and dgrad: D[m][n] at d_offset of the compact NHWC output.
  {
    const GemmShape sh = gemm_shape(Pass::Fprop, g);
    expect(sh.m == int64_t(g.n) * g.p * g.q && sh.n == g.k && sh.k == int64_t(g.r) * g.s * g.c,
           cs.name + ": fprop GEMM shape");
    const int64_t kt = (sh.k + bk - 1) / bk;
    std::vector<double> out(y.size(), std::numeric_limits<double>::quiet_NaN());
    for (int32_t m = 0; m < (sh.m + bm - 1) / bm * bm; ++m)
      for (int32_t n = 0; n < (sh.n + bn - 1) / bn * bn; ++n)
        if (m < sh.m && n < sh.n) out[d_offset(sh.n, m, n)] = gemm_element<Pass::Fprop>(cs, t, m, n, 0, kt, bk);
    for (size_t i = 0; i < y.size(); ++i) expect(close(out[i], y[i]), cs.name + ": fprop");
  }
  {
    const GemmShape sh = gemm_shape(Pass::Dgrad, g);
    const int64_t kt = (sh.k + bk - 1) / bk;
    std::vector<double> out(gx.size(), std::numeric_limits<double>::quiet_NaN());
    for (int32_t m = 0; m < sh.m; ++m)
      for (int32_t n = 0; n < sh.n; ++n)
        out[d_offset(sh.n, m, n)] = gemm_element<Pass::Dgrad>(cs, t, m, n, 0, kt, bk);
    for (size_t i = 0; i < gx.size(); ++i) expect(close(out[i], gx[i]), cs.name + ": dgrad");
  }
  // wgrad: split-K partials, then the reduction into the dense full gradient.
  {
    const GemmShape sh = gemm_shape(Pass::Wgrad, g);
    const int64_t kt = (sh.k + bk - 1) / bk;
    const int64_t tiles = ((sh.m + bm - 1) / bm) * ((sh.n + bn - 1) / bn);
    const SplitK split = choose_split_k(sh.k, bk, tiles, rng.range(1, 200), rng.range(1, 3),
                                        rng.range(1, 64));
    expect(split.splits >= 1 && int64_t(split.splits) * split.tiles_per_split >= kt &&
               int64_t(split.splits - 1) * split.tiles_per_split < kt,
           cs.name + ": split-K covers every K tile, no split empty");
    std::vector<double> ws(size_t(split.splits) * sh.m * sh.n, 0.0);
    for (int z = 0; z < split.splits; ++z) {
      int64_t first, last;
      split_k_range(kt, split.tiles_per_split, z, &first, &last);
      expect(first < last && last <= kt, cs.name + ": split range empty or past the last K tile");
      for (int32_t m = 0; m < sh.m; ++m)
        for (int32_t n = 0; n < sh.n; ++n)
          ws[(size_t(z) * sh.m + m) * sh.n + n] =
              gemm_element<Pass::Wgrad>(cs, t, m, n, first, last, bk);
    }
    // The reduction writes the whole dense full gradient in memory order.
    const bool channels_last = cs.grad_channels_last;
    std::vector<double> gw(size_t(cs.full_out) * cs.full_in * g.r * g.s, -12345.0);
    for (size_t i = 0; i < gw.size(); ++i) {
      const int64_t src = wgrad_source(g, cs.w.out, cs.w.in, cs.full_out, cs.full_in,
                                       channels_last, int64_t(i));
      double sum = 0;
      if (src >= 0)
        for (int z = 0; z < split.splits; ++z) sum += ws[size_t(z) * sh.m * sh.n + size_t(src)];
      gw[i] = sum;
    }
    WeightView dense;  // strides of the dense gradient, to read it back by (k, c, r, s)
    fill_strides(rng, dense.stride, cs.full_out, cs.full_in, g.r, g.s, channels_last ? 1 : 0);
    for (int k = 0; k < cs.full_out; ++k)
      for (int c = 0; c < cs.full_in; ++c) {
        WeightView id;  // identity maps: physical channels
        id.out = {0, cs.full_out, 0, 0};
        id.in = {0, cs.full_in, 0, 0};
        for (int i = 0; i < 4; ++i) id.stride[i] = dense.stride[i];
        const int32_t kc = cs.w.out.compact(k), cc = cs.w.in.compact(c);
        for (int r = 0; r < g.r; ++r)
          for (int s = 0; s < g.s; ++s) {
            const double got = gw[size_t(weight_offset(id, k, c, r, s))];
            const double want =
                kc < 0 || cc < 0 ? 0.0 : gw_block[((size_t(kc) * g.c + cc) * g.r + r) * g.s + s];
            expect(close(got, want), cs.name + ": wgrad (full gradient)");
          }
      }
    for (int c = 0; c < g.c; ++c) expect(cs.w.in.compact(cs.w.in.physical(c)) == c,
                                         cs.name + ": compact() inverts physical()");
  }
  // Vector runs, where the launch-time checks allow them (pointer alignment assumed).
  const int pad = 8;  // GEMM padded past its edges: tiles overhang
  if (a_vectorizable(Pass::Fprop, g, 0, cs.vec)) {
    const GemmShape sh = gemm_shape(Pass::Fprop, g);
    check_vector_runs<Pass::Fprop, true>(cs, sh.m + pad, sh.k + pad * cs.vec, true);
  }
  if (a_vectorizable(Pass::Dgrad, g, 0, cs.vec)) {
    const GemmShape sh = gemm_shape(Pass::Dgrad, g);
    check_vector_runs<Pass::Dgrad, true>(cs, sh.m + pad, sh.k + pad * cs.vec, true);
  }
  if (a_vectorizable(Pass::Wgrad, g, 0, cs.vec)) {  // A runs along M (output channels)
    const GemmShape sh = gemm_shape(Pass::Wgrad, g);
    check_vector_runs<Pass::Wgrad, true>(cs, sh.m + pad * cs.vec, sh.k + pad, false);
  }
  if (b_vectorizable(Pass::Fprop, g, cs.w, 0, cs.vec)) {  // B runs along K
    const GemmShape sh = gemm_shape(Pass::Fprop, g);
    check_vector_runs<Pass::Fprop, false>(cs, sh.k + pad * cs.vec, sh.n + pad, false);
  }
  if (b_vectorizable(Pass::Dgrad, g, cs.w, 0, cs.vec)) {  // B runs along N
    const GemmShape sh = gemm_shape(Pass::Dgrad, g);
    check_vector_runs<Pass::Dgrad, false>(cs, sh.k + pad, sh.n + pad * cs.vec, true);
  }
  if (b_vectorizable(Pass::Wgrad, g, cs.w, 0, cs.vec)) {
    const GemmShape sh = gemm_shape(Pass::Wgrad, g);
    check_vector_runs<Pass::Wgrad, false>(cs, sh.k + pad, sh.n + pad * cs.vec, true);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  Rng rng(2024);
  int vector_cases = 0;
  for (int i = 0; i < cases; ++i) {
    const Case cs = random_case(rng, i);
    vector_cases += b_vectorizable(Pass::Fprop, cs.g, cs.w, 0, cs.vec) ? 1 : 0;
    run_case(cs, rng);
  }
  // The checks must have exercised the vector paths of the weight, not only scalar ones.
  expect(vector_cases >= cases / 20, "too few cases with vectorizable weights");
  // Not vectorizable: unaligned pointers, odd channel counts, NCHW weights.
  Geometry g;
  g.c = 16; g.k = 16;
  WeightView kcrs;
  kcrs.stride[0] = 144; kcrs.stride[1] = 9; kcrs.stride[2] = 3; kcrs.stride[3] = 1;
  kcrs.in = {0, 16, 0};
  expect(!a_vectorizable(Pass::Fprop, g, 8, 8), "unaligned pointer is not vectorized");
  expect(!b_vectorizable(Pass::Fprop, g, kcrs, 0, 8), "KCRS weight is not vectorized");
  g.c = 12;
  expect(!a_vectorizable(Pass::Fprop, g, 0, 8), "12 channels do not make runs of 8");
  if (failures == 0) std::printf("conv_gemm index tests passed (%d cases, %d checks)\n", cases, checks);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
