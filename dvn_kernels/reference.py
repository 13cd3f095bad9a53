"""Backends built from plain torch ops: 'reference' (the oracle) and 'masked' (the baseline)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .channels import oneDNN_safe, scatter_channels, take_channels
from .plan import ConvPlan


def reference_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, weight[out_idx][:, in_idx], bias[out_idx])``: slice, then a dense conv.

    The correctness oracle; also "slice + dense conv", what width-adaptive projects do today
    (the sliced weight is copied on every call and its gradient is a zero-filled full tensor).
    """
    ins, outs = plan.in_segments.flat(), plan.out_segments.flat()
    w = take_channels(take_channels(weight, 0, outs), 1, ins)
    b = take_channels(bias, 0, outs) if bias is not None else None
    safe = oneDNN_safe(x)
    y = F.conv2d(safe, w, b, plan.stride, plan.padding, plan.dilation)
    return y if safe is x else y.contiguous(memory_format=torch.channels_last)


def masked_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Full-width dense conv on the zero-scattered input, active outputs gathered.

    The baseline: every level costs as much as the full network.
    """
    x_full = scatter_channels(x, 1, plan.in_segments.flat(), weight.shape[1])
    safe = oneDNN_safe(x_full)
    y_full = F.conv2d(safe, weight, bias, plan.stride, plan.padding, plan.dilation)
    if safe is not x_full:
        y_full = y_full.contiguous(memory_format=torch.channels_last)
    return take_channels(y_full, 1, plan.out_segments.flat())
