// Depthwise sliced convolutions: the direct kernels of depthwise_kernel.cuh, all three passes.
#include "depthwise_kernel.cuh"

namespace dvn::cuda {
namespace {

template <typename F>
cudaError_t by_type(DType t, F&& f) {
  switch (t) {
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_depthwise_fprop(const ConvGemmParams& p, DType t, cudaStream_t stream) {
  return by_type(t, [&](auto v) {
    return detail::launch_depthwise<decltype(v)>(Pass::Fprop, p, stream);
  });
}

cudaError_t launch_depthwise_dgrad(const ConvGemmParams& p, DType t, cudaStream_t stream) {
  return by_type(t, [&](auto v) {
    return detail::launch_depthwise<decltype(v)>(Pass::Dgrad, p, stream);
  });
}

cudaError_t launch_depthwise_wgrad(const ConvGemmParams& p, DType t, void* grad_w,
                                   int32_t full_out, int32_t full_in, bool channels_last,
                                   cudaStream_t stream) {
  return by_type(t, [&](auto v) {
    return detail::launch_depthwise_wgrad_all<decltype(v)>(p, grad_w, full_out, full_in,
                                                          channels_last, stream);
  });
}

}  // namespace dvn::cuda
