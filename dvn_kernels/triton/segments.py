"""Host-side helpers of the Triton launchers: segments as kernel scalars, the layout key."""

from __future__ import annotations

import torch

from ..segments import ChannelSegments


def kernel_ranges(segments: ChannelSegments) -> tuple[int, int, int, bool]:
    """(s0, l0, s1, two) of one or two ranges: compact channel v lives at v + s0 when
    v < l0, else at v - l0 + s1 (see common.channel)."""
    flat = segments.flat()
    if len(flat) == 2:
        return flat[0], flat[1], 0, False
    if len(flat) == 4:
        return flat[0], flat[1], flat[2], True
    raise ValueError(f"segments: the kernels take one or two ranges, got {segments!r}")


def gemm_layout(x: torch.Tensor) -> bool:
    """True for strictly channels_last x: an autotune key (the best tile differs)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1
