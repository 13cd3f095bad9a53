"""dvn_kernels: convolution over active channel ranges ("units") of a full weight.

Knows channel segments, not tasks or levels (those live in ``dvn``).

One call of ``sliced_conv2d`` into each backend, file by file (at most six):

- every backend starts with ``sliced_conv.py`` (the call) -> ``plan.py`` (its checked plan) ->
  ``backends.py`` (the backend's function; ``kernel_conv2d`` calls a kernel op), then
- ``reference`` / ``masked``: ``reference.py`` -> ``channels.py``;
- ``cpu`` / ``cuda``: ``csrc/sliced_conv2d_autograd.cpp`` -> ``csrc/cpu/sliced_conv2d_cpu.cpp``
  or ``csrc/cuda/sliced_conv2d_cuda.cpp`` -> ``csrc/conv_problem.cpp`` (the check);
- ``triton``: ``ops.py`` (the op: ``check_call``, autograd) -> ``triton/op.py`` ->
  ``triton/conv_fwd.py`` (``conv_bwd_input.py``, ``conv_bwd_weight.py`` and ``depthwise.py``
  for the other passes).

``ops.py`` is the op contract of both kernel families: schemas, checks, fakes, autograd.

``spec.py`` holds ``KernelSpec``, what the kernel ops compute, and its string; ``segments.py``
holds ``ChannelSegments``, the one type of the active channel ranges.
"""

from .backends import (BACKENDS, BackendUnavailableError, available_backends, resolve_backend,
                       set_auto_measure)
from . import direct  # noqa: F401  (registers the direct op's fake implementation)
from .extension import build_info
from .plan import ConvPlan, conv_plan
from .segments import ChannelSegments, as_segments, segments_from_units, split_channels
from .sliced_conv import planned_conv2d, sliced_conv2d
from .weight_cache import exclude_from_weight_cache

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ChannelSegments",
    "ConvPlan",
    "as_segments",
    "available_backends",
    "build_info",
    "conv_plan",
    "exclude_from_weight_cache",
    "planned_conv2d",
    "resolve_backend",
    "segments_from_units",
    "set_auto_measure",
    "sliced_conv2d",
    "split_channels",
]
