"""Parameter-free residual shortcuts that keep units aligned on compact tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import Active, SelectionCache, resolve
from .units import UnitLayout


def pad_units(x: torch.Tensor, in_sizes: Sequence[int], out_sizes: Sequence[int],
              stride: int) -> torch.Tensor:
    """Average-pool by ``stride``, then zero-pad each unit's channels from its input size to
    its output size, so unit i of the input lands in unit i of the output."""
    if stride > 1:
        x = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
    if list(in_sizes) == list(out_sizes):
        return x
    if len(set(in_sizes)) == 1 and len(set(out_sizes)) == 1:
        # Equal units: pad the unit axis of an (N, units, unit channels, H, W) view, one op.
        n, _, h, w = x.shape
        units = x.reshape(n, len(in_sizes), in_sizes[0], h, w)
        padded = F.pad(units, (0, 0, 0, 0, 0, out_sizes[0] - in_sizes[0]))
        return padded.reshape(n, sum(out_sizes), h, w)
    parts = []
    for chunk, size in zip(torch.split(x, list(in_sizes), dim=1), out_sizes):
        parts.append(F.pad(chunk, (0, 0, 0, 0, 0, size - chunk.shape[1])))
    return torch.cat(parts, dim=1)


class UnitPad(nn.Module):
    """The shortcut of a residual block whose width or resolution changes (the paper's
    parameter-free shortcut: 2x2 average pooling and zero channel padding), applied per unit."""

    def __init__(self, in_layout: UnitLayout, out_layout: UnitLayout, stride: int) -> None:
        super().__init__()
        if in_layout.count != out_layout.count:
            raise ValueError(f"units: the shortcut needs the same units on both sides, got "
                             f"{in_layout.count} and {out_layout.count}")
        if in_layout.split and any(a > b for a, b in zip(in_layout.sizes, out_layout.sizes)):
            raise ValueError(f"units: a zero-padding shortcut cannot shrink units "
                             f"{list(in_layout.sizes)} -> {list(out_layout.sizes)}")
        self.in_layout, self.out_layout, self.stride = in_layout, out_layout, stride
        self._sizes: SelectionCache[Optional[tuple[int, ...]],
                                    tuple[list[int], list[int]]] = SelectionCache()

    def sizes(self, active: Optional[Active]) -> tuple[list[int], list[int]]:
        """(input unit sizes, output unit sizes) of a selection's units; kept per unit set."""
        return self._sizes.get_or_make(None if active is None else active.unit_set,
                                       self._make_sizes)

    def _make_sizes(self, units: Optional[tuple[int, ...]]) -> tuple[list[int], list[int]]:
        if units is None:
            units = tuple(range(1, (self.in_layout.count or 1) + 1))
        return self.in_layout.unit_sizes(units), self.out_layout.unit_sizes(units)

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        """The shortcut of ``active``'s units (default: the ``selected`` block's)."""
        in_sizes, out_sizes = self.sizes(resolve(active))
        return pad_units(x, in_sizes, out_sizes, self.stride)

    def export(self, active: Optional[Active]) -> StaticUnitPad:
        """This selection's shortcut as a module of plain ops."""
        return StaticUnitPad(*self.sizes(active), self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_layout} -> {self.out_layout}, stride={self.stride}"


class StaticUnitPad(nn.Module):
    """UnitPad for one fixed set of units (plain ops: exportable with torch.export)."""

    def __init__(self, in_sizes: Sequence[int], out_sizes: Sequence[int], stride: int) -> None:
        super().__init__()
        self.in_sizes, self.out_sizes, self.stride = list(in_sizes), list(out_sizes), stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_units(x, self.in_sizes, self.out_sizes, self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_sizes} -> {self.out_sizes}, stride={self.stride}"
