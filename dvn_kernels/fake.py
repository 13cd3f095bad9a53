"""The one pair of fake (meta) implementations of the sliced convolution ops.

Every kernel op (the native ``dvn_kernels::sliced_conv2d`` / ``sliced_conv2d_backward`` and the
Triton ``triton_sliced_conv2d`` / ``triton_sliced_conv2d_backward``) has the same arguments and
results; these functions say what those results look like, and the Triton ops allocate their
real outputs with them too, so shapes and layouts are defined once for every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from .channels import follow_format
from .plan import output_shape, parse_spec


def empty_output(x: torch.Tensor, weight: torch.Tensor, spec: str) -> torch.Tensor:
    """The uninitialised compact result of the forward op, in x's layout."""
    s = parse_spec(spec)
    shape = output_shape(x.shape, weight.shape, s.out_segments.total, s.stride, s.padding,
                         s.dilation)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=follow_format(x))


def empty_grads(x: torch.Tensor, weight: torch.Tensor, output_mask: Sequence[bool]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised gradients of x (compact, x's layout), weight and bias (full size); a
    gradient not asked for is an empty (0,) tensor."""

    def like(t: torch.Tensor, needed: bool, shape, fmt=torch.contiguous_format) -> torch.Tensor:
        return torch.empty(shape if needed else (0,), dtype=t.dtype, device=t.device,
                           memory_format=fmt if needed else torch.contiguous_format)

    return (like(x, output_mask[0], x.shape, follow_format(x)),
            like(weight, output_mask[1], weight.shape, follow_format(weight)),
            like(weight, output_mask[2], weight.shape[:1]))


def fake_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 spec: str) -> torch.Tensor:
    return empty_output(x, weight, spec)


def fake_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: str,
                  output_mask: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parse_spec(spec)  # a bad spec fails here as it does in the kernels
    return empty_grads(x, weight, output_mask)
