// Launchers of the CUDA sliced-convolution kernels: raw pointers, sizes, strides and a stream,
// no torch headers (the glue in sliced_conv2d_cuda.cpp builds these structs from tensors).
// Every launcher returns the first CUDA error it met (attribute setting or launch), or
// cudaSuccess; the kernels run asynchronously on `stream`.
#pragma once

#if !defined(DVN_EMULATE_CUDA)
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

#include "conv_gemm.h"

namespace dvn::cuda {

enum class DType : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3 };

// How float32 is multiplied: TF32 tensor cores (10-bit mantissa inputs, float32 accumulation,
// like cuDNN's default for convolutions) or exact float32 FMAs on the CUDA cores. float16 and
// bfloat16 always use tensor cores (float32 accumulation); float64 always uses FMAs.
enum class Math : int { TensorCore = 0, Exact = 1 };

// One implicit GEMM of one pass (see conv_gemm.h for the operands of each pass); grouped
// convolutions run g.groups of them, one per active group (the grid's z).
struct ConvGemmParams {
  Geometry g;
  WeightView w;           // the full weight (fprop, dgrad)
  const void* a = nullptr;  // fprop: x; dgrad: grad_y; wgrad: grad_y (all compact NHWC)
  const void* b = nullptr;  // fprop, dgrad: the full weight; wgrad: x (compact NHWC)
  void* d = nullptr;        // fprop: y; dgrad: grad_x (compact NHWC); wgrad: the workspace
  const void* bias = nullptr;  // fprop only, optional: the full bias, element stride bias_stride
  int64_t bias_stride = 0;
  bool vec_a = false, vec_b = false;  // 16-byte vector loads allowed (see conv_gemm.h)
  SplitK split;                       // wgrad only
};

// Tile constants, shared with the glue (workspace sizes, split-K choice).
constexpr int kBlockMLarge = 128, kBlockMSmall = 64, kBlockN = 64, kThreads = 128, kStages = 3;
inline int block_k(DType t) { return t == DType::Float64 ? 16 : 32; }

// The M tile of a pass: 64 rows when its GEMM has at most 64 (the weight gradient of a few
// output channels, where a 128-row tile would be half padding or more), else 128.
inline int block_m(Pass pass, const Geometry& g) {
  return gemm_shape(pass, g).m <= kBlockMSmall ? kBlockMSmall : kBlockMLarge;
}

// y (fprop) and grad_x (dgrad).
cudaError_t launch_fprop(const ConvGemmParams& p, DType t, Math math, cudaStream_t stream);
cudaError_t launch_dgrad(const ConvGemmParams& p, DType t, Math math, cudaStream_t stream);

// wgrad: partial products into `p.d`, a (split.splits, groups * K, R*S*C) workspace of float32 (float64
// for float64), then a deterministic sum over the splits written into `grad_w`, the dense full
// weight gradient (full_out, full_in, R, S), contiguous or channels_last: the active block
// (channel ranges p.w.out / p.w.in) gets the sums, every other element zero.
cudaError_t launch_wgrad(const ConvGemmParams& p, DType t, Math math, void* grad_w,
                         int32_t full_out, int32_t full_in, bool channels_last,
                         cudaStream_t stream);

// Depthwise convolutions (one input channel per group, g.c == 1): direct kernels
// (depthwise_kernel.cuh), exact products with float32 (float64) accumulation whatever `math`.
// The wgrad workspace `p.d` is (split.splits, groups * g.k, R*S), split over output pixels
// (split.tiles_per_split pixels each: depthwise_split).
cudaError_t launch_depthwise_fprop(const ConvGemmParams& p, DType t, cudaStream_t stream);
cudaError_t launch_depthwise_dgrad(const ConvGemmParams& p, DType t, cudaStream_t stream);
cudaError_t launch_depthwise_wgrad(const ConvGemmParams& p, DType t, void* grad_w,
                                   int32_t full_out, int32_t full_in, bool channels_last,
                                   cudaStream_t stream);

}  // namespace dvn::cuda
