"""The C++/CUDA ops of dvn_kernels._C: their fake implementations and the call.

Schemas, device kernels and the autograd formula live in C++ (csrc/); the fake (meta)
implementations (dvn_kernels.fake) are registered here, as in pytorch/extension-cpp, so that
torch.compile traces the ops and torch.library.opcheck passes. Double backward is not supported
by these ops (use backend='reference' for higher-order gradients).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import extension
from .fake import fake_backward, fake_forward
from .plan import ConvPlan

if extension.LOADED:
    torch.library.register_fake("dvn_kernels::sliced_conv2d")(fake_forward)
    torch.library.register_fake("dvn_kernels::sliced_conv2d_backward")(fake_backward)
    _FORWARD = torch.ops.dvn_kernels.sliced_conv2d.default
    _BACKWARD = torch.ops.dvn_kernels.sliced_conv2d_backward.default


def native_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The extension's kernel for x's device (C++ on CPU, CUDA on GPU)."""
    if plan.in_gather is not None or plan.out_gather is not None:
        weight, bias = plan.kernel_operands(weight, bias)
    return _FORWARD(x, weight, bias, plan.spec)


def native_conv2d_backward(plan: ConvPlan, grad_out: torch.Tensor, x: torch.Tensor,
                           weight: torch.Tensor, mask: tuple[bool, bool, bool]
                           ) -> tuple[Optional[torch.Tensor], ...]:
    """The extension's backward op for x's device, only the gradients ``mask`` asks for (None
    for the others); for plans without gathered sides (``plan.in_gather``/``out_gather``)."""
    grads = _BACKWARD(grad_out, x, weight, plan.spec, list(mask))
    return tuple(g if m else None for g, m in zip(grads, mask))
