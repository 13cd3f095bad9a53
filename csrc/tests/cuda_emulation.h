// A CPU shim of the CUDA features the kernels of csrc/cuda/conv_gemm_kernel.cuh use, so that
// csrc/tests/test_conv_gemm_emulated.cpp runs the kernels' own code on the host: one std::thread
// per CUDA thread and a barrier for __syncthreads; cp.async copies land either at once or
// only at cp.async.wait_group (the two extremes the hardware may choose); WMMA fragments hold
// their whole tile in every thread (lane 0 stores it) and check the alignment rules of
// load/store_matrix_sync. Built with -fsanitize=thread it finds missing __syncthreads.
// bfloat16 is emulated exactly (round to nearest even); float16 is declared but not emulated.
#pragma once

#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline dim3 gridDim{1, 1, 1}, blockDim{1, 1, 1};

struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

using cudaError_t = int;
using cudaStream_t = void*;

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);  // round to nearest even (finite values)
  return {uint16_t(u >> 16)};
}
struct __half {
  uint16_t bits;
};
inline float __half2float(__half) { return std::nanf(""); }  // not emulated
inline __half __float2half_rn(float) { return {0x7e00}; }

namespace emulation {

// A reusable barrier for the threads of one CTA (C++17: no std::barrier).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  const int count_;
  int arrived_ = 0;
  unsigned long generation_ = 0;
};

inline Barrier* block_barrier = nullptr;
inline bool copies_land_at_once = false;
inline std::atomic<int> failures{0};  // alignment rules broken (reported by the test)

struct Copy {
  void* dst;
  const void* src;
  int bytes;
};
inline thread_local std::vector<Copy> open_group;
inline thread_local std::deque<std::vector<Copy>> committed;

inline void copy_async(void* dst, const void* src, int bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes != 0) {
    ++failures;  // cp.async needs both addresses aligned to its size
  }
  if (copies_land_at_once) {
    std::memcpy(dst, src, bytes);
  } else {
    open_group.push_back({dst, src, bytes});
  }
}
inline void commit_group() {
  committed.push_back(std::move(open_group));
  open_group.clear();
}
inline void wait_group(int pending) {
  while (int(committed.size()) > pending) {
    for (const Copy& c : committed.front()) std::memcpy(c.dst, c.src, c.bytes);
    committed.pop_front();
  }
}
inline void reset_thread() {
  open_group.clear();
  committed.clear();
}

}  // namespace emulation

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  float x[num_elements];
};

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(__half v) { return __half2float(v); }

template <typename E>
inline void check_alignment(const E* p, unsigned ldm) {
  const unsigned per16 = 16 / sizeof(E);
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm % per16 != 0) ++emulation::failures;
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename E>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* p, unsigned ldm) {
  check_alignment(p, ldm);
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int i = 0; i < F::kRows; ++i)
    for (int j = 0; j < F::kCols; ++j)
      f.x[i * F::kCols + j] =
          to_float(std::is_same_v<Layout, row_major> ? p[i * ldm + j] : p[i + j * ldm]);
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  check_alignment(p, ldm);
  if (threadIdx.x % 32 != 0) return;  // a warp-collective store: one lane writes the tile
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j)
      (layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.x[i * N + j];
}

inline float __float_to_tf32(float v) { return v; }  // exact: the test compares to float64

}  // namespace nvcuda::wmma
