// Direct kernels of the depthwise sliced convolution (torch-free): one input channel per group,
// g.k = the channel multiplier output channels per group, g.groups = the active channels.
//
// Depthwise is not a GEMM (each output reads R*S inputs of one channel), so these kernels walk
// the convolution directly, memory-bound, channels innermost so that a warp reads 32
// consecutive channels of one pixel:
//
//   fprop  one thread per output element (n, p, q, k): R*S products, + bias.
//   dgrad  one thread per input element (n, h, w, c): the output pixels its window reaches,
//          times the multiplier's channels.
//   wgrad  a CTA per (32 output channels, one (r, s), one split of the output pixels): 4 rows
//          of 32 threads walk the pixels, a fixed-order sum over the rows in shared memory
//          (deterministic), partials into the (splits, groups * g.k, R*S) workspace that
//          wgrad_reduce_kernel sums into the dense full gradient (g.c == 1).
//
// Accumulation in float32 (float64 for float64); exact products, no TF32. The activations are
// compact NHWC with c_pitch / k_pitch channels per pixel; the weight is read in place through
// WeightView (its second dimension has one channel).
#pragma once

#include "conv_gemm_kernel.cuh"

namespace dvn::cuda {
namespace detail {

constexpr int kDepthwiseRows = kThreads / 32;  // wgrad: pixel rows per CTA

template <typename T>
__global__ void __launch_bounds__(kThreads) depthwise_fprop_kernel(const ConvGemmParams p) {
  using Acc = typename Num<T>::Acc;
  const Geometry& g = p.g;
  const int64_t kp = k_pitch(g), cp = c_pitch(g);
  const int64_t i = int64_t(blockIdx.x) * kThreads + int64_t(threadIdx.x);
  if (i >= int64_t(g.n) * g.p * g.q * kp) return;
  const int32_t k = int32_t(i % kp);
  int64_t pixel = i / kp;
  const int32_t q = int32_t(pixel % g.q);
  pixel /= g.q;
  const int32_t pp = int32_t(pixel % g.p);
  const int64_t n = pixel / g.p;
  const T* x = static_cast<const T*>(p.a) + n * g.h * g.w * cp + k / g.k;
  const T* w = static_cast<const T*>(p.b);
  const int64_t row = int64_t(p.w.out.physical(k)) * p.w.stride[0];
  Acc acc = 0;
  for (int32_t r = 0; r < g.r; ++r) {
    const int32_t h = pp * g.stride_h - g.pad_h + r * g.dil_h;
    if (h < 0 || h >= g.h) continue;
    for (int32_t s = 0; s < g.s; ++s) {
      const int32_t ww = q * g.stride_w - g.pad_w + s * g.dil_w;
      if (ww < 0 || ww >= g.w) continue;
      acc += Num<T>::to_acc(x[(int64_t(h) * g.w + ww) * cp]) *
             Num<T>::to_acc(w[row + r * p.w.stride[2] + s * p.w.stride[3]]);
    }
  }
  if (p.bias != nullptr) {
    acc += Num<T>::to_acc(
        static_cast<const T*>(p.bias)[int64_t(p.w.out.physical(k)) * p.bias_stride]);
  }
  static_cast<T*>(p.d)[i] = Num<T>::from_acc(acc);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) depthwise_dgrad_kernel(const ConvGemmParams p) {
  using Acc = typename Num<T>::Acc;
  const Geometry& g = p.g;
  const int64_t kp = k_pitch(g), cp = c_pitch(g);
  const int64_t i = int64_t(blockIdx.x) * kThreads + int64_t(threadIdx.x);
  if (i >= int64_t(g.n) * g.h * g.w * cp) return;
  const int32_t c = int32_t(i % cp);
  int64_t pixel = i / cp;
  const int32_t ww = int32_t(pixel % g.w);
  pixel /= g.w;
  const int32_t h = int32_t(pixel % g.h);
  const int64_t n = pixel / g.h;
  const T* gy = static_cast<const T*>(p.a) + n * g.p * g.q * kp + int64_t(c) * g.k;
  const T* w = static_cast<const T*>(p.b);
  Acc acc = 0;
  for (int32_t r = 0; r < g.r; ++r) {
    const int32_t ph = h + g.pad_h - r * g.dil_h;
    if (ph < 0 || ph % g.stride_h != 0 || ph / g.stride_h >= g.p) continue;
    for (int32_t s = 0; s < g.s; ++s) {
      const int32_t pw = ww + g.pad_w - s * g.dil_w;
      if (pw < 0 || pw % g.stride_w != 0 || pw / g.stride_w >= g.q) continue;
      const T* out = gy + (int64_t(ph / g.stride_h) * g.q + pw / g.stride_w) * kp;
      for (int32_t m = 0; m < g.k; ++m) {
        const int64_t row = int64_t(p.w.out.physical(c * g.k + m)) * p.w.stride[0];
        acc += Num<T>::to_acc(out[m]) *
               Num<T>::to_acc(w[row + r * p.w.stride[2] + s * p.w.stride[3]]);
      }
    }
  }
  static_cast<T*>(p.d)[i] = Num<T>::from_acc(acc);
}

// Grid (ceil(groups * g.k / 32), R*S, splits); split z takes output pixels
// [z * tiles_per_split, (z + 1) * tiles_per_split) of the N*P*Q.
template <typename T>
__global__ void __launch_bounds__(kThreads) depthwise_wgrad_kernel(const ConvGemmParams p) {
  using Acc = typename Num<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Acc* const partial = reinterpret_cast<Acc*>(smem_raw);  // [kDepthwiseRows][32]
  const Geometry& g = p.g;
  const int64_t kp = k_pitch(g), cp = c_pitch(g);
  const int lane = int(threadIdx.x) % 32, row = int(threadIdx.x) / 32;
  const int64_t k = int64_t(blockIdx.x) * 32 + lane;
  const int32_t r = int32_t(blockIdx.y) / g.s, s = int32_t(blockIdx.y) % g.s;
  const int64_t pixels = int64_t(g.n) * g.p * g.q;
  const int64_t first = int64_t(blockIdx.z) * p.split.tiles_per_split;
  const int64_t end = first + p.split.tiles_per_split;
  const int64_t last = end < pixels ? end : pixels;
  const T* gy = static_cast<const T*>(p.a);
  const T* x = static_cast<const T*>(p.b);
  Acc acc = 0;
  if (k < kp) {
    const int64_t c = k / g.k;
    for (int64_t pixel = first + row; pixel < last; pixel += kDepthwiseRows) {
      const int32_t q = int32_t(pixel % g.q), pp = int32_t((pixel / g.q) % g.p);
      const int64_t n = pixel / (int64_t(g.p) * g.q);
      const int32_t h = pp * g.stride_h - g.pad_h + r * g.dil_h;
      const int32_t ww = q * g.stride_w - g.pad_w + s * g.dil_w;
      if (h < 0 || h >= g.h || ww < 0 || ww >= g.w) continue;
      acc += Num<T>::to_acc(gy[pixel * kp + k]) *
             Num<T>::to_acc(x[((n * g.h + h) * g.w + ww) * cp + c]);
    }
  }
  partial[row * 32 + lane] = acc;
  __syncthreads();
  if (row == 0 && k < kp) {
    Acc sum = 0;
    for (int j = 0; j < kDepthwiseRows; ++j) sum += partial[j * 32 + lane];
    const int64_t rs = int64_t(g.r) * g.s;
    static_cast<Acc*>(p.d)[(int64_t(blockIdx.z) * kp + k) * rs + blockIdx.y] = sum;
  }
}

#if !defined(DVN_EMULATE_CUDA)
inline unsigned elementwise_blocks(int64_t elements) {
  return unsigned((elements + kThreads - 1) / kThreads);
}

template <typename T>
cudaError_t launch_depthwise(Pass pass, const ConvGemmParams& p, cudaStream_t stream) {
  const Geometry& g = p.g;
  if (pass == Pass::Fprop) {
    const int64_t n = int64_t(g.n) * g.p * g.q * k_pitch(g);
    if (n == 0) return cudaSuccess;
    if ((n + kThreads - 1) / kThreads > INT32_MAX) return cudaErrorInvalidConfiguration;
    depthwise_fprop_kernel<T><<<elementwise_blocks(n), kThreads, 0, stream>>>(p);
  } else if (pass == Pass::Dgrad) {
    const int64_t n = int64_t(g.n) * g.h * g.w * c_pitch(g);
    if (n == 0) return cudaSuccess;
    if ((n + kThreads - 1) / kThreads > INT32_MAX) return cudaErrorInvalidConfiguration;
    depthwise_dgrad_kernel<T><<<elementwise_blocks(n), kThreads, 0, stream>>>(p);
  } else {
    const dim3 grid(unsigned((k_pitch(g) + 31) / 32), unsigned(g.r * g.s),
                    unsigned(p.split.splits));
    if (grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidConfiguration;
    using Acc = typename Num<T>::Acc;
    depthwise_wgrad_kernel<T><<<grid, kThreads, kThreads * sizeof(Acc), stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_depthwise_wgrad_all(const ConvGemmParams& p, void* grad_w, int32_t full_out,
                                       int32_t full_in, bool channels_last, cudaStream_t stream) {
  cudaError_t err = launch_depthwise<T>(Pass::Wgrad, p, stream);
  if (err != cudaSuccess) return err;
  return launch_wgrad_reduce<T>(p, grad_w, full_out, full_in, channels_last, stream);
}
#endif  // !DVN_EMULATE_CUDA

}  // namespace detail
}  // namespace dvn::cuda
