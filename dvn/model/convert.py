"""Converting an existing model's layers into sliced ones, and running it per (task, level).

    vm = dvn.convert_to_sliced(torchvision_like_resnet, dvn.VirtualNetworks(4))
    logits = vm(x, task=2, level=1)

Conv2d layers become SlicedConv2d (inputs with ``unsplit_in_channels`` channels, the image,
stay whole; grouped and depthwise convs included), BatchNorm2d layers SlicedBatchNorm2d (every
configuration starts from the original statistics and affine parameters of its channels),
Linear layers SlicedLinear (on pooled features: inputs split into units; outputs whole for the
model's outputs, split for the hidden layers of an MLP head). Every channel count gets one
unit layout, in whole groups where grouped convs need them (``dvn.model.layouts``). Activations,
pooling, dropout, squeeze-excitation products and residual sums act on the compact tensors
as they are. The model's own forward code runs unchanged: ``VirtualModel`` hands the
selection to its sliced layers through a context variable (``dvn.model.networks.selected``) for the
duration of one call. Context variables are per thread (and per asyncio task), so one model
object serves concurrent calls with different (task, level) correctly.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Optional

import torch
import torch.nn as nn

from .conv import SlicedConv2d
from .heads import SlicedLinear
from .layouts import ChannelLayouts
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
        """The wrapped model's output for (task, level); ``backend`` (any name, ``"auto"``
        included) overrides the convolutions' own for this call, None keeps theirs."""
        with selected(self.networks.active(task, level, backend)):
            return self.module(x)

    def export(self, task: int, level: int, fold_bn: bool = False) -> nn.Module:
        """A copy of the wrapped model with every sliced layer replaced by its plain export."""
        if fold_bn:
            raise NotImplementedError("fold_bn: folding batch norm needs the model's data flow, "
                                      "known only for dvn's own backbones (dvn.wrn, dvn.resnet)")
        active = self.networks.active(task, level)
        # deepcopy takes each sliced layer's export from the memo instead of copying the layer
        # (full weights, every configuration's batch norms): only the rest is copied.
        memo = {id(m): m.export(active) for m in self.module.modules() if isinstance(m, SLICED)}
        return copy.deepcopy(self.module, memo).train(self.training)


def convert_to_sliced(model: nn.Module, networks: VirtualNetworks, *,
                      unsplit_in_channels: int = 3, outputs: Optional[Collection[str]] = None,
                      backend: str = "auto", inplace: bool = False) -> VirtualModel:
    """``model`` with its Conv2d / BatchNorm2d / Linear layers split into ``networks.units``
    units, wrapped for per-(task, level) calls. Raises ValueError naming the layer for layers
    it cannot slice.

    ``outputs``: names of the Conv2d / Linear layers whose outputs stay whole (the model's
    outputs). By default, every Linear whose ``out_features`` no other Linear takes as input:
    the classifier stays whole, the hidden layers of an MLP head (MobileNetV3's) split.
    """
    model = model if inplace else copy.deepcopy(model)
    k = networks.units
    layouts = ChannelLayouts(model, k, unsplit_in_channels)
    whole = _whole_outputs(model, outputs)

    def out_units(name: str, channels: int):
        return None if name in whole else layouts(channels, name)

    def convert(name: str, m: nn.Module) -> Optional[nn.Module]:
        if isinstance(m, SLICED):
            raise ValueError(f"model: layer {name} is already sliced")
        if isinstance(m, nn.Conv2d):
            in_units = None if m.in_channels == unsplit_in_channels \
                else layouts(m.in_channels, name)
            conv_out_units = out_units(name, m.out_channels)
            try:
                sliced = SlicedConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                      m.padding, m.dilation, m.groups, m.bias is not None,
                                      m.padding_mode, device=m.weight.device,
                                      dtype=m.weight.dtype, in_units=in_units,
                                      out_units=conv_out_units, backend=backend)
            except ValueError as e:
                raise ValueError(f"model: layer {name}: {e}") from None
            sliced.load_state_dict(m.state_dict())
            return sliced.train(m.training)
        if isinstance(m, nn.BatchNorm2d):
            sliced = SlicedBatchNorm2d(m.num_features, layouts(m.num_features, name), networks,
                                       m.eps, m.momentum, m.affine, m.track_running_stats,
                                       device=_device(m), dtype=_dtype(m))
            for task, level in networks.configs():
                active = networks.active(task, level)
                _copy_bn(m, sliced.norms[active.key], sliced.layout.segments(active.unit_set))
            return sliced.train(m.training)
        if isinstance(m, nn.Linear):
            sliced = SlicedLinear(m.in_features, m.out_features, m.bias is not None,
                                  device=m.weight.device, dtype=m.weight.dtype,
                                  in_units=layouts(m.in_features, name),
                                  out_units=out_units(name, m.out_features))
            sliced.load_state_dict(m.state_dict())
            return sliced.train(m.training)
        if isinstance(m, UNSUPPORTED):
            raise ValueError(f"model: layer {name} ({type(m).__name__}) cannot be sliced into "
                             "units; supported are Conv2d, BatchNorm2d and Linear")
        return None

    _replace(model, convert)
    return VirtualModel(model, networks).train(model.training)  # the layers' modes kept


def _whole_outputs(model: nn.Module, outputs: Optional[Collection[str]]) -> set[str]:
    """The layers whose outputs stay whole (see convert_to_sliced)."""
    if outputs is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        return {n for n, m in linears
                if all(m.out_features != other.in_features for o, other in linears if o != n)}
    if isinstance(outputs, str):
        raise TypeError("outputs: expected a collection of layer names, got a string")
    layers = dict(model.named_modules())
    for name in outputs:
        if not isinstance(layers.get(name), (nn.Conv2d, nn.Linear)):
            raise ValueError(f"outputs: {name!r} is not a Conv2d or Linear layer of the model")
    return set(outputs)


def _device(m: nn.Module) -> Optional[torch.device]:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return None


def _dtype(m: nn.Module) -> Optional[torch.dtype]:
    """The dtype of a batch norm's floating point state (its affine parameters or running
    statistics), or None for torch's default."""
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            return t.dtype
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
