// The CUDA kernels' own code (csrc/cuda/conv_gemm_kernel.cuh) run on the CPU through the shim
// of cuda_emulation.h: 128 std::threads per CTA, barriers, cp.async landing at once or only
// when waited for, WMMA fragments with their alignment rules. Every pass (forward with bias,
// grad input, split-K grad weight and its reduction into the full gradient) over random
// geometries, one and two segments per side, weight strides, scalar and 16-byte vector loads,
// for the tensor-core path (float32 as TF32 with exact products, bfloat16) and the FMA path
// (float32, float64), grouped convolutions (the group as grid z) and the direct depthwise
// kernels, against a direct convolution in float64. Shared memory is poisoned
// (NaN bytes) before every CTA, outputs before every pass.
//   g++ -std=c++17 -O2 -pthread -I csrc -DDVN_EMULATE_CUDA csrc/tests/test_conv_gemm_emulated.cpp
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "cuda/depthwise_kernel.cuh"

namespace dvn::cuda::detail {
// The kernels' `extern __shared__` buffer: one CTA runs at a time.
alignas(128) unsigned char smem_raw[160 * 1024];
}  // namespace dvn::cuda::detail

using dvn::ChannelRanges;
using namespace dvn::cuda;

namespace {

int failures = 0;
int vector_passes = 0, passes = 0, split_passes = 0;  // coverage, checked at the end
int small_tile_passes = 0;  // passes that ran 64-row M tiles (block_m)
int grouped_passes = 0, depthwise_passes = 0;

void expect(bool ok, const std::string& what) {
  if (!ok && failures++ < 20) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 2862933555777941757ULL + 3037000493ULL) {}
  uint32_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return uint32_t(state >> 33);
  }
  int range(int lo, int hi) { return lo + int(next() % uint32_t(hi - lo + 1)); }
  double value() { return double(next() % 2001) / 1000.0 - 1.0; }
};

template <typename T> T from_double(double v);
template <> float from_double<float>(double v) { return float(v); }
template <> double from_double<double>(double v) { return v; }
template <> __nv_bfloat16 from_double<__nv_bfloat16>(double v) { return __float2bfloat16_rn(float(v)); }
double to_double(float v) { return v; }
double to_double(double v) { return v; }
double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
T poison_value() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __nv_bfloat16{0x7fc0};
  } else {
    return T(std::nan(""));
  }
}

// Runs one CTA of 128 threads per block of the grid, one block after another.
template <typename Kernel>
void run_grid(dim3 grid, Kernel kernel) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(detail::smem_raw, 0xff, sizeof detail::smem_raw);  // NaN bytes
        emulation::Barrier barrier(kThreads);
        emulation::block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < unsigned(kThreads); ++t) {
          threads.emplace_back([=] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            emulation::reset_thread();
            kernel();
          });
        }
        for (auto& th : threads) th.join();
      }
}

template <typename T, Pass P, bool kTensorCores, int BM>
void run_tile(const ConvGemmParams& p) {
  const GemmShape s = gemm_shape(P, p.g);
  const dim3 grid{unsigned((s.m + BM - 1) / BM), unsigned((s.n + kBlockN - 1) / kBlockN),
                  unsigned(p.g.groups * (P == Pass::Wgrad ? p.split.splits : 1))};
  run_grid(grid, [&] { detail::conv_gemm_kernel<T, P, kTensorCores, BM>(p); });
}

// As the launcher does: the M tile that block_m chooses for the problem.
template <typename T, Pass P, bool kTensorCores>
void run_pass(const ConvGemmParams& p) {
  if (block_m(P, p.g) == kBlockMSmall) {
    ++small_tile_passes;
    run_tile<T, P, kTensorCores, kBlockMSmall>(p);
  } else {
    run_tile<T, P, kTensorCores, kBlockMLarge>(p);
  }
}

// As launch_depthwise does: the direct depthwise kernel of pass P.
template <typename T, Pass P>
void run_depthwise(const ConvGemmParams& p) {
  const Geometry& g = p.g;
  if constexpr (P == Pass::Wgrad) {
    const dim3 grid{unsigned((k_pitch(g) + 31) / 32), unsigned(g.r * g.s),
                    unsigned(p.split.splits)};
    run_grid(grid, [&] { detail::depthwise_wgrad_kernel<T>(p); });
  } else {
    const int64_t n = P == Pass::Fprop ? int64_t(g.n) * g.p * g.q * k_pitch(g)
                                       : int64_t(g.n) * g.h * g.w * c_pitch(g);
    const dim3 grid{unsigned((n + kThreads - 1) / kThreads), 1, 1};
    if constexpr (P == Pass::Fprop) {
      run_grid(grid, [&] { detail::depthwise_fprop_kernel<T>(p); });
    } else {
      run_grid(grid, [&] { detail::depthwise_dgrad_kernel<T>(p); });
    }
  }
}

ChannelRanges random_segments(Rng& rng, int total, int full, int align, bool two) {
  ChannelRanges s;
  if (!two || total < 2 * align) {
    s.start0 = align * rng.range(0, (full - total) / align);
    s.length0 = total;
    return s;
  }
  s.length0 = align * rng.range(1, total / align - 1);
  s.length1 = total - s.length0;
  const int gap = align * rng.range(1, (full - total) / align);
  s.start0 = align * rng.range(0, (full - total - gap) / align);
  s.start1 = s.start0 + s.length0 + gap;
  return s;
}

// Case `index` is ungrouped (index % 3 == 0), grouped (1) or depthwise (2: one input channel
// per group, a channel multiplier of 1 or 2). Grouped cases hold whole groups in one or two
// ranges; the weight's second dimension is then a group's input channels.
template <typename T, bool kTensorCores>
void run_case(Rng& rng, int index) {
  constexpr int vec = 16 / int(sizeof(T));
  const int mode = index % 3;
  const bool grouped = mode != 0, dw = mode == 2;
  Geometry g;
  const int align = rng.range(0, 2) ? vec : 1;
  g.n = rng.range(1, 3);
  g.r = rng.range(1, 3);
  g.s = rng.range(1, 3);
  g.stride_h = rng.range(1, 2);
  g.stride_w = rng.range(1, 3);
  g.dil_h = rng.range(1, 2);
  g.dil_w = rng.range(1, 2);
  g.pad_h = rng.range(0, 2);
  g.pad_w = rng.range(0, 2);
  g.h = rng.range(std::max(1, (g.r - 1) * g.dil_h + 1 - 2 * g.pad_h), 12);
  g.w = rng.range(std::max(1, (g.s - 1) * g.dil_w + 1 - 2 * g.pad_w), 13);
  g.p = (g.h + 2 * g.pad_h - g.dil_h * (g.r - 1) - 1) / g.stride_h + 1;
  g.q = (g.w + 2 * g.pad_w - g.dil_w * (g.s - 1) - 1) / g.stride_w + 1;
  const bool two_in = rng.range(0, 1), two_out = rng.range(0, 1);
  int full_in, full_out;
  WeightView wv;
  if (!grouped) {
    g.c = align * rng.range(1, std::max(1, 20 / align));
    g.k = align * rng.range(1, std::max(1, 70 / align));  // > 64: two N tiles in fprop
    full_in = g.c + align * rng.range(two_in ? 1 : 0, 2);
    full_out = g.k + align * rng.range(two_out ? 1 : 0, 2);
    wv.in = random_segments(rng, g.c, full_in, align, two_in);
    wv.out = random_segments(rng, g.k, full_out, align, two_out);
  } else {
    // Active groups in one or two ranges of the full groups, the same on both sides.
    g.c = dw ? 1 : align * rng.range(1, std::max(1, 12 / align));
    g.k = dw ? rng.range(1, 2) : align * rng.range(1, std::max(1, 20 / align));
    g.groups = dw ? rng.range(1, 40) : rng.range(1, 3);
    const int full_groups = g.groups + rng.range(two_out ? 1 : 0, 2);
    const ChannelRanges groups = random_segments(rng, g.groups, full_groups, 1, two_out);
    full_in = g.c;
    full_out = full_groups * g.k;
    wv.in = {0, g.c, 0, 0};
    wv.out = {groups.start0 * g.k, groups.length0 * g.k, groups.start1 * g.k,
              groups.length1 * g.k};
  }
  const bool w_channels_last = rng.range(0, 1);
  const int64_t r = g.r, s = g.s, ci = full_in;
  if (w_channels_last) {
    wv.stride[0] = r * s * ci; wv.stride[1] = 1; wv.stride[2] = s * ci; wv.stride[3] = ci;
  } else {
    wv.stride[0] = ci * r * s; wv.stride[1] = r * s; wv.stride[2] = s; wv.stride[3] = 1;
  }
  const bool gw_channels_last = rng.range(0, 1);
  char name[256];
  std::snprintf(name, sizeof name,
                "case %d (%s%s%s): groups=%d n=%d c=%d k=%d hw=%dx%d rs=%dx%d stride=%d,%d pad=%d,%d "
                "dil=%d,%d in=(%d,%d|%d,%d) out=(%d,%d|%d,%d) w_cl=%d",
                index, sizeof(T) == 2 ? "bf16" : sizeof(T) == 4 ? "f32" : "f64",
                kTensorCores ? " tc" : " fma", dw ? " depthwise" : "", g.groups, g.n, g.c, g.k, g.h, g.w, g.r, g.s, g.stride_h,
                g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w, wv.in.start0, wv.in.length0,
                wv.in.start1, wv.in.length1, wv.out.start0, wv.out.length0, wv.out.start1,
                wv.out.length1, int(w_channels_last));

  // Inputs, rounded to T; the reference sees the rounded values.
  const int kp = int(k_pitch(g)), cp = int(c_pitch(g));  // channels per pixel of y and x
  const size_t nx = size_t(g.n) * g.h * g.w * cp, ny = size_t(g.n) * g.p * g.q * kp;
  const size_t nw = size_t(full_out) * full_in * g.r * g.s;
  std::vector<T> x(nx), gy(ny), w(nw, poison_value<T>()), bias(full_out);
  for (auto& v : x) v = from_double<T>(rng.value());
  for (auto& v : gy) v = from_double<T>(rng.value());
  for (auto& v : bias) v = from_double<T>(rng.value());
  for (int k = 0; k < kp; ++k)
    for (int c = 0; c < g.c; ++c)
      for (int rr = 0; rr < g.r; ++rr)
        for (int ss = 0; ss < g.s; ++ss)
          w[weight_offset(wv, k, c, rr, ss)] = from_double<T>(rng.value());

  // Direct convolution in float64: compact output channel k reads its group's g.c input
  // channels (compact input channel (k / g.k) * g.c + c; ungrouped: all of them).
  std::vector<double> y_ref(ny, 0.0), gx_ref(nx, 0.0), gw_ref(size_t(kp) * g.c * g.r * g.s, 0.0);
  for (int n = 0; n < g.n; ++n)
    for (int p = 0; p < g.p; ++p)
      for (int q = 0; q < g.q; ++q)
        for (int k = 0; k < kp; ++k) {
          const size_t yi = ((size_t(n) * g.p + p) * g.q + q) * kp + k;
          const int c0 = (k / g.k) * g.c;
          y_ref[yi] += to_double(bias[wv.out.physical(k)]);
          for (int rr = 0; rr < g.r; ++rr)
            for (int ss = 0; ss < g.s; ++ss) {
              const int h = p * g.stride_h - g.pad_h + rr * g.dil_h;
              const int ww = q * g.stride_w - g.pad_w + ss * g.dil_w;
              if (h < 0 || h >= g.h || ww < 0 || ww >= g.w) continue;
              for (int c = 0; c < g.c; ++c) {
                const size_t xi = ((size_t(n) * g.h + h) * g.w + ww) * cp + c0 + c;
                const double wt = to_double(w[weight_offset(wv, k, c, rr, ss)]);
                y_ref[yi] += to_double(x[xi]) * wt;
                gx_ref[xi] += to_double(gy[yi]) * wt;
                gw_ref[((size_t(k) * g.c + c) * g.r + rr) * g.s + ss] +=
                    to_double(gy[yi]) * to_double(x[xi]);
              }
            }
        }

  const double tol = sizeof(T) == 2 ? 1e-2 : sizeof(T) == 4 ? 2e-5 : 1e-12;
  auto compare = [&](const std::vector<T>& got, const std::vector<double>& want,
                     const std::string& what) {
    double scale = 1e-30;
    for (double v : want) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < want.size(); ++i) {
      const double d = to_double(got[i]);
      if (!(std::fabs(d - want[i]) <= tol * scale)) {
        expect(false, std::string(name) + ": " + what + " element " + std::to_string(i) +
                          " got " + std::to_string(d) + " want " + std::to_string(want[i]));
        return;
      }
    }
  };

  ConvGemmParams prm;
  prm.g = g;
  prm.w = wv;
  // fprop
  {
    std::vector<T> y(ny, poison_value<T>());
    prm.a = x.data();
    prm.b = w.data();
    prm.d = y.data();
    prm.bias = bias.data();
    prm.bias_stride = 1;
    prm.vec_a = a_vectorizable(Pass::Fprop, g, reinterpret_cast<uintptr_t>(x.data()), vec);
    prm.vec_b = b_vectorizable(Pass::Fprop, g, wv, reinterpret_cast<uintptr_t>(w.data()), vec);
    dw ? run_depthwise<T, Pass::Fprop>(prm) : run_pass<T, Pass::Fprop, kTensorCores>(prm);
    ++passes;
    vector_passes += prm.vec_a && prm.vec_b;
    compare(y, y_ref, std::string("forward (vec ") + char('0' + prm.vec_a) + char('0' + prm.vec_b) + ")");
    prm.bias = nullptr;
  }
  // dgrad
  {
    std::vector<T> gx(nx, poison_value<T>());
    prm.a = gy.data();
    prm.b = w.data();
    prm.d = gx.data();
    prm.vec_a = a_vectorizable(Pass::Dgrad, g, reinterpret_cast<uintptr_t>(gy.data()), vec);
    prm.vec_b = b_vectorizable(Pass::Dgrad, g, wv, reinterpret_cast<uintptr_t>(w.data()), vec);
    dw ? run_depthwise<T, Pass::Dgrad>(prm) : run_pass<T, Pass::Dgrad, kTensorCores>(prm);
    ++passes;
    vector_passes += prm.vec_a && prm.vec_b;
    compare(gx, gx_ref, std::string("grad input (vec ") + char('0' + prm.vec_a) + char('0' + prm.vec_b) + ")");
  }
  // wgrad: split-K into the workspace, then the reduction into the dense full gradient.
  {
    using Acc = typename detail::Num<T>::Acc;
    const GemmShape sh = gemm_shape(Pass::Wgrad, g);
    const int64_t bm = block_m(Pass::Wgrad, prm.g);
    const int64_t tiles = ((sh.m + bm - 1) / bm) * ((sh.n + kBlockN - 1) / kBlockN) * g.groups;
    prm.split = dw ? depthwise_split(g, rng.range(1, 8), 1, 64)
                   : choose_split_k(sh.k, detail::Tiles<T, Pass::Wgrad>::BK, tiles,
                                    rng.range(1, 8), 1, 64);
    std::vector<Acc> ws(size_t(prm.split.splits) * kp * sh.n, Acc(std::nan("")));
    std::vector<T> gw(nw, poison_value<T>());
    prm.a = gy.data();
    prm.b = x.data();
    prm.d = ws.data();
    prm.vec_a = a_vectorizable(Pass::Wgrad, g, reinterpret_cast<uintptr_t>(gy.data()), vec);
    prm.vec_b = b_vectorizable(Pass::Wgrad, g, wv, reinterpret_cast<uintptr_t>(x.data()), vec);
    dw ? run_depthwise<T, Pass::Wgrad>(prm) : run_pass<T, Pass::Wgrad, kTensorCores>(prm);
    ++passes;
    vector_passes += prm.vec_a && prm.vec_b;
    split_passes += prm.split.splits > 1;
    grouped_passes += grouped && !dw && g.groups > 1;
    depthwise_passes += dw;
    threadIdx = {0, 0, 0};
    blockIdx = {0, 0, 0};
    gridDim = {1, 1, 1};
    blockDim = {1, 1, 1};
    detail::wgrad_reduce_kernel<T>(prm, gw.data(), full_out, full_in, gw_channels_last);
    // Expected: the block at the segments, zeros elsewhere, in the gradient's layout.
    std::vector<double> want(nw, 0.0);
    WeightView dense;
    dense.out = {0, full_out, 0};
    dense.in = {0, full_in, 0};
    if (gw_channels_last) {
      dense.stride[0] = r * s * ci; dense.stride[1] = 1; dense.stride[2] = s * ci; dense.stride[3] = ci;
    } else {
      dense.stride[0] = ci * r * s; dense.stride[1] = r * s; dense.stride[2] = s; dense.stride[3] = 1;
    }
    for (int k = 0; k < kp; ++k)
      for (int c = 0; c < g.c; ++c)
        for (int rr = 0; rr < g.r; ++rr)
          for (int ss = 0; ss < g.s; ++ss)
            want[weight_offset(dense, wv.out.physical(k), wv.in.physical(c), rr, ss)] =
                gw_ref[((size_t(k) * g.c + c) * g.r + rr) * g.s + ss];
    compare(gw, want, std::string("grad weight (splits ") + std::to_string(prm.split.splits) +
                          ", vec " + char('0' + prm.vec_a) + char('0' + prm.vec_b) + ")");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 6;
  Rng rng(7);
  for (int mode = 0; mode < 2; ++mode) {
    emulation::copies_land_at_once = mode == 1;
    for (int i = 0; i < cases; ++i) {
      run_case<float, true>(rng, i);
      run_case<__nv_bfloat16, true>(rng, i);
      run_case<float, false>(rng, i);
      run_case<double, false>(rng, i);
    }
  }
  expect(emulation::failures == 0,
         std::to_string(emulation::failures.load()) + " misaligned cp.async or WMMA accesses");
  expect(vector_passes > 0 && vector_passes < passes && split_passes > 0 &&
             small_tile_passes > 0 && small_tile_passes < passes &&
             (cases < 3 || (grouped_passes > 0 && depthwise_passes > 0)),
         "the cases must cover vector and element loads, split-K, both M tiles, grouped and "
         "depthwise convolutions");
  if (failures == 0) {
    std::printf("emulated CUDA kernels passed (%d cases x 4 types x 2 copy modes: %d passes, "
                "%d with vector loads of both operands, %d wgrad with split-K, %d with "
                "64-row tiles, %d wgrad grouped, %d wgrad depthwise)\n",
                cases, passes, vector_passes, split_passes, small_tile_passes, grouped_passes,
                depthwise_passes);
  }
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
