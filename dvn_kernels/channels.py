"""Moving channels between compact and full-size tensors with plain differentiable torch ops.

``segments`` is a ChannelSegments, or its ``flat()`` tuple ``(s0, l0, s1, l1, ...)`` (the form
dvn and bench pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

from .segments import ChannelSegments

Ranges = Union[ChannelSegments, Sequence[int]]


def _pairs(segments: Ranges) -> Sequence[tuple[int, int]]:
    if isinstance(segments, ChannelSegments):
        return segments.ranges
    return [(segments[i], segments[i + 1]) for i in range(0, len(segments), 2)]


def take_channels(t: torch.Tensor, dim: int, segments: Ranges) -> torch.Tensor:
    """The active channels of ``t`` along ``dim`` in compact order (a view for one range)."""
    parts = [t.narrow(dim, start, length) for start, length in _pairs(segments)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def scatter_channels(compact: torch.Tensor, dim: int, segments: Ranges,
                     size: int) -> torch.Tensor:
    """A tensor with ``size`` channels along ``dim``: ``compact`` at the active channels,
    zeros elsewhere."""
    parts: list[torch.Tensor] = []
    pos = offset = 0

    def zeros(n: int) -> torch.Tensor:
        shape = list(compact.shape)
        shape[dim] = n
        return compact.new_zeros(shape)

    for start, length in _pairs(segments):
        if start > pos:
            parts.append(zeros(start - pos))
        parts.append(compact.narrow(dim, offset, length))
        offset += length
        pos = start + length
    if size > pos:
        parts.append(zeros(size - pos))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def follow_format(t: torch.Tensor) -> torch.memory_format:
    """Layout of a kernel result that follows ``t``: channels_last when ``t`` is strictly
    channels_last, else contiguous. Mirrors dvn::follow_format in csrc/blocks.cpp."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def oneDNN_safe(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a CPU convolution can take it without crashing: NCHW instead of channels_last
    when its height or width is 1.

    torch 2.14.1's CPU convolution (oneDNN) kills the process with a segmentation fault on some
    channels_last inputs of width 1 (1x1 kernel, bias, stride > 1, padding, dilation, batch of
    2 or more; found by fuzzing, reported in issue 15); the same call on NCHW runs correctly.
    Such degenerate shapes are rare and small, so the layout copy costs nothing that matters.
    Mirrored by dvn::cpu::onednn_safe in csrc/cpu/sliced_conv2d_cpu.cpp.
    """
    if (t.device.type == "cpu" and t.dim() == 4 and (t.shape[2] == 1 or t.shape[3] == 1)
            and follow_format(t) == torch.channels_last):
        return t.contiguous()
    return t
