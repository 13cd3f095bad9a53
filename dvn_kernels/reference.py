"""Backends built from plain torch ops: 'reference' (the oracle) and 'masked' (the baseline)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .channels import oneDNN_safe, scatter_channels, take_channels
from .plan import ConvPlan


def _conv(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
          groups: int) -> torch.Tensor:
    safe = oneDNN_safe(x)
    y = F.conv2d(safe, weight, bias, plan.stride, plan.padding, plan.dilation, groups)
    return y if safe is x else y.contiguous(memory_format=torch.channels_last)


def _grouped_block(plan: ConvPlan, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The active block of a grouped weight and the groups to convolve it with.

    Whole groups on both sides (the kernels' case): the active output rows and as many groups
    as are active. Otherwise the literal meaning as one dense block: entry (o, i) is the weight
    that joins output channel o to input channel i when they are in one group, else zero.
    """
    rows = take_channels(weight, 0, plan.out_segments)
    c_in_group, c_out_group = weight.shape[1], weight.shape[0] // plan.groups
    if plan.kernel_reason is None:
        return rows, plan.out_total // c_out_group
    ins = torch.tensor(plan.in_segments.indices(), device=weight.device)
    outs = torch.tensor(plan.out_segments.indices(), device=weight.device)
    same_group = (outs[:, None] // c_out_group) == (ins[None, :] // c_in_group)
    dense = rows.index_select(1, ins % c_in_group)
    return dense * same_group[:, :, None, None].to(dense.dtype), 1


def reference_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, weight[out_idx][:, in_idx], bias[out_idx])``: slice, then a dense conv
    (grouped convolutions: the active groups' rows, or the literal dense block).

    The correctness oracle; also "slice + dense conv", what width-adaptive projects do today
    (the sliced weight is copied on every call and its gradient is a zero-filled full tensor).
    """
    ins, outs = plan.in_segments, plan.out_segments
    b = take_channels(bias, 0, outs) if bias is not None else None
    if plan.groups == 1:
        return _conv(plan, x, take_channels(take_channels(weight, 0, outs), 1, ins), b, 1)
    block, groups = _grouped_block(plan, weight)
    return _conv(plan, x, block, b, groups)


def masked_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Full-width dense conv on the zero-scattered input, active outputs gathered.

    The baseline: every level costs as much as the full network.
    """
    x_full = scatter_channels(x, 1, plan.in_segments, weight.shape[1] * plan.groups)
    y_full = _conv(plan, x_full, weight, bias, plan.groups)
    return take_channels(y_full, 1, plan.out_segments)


Mask = tuple[bool, bool, bool]
Grads = tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


def reference_conv2d_backward(plan: ConvPlan, grad_out: torch.Tensor, x: torch.Tensor,
                              weight: torch.Tensor, mask: Mask) -> Grads:
    """The gradients of ``reference_conv2d`` (x compact; weight and bias full size), only
    those ``mask`` asks for (None for the others).

    The dense convolution's backward on the sliced weight, the weight and bias gradients
    scattered into full-size zeros: what autograd through "slice + dense conv" computes, without
    running the forward again (``auto`` pairs it with another backend's forward).
    """
    if plan.groups > 1 and plan.kernel_reason is not None:  # the literal dense block: autograd
        return autograd_backward(reference_conv2d)(plan, grad_out, x, weight, mask)
    ins, outs = plan.in_segments, plan.out_segments
    rows = take_channels(weight, 0, outs)
    block, groups = (take_channels(rows, 1, ins), 1) if plan.groups == 1 \
        else (rows, plan.out_total // (weight.shape[0] // plan.groups))
    gx, g_block, g_bias = torch.ops.aten.convolution_backward(
        oneDNN_safe(grad_out), oneDNN_safe(x), block, [block.shape[0]] if mask[2] else None,
        plan.stride, plan.padding, plan.dilation, False, [0, 0], groups, list(mask))
    gw = gb = None
    if mask[1]:
        gw = torch.zeros_like(weight)
        col_pairs = ((0, weight.shape[1]),) if plan.groups > 1 else plan.in_segments.pairs
        row = 0
        for o_start, o_len in plan.out_segments.pairs:
            col = 0
            for i_start, i_len in col_pairs:
                gw.narrow(0, o_start, o_len).narrow(1, i_start, i_len).copy_(
                    g_block.narrow(0, row, o_len).narrow(1, col, i_len))
                col += i_len
            row += o_len
    if mask[2]:
        gb = scatter_channels(g_bias, 0, outs, weight.shape[0])
    return (gx if mask[0] else None), gw, gb


def autograd_backward(forward: Callable[[ConvPlan, torch.Tensor, torch.Tensor,
                                         Optional[torch.Tensor]], torch.Tensor]
                      ) -> Callable[[ConvPlan, torch.Tensor, torch.Tensor, torch.Tensor, Mask],
                                    Grads]:
    """A backward (as ``reference_conv2d_backward`` takes and returns) by autograd through
    ``forward``, which it runs again: for backends without a backward of their own."""
    def backward(plan: ConvPlan, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 mask: Mask) -> Grads:
        with torch.enable_grad():
            xs = x.detach().requires_grad_(mask[0])
            ws = weight.detach().requires_grad_(mask[1])
            bias = weight.new_zeros(weight.shape[0], requires_grad=True) if mask[2] else None
            y = forward(plan, xs, ws, bias)
            wanted = [t for t, m in zip((xs, ws, bias), mask) if m]
            got = iter(torch.autograd.grad(y, wanted, grad_out))
        return tuple(next(got) if m else None for m in mask)  # type: ignore[return-value]
    return backward
