"""Moving channels between compact and full-size tensors with plain differentiable torch ops.

``flat`` is a segment list ``(s0, l0, s1, l1, ...)`` as ChannelSegments.flat() gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _pairs(flat: Sequence[int]) -> list[tuple[int, int]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def take_channels(t: torch.Tensor, dim: int, flat: Sequence[int]) -> torch.Tensor:
    """The active channels of ``t`` along ``dim`` in compact order (a view for one range)."""
    parts = [t.narrow(dim, start, length) for start, length in _pairs(flat)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def scatter_channels(compact: torch.Tensor, dim: int, flat: Sequence[int],
                     size: int) -> torch.Tensor:
    """A tensor with ``size`` channels along ``dim``: ``compact`` at the active channels,
    zeros elsewhere."""
    parts: list[torch.Tensor] = []
    pos = offset = 0

    def zeros(n: int) -> torch.Tensor:
        shape = list(compact.shape)
        shape[dim] = n
        return compact.new_zeros(shape)

    for start, length in _pairs(flat):
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
    channels_last, else contiguous. Mirrors dvn::follow_format in csrc/segments.cpp."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
