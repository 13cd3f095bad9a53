"""The public sliced convolution, and its hot path for callers that hold a plan."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .backends import implementation
from .plan import ConvPlan, IntPair, conv_plan
from .segments import SegmentsLike


def sliced_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  in_segments: SegmentsLike, out_segments: SegmentsLike, stride: IntPair = 1,
                  padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1,
                  backend: str = "auto") -> torch.Tensor:
    """2-D convolution over the active channel ranges of a full weight.

    ``weight`` is the full (C_out, C_in / groups, kh, kw) parameter, read in place; ``bias`` is
    (C_out,) or None. ``x`` is compact: (N, in_segments.total, H, W), the active input channels
    in ascending order; the result is compact in the same sense for ``out_segments``. Equal to
    ``conv2d(x, weight[out_idx][:, in_idx], bias[out_idx], stride, padding, dilation)``; with
    groups, to the grouped conv of the full weight on x scattered into the full input channels
    (zeros elsewhere), active outputs kept. ``padding='same'`` pads as ``F.conv2d`` does (one
    more on the right and bottom when the total is odd).

    Gradients flow to ``x`` (compact), ``weight`` and ``bias`` (full shape, zero outside the
    active block). Segments are ChannelSegments or sequences of (start, length) pairs.
    ``backend`` is one of 'auto', 'reference', 'masked', 'cpu', 'triton', 'cuda'.

    Every argument is checked (TypeError/ValueError naming it); the checks of the segments and
    geometry are memoised when the segments are ChannelSegments. Callers that run the same
    configuration many times can hold its plan (``conv_plan``) and call ``planned_conv2d``.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    plan = conv_plan(weight.shape, in_segments, out_segments, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    plan.check_inputs(x, weight, bias)
    return planned_conv2d(plan, x, weight, bias, backend)


def planned_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """``sliced_conv2d`` of a checked plan: the hot path of model layers.

    No argument checks in Python beyond choosing the backend; the kernels' own checks still
    hold (a mismatched tensor raises there), but ``reference`` and ``masked`` report shape
    errors in torch's words. Use ``sliced_conv2d`` for input that has not been checked.
    """
    if plan.pre_pad is not None:
        x = F.pad(x, plan.pre_pad)
    return implementation(backend, x)(plan, x, weight, bias)
