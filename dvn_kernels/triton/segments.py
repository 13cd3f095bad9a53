"""Host-side segment handling: at most two ranges per side go to the kernels as scalars.

More than two ranges per side (possible with k >= 5 units) take a correct but copying path:
the weight block of that side is gathered into a compact copy (one range), and for the weight
gradient the compact block is scattered back; see ``op``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segs:
    """One or two channel ranges as kernel scalars: (s0, l0) and, when ``two``, s1."""

    s0: int
    l0: int
    s1: int
    two: bool
    total: int

    @staticmethod
    def of(flat: Sequence[int]) -> "Segs":
        if len(flat) == 2:
            return Segs(flat[0], flat[1], 0, False, flat[1])
        if len(flat) == 4:
            return Segs(flat[0], flat[1], flat[2], True, flat[1] + flat[3])
        raise ValueError(f"segments: the kernels take one or two ranges, got {list(flat)}")


def native(flat: Sequence[int]) -> bool:
    """Whether the kernels address these ranges in place (one or two ranges)."""
    return len(flat) in (2, 4)


def compact(total: int) -> tuple[int, int]:
    """The single range covering a gathered (compact) side."""
    return (0, total)


def gemm_layout(x: torch.Tensor) -> bool:
    """True for strictly channels_last x: an autotune key (the best tile differs)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1
