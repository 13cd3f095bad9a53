// Gradient of the compact input: grad_x = conv_transpose(grad_y, weight[out][:, in]).
#include "conv_gemm_kernel.cuh"

namespace dvn::cuda {

cudaError_t launch_dgrad(const ConvGemmParams& p, DType t, Math math, cudaStream_t stream) {
  return detail::dispatch<Pass::Dgrad>(p, t, math, stream);
}

}  // namespace dvn::cuda
