// Forward pass of the sliced convolution: y = conv(x, weight[out][:, in]) + bias[out].
#include "conv_gemm_kernel.cuh"

namespace dvn::cuda {

cudaError_t launch_fprop(const ConvGemmParams& p, DType t, Math math, cudaStream_t stream) {
  return detail::dispatch<Pass::Fprop>(p, t, math, stream);
}

}  // namespace dvn::cuda
