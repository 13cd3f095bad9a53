"""The C++/CUDA ops of dvn_kernels._C: fake implementations and the call.

Schemas, device kernels and the autograd formula live in C++ (csrc/); the meta ("fake")
implementations are registered here, as in pytorch/extension-cpp, so that torch.compile
traces the ops and torch.library.opcheck passes. Double backward is not supported by these
ops (use backend='reference' for higher-order gradients).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import extension
from .channels import follow_format
from .conv_args import ConvArgs, output_shape


def _fake_forward(x, weight, bias, in_segments, out_segments, stride, padding, dilation):
    shape = output_shape(x.shape, weight.shape, out_segments, stride, padding, dilation)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=follow_format(x))


def _fake_backward(grad_out, x, weight, in_segments, out_segments, stride, padding, dilation,
                   output_mask):
    def like(t: torch.Tensor, needed: bool, shape, fmt=torch.contiguous_format) -> torch.Tensor:
        return torch.empty(shape if needed else (0,), dtype=t.dtype, device=t.device,
                           memory_format=fmt if needed else torch.contiguous_format)

    return (like(x, output_mask[0], x.shape, follow_format(x)),
            like(weight, output_mask[1], weight.shape, follow_format(weight)),
            like(weight, output_mask[2], weight.shape[:1]))


if extension.LOADED:
    torch.library.register_fake("dvn_kernels::sliced_conv2d")(_fake_forward)
    torch.library.register_fake("dvn_kernels::sliced_conv2d_backward")(_fake_backward)


def native_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  args: ConvArgs) -> torch.Tensor:
    """The extension's kernel for x's device (C++ on CPU, CUDA on GPU)."""
    return torch.ops.dvn_kernels.sliced_conv2d(x, weight, bias, list(args.in_flat),
                                               list(args.out_flat), list(args.stride),
                                               list(args.padding), list(args.dilation))
