"""dvn_kernels: convolution over active channel ranges ("units") of a full weight.

Knows channel segments, not tasks or levels (those live in ``dvn``).

One call of ``sliced_conv2d`` through each backend, file by file:

- every backend: ``sliced_conv.py`` (checks, plan: ``plan.py``) -> ``backends.py`` (picks one)
- ``reference`` / ``masked``: -> ``reference.py`` -> ``channels.py``
- ``cpu`` / ``cuda``: -> ``ops.py`` (``kernel_conv2d``, the op contract) ->
  ``csrc/sliced_conv2d_autograd.cpp`` -> ``csrc/cpu/sliced_conv2d_cpu.cpp`` or
  ``csrc/cuda/sliced_conv2d_cuda.cpp`` (checks: ``csrc/conv_problem.cpp``)
- ``triton``: -> ``ops.py`` (the op, its check ``check_call``) -> ``triton/op.py`` ->
  ``triton/conv_fwd.py`` (or ``conv_bwd_input.py``, ``conv_bwd_weight.py``, ``depthwise.py``)

The kernel spec (``spec.py``: ``KernelSpec`` and its string) is what the kernel ops take;
``segments.py`` holds ``ChannelSegments``, the one type of the active ranges.
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
