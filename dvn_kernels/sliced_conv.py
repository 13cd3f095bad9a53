"""The public sliced convolution."""

from __future__ import annotations

from typing import Optional, Union

import torch

from .backends import IMPLEMENTATIONS, resolve_backend
from .conv_args import IntPair, check_conv_args
from .segments import SegmentsLike


def sliced_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  in_segments: SegmentsLike, out_segments: SegmentsLike, stride: IntPair = 1,
                  padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1,
                  backend: str = "auto") -> torch.Tensor:
    """2-D convolution over the active channel ranges of a full weight.

    ``weight`` is the full (C_out, C_in, kh, kw) parameter, read in place; ``bias`` is (C_out,)
    or None. ``x`` is compact: (N, in_segments.total, H, W), the active input channels in
    ascending order; the result is compact in the same sense for ``out_segments``. Equal to
    ``conv2d(x, weight[out_idx][:, in_idx], bias[out_idx], stride, padding, dilation)``.

    Gradients flow to ``x`` (compact), ``weight`` and ``bias`` (full shape, zero outside the
    active block). Segments are ChannelSegments or sequences of (start, length) pairs.
    ``backend`` is one of 'auto', 'reference', 'masked', 'cpu', 'triton', 'cuda'.
    """
    args = check_conv_args(x, weight, bias, in_segments, out_segments, stride, padding,
                           dilation, groups)
    return IMPLEMENTATIONS[resolve_backend(backend, x)](x, weight, bias, args)
