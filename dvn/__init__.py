"""dvn: Deep Virtual Networks on top of the sliced convolution of ``dvn_kernels``.

Conventions: tasks, levels and units are **1-based**, as in the paper. Task j's virtual network
orders the units (paper's rule: by (|i - j|, i)); level l uses its first l units. Selection is
explicit: ``model(x, task=j, level=l)``.
"""

from .model.backbones import PreActResNet, build, resnet, wrn
from .model.calibration import calibrate_bn
from .model.capture import CompiledConfigs, compile_configs
from .checkpoint import atomic_save, load, save
from .model.conv import SlicedConv2d
from .model.convert import VirtualModel, convert_to_sliced
from .model.export import count_parameters, to_static
from .model.heads import LevelHeads, SlicedLinear
from .model.networks import Active, VirtualNetworks, current_selection, paper_order, selected
from .model.norm import SlicedBatchNorm2d
from .model.shortcuts import UnitPad
from .model.twin import MaskedTwin
from .model.units import UnitLayout

__all__ = [
    "Active", "CompiledConfigs", "LevelHeads", "MaskedTwin", "PreActResNet", "SlicedBatchNorm2d",
    "SlicedConv2d", "SlicedLinear", "UnitLayout", "UnitPad", "VirtualModel", "VirtualNetworks",
    "atomic_save", "build", "calibrate_bn", "compile_configs", "convert_to_sliced", "count_parameters",
    "current_selection", "load", "paper_order", "resnet", "save", "selected", "to_static", "wrn",
]
