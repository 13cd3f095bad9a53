"""SlicedBatchNorm2d: private batch norm per (task, level), sized to the active channels."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules import module as _torch_module  # its global hooks

from .networks import Active, VirtualNetworks, resolve
from .units import UnitLayout, UnitsLike


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would run a hook of its own or a global one (then it is
    called as a module, so that they run)."""
    m = _torch_module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or m._global_forward_hooks
                or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


class SlicedBatchNorm2d(nn.Module):
    """One ``nn.BatchNorm2d`` per (task, level) of ``networks``, over that level's channels.

    Statistics of a sub-network differ from the full network's, so sharing them is wrong at
    every width but one: each configuration keeps its own running statistics and affine
    parameters (``norms["t<task>_l<level>"]``).
    """

    def __init__(self, num_features: int, units: UnitsLike, networks: VirtualNetworks,
                 eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.layout = UnitLayout.of(num_features, units)
        self.num_features = num_features
        self.norms = nn.ModuleDict()
        for task, level in networks.configs():
            active = networks.active(task, level)
            self.norms[active.key] = nn.BatchNorm2d(
                self.layout.width(active.unit_set), eps, momentum, affine, track_running_stats,
                device=device, dtype=dtype)

    def norm(self, active: Optional[Active]) -> nn.BatchNorm2d:
        if active is None:
            raise ValueError("active: SlicedBatchNorm2d needs a (task, level): its statistics "
                             "are private to each configuration")
        try:
            return self.norms[active.key]
        except KeyError:
            raise ValueError(f"active: no batch norm for task {active.task} at level "
                             f"{active.level} in this layer") from None

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        """``x``: the active channels of ``active`` (default: the ``selected`` block's)."""
        active = resolve(active)
        # The hot path reads the ModuleDict's dict directly; norm() explains a missing entry.
        bn = self.norms._modules.get(active.key) if active is not None else None
        if bn is None:
            bn = self.norm(active)
        if x.dim() != 4 or x.shape[1] != bn.num_features:
            raise ValueError(f"x: expected (N, {bn.num_features}, H, W) for task {active.task} "
                             f"at level {active.level}, got {tuple(x.shape)}")
        if not bn.training and bn.running_mean is not None and type(x) is torch.Tensor \
                and not _hooked(bn):
            # What bn(x) computes in eval, without a second module call and BatchNorm2d's
            # training bookkeeping: 3% of ResNet-42 level 1's eager call at batch 1 (41 layers)
            return torch.batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                    False, 0.0, bn.eps, torch.backends.cudnn.enabled)
        return bn(x)

    def export(self, active: Optional[Active]) -> nn.BatchNorm2d:
        """A copy of this configuration's nn.BatchNorm2d."""
        return copy.deepcopy(self.norm(active))

    def extra_repr(self) -> str:
        return f"{self.num_features}, units={self.layout.count}, configs={len(self.norms)}"

