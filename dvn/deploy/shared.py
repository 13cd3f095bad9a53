"""One layer's weight held as the unit blocks that a set of configurations use, once each.

The blocks a set of unit sets S_1..S_n use are the union of the squares S_i x S_i (output unit
x input unit). Held as rows, that union is exact: output unit a needs the input units
I_a = union of the S_i that contain a, and every configuration containing a uses a subset of
I_a. So the layer holds, per run of consecutive output units with equal I_a (a *row group*),
one dense tensor ``(channels of the run, channels of I_a, kh, kw)``, and runs a configuration
as one convolution per row group it touches (the op reading the group's tensor in place
through channel ranges), concatenated in unit order. A configuration that covers a whole group
runs a plain ``F.conv2d`` on it, as its static export would. One configuration, or levels of
one task (nested unit sets), make a single group: the union of their units, one convolution.
Several tasks at one level share the blocks of their common units and hold no block that none
of them uses. ``layout="union"`` holds one tensor over the union of the units instead: one
convolution per call, but blocks nobody uses (at level 1 of k = 4 tasks, 4x the blocks in use);
``bench/deploy.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels import ChannelSegments, segments_from_units

from ..model.conv import SlicedConv2d, SlicedConvForward
from ..model.networks import Active
from .unitfile import block_key

UnitSet = tuple[int, ...]
Rows = tuple[UnitSet, Optional[UnitSet]]  # (output units, input units or None: not split)


def row_groups(unit_sets: Iterable[UnitSet], in_split: bool = True) -> list[Rows]:
    """The row groups that hold exactly the blocks the unit sets use (see the module doc)."""
    rows: dict[int, set[int]] = {}
    for units in unit_sets:
        for a in units:
            rows.setdefault(a, set()).update(units)
    groups: list[Rows] = []
    for a in sorted(rows):
        ins = tuple(sorted(rows[a])) if in_split else None
        if groups and groups[-1][1] == ins:
            groups[-1] = (groups[-1][0] + (a,), ins)
        else:
            groups.append(((a,), ins))
    return groups


def union_group(unit_sets: Iterable[UnitSet], in_split: bool = True) -> list[Rows]:
    """One group over the union of the units (``layout="union"``): blocks that no set uses
    are held too, and every set runs as one convolution."""
    units = tuple(sorted({a for s in unit_sets for a in s}))
    return [(units, units if in_split else None)] if units else []


LAYOUTS = {"blocks": row_groups, "union": union_group}


@dataclass(frozen=True)
class Group:
    """One row group's units and its dense weight block (and bias)."""

    out_units: UnitSet
    in_units: Optional[UnitSet]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One convolution of a configuration: a group's tensor, whole (``plan`` None: a plain
    conv2d) or through the plan of the configuration's channel ranges in it."""

    group: Group
    plan: Optional[dvn_kernels.ConvPlan]


@dataclass(frozen=True)
class LayerState:
    """What a layer holds and how each deployed unit set runs on it; replaced whole."""

    groups: tuple[Group, ...]
    steps: Mapping[UnitSet, tuple[Step, ...]]


Fetch = Callable[[list[str]], dict[str, torch.Tensor]]


class SharedConv2d(SlicedConvForward, nn.Module):
    """A ``SlicedConv2d`` whose weight is held as row groups for the unit sets deployed.

    Called like the sliced layer, through the same forward path (``SlicedConvForward``: the
    selection resolved alike, explicit or from a ``selected`` block, the same padding and
    backend rules): compact ``x`` of a selection's input units -> its output units.
    ``update`` changes the unit sets, keeping the blocks it already holds and fetching only
    the missing ones. A call reads the layer's state once, so a call running while another
    thread updates sees either the old or the new state, whole.
    """

    def __init__(self, name: str, conv: SlicedConv2d, device: torch.device) -> None:
        super().__init__()
        self.name = name
        self.in_layout, self.out_layout = conv.in_layout, conv.out_layout
        self.in_channels, self.kernel_size = conv.in_channels, conv.kernel_size
        self.stride, self.dilation, self.padding = conv.stride, conv.dilation, conv.padding
        self.padding_mode, self.backend = conv.padding_mode, conv.backend
        self.op_padding, self.input_pad = conv.op_padding, conv.input_pad
        self.has_bias = conv.bias is not None
        self.dtype, self.device = conv.weight.dtype, device
        self.state = LayerState((), {})

    # -------------------------------------------------------------------------- running
    def run_units(self, x: torch.Tensor, active: Optional[Active],
                  backend: str) -> torch.Tensor:
        """One convolution per row group the selection touches, concatenated in unit order."""
        steps = self.state.steps.get(active.unit_set) if active is not None else None
        if steps is None:
            raise ValueError(f"active: layer {self.name} holds no weights for units "
                             f"{None if active is None else list(active.unit_set)}")
        outs = []
        for step in steps:
            g = step.group
            if step.plan is None:
                outs.append(F.conv2d(x, g.weight, g.bias, self.stride, self.op_padding,
                                     self.dilation))
            else:
                outs.append(dvn_kernels.planned_conv2d(step.plan, x, g.weight, g.bias, backend))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    def export(self, active: Active) -> nn.Conv2d:
        """A plain nn.Conv2d of a deployed selection: holding the group's own tensor when the
        selection covers one whole group (no copy), else a copy of its blocks."""
        steps = self.state.steps.get(active.unit_set)
        if steps is None:
            raise ValueError(f"active: layer {self.name} holds no weights for units "
                             f"{list(active.unit_set)}")
        if len(steps) == 1 and steps[0].plan is None:
            weight, bias = steps[0].group.weight, steps[0].group.bias
        else:
            blocks = self._blocks()
            units = active.unit_set
            ins = [None] if not self.in_layout.split else list(units)
            weight = torch.cat([torch.cat([blocks[(a, b)] for b in ins], 1) for a in units], 0)
            bias = torch.cat([self._bias_blocks()[a] for a in units]) if self.has_bias else None
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], self.kernel_size, self.stride,
                         self.padding, self.dilation, 1, bias is not None, self.padding_mode,
                         device="meta", dtype=weight.dtype)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            conv.bias = nn.Parameter(bias, requires_grad=False)
        return conv

    # ------------------------------------------------------------------------- holding
    def tensors(self) -> list[torch.Tensor]:
        """The tensors this layer holds."""
        return [t for g in self.state.groups for t in (g.weight, g.bias) if t is not None]

    def _blocks(self) -> dict[tuple[int, Optional[int]], torch.Tensor]:
        """(output unit, input unit or None) -> a view of that block in the group holding it."""
        out = {}
        for g in self.state.groups:
            o = 0
            for a in g.out_units:
                rows = g.weight[o:o + self.out_layout.sizes[a - 1]]
                o += rows.shape[0]
                if g.in_units is None:
                    out[(a, None)] = rows
                    continue
                i = 0
                for b in g.in_units:
                    size = self.in_layout.sizes[b - 1]
                    out[(a, b)] = rows[:, i:i + size]
                    i += size
        return out

    def _bias_blocks(self) -> dict[int, torch.Tensor]:
        out = {}
        for g in self.state.groups:
            if g.bias is None:
                continue
            o = 0
            for a in g.out_units:
                size = self.out_layout.sizes[a - 1]
                out[a] = g.bias[o:o + size]
                o += size
        return out

    def needed_keys(self, groups: Iterable[Rows]) -> list[str]:
        """File keys of the blocks of ``groups`` that this layer does not hold yet."""
        held = self._blocks()
        held_bias = self._bias_blocks()
        keys = []
        for out_units, in_units in groups:
            for a in out_units:
                for b in (in_units or (None,)):
                    if (a, b) not in held:
                        keys.append(block_key(self.name, a, b))
                if self.has_bias and a not in held_bias:
                    keys.append(block_key(self.name, a, None, "bias"))
        return keys

    def update(self, unit_sets: Iterable[UnitSet], fetch: Fetch, layout: str = "blocks") -> None:
        """Holds the groups of ``unit_sets`` in ``layout`` (``"blocks"``: exactly the blocks
        they use; ``"union"``: one tensor over their units): groups whose units do not change
        are kept as they are, others are assembled from the blocks held and the missing ones,
        which ``fetch(keys)`` reads. Blocks no longer held are freed with the old state."""
        unit_sets = sorted(set(unit_sets))
        rows = LAYOUTS[layout](unit_sets, self.in_layout.split)
        fetched = fetch(self.needed_keys(rows)) if rows else {}
        old = {(g.out_units, g.in_units): g for g in self.state.groups}
        held = held_bias = None
        groups = []
        for out_units, in_units in rows:
            group = old.get((out_units, in_units))
            if group is None:
                if held is None:
                    held, held_bias = self._blocks(), self._bias_blocks()
                group = self._assemble(out_units, in_units, held, held_bias, fetched)
            groups.append(group)
        steps = {units: self._steps(units, groups) for units in unit_sets}
        self.state = LayerState(tuple(groups), steps)

    def _assemble(self, out_units: UnitSet, in_units: Optional[UnitSet], held: dict,
                  held_bias: dict, fetched: dict[str, torch.Tensor]) -> Group:
        def block(a: int, b: Optional[int]) -> torch.Tensor:
            t = held.get((a, b))
            return fetched[block_key(self.name, a, b)] if t is None else t

        ins = in_units or (None,)
        if len(out_units) == 1 and len(ins) == 1:
            held_block = held.get((out_units[0], ins[0]))
            # a held block is a view of an old group: copy it, so the old tensor can go
            weight = block(out_units[0], ins[0]) if held_block is None else held_block.clone()
        else:
            rows = sum(self.out_layout.sizes[a - 1] for a in out_units)
            cols = self.in_channels if in_units is None else \
                sum(self.in_layout.sizes[b - 1] for b in in_units)
            weight = torch.empty((rows, cols, *self.kernel_size), dtype=self.dtype,
                                 device=self.device)
            o = 0
            for a in out_units:
                size = self.out_layout.sizes[a - 1]
                i = 0
                for b in ins:
                    src = block(a, b)
                    weight[o:o + size, i:i + src.shape[1]].copy_(src)
                    i += src.shape[1]
                o += size
        bias = None
        if self.has_bias:
            parts = [held_bias.get(a) if a in held_bias else
                     fetched[block_key(self.name, a, None, "bias")] for a in out_units]
            bias = torch.cat(parts)
        return Group(out_units, in_units, weight.to(self.device), bias)

    def _steps(self, units: UnitSet, groups: list[Group]) -> tuple[Step, ...]:
        steps = []
        for g in groups:
            outs = [i for i, a in enumerate(g.out_units) if a in units]
            if not outs:
                continue
            out_segs = segments_from_units([self.out_layout.sizes[a - 1] for a in g.out_units],
                                           outs)
            if g.in_units is None:
                ins, in_segs = None, ChannelSegments.full(self.in_channels)
            else:
                ins = [g.in_units.index(b) for b in units]
                in_segs = segments_from_units([self.in_layout.sizes[b - 1] for b in g.in_units],
                                              ins)
            whole = len(outs) == len(g.out_units) and (ins is None or len(ins) == len(g.in_units))
            plan = None if whole else dvn_kernels.conv_plan(
                g.weight.shape, in_segs, out_segs, stride=self.stride, padding=self.op_padding,
                dilation=self.dilation)
            steps.append(Step(g, plan))
        return tuple(steps)

    def extra_repr(self) -> str:
        groups = ", ".join(f"{list(g.out_units)}x{list(g.in_units) if g.in_units else 'all'}"
                           for g in self.state.groups)
        return f"{self.name}: groups [{groups}]"
