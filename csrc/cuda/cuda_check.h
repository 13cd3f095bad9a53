// Turns a CUDA status into a c10::Error (a Python RuntimeError) naming the failed step.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define DVN_CUDA_CHECK(expr, what)                                                          \
  do {                                                                                      \
    const cudaError_t dvn_cuda_status_ = (expr);                                            \
    TORCH_CHECK(dvn_cuda_status_ == cudaSuccess, "dvn_kernels CUDA error in ", what, ": ",  \
                cudaGetErrorName(dvn_cuda_status_), ": ",                                   \
                cudaGetErrorString(dvn_cuda_status_));                                      \
  } while (0)
