"""dvn_kernels: convolution over active channel ranges ("units") of a full weight.

Knows channel segments, not tasks or levels (those live in ``dvn``).
"""

from .backends import (BACKENDS, BackendUnavailableError, available_backends, resolve_backend,
                       set_auto_measure)
from .extension import build_info
from .plan import ConvPlan, conv_plan
from .segments import ChannelSegments, as_segments, segments_from_units, split_channels
from .sliced_conv import planned_conv2d, sliced_conv2d

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ChannelSegments",
    "ConvPlan",
    "as_segments",
    "available_backends",
    "build_info",
    "conv_plan",
    "planned_conv2d",
    "resolve_backend",
    "segments_from_units",
    "set_auto_measure",
    "sliced_conv2d",
    "split_channels",
]
