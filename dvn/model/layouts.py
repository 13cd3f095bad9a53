"""Unit layouts of a converted model: one split per channel count, in whole groups.

Layers that share channels must split them the same way: a batch norm and the conv before it,
the next layer's input, both operands of a residual sum, a squeeze-excitation scale and the
features it scales. Tensors that meet in a layer or an elementwise op have the same number of
channels, so ``convert_to_sliced`` gives every channel count of the model one layout: whatever
the path between two layers (the model's forward is never traced), equal channel counts split
alike. The split is k near-equal units (``split_channels``) unless a grouped convolution has
that many channels on a side: then every layer with that many channels splits in whole quanta
of the lcm of those convolutions' group sizes, as equal as possible (RegNetY-400MF's 104
channels in groups of 8 become [32, 24, 24, 24], where 4 equal units of 26 would cut groups).
A grouped conv whose sides have different group sizes (a depthwise conv with a channel
multiplier) gets quanta of the same number of groups on both sides, so that unit u holds the
same groups on both; plain depthwise convs (one channel per group) constrain nothing.
"""

from __future__ import annotations

import math

import torch.nn as nn

from .units import UnitLayout


class ChannelLayouts:
    """The layout of each channel count of ``model`` split into ``units`` units.

    ``unsplit_in_channels``: the input channel count that stays whole (the image's); grouped
    convolutions on it add no quantum (they cannot be sliced: ``SlicedConv2d`` says why).
    """

    def __init__(self, model: nn.Module, units: int, unsplit_in_channels: int) -> None:
        self.units = units
        grouped = [(f"{name} (groups={m.groups})", m) for name, m in model.named_modules()
                   if isinstance(m, nn.Conv2d) and m.groups > 1
                   and m.in_channels != unsplit_in_channels]
        # channels -> (quantum, the grouped convs that set it). A grouped conv needs both
        # sides in quanta of the same number of its groups, so that k near-equal units of
        # quanta hold the same groups on both sides; repeated until no quantum grows (each
        # only grows and divides its channel count).
        self.quanta: dict[int, tuple[int, list[str]]] = {}
        changed = True
        while changed:
            changed = False
            for label, m in grouped:
                sides = ((m.in_channels, m.in_channels // m.groups),
                         (m.out_channels, m.out_channels // m.groups))
                per_quantum = 1  # groups per quantum, the same on both sides
                for channels, per_group in sides:
                    quantum = self.quanta.get(channels, (1, []))[0]
                    per_quantum = math.lcm(per_quantum,
                                           math.lcm(quantum, per_group) // per_group)
                for channels, per_group in sides:
                    quantum, convs = self.quanta.get(channels, (1, []))
                    if per_quantum * per_group != quantum:
                        self.quanta[channels] = (per_quantum * per_group,
                                                 convs + [label] if label not in convs
                                                 else convs)
                        changed = True
        self._layouts: dict[int, UnitLayout] = {}

    def __call__(self, channels: int, layer: str) -> UnitLayout:
        """The layout of ``channels`` channels; ``layer`` (its name) is named in errors."""
        layout = self._layouts.get(channels)
        if layout is None:
            quantum, convs = self.quanta.get(channels, (1, []))
            if channels // quantum < self.units:
                if quantum == 1:
                    raise ValueError(f"units: layer {layer} has {channels} channels, fewer "
                                     f"than the {self.units} units asked for")
                raise ValueError(
                    f"units: layer {layer} has {channels} channels, which the grouped conv(s) "
                    f"{', '.join(convs)} split into groups; units of whole groups of all of "
                    f"them take multiples of {quantum} channels, and {channels} channels make "
                    f"only {channels // quantum} of those, fewer than the {self.units} units "
                    "asked for")
            layout = UnitLayout(channels, self.units, quantum=quantum)
            self._layouts[channels] = layout
        return layout
