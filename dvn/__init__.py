"""dvn: Deep Virtual Networks on top of the sliced convolution of ``dvn_kernels``.

Conventions: tasks, levels and units are **1-based**, as in the paper. Task j's virtual network
orders the units (paper's rule: by (|i - j|, i)); level l uses its first l units. Selection is
explicit: ``model(x, task=j, level=l)``.
"""

from .backbones import PreActResNet, build, resnet, wrn
from .calibration import calibrate_bn
from .capture import CompiledConfigs, compile_configs
from .checkpoint import atomic_save, load, save
from .conv import SlicedConv2d
from .convert import VirtualModel, convert_to_sliced
from .export import count_parameters, to_static
from .heads import LevelHeads, SlicedLinear
from .networks import Active, VirtualNetworks, current_selection, paper_order, selected
from .norm import SlicedBatchNorm2d
from .shortcuts import UnitPad
from .twin import MaskedTwin
from .units import UnitLayout

__all__ = [
    "Active", "CompiledConfigs", "LevelHeads", "MaskedTwin", "PreActResNet", "SlicedBatchNorm2d",
    "SlicedConv2d", "SlicedLinear", "UnitLayout", "UnitPad", "VirtualModel", "VirtualNetworks",
    "atomic_save", "build", "calibrate_bn", "compile_configs", "convert_to_sliced", "count_parameters",
    "current_selection", "load", "paper_order", "resnet", "save", "selected", "to_static", "wrn",
]
