"""The paper's backbones: pre-activation WRN-n-s and ResNet-n, split into units.

Built as the paper's sister code (Deep Elastic Networks) builds them: task-specific 7x7 input
stems whose stride is input_size // 32 (at least 1), so every task reaches the same feature-map
size; pre-activation basic blocks (BN-ReLU-conv3x3 twice); parameter-free shortcuts (average
pooling and per-unit zero channel padding); BN-ReLU-global-average-pool and one linear head per
(task, level). WRN-32-4 has 7.35M parameters per (task, level) at the full level, ResNet-42
29.8M (1.9M / 7.5M / 16.8M / 29.8M at the levels of k = 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import SlicedConv2d
from .heads import LevelHeads
from .networks import Active, VirtualNetworks
from .norm import SlicedBatchNorm2d
from .shortcuts import StaticUnitPad, UnitPad
from .units import UnitLayout

IntOrList = Union[int, Sequence[int]]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus a unit-aligned shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, units: int,
                 networks: VirtualNetworks, backend: str) -> None:
        super().__init__()
        self.bn1 = SlicedBatchNorm2d(c_in, units, networks)
        self.conv1 = SlicedConv2d(c_in, c_out, 3, stride, 1, bias=False, in_units=units,
                                  out_units=units, backend=backend)
        self.bn2 = SlicedBatchNorm2d(c_out, units, networks)
        self.conv2 = SlicedConv2d(c_out, c_out, 3, 1, 1, bias=False, in_units=units,
                                  out_units=units, backend=backend)
        self.shortcut = UnitPad(UnitLayout(c_in, units), UnitLayout(c_out, units), stride)

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        """The block on ``active``'s units (default: the ``selected`` block's; each layer
        resolves it)."""
        out = self.conv1(F.relu(self.bn1(x, active)), active)
        out = self.conv2(F.relu(self.bn2(out, active)), active)
        return out + self.shortcut(x, active)

    def export(self, active: Active, fold_bn: bool = False) -> StaticPreActBlock:
        conv1, bn2 = self.conv1.export(active), self.bn2.export(active)
        if fold_bn:
            conv1, bn2 = fold_batch_norm(conv1, bn2), nn.Identity()
        return StaticPreActBlock(self.bn1.export(active), conv1, bn2, self.conv2.export(active),
                                 self.shortcut.export(active))


class StaticPreActBlock(nn.Module):
    """PreActBlock of one (task, level), made of plain layers."""

    def __init__(self, bn1: nn.Module, conv1: nn.Conv2d, bn2: nn.Module, conv2: nn.Conv2d,
                 shortcut: StaticUnitPad) -> None:
        super().__init__()
        self.bn1, self.conv1, self.bn2, self.conv2, self.shortcut = bn1, conv1, bn2, conv2, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by bn (running statistics) as one conv with a bias."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           conv.padding, conv.dilation, conv.groups, True, conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        folded.bias.copy_(bias * scale + shift)
    return folded


class PreActResNet(nn.Module):
    """Stems per task, stages of pre-activation blocks, BN-ReLU-pool, heads per (task, level).

    ``model(x, task=j, level=l)`` runs task j's virtual network at level l (1-based) and
    returns that task's logits; ``backend`` (any name, ``"auto"`` included) overrides the
    convolutions' own backend for one call; None keeps theirs.
    """

    def __init__(self, *, widths: Sequence[int], blocks: int, strides: Sequence[int],
                 stem_channels: int, units: int, networks: VirtualNetworks,
                 num_classes: IntOrList, input_sizes: IntOrList = 32,
                 image_channels: IntOrList = 3, stem_kernel: int = 7, backend: str = "auto",
                 spec: Optional[dict] = None) -> None:
        super().__init__()
        if networks.units != units:
            raise ValueError(f"networks: built for {networks.units} units, the model has {units}")
        self.networks = networks
        self.spec = spec
        tasks = networks.tasks
        self.input_sizes = _per_task(input_sizes, tasks, "input_sizes")
        self.image_channels = _per_task(image_channels, tasks, "image_channels")
        self.stems = nn.ModuleDict({
            f"t{j}": SlicedConv2d(self.image_channels[j - 1], stem_channels, stem_kernel,
                                  stride=max(1, self.input_sizes[j - 1] // 32),
                                  padding=stem_kernel // 2, bias=False, in_units=None,
                                  out_units=units, backend=backend)
            for j in range(1, tasks + 1)})
        layers = []
        c_in = stem_channels
        for width, stride in zip(widths, strides):
            for b in range(blocks):
                layers.append(PreActBlock(c_in, width, stride if b == 0 else 1, units, networks,
                                          backend))
                c_in = width
        self.blocks = nn.ModuleList(layers)
        self.final_bn = SlicedBatchNorm2d(c_in, units, networks)
        self.heads = LevelHeads(c_in, num_classes, units, networks)

    def active(self, task: int, level: int, backend: Optional[str] = None) -> Active:
        """The selection of (task, level); ``backend`` None keeps the layers' own."""
        return self.networks.active(task, level, backend)

    def forward(self, x: torch.Tensor, task: int, level: int,
                backend: Optional[str] = None) -> torch.Tensor:
        active = self.active(task, level, backend)
        channels = self.image_channels[task - 1]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: task {task} expects (N, {channels}, H, W) images, got {shape}")
        h = self.stems[f"t{task}"](x, active)
        for block in self.blocks:
            h = block(h, active)
        h = F.relu(self.final_bn(h, active)).mean(dim=(2, 3))
        return self.heads(h, active)

    def export(self, task: int, level: int, fold_bn: bool = False) -> StaticPreActResNet:
        active = self.active(task, level)
        static = StaticPreActResNet(self.stems[f"t{task}"].export(active),
                                    [b.export(active, fold_bn) for b in self.blocks],
                                    self.final_bn.export(active), self.heads.export(active))
        return static.train(self.training)


class StaticPreActResNet(nn.Module):
    """One (task, level) of a PreActResNet as plain Conv2d / BatchNorm2d / Linear layers."""

    def __init__(self, stem: nn.Conv2d, blocks: Sequence[nn.Module], final_bn: nn.BatchNorm2d,
                 head: nn.Linear) -> None:
        super().__init__()
        self.stem, self.blocks, self.final_bn, self.head = stem, nn.Sequential(*blocks), \
            final_bn, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(F.relu(self.final_bn(h)).mean(dim=(2, 3)))


def _per_task(value: IntOrList, tasks: int, name: str) -> list[int]:
    values = [value] * tasks if isinstance(value, int) else list(value)
    if len(values) != tasks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                   for v in values):
        raise ValueError(f"{name}: expected a positive int or one per task ({tasks} tasks), "
                         f"got {value!r}")
    return values


def _networks(units: int, tasks: Optional[int], orders) -> VirtualNetworks:
    return VirtualNetworks(units, tasks=tasks, orders=orders)


def wrn(depth: int = 32, width: int = 4, *, units: int = 2, tasks: Optional[int] = None,
        orders: Optional[Sequence[Sequence[int]]] = None, num_classes: IntOrList = 10,
        input_sizes: IntOrList = 32, image_channels: IntOrList = 3,
        backend: str = "auto") -> PreActResNet:
    """WRN-depth-width: 3 stages of (depth-2)/6 blocks, widths 16w/32w/64w, 16-channel stem."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth: WRN depth must be 6n+2 (8, 14, 20, 26, 32, ...), got {depth!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width: expected a positive int, got {width!r}")
    networks = _networks(units, tasks, orders)
    spec = dict(arch="wrn", depth=depth, width=width, units=units, tasks=networks.tasks,
                orders=[list(o) for o in networks.orders], num_classes=_plain(num_classes),
                input_sizes=_plain(input_sizes), image_channels=_plain(image_channels),
                backend=backend)
    return PreActResNet(widths=[16 * width, 32 * width, 64 * width], blocks=(depth - 2) // 6,
                        strides=[1, 2, 2], stem_channels=16, units=units, networks=networks,
                        num_classes=num_classes, input_sizes=input_sizes,
                        image_channels=image_channels, backend=backend, spec=spec)


def resnet(depth: int = 42, *, units: int = 4, tasks: Optional[int] = None,
           orders: Optional[Sequence[Sequence[int]]] = None, num_classes: IntOrList = 50,
           input_sizes: IntOrList = 64, image_channels: IntOrList = 3,
           backend: str = "auto") -> PreActResNet:
    """ResNet-depth: 4 stages of (depth-2)/8 blocks, widths 64/128/256/512, 64-channel stem
    (ResNet-42: 5 blocks per stage)."""
    if not isinstance(depth, int) or depth < 10 or (depth - 2) % 8:
        raise ValueError(f"depth: ResNet depth must be 8n+2 (10, 18, 26, 34, 42, ...), "
                         f"got {depth!r}")
    networks = _networks(units, tasks, orders)
    spec = dict(arch="resnet", depth=depth, units=units, tasks=networks.tasks,
                orders=[list(o) for o in networks.orders], num_classes=_plain(num_classes),
                input_sizes=_plain(input_sizes), image_channels=_plain(image_channels),
                backend=backend)
    return PreActResNet(widths=[64, 128, 256, 512], blocks=(depth - 2) // 8,
                        strides=[1, 2, 2, 2], stem_channels=64, units=units, networks=networks,
                        num_classes=num_classes, input_sizes=input_sizes,
                        image_channels=image_channels, backend=backend, spec=spec)


def _plain(value: IntOrList) -> Union[int, list[int]]:
    return value if isinstance(value, int) else [int(v) for v in value]


BUILDERS = {"wrn": wrn, "resnet": resnet}


def build(spec: dict) -> PreActResNet:
    """Rebuilds a backbone from its ``spec`` (as saved in a checkpoint)."""
    if not isinstance(spec, dict) or spec.get("arch") not in BUILDERS:
        raise ValueError(f"spec: expected a dict with arch in {sorted(BUILDERS)}, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    return BUILDERS[spec["arch"]](**kwargs)
