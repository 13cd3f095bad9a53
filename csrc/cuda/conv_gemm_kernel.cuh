// The implicit-GEMM kernel of all three passes of the sliced convolution (torch-free).
//
// One CTA of 128 threads (4 warps, 2 x 2) computes a BM x 64 tile of D = A * B, BM = 128, or 64
// when the GEMM has at most 64 rows (block_m: a weight gradient of few output channels). K is walked
// in tiles of 32 (16 for float64) through a 3-stage shared-memory pipeline filled with cp.async:
// 16-byte vector copies where the operand allows (conv_gemm.h), else element copies (4/8-byte
// cp.async, or for 16-bit types loads through registers, 8 in flight). The M/N-dependent part of
// each vector copy's address is computed once per thread (a_fixed/b_fixed), only the K part per
// tile. Each operand keeps in shared memory the orientation it has in global memory (its
// contiguous dimension innermost) and WMMA reads it with the matching row/col-major layout:
//
//   pass   A tile (smem)           B tile (smem)
//   fprop  [BM][BK] row-major      [BN][BK] col-major   (weight: runs over input channels)
//   dgrad  [BM][BK] row-major      [BK][BN] row-major
//   wgrad  [BK][BM] col-major      [BK][BN] row-major
//
// Math: WMMA 16x16x16 (float16, bfloat16) or 16x16x8 TF32 (float32) with float32 accumulators,
// each warp owning a BM/2 x 32 sub-tile (BM/32 x 2 fragments); or, for exact float32 and
// float64, CUDA-core FMAs with a BM/16 x 8 register tile per thread. The accumulators go through shared
// memory to a per-element epilogue (bias, conversion, NHWC store or the wgrad workspace).
#pragma once

#if defined(DVN_EMULATE_CUDA)
// The kernels run on the CPU for csrc/tests/test_conv_gemm_emulated.cpp: threads, barriers,
// WMMA and cp.async come from its shim (csrc/tests/cuda_emulation.h); no launchers.
#include "tests/cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "conv_gemm.h"
#include "sliced_conv2d_kernels.h"

namespace dvn::cuda {
namespace detail {

// --- Element types --------------------------------------------------------------------------
// Conversions by intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends.
template <typename T> struct Num;
template <> struct Num<__half> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
};
template <> struct Num<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) {
    return __float2bfloat16_rn(v);
  }
};
template <> struct Num<float> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
};
template <> struct Num<double> {
  using Acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
};

// WMMA operand type and K of one mma for the tensor-core path.
template <typename T> struct Wmma;
template <> struct Wmma<__half> { using Frag = __half; static constexpr int kK = 16; };
template <> struct Wmma<__nv_bfloat16> { using Frag = __nv_bfloat16; static constexpr int kK = 16; };
template <> struct Wmma<float> { using Frag = nvcuda::wmma::precision::tf32; static constexpr int kK = 8; };

// Tile shape and shared-memory layout of one instantiation.
template <typename T, Pass P, int BM_ = kBlockMLarge>
struct Tiles {
  using Acc = typename Num<T>::Acc;
  static constexpr int BM = BM_, BN = kBlockN, BK = sizeof(T) == 8 ? 16 : 32;
  static constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte copy
  static constexpr int kPad = 16 / int(sizeof(T));  // row padding: keeps WMMA pointers aligned
  static constexpr bool kATransposed = P == Pass::Wgrad;  // A stored [BK][BM]
  static constexpr bool kBTransposed = P != Pass::Fprop;  // B stored [BK][BN]
  // Leading dimensions (elements) and sizes of one stage of A and B.
  static constexpr int kLdA = kATransposed ? BM + kPad : BK + kPad;
  static constexpr int kLdB = kBTransposed ? BN + kPad : BK + kPad;
  static constexpr int kStageA = (kATransposed ? BK : BM) * kLdA;
  static constexpr int kStageB = (kBTransposed ? BK : BN) * kLdB;
  static constexpr int kLdD = BN + 4;  // staging of the accumulators (Acc elements)
  static constexpr int kPipelineBytes = kStages * (kStageA + kStageB) * int(sizeof(T));
  static constexpr int kStagingBytes = BM * kLdD * int(sizeof(Acc));
  static constexpr int kSmemBytes =
      kPipelineBytes > kStagingBytes ? kPipelineBytes : kStagingBytes;
  static_assert((kStageA * sizeof(T)) % 128 == 0 && (kStageB * sizeof(T)) % 128 == 0,
                "stages must keep 128-byte alignment");
};

// --- cp.async ---------------------------------------------------------------------------------
template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
#if defined(DVN_EMULATE_CUDA)
  emulation::copy_async(smem, gmem, kBytes);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem),
                 "n"(kBytes));
  }
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(DVN_EMULATE_CUDA)
  emulation::commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(DVN_EMULATE_CUDA)
  emulation::wait_group(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// The run (o, l) that this thread copies in iteration `it` of a vector load of an O x L tile.
template <int L, int kVec>
__device__ __forceinline__ void vector_run(int it, int* o, int* l) {
  constexpr int kRuns = L / kVec;
  const int i = it * kThreads + int(threadIdx.x);
  *o = i / kRuns;
  *l = (i % kRuns) * kVec;
}

// Loads an O x L tile into smem[o * ld + l]. With `vec`, runs of kVec elements along L are one
// 16-byte cp.async each: vsrc(it, o, l, &offset) says whether the run this thread copies in
// iteration `it` is nonzero and where it is in `base` (all of a run share the answer,
// conv_gemm.h). Otherwise one copy per element, src(o, l, &offset): a 4- or 8-byte cp.async,
// or for 16-bit types a load through a register. Zeros are stored directly.
template <typename T, int O, int L, int kVec, typename VSrc, typename Src>
__device__ __forceinline__ void load_tile(T* smem, int ld, const T* base, bool vec, VSrc vsrc,
                                          Src src) {
  if (vec) {
    static_assert((O * (L / kVec)) % kThreads == 0, "tile runs must divide among the threads");
#pragma unroll
    for (int it = 0; it < O * (L / kVec) / kThreads; ++it) {
      int o, l;
      vector_run<L, kVec>(it, &o, &l);
      T* dst = smem + o * ld + l;
      int64_t off;
      if (vsrc(it, o, l, &off)) {
        cp_async<16>(dst, base + off);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
  } else if constexpr (sizeof(T) >= 4) {
    static_assert((O * L) % kThreads == 0, "tile elements must divide among the threads");
#pragma unroll 4
    for (int it = 0; it < O * L / kThreads; ++it) {
      const int i = it * kThreads + int(threadIdx.x);
      const int o = i / L, l = i % L;
      T* dst = smem + o * ld + l;
      int64_t off;
      if (src(o, l, &off)) {
        cp_async<int(sizeof(T))>(dst, base + off);
      } else {
        *dst = T(0);
      }
    }
  } else {
    // 16-bit elements have no cp.async size: loads go through registers, 8 issued before
    // their stores so that their latencies overlap.
    constexpr int kIters = (O * L) / kThreads, kBatch = 8;
    static_assert((O * L) % (kThreads * kBatch) == 0, "tile elements must divide among the threads");
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(base);
#pragma unroll 1
    for (int first = 0; first < kIters; first += kBatch) {
      uint16_t held[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int i = (first + j) * kThreads + int(threadIdx.x);
        int64_t off;
        held[j] = src(i / L, i % L, &off) ? bits[off] : uint16_t(0);
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int i = (first + j) * kThreads + int(threadIdx.x);
        reinterpret_cast<uint16_t*>(smem)[(i / L) * ld + i % L] = held[j];
      }
    }
  }
}

// --- The kernel -------------------------------------------------------------------------------
// Blocks per SM for ptxas's register budget: 2 for 128-row tiles (fp32 tiles of 81 KB of
// shared memory fit 2 per SM anyway), 3 for 64-row tiles (a budget of 4 caps registers at 128
// and made the TF32 dgrad spill; 3 leaves 170, which every instantiation fits without spills:
// bench/results/compile-sm90.md).
template <typename T, Pass P, bool kTensorCores, int BM_ = kBlockMLarge>
__global__ void __launch_bounds__(kThreads, BM_ == kBlockMLarge ? 2 : 3)
    conv_gemm_kernel(const ConvGemmParams p) {
  using Tl = Tiles<T, P, BM_>;
  using Acc = typename Tl::Acc;
  constexpr int BM = Tl::BM, BN = Tl::BN, BK = Tl::BK;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const smem_a = reinterpret_cast<T*>(smem_raw);
  T* const smem_b = smem_a + kStages * Tl::kStageA;
  Acc* const staging = reinterpret_cast<Acc*>(smem_raw);

  const Geometry& g = p.g;
  const GemmShape shape = gemm_shape(P, g);
  const int32_t m0 = int32_t(blockIdx.x) * BM, n0 = int32_t(blockIdx.y) * BN;
  // Grid z: the group (grouped convolutions; 0 otherwise), for wgrad group * splits + split.
  const int32_t split = P == Pass::Wgrad ? int32_t(blockIdx.z) % p.split.splits : 0;
  const int32_t group = P == Pass::Wgrad ? int32_t(blockIdx.z) / p.split.splits
                                         : int32_t(blockIdx.z);
  const GroupBase gb = group_base<P>(g, group);
  WeightView wv = p.w;
  wv.out_base = gb.out;
  const T* const a_base = static_cast<const T*>(p.a) + gb.a;
  const T* const b_base = static_cast<const T*>(p.b) + gb.b;

  const int64_t k_tiles = (shape.k + BK - 1) / BK;
  int64_t kt_first = 0, kt_last = k_tiles;
  if constexpr (P == Pass::Wgrad) {
    split_k_range(k_tiles, p.split.tiles_per_split, split, &kt_first, &kt_last);
  }
  const int num_tiles = kt_last > kt_first ? int(kt_last - kt_first) : 0;

  // The M (A) and N (B) parts of the addresses of the runs this thread copies with vector loads,
  // the same for every K tile (conv_gemm.h: a_fixed, b_fixed); recomputed per tile for float64,
  // whose register tile leaves no room to hold them.
  constexpr bool kHold = sizeof(T) <= 4;
  constexpr int kRunsA = kHold ? BM * BK / Tl::kVec / kThreads : 1;
  constexpr int kRunsB = kHold ? BN * BK / Tl::kVec / kThreads : 1;
  Fixed fixed_a[kRunsA], fixed_b[kRunsB];
  if (kHold && p.vec_a) {
#pragma unroll
    for (int it = 0; it < kRunsA; ++it) {
      int o, l;
      if constexpr (Tl::kATransposed) {
        vector_run<BM, Tl::kVec>(it, &o, &l);
        fixed_a[it] = a_fixed<P>(g, m0 + l);
      } else {
        vector_run<BK, Tl::kVec>(it, &o, &l);
        fixed_a[it] = a_fixed<P>(g, m0 + o);
      }
    }
  }
  if (kHold && p.vec_b) {
#pragma unroll
    for (int it = 0; it < kRunsB; ++it) {
      int o, l;
      if constexpr (Tl::kBTransposed) {
        vector_run<BN, Tl::kVec>(it, &o, &l);
        fixed_b[it] = b_fixed<P>(g, wv, n0 + l);
      } else {
        vector_run<BK, Tl::kVec>(it, &o, &l);
        fixed_b[it] = b_fixed<P>(g, wv, n0 + o);
      }
    }
  }

  // Issues the copies of K tile `kt` (absolute index) into pipeline stage `stage`.
  auto load_stage = [&](int stage, int64_t kt) {
    const int32_t k0 = int32_t(kt * BK);
    T* sa = smem_a + stage * Tl::kStageA;
    T* sb = smem_b + stage * Tl::kStageB;
    if constexpr (Tl::kATransposed) {  // [BK][BM]: o = kk, l = m
      load_tile<T, BK, BM, Tl::kVec>(
          sa, Tl::kLdA, a_base, p.vec_a,
          [&](int it, int o, int l, int64_t* off) {
            return a_moving<P>(g, kHold ? fixed_a[it] : a_fixed<P>(g, m0 + l), k0 + o, off);
          },
          [&](int o, int l, int64_t* off) { return a_offset<P>(g, m0 + l, k0 + o, off); });
    } else {  // [BM][BK]: o = m, l = kk
      load_tile<T, BM, BK, Tl::kVec>(
          sa, Tl::kLdA, a_base, p.vec_a,
          [&](int it, int o, int l, int64_t* off) {
            return a_moving<P>(g, kHold ? fixed_a[it] : a_fixed<P>(g, m0 + o), k0 + l, off);
          },
          [&](int o, int l, int64_t* off) { return a_offset<P>(g, m0 + o, k0 + l, off); });
    }
    if constexpr (Tl::kBTransposed) {  // [BK][BN]: o = kk, l = n
      load_tile<T, BK, BN, Tl::kVec>(
          sb, Tl::kLdB, b_base, p.vec_b,
          [&](int it, int o, int l, int64_t* off) {
            return b_moving<P>(g, wv, kHold ? fixed_b[it] : b_fixed<P>(g, wv, n0 + l), k0 + o,
                               off);
          },
          [&](int o, int l, int64_t* off) { return b_offset<P>(g, wv, k0 + o, n0 + l, off); });
    } else {  // [BN][BK]: o = n, l = kk
      load_tile<T, BN, BK, Tl::kVec>(
          sb, Tl::kLdB, b_base, p.vec_b,
          [&](int it, int o, int l, int64_t* off) {
            return b_moving<P>(g, wv, kHold ? fixed_b[it] : b_fixed<P>(g, wv, n0 + o), k0 + l,
                               off);
          },
          [&](int o, int l, int64_t* off) { return b_offset<P>(g, wv, k0 + l, n0 + o, off); });
    }
  };

  // Prologue: stages 0 .. kStages-2. One commit group per K tile, empty ones included, so
  // that "tile i has landed" is always "at most kStages-2 newer groups pending".
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) load_stage(s, kt_first + s);
    cp_async_commit();
  }

  const int warp = threadIdx.x / 32;
  const int warp_m = (warp / 2) * (BM / 2), warp_n = (warp % 2) * 32;
  constexpr int FM = BM / 32, FN = 2;  // 16x16 fragments per warp
  // Tensor-core accumulators or CUDA-core register tile; only one is used per instantiation.
  using namespace nvcuda;
  using WmmaT = std::conditional_t<kTensorCores, T, __half>;
  constexpr int WK = Wmma<WmmaT>::kK;
  using Frag = typename Wmma<WmmaT>::Frag;
  using LayoutA = std::conditional_t<Tl::kATransposed, wmma::col_major, wmma::row_major>;
  using LayoutB = std::conditional_t<Tl::kBTransposed, wmma::row_major, wmma::col_major>;
  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc_tc[kTensorCores ? FM : 1]
                                                              [kTensorCores ? FN : 1];
  constexpr int TM = kTensorCores ? 1 : BM / 16, TN = kTensorCores ? 1 : 8;
  Acc acc_fma[TM][TN];
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;  // FMA path: rows ty+16i, cols tx+8j
  if constexpr (kTensorCores) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc_tc[i][j], 0.0f);
  } else {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc_fma[i][j] = Acc(0);
  }

  for (int t = 0; t < num_tiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile t visible to all; stage (t-1) % kStages no longer read
    {
      const int next = t + kStages - 1;
      if (next < num_tiles) load_stage(next % kStages, kt_first + next);
      cp_async_commit();
    }
    const T* sa = smem_a + (t % kStages) * Tl::kStageA;
    const T* sb = smem_b + (t % kStages) * Tl::kStageB;
    if constexpr (kTensorCores) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += WK) {
        wmma::fragment<wmma::matrix_a, 16, 16, WK, Frag, LayoutA> af[FM];
        wmma::fragment<wmma::matrix_b, 16, 16, WK, Frag, LayoutB> bf[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i) {
          const int m = warp_m + i * 16;
          wmma::load_matrix_sync(af[i], sa + (Tl::kATransposed ? kk * Tl::kLdA + m : m * Tl::kLdA + kk),
                                 Tl::kLdA);
          if constexpr (std::is_same_v<T, float>) {
#pragma unroll
            for (int e = 0; e < af[i].num_elements; ++e) af[i].x[e] = wmma::__float_to_tf32(af[i].x[e]);
          }
        }
#pragma unroll
        for (int j = 0; j < FN; ++j) {
          const int n = warp_n + j * 16;
          wmma::load_matrix_sync(bf[j], sb + (Tl::kBTransposed ? kk * Tl::kLdB + n : n * Tl::kLdB + kk),
                                 Tl::kLdB);
          if constexpr (std::is_same_v<T, float>) {
#pragma unroll
            for (int e = 0; e < bf[j].num_elements; ++e) bf[j].x[e] = wmma::__float_to_tf32(bf[j].x[e]);
          }
        }
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) wmma::mma_sync(acc_tc[i][j], af[i], bf[j], acc_tc[i][j]);
      }
    } else {
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        Acc av[TM], bv[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const int m = ty + 16 * i;
          av[i] = Num<T>::to_acc(sa[Tl::kATransposed ? kk * Tl::kLdA + m : m * Tl::kLdA + kk]);
        }
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int n = tx + 8 * j;
          bv[j] = Num<T>::to_acc(sb[Tl::kBTransposed ? kk * Tl::kLdB + n : n * Tl::kLdB + kk]);
        }
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc_fma[i][j] = fma(av[i], bv[j], acc_fma[i][j]);
      }
    }
  }

  // Epilogue: accumulators -> staging (the pipeline buffers, now idle) -> global.
  cp_async_wait<0>();
  __syncthreads();
  if constexpr (kTensorCores) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        wmma::store_matrix_sync(staging + (warp_m + i * 16) * Tl::kLdD + warp_n + j * 16,
                                acc_tc[i][j], Tl::kLdD, wmma::mem_row_major);
  } else {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) staging[(ty + 16 * i) * Tl::kLdD + tx + 8 * j] = acc_fma[i][j];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < BM * BN; i += kThreads) {
    const int mi = i / BN, ni = i % BN;
    const int32_t m = m0 + mi, n = n0 + ni;
    if (m >= shape.m || n >= shape.n) continue;
    Acc v = staging[mi * Tl::kLdD + ni];
    if constexpr (P == Pass::Wgrad) {
      // Split `split`'s (groups * K) x N block; the group's rows from gb.d on.
      Acc* ws = static_cast<Acc*>(p.d) + int64_t(split) * k_pitch(g) * shape.n + gb.d;
      ws[int64_t(m) * shape.n + n] = v;
    } else {
      if constexpr (P == Pass::Fprop) {
        if (p.bias != nullptr) {
          const T* bias = static_cast<const T*>(p.bias);
          v += Num<T>::to_acc(bias[int64_t(wv.out.physical(wv.out_base + n)) * p.bias_stride]);
        }
      }
      const int64_t pitch = P == Pass::Fprop ? k_pitch(g) : c_pitch(g);
      static_cast<T*>(p.d)[gb.d + d_offset(pitch, m, n)] = Num<T>::from_acc(v);
    }
  }
}

// Sum of wgrad's split-K partials (fixed order: deterministic) written into the dense full
// weight gradient in memory order: the active block gets the sums, the rest zeros.
template <typename T>
__global__ void __launch_bounds__(256) wgrad_reduce_kernel(const ConvGemmParams p, T* grad_w,
                                                           int32_t full_out, int32_t full_in,
                                                           bool channels_last) {
  using Acc = typename Num<T>::Acc;
  const GemmShape shape = gemm_shape(Pass::Wgrad, p.g);
  const int64_t block = k_pitch(p.g) * shape.n;  // one split: every group's K x N block
  const int64_t total = int64_t(full_out) * full_in * p.g.r * p.g.s;
  const Acc* ws = static_cast<const Acc*>(p.d);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t src = wgrad_source(p.g, p.w.out, p.w.in, full_out, full_in, channels_last, i);
    Acc sum = 0;
    if (src >= 0) {
      for (int z = 0; z < p.split.splits; ++z) sum += ws[int64_t(z) * block + src];
    }
    grad_w[i] = Num<T>::from_acc(sum);
  }
}

#if !defined(DVN_EMULATE_CUDA)
// --- Launch -----------------------------------------------------------------------------------
// Opts the kernel into more than 48 KiB of dynamic shared memory, once per device.
template <typename T, Pass P, bool kTensorCores, int BM>
cudaError_t prepare_kernel(int smem_bytes) {
  static std::atomic<uint64_t> done{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t(1) << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(conv_gemm_kernel<T, P, kTensorCores, BM>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

template <typename T, Pass P, bool kTensorCores, int BM>
cudaError_t launch_tile(const ConvGemmParams& p, const GemmShape& shape, cudaStream_t stream) {
  using Tl = Tiles<T, P, BM>;
  const int64_t z = int64_t(p.g.groups) * (P == Pass::Wgrad ? p.split.splits : 1);
  if (z > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(unsigned((shape.m + Tl::BM - 1) / Tl::BM), unsigned((shape.n + Tl::BN - 1) / Tl::BN),
                  unsigned(z));
  if (grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidConfiguration;
  cudaError_t err = prepare_kernel<T, P, kTensorCores, BM>(Tl::kSmemBytes);
  if (err != cudaSuccess) return err;
  conv_gemm_kernel<T, P, kTensorCores, BM><<<grid, kThreads, Tl::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, Pass P, bool kTensorCores>
cudaError_t launch_conv_gemm(const ConvGemmParams& p, cudaStream_t stream) {
  const GemmShape shape = gemm_shape(P, p.g);
  if (shape.m <= 0 || shape.n <= 0) return cudaSuccess;
  return block_m(P, p.g) == kBlockMSmall
             ? launch_tile<T, P, kTensorCores, kBlockMSmall>(p, shape, stream)
             : launch_tile<T, P, kTensorCores, kBlockMLarge>(p, shape, stream);
}

template <typename T>
cudaError_t launch_wgrad_reduce(const ConvGemmParams& p, void* grad_w, int32_t full_out,
                                int32_t full_in, bool channels_last, cudaStream_t stream) {
  const int64_t total = int64_t(full_out) * full_in * p.g.r * p.g.s;
  if (total <= 0) return cudaSuccess;
  const int64_t blocks = (total + 255) / 256;
  wgrad_reduce_kernel<T><<<unsigned(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(
      p, static_cast<T*>(grad_w), full_out, full_in, channels_last);
  return cudaGetLastError();
}

template <Pass P>
cudaError_t dispatch(const ConvGemmParams& p, DType t, Math math, cudaStream_t stream) {
  switch (t) {
    case DType::Float16: return launch_conv_gemm<__half, P, true>(p, stream);
    case DType::BFloat16: return launch_conv_gemm<__nv_bfloat16, P, true>(p, stream);
    case DType::Float32:
      return math == Math::TensorCore ? launch_conv_gemm<float, P, true>(p, stream)
                                      : launch_conv_gemm<float, P, false>(p, stream);
    case DType::Float64: return launch_conv_gemm<double, P, false>(p, stream);
  }
  return cudaErrorInvalidValue;
}

#endif  // !DVN_EMULATE_CUDA

}  // namespace detail
}  // namespace dvn::cuda
