// 1x1 sliced convolutions as plain GEMMs on the weight's strided view.
//
// A 1x1 convolution without padding is a matrix product per image. Reading the active block
// of the weight through its strides (row stride = full C_in) needs no gather and no oneDNN
// reorder of the activations. The GEMMs run only where they beat oneDNN on both CPUs measured
// (an Intel Xeon and an AMD EPYC; python -m bench.conv --shortcuts): the forward of NCHW
// inputs at stride 1 or of single images (oneDNN's reorder of NCHW activations costs more
// than the product: 2-3x) and the input gradient of NCHW inputs (oneDNN's strided backward-
// data was 2-8x slower). Elsewhere, channels_last inputs and weight gradients above all,
// oneDNN was faster (up to 8x for channels_last forwards on the EPYC), and so it was for
// batches of small feature maps (fewer than 64 output pixels per image: see
// kBatchedGemmMinPixels).
#pragma once

#include <ATen/core/Tensor.h>

#include "../blocks.h"
#include "../conv_problem.h"

namespace dvn::cpu {

// True when the problem is a 1x1 convolution without padding (any stride).
bool gemm_applies(const ConvProblem& p);

// Where the forward runs as GEMMs: NCHW-contiguous x at stride 1, or a single image; batches
// only with 64 or more output pixels per image.
bool gemm_forward_applies(const ConvProblem& p, const at::Tensor& x);

// Where the input gradient runs as GEMMs: x not channels_last, the same pixel condition.
bool gemm_grad_input_applies(const ConvProblem& p, const at::Tensor& x);

// y = conv1x1(x, w) + bias_block; w is the (C_out_active, C_in_active) block_matrix, any strides.
at::Tensor conv1x1_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias_block,
                           const ConvProblem& p);

// Compact grad of x, in layout `fmt`; w as for conv1x1_forward.
at::Tensor conv1x1_grad_input(const at::Tensor& grad_out, const at::Tensor& w,
                              const ConvProblem& p, at::MemoryFormat fmt);

}  // namespace dvn::cpu
