// Gradient of the full weight: split-K implicit GEMM of the active block into a workspace, then
// a deterministic reduction over the splits that writes the whole dense gradient once (the
// active block through the channel ranges, zeros elsewhere).
#include "conv_gemm_kernel.cuh"

namespace dvn::cuda {

cudaError_t launch_wgrad(const ConvGemmParams& p, DType t, Math math, void* grad_w,
                         int32_t full_out, int32_t full_in, bool channels_last,
                         cudaStream_t stream) {
  cudaError_t err = detail::dispatch<Pass::Wgrad>(p, t, math, stream);
  if (err != cudaSuccess) return err;
  switch (t) {
    case DType::Float16: return detail::launch_wgrad_reduce<__half>(p, grad_w, full_out, full_in, channels_last, stream);
    case DType::BFloat16:
      return detail::launch_wgrad_reduce<__nv_bfloat16>(p, grad_w, full_out, full_in, channels_last, stream);
    case DType::Float32: return detail::launch_wgrad_reduce<float>(p, grad_w, full_out, full_in, channels_last, stream);
    case DType::Float64: return detail::launch_wgrad_reduce<double>(p, grad_w, full_out, full_in, channels_last, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dvn::cuda
