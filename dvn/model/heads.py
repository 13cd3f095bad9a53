"""Classifier heads on globally pooled active features."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

from dvn_kernels.channels import take_channels

from .networks import Active, VirtualNetworks, resolve
from .units import UnitLayout, UnitsLike


class LevelHeads(nn.Module):
    """One ``nn.Linear`` per (task, level): active features -> that task's classes.

    ``num_classes`` is one count for every task or a count per task (1-based order).
    """

    def __init__(self, in_features: int, num_classes: Union[int, Sequence[int]],
                 units: UnitsLike, networks: VirtualNetworks, bias: bool = True) -> None:
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

    def head(self, active: Optional[Active]) -> nn.Linear:
        """The head of a (task, level); ValueError for None (a head exists per configuration)."""
        if active is None:
            raise ValueError("active: LevelHeads needs a (task, level)")
        return self.heads[active.key]

    def forward(self, features: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        """Logits of ``active`` (default: the ``selected`` block's) from its pooled features."""
        active = resolve(active)
        head = self.head(active)
        if features.dim() != 2 or features.shape[1] != head.in_features:
            raise ValueError(f"features: expected (N, {head.in_features}) for task "
                             f"{active.task} at level {active.level}, got {tuple(features.shape)}")
        return head(features)

    def export(self, active: Active) -> nn.Linear:
        """A copy of this configuration's nn.Linear."""
        return copy.deepcopy(self.head(active))


class SlicedLinear(nn.Linear):
    """``nn.Linear`` whose input features are split into units: one shared classifier read
    through the active units' columns. ``out_units`` splits the output too (a hidden layer
    of an MLP head: the next layer takes the active units' features); by default the output
    is whole (the model's logits). Same parameters as ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, in_units: UnitsLike = None, out_units: UnitsLike = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.in_layout = UnitLayout.of(in_features, in_units)
        self.out_layout = UnitLayout.of(out_features, out_units)

    def _block(self, active: Optional[Active]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The active units' weight block and bias."""
        units = None if active is None else active.unit_set
        ins, outs = self.in_layout.segments(units), self.out_layout.segments(units)
        weight, bias = take_channels(self.weight, 1, ins.flat()), self.bias
        if self.out_layout.split:
            weight = take_channels(weight, 0, outs.flat())
            bias = take_channels(bias, 0, outs.flat()) if bias is not None else None
        return weight, bias

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        weight, bias = self._block(resolve(active))
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"x: has {x.shape[-1]} features but the active units select "
                             f"{weight.shape[1]}")
        return F.linear(x, weight, bias)

    def export(self, active: Optional[Active]) -> nn.Linear:
        weight, bias = self._block(active)
        out = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias is not None,
                        device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            out.weight.copy_(weight)
            if bias is not None:
                out.bias.copy_(bias)
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_units={self.in_layout.count}, "
                f"out_units={self.out_layout.count}")
