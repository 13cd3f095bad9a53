"""Classifier heads on globally pooled active features."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvn_kernels.channels import take_channels

from .networks import Active, VirtualNetworks, current_selection
from .units import UnitLayout, UnitSpec


class LevelHeads(nn.Module):
    """One ``nn.Linear`` per (task, level): active features -> that task's classes.

    ``num_classes`` is one count for every task or a count per task (1-based order).
    """

    def __init__(self, in_features: int, num_classes: Union[int, Sequence[int]],
                 units: UnitSpec, networks: VirtualNetworks, bias: bool = True) -> None:
        super().__init__()
        self.layout = UnitLayout.of(in_features, units)
        classes = [num_classes] * networks.tasks if isinstance(num_classes, int) \
            else list(num_classes)
        if len(classes) != networks.tasks or any(c < 1 for c in classes):
            raise ValueError(f"num_classes: expected a positive count or one per task "
                             f"({networks.tasks} tasks), got {num_classes!r}")
        self.num_classes = classes
        self.heads = nn.ModuleDict()
        for task, level in networks.configs():
            active = networks.active(task, level)
            self.heads[active.key] = nn.Linear(self.layout.width(active.unit_set),
                                               classes[task - 1], bias)

    def head(self, active: Active) -> nn.Linear:
        if active is None:
            raise ValueError("active: LevelHeads needs a (task, level)")
        return self.heads[active.key]

    def forward(self, features: torch.Tensor, active: Active) -> torch.Tensor:
        head = self.head(active)
        if features.dim() != 2 or features.shape[1] != head.in_features:
            raise ValueError(f"features: expected (N, {head.in_features}) for task "
                             f"{active.task} at level {active.level}, got {tuple(features.shape)}")
        return head(features)

    def export(self, active: Active) -> nn.Linear:
        return copy.deepcopy(self.head(active))


class SlicedLinear(nn.Linear):
    """``nn.Linear`` whose input features are split into units (output unsplit): one shared
    classifier read through the active units' columns. Same parameters as ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, in_units: UnitSpec = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.in_layout = UnitLayout.of(in_features, in_units)

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        if active is None:
            active = current_selection()
        ins = self.in_layout.segments(None if active is None else active.unit_set)
        if x.shape[-1] != ins.total:
            raise ValueError(f"x: has {x.shape[-1]} features but the active units select "
                             f"{ins.total}")
        return F.linear(x, take_channels(self.weight, 1, ins.flat()), self.bias)

    def export(self, active: Optional[Active]) -> nn.Linear:
        ins = self.in_layout.segments(None if active is None else active.unit_set)
        out = nn.Linear(ins.total, self.out_features, self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(take_channels(self.weight, 1, ins.flat()))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out
