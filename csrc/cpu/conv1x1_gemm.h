// 1x1 sliced convolutions as plain GEMMs on the weight's strided view.
//
// A 1x1 convolution without padding is a matrix product per image. Reading the active block
// of the weight through its strides (row stride = full C_in) needs no gather and no oneDNN
// reorder of the activations, which on NCHW tensors costs more than the product itself.
#pragma once

#include <ATen/core/Tensor.h>

#include "../blocks.h"
#include "../conv_problem.h"

namespace dvn::cpu {

// True when the problem is a 1x1 convolution without padding (any stride).
bool gemm_applies(const ConvProblem& p);

// y = conv1x1(x, w) + bias_block; w is the (C_out_active, C_in_active) block_matrix, any strides.
at::Tensor conv1x1_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias_block,
                           const ConvProblem& p);

// Compact grad of x, in layout `fmt`; w as for conv1x1_forward.
at::Tensor conv1x1_grad_input(const at::Tensor& grad_out, const at::Tensor& w,
                              const ConvProblem& p, at::MemoryFormat fmt);

// Compact (C_out_active, C_in_active, 1, 1) grad of the active weight block.
at::Tensor conv1x1_grad_weight(const at::Tensor& grad_out, const at::Tensor& x,
                               const ConvProblem& p);

}  // namespace dvn::cpu
