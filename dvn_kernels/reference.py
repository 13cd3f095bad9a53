"""Backends built from plain torch ops: 'reference' (the oracle) and 'masked' (the baseline)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .channels import scatter_channels, take_channels
from .conv_args import ConvArgs


def reference_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     args: ConvArgs) -> torch.Tensor:
    """``conv2d(x, weight[out_idx][:, in_idx], bias[out_idx])``: slice, then a dense conv.

    The correctness oracle; also "slice + dense conv", what width-adaptive projects do today
    (the sliced weight is copied on every call and its gradient is a zero-filled full tensor).
    """
    w = take_channels(take_channels(weight, 0, args.out_flat), 1, args.in_flat)
    b = take_channels(bias, 0, args.out_flat) if bias is not None else None
    return F.conv2d(x, w, b, args.stride, args.padding, args.dilation)


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  args: ConvArgs) -> torch.Tensor:
    """Full-width dense conv on the zero-scattered input, active outputs gathered.

    The baseline: every level costs as much as the full network.
    """
    x_full = scatter_channels(x, 1, args.in_flat, weight.shape[1])
    y_full = F.conv2d(x_full, weight, bias, args.stride, args.padding, args.dilation)
    return take_channels(y_full, 1, args.out_flat)
