"""Converting an existing model's layers into sliced ones, and running it per (task, level).

    vm = dvn.convert_to_sliced(torchvision_like_resnet, dvn.VirtualNetworks(4))
    logits = vm(x, task=2, level=1)

Conv2d layers become SlicedConv2d (inputs with ``unsplit_in_channels`` channels, the image,
stay whole), BatchNorm2d layers SlicedBatchNorm2d (every configuration starts from the
original statistics and affine parameters of its channels), Linear layers SlicedLinear
(classifiers on pooled features: inputs split into units, outputs whole). The model's own
forward code runs unchanged: ``VirtualModel`` hands the selection to its sliced layers through
a context variable (``dvn.networks.selected``) for the duration of one call. Context variables
are per thread (and per asyncio task), so one model object serves concurrent calls with
different (task, level) correctly.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from .conv import SlicedConv2d
from .heads import SlicedLinear
from .networks import VirtualNetworks, selected
from .norm import SlicedBatchNorm2d

SLICED = (SlicedConv2d, SlicedBatchNorm2d, SlicedLinear)
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.BatchNorm1d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d,
               nn.Embedding)


class VirtualModel(nn.Module):
    """A converted model run as ``model(x, task=..., level=...)`` (1-based)."""

    def __init__(self, module: nn.Module, networks: VirtualNetworks) -> None:
        super().__init__()
        self.module = module
        self.networks = networks

    def forward(self, x, task: int, level: int, backend: Optional[str] = None):
        with selected(self.networks.active(task, level, backend or "auto")):
            return self.module(x)

    def export(self, task: int, level: int, fold_bn: bool = False) -> nn.Module:
        """A copy of the wrapped model with every sliced layer replaced by its plain export."""
        if fold_bn:
            raise NotImplementedError("fold_bn: folding batch norm needs the model's data flow, "
                                      "known only for dvn's own backbones (dvn.wrn, dvn.resnet)")
        active = self.networks.active(task, level)
        static = copy.deepcopy(self.module)
        _replace(static, lambda name, m: m.export(active) if isinstance(m, SLICED) else None)
        return static.train(self.training)


def convert_to_sliced(model: nn.Module, networks: VirtualNetworks, *,
                      unsplit_in_channels: int = 3, backend: str = "auto",
                      inplace: bool = False) -> VirtualModel:
    """``model`` with its Conv2d / BatchNorm2d / Linear layers split into ``networks.units``
    units, wrapped for per-(task, level) calls. Raises for layers it cannot slice."""
    model = model if inplace else copy.deepcopy(model)
    k = networks.units

    def convert(name: str, m: nn.Module) -> Optional[nn.Module]:
        if isinstance(m, SLICED):
            raise ValueError(f"model: layer {name} is already sliced")
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"model: conv {name} has groups={m.groups}; sliced "
                                 "convolutions support groups=1 only")
            in_units = None if m.in_channels == unsplit_in_channels else k
            sliced = SlicedConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                  m.padding, m.dilation, 1, m.bias is not None, m.padding_mode,
                                  device=m.weight.device, dtype=m.weight.dtype,
                                  in_units=_units(in_units, m.in_channels, name),
                                  out_units=_units(k, m.out_channels, name), backend=backend)
            sliced.load_state_dict(m.state_dict())
            return sliced
        if isinstance(m, nn.BatchNorm2d):
            sliced = SlicedBatchNorm2d(m.num_features, _units(k, m.num_features, name), networks,
                                       m.eps, m.momentum, m.affine, m.track_running_stats,
                                       device=_device(m))
            for task, level in networks.configs():
                active = networks.active(task, level)
                _copy_bn(m, sliced.norms[active.key], sliced.layout.segments(active.unit_set))
            return sliced
        if isinstance(m, nn.Linear):
            sliced = SlicedLinear(m.in_features, m.out_features, m.bias is not None,
                                  device=m.weight.device, dtype=m.weight.dtype,
                                  in_units=_units(k, m.in_features, name))
            sliced.load_state_dict(m.state_dict())
            return sliced
        if isinstance(m, UNSUPPORTED):
            raise ValueError(f"model: layer {name} ({type(m).__name__}) cannot be sliced into "
                             "units; supported are Conv2d, BatchNorm2d and Linear")
        return None

    _replace(model, convert)
    return VirtualModel(model, networks)


def _units(units: Optional[int], channels: int, name: str) -> Optional[int]:
    if units is not None and channels < units:
        raise ValueError(f"units: layer {name} has {channels} channels, fewer than the "
                         f"{units} units asked for")
    return units


def _device(m: nn.Module) -> Optional[torch.device]:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return None


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, segments) -> None:
    idx = torch.tensor(segments.indices(), device=_device(src))
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            s = getattr(src, name)
            if s is not None:
                getattr(dst, name).copy_(s[idx])
        if src.num_batches_tracked is not None:
            dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _replace(module: nn.Module, fn, prefix: str = "") -> None:
    """Replaces each child c (depth first, parents before children) by fn(name, c) when that
    is not None."""
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        new = fn(full, child)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace(child, fn, full)


__all__ = ["VirtualModel", "convert_to_sliced"]
