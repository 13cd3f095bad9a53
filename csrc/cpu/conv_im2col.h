// Small convolutions (batch 1, few input elements) as im2col + GEMMs that read the weight in
// place.
//
// For such problems ATen runs its own im2col + GEMM kernel rather than oneDNN, and first makes
// the weight contiguous: for a sliced weight that is a copy of the whole active block on every
// call, which at batch 1 costs as much as the product (ResNet-42 level 3: 67 MB copied per
// image). Here each (output range, input range) pair of the active block is a row-major matrix
// with leading dimension C_in*kh*kw of the contiguous full weight, handed to the GEMM as it is.
// With several threads an image with more pixels than output channels runs in bands of output
// rows (each thread unfolds and multiplies its own band); otherwise one parallel unfold is
// followed by GEMMs that split the output channels. The extension must be compiled with OpenMP
// (setup.py, CMakeLists.txt) for at::parallel_for to run in parallel at all.
#pragma once

#include <ATen/core/Tensor.h>

#include "../conv_problem.h"

namespace dvn::cpu {

// True where ATen itself would pick im2col + GEMM over oneDNN (one float32 or float64 image of
// at most 20480 input elements, kernel not larger than 3 in both dimensions), for NCHW x and a
// contiguous weight. 1x1 kernels without padding go to conv1x1_gemm instead.
bool im2col_applies(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight);

// y = conv(x, weight[out][:, in]) + bias_block, compact NCHW.
at::Tensor im2col_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias_block, const ConvProblem& p);

}  // namespace dvn::cpu
