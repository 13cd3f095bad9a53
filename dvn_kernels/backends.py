"""Backend names, their availability, and the 'auto' choice.

- ``reference``: slice the weight, dense conv (pure PyTorch; the correctness oracle).
- ``masked``: dense conv of the full weight on a zero-scattered input (the speed baseline).
- ``cpu``: the C++ kernel of dvn_kernels._C, on CPU tensors.
- ``triton``: the Triton kernels of dvn_kernels.triton, on CUDA tensors (float32, bfloat16,
  float16), or on CPU tensors under ``TRITON_INTERPRET=1`` (float32 and float16 only: the
  interpreter computes bfloat16 wrongly).
- ``cuda``: the CUDA kernels of dvn_kernels._C (implicit GEMM, tensor cores), on CUDA tensors of
  float16, bfloat16, float32 (TF32 when torch.backends.cudnn.allow_tf32, else exact) or
  float64; available when the extension was built with CUDA.
- ``auto``: ``cpu`` on CPU tensors of a supported dtype (no measuring), else ``reference``. On
  CUDA tensors it measures (``dvn_kernels.choice``): per convolution (plan, input shape, dtype,
  memory format) and per pass, the first call times ``reference`` (slice + cuDNN; at full width
  a view of the weight), ``triton`` and ``cuda`` (those that can run it) and keeps the fastest,
  forward and backward separately, in memory and in ``$DVN_CACHE_DIR`` (else ``~/.cache/dvn``)
  ``/auto-choices.json`` under the GPU name and the torch, triton and dvn versions. A candidate
  that fails while measured is dropped for that convolution with one warning.
  ``DVN_AUTO_MEASURE=0`` (or ``set_auto_measure(False)``) turns measuring off, as do CUDA-graph
  capture and torch.compile tracing (which use a choice already made, if any): then the fixed
  order is ``reference`` at full width, else ``triton``, ``cuda``, ``reference``. A convolution
  the kernels cannot run (grouped with segments that cut through a group) runs on
  ``reference``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional

import torch

from . import extension
from .choice import Chooser
from .ops import NATIVE_OPS, TRITON_OPS
from .plan import ConvPlan
from .reference import Grads, Mask, masked_conv2d, reference_conv2d, reference_conv2d_backward

BACKENDS = ("auto", "reference", "masked", "cpu", "triton", "cuda")
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_INTERPRETER_DTYPES = (torch.float32, torch.float16)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # located, not imported
CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class BackendUnavailableError(RuntimeError):
    """The requested backend exists but cannot run here (not built, wrong device or dtype)."""


def _why_unavailable(name: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when backend ``name`` can run on (device, dtype), else the reason it cannot."""
    if name in ("reference", "masked"):
        return None
    if name == "cpu":
        if not extension.LOADED:
            return f"the C++ extension dvn_kernels._C did not load ({extension.LOAD_ERROR}); " \
                   "build it with `pip install -e . --no-build-isolation`"
        if device.type != "cpu":
            return f"it runs on CPU tensors, got tensors on {device}"
        if dtype not in CPU_DTYPES:
            return f"it supports {', '.join(str(d) for d in CPU_DTYPES)}, got {dtype}"
        return None
    if name == "triton":
        return _why_triton_unavailable(device, dtype)
    if name == "cuda":
        return _why_cuda_unavailable(device, dtype)
    raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def _why_triton_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if not TRITON_INSTALLED:
        return "the triton package is not installed"
    if not hasattr(torch.library, "triton_op"):
        return f"torch.library.triton_op needs torch >= 2.6, got {torch.__version__}"
    if device.type == "cuda":
        dtypes = TRITON_DTYPES
    elif device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        dtypes = TRITON_INTERPRETER_DTYPES
    else:
        return (f"it runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                f"got tensors on {device}")
    if dtype not in dtypes:
        where = "on CUDA" if device.type == "cuda" else "in the Triton interpreter"
        return f"it supports {', '.join(str(d) for d in dtypes)} {where}, got {dtype}"
    return None


def _why_cuda_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if not extension.LOADED:
        return f"the C++ extension dvn_kernels._C did not load ({extension.LOAD_ERROR}); " \
               "build it with `pip install -e . --no-build-isolation`"
    if not extension.has_cuda_kernel():
        why = extension.build_info().get("why_no_cuda", "unknown reason")
        return f"the extension was built without its CUDA kernels ({why})"
    if device.type != "cuda":
        return f"it runs on CUDA tensors, got tensors on {device}"
    if dtype not in CUDA_DTYPES:
        return f"it supports {', '.join(str(d) for d in CUDA_DTYPES)}, got {dtype}"
    return None


def available_backends(device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends (not 'auto') that can run on tensors of this device and dtype."""
    device = torch.device(device)
    return [b for b in BACKENDS[1:] if _why_unavailable(b, device, dtype) is None]


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend that runs for input ``x``; raises for unknown/unavailable ones.

    For 'auto' on CUDA tensors: the fixed order's first, slice + cuDNN ('reference'), what
    runs there when measuring is off; with measuring, the choice is per plan and pass.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
    if backend == "auto":
        if _why_unavailable("cpu", x.device, x.dtype) is None:
            return "cpu"
        return "reference"
    why = _why_unavailable(backend, x.device, x.dtype)
    if why is not None:
        raise BackendUnavailableError(f"backend: {backend!r} is unavailable: {why}")
    return backend


Implementation = Callable[[ConvPlan, torch.Tensor, torch.Tensor, Optional[torch.Tensor]],
                          torch.Tensor]
Backward = Callable[[ConvPlan, torch.Tensor, torch.Tensor, torch.Tensor, Mask], Grads]


def kernel_conv2d(op: Callable) -> Implementation:
    """The backend of a kernel forward op (``dvn_kernels.ops``): gather the weight's sides when
    the plan says so (``ConvPlan.kernel_operands``), then one op call with the plan's spec."""
    def conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        if plan.in_gather is not None or plan.out_gather is not None:
            weight, bias = plan.kernel_operands(weight, bias)
        return op(x, weight, bias, plan.spec)
    return conv2d


def kernel_conv2d_backward(op: Callable) -> Backward:
    """The backward of a kernel backend, from its backward op: only the gradients ``mask``
    asks for (None for the others); for plans without gathered sides."""
    def conv2d_backward(plan: ConvPlan, grad_out: torch.Tensor, x: torch.Tensor,
                        weight: torch.Tensor, mask: Mask) -> Grads:
        grads = op(grad_out, x, weight, plan.spec, list(mask))
        return tuple(g if m else None for g, m in zip(grads, mask))  # type: ignore[return-value]
    return conv2d_backward


class _TritonOp:
    """A Triton op, looked up on its first call: importing dvn_kernels.triton imports Triton
    and defines the ops, only when the backend runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.op: Optional[Callable] = None

    def __call__(self, *args):
        if self.op is None:
            from . import triton  # noqa: F401  (defines the Triton ops)

            self.op = getattr(torch.ops.dvn_kernels, self.name).default
        return self.op(*args)


def kernel_unsupported(backend: str, plan: ConvPlan) -> Optional[str]:
    """Why the kernel backend cannot run ``plan``, or None when it can."""
    return plan.kernel_reason


def _kernel(backend: str, run: Implementation) -> Implementation:
    """``run`` for the plans the kernel can run; a clear error for the others."""
    def checked(plan, x, weight, bias):
        if plan.groups > 1:  # only grouped plans can be beyond the kernels
            why = kernel_unsupported(backend, plan)
            if why is not None:
                raise NotImplementedError(f"backend: {backend!r} cannot run this "
                                          f"convolution: {why}")
        return run(plan, x, weight, bias)
    return checked


def _auto(backend: str, run: Implementation) -> Implementation:
    """``auto``'s kernel ``run``, or ``reference`` for the plans the kernel cannot run."""
    def chosen(plan, x, weight, bias):
        if plan.groups > 1 and kernel_unsupported(backend, plan) is not None:
            return reference_conv2d(plan, x, weight, bias)
        return run(plan, x, weight, bias)
    return chosen


# The kernel backends: one wrapper (kernel_conv2d) around each backend's op.
_NATIVE_FORWARD, _NATIVE_BACKWARD = (getattr(torch.ops.dvn_kernels, name).default
                                     for name in NATIVE_OPS) if extension.LOADED \
    else (None, None)
native_conv2d = kernel_conv2d(_NATIVE_FORWARD)  # the C++ op on CPU tensors, CUDA on GPU ones
native_conv2d_backward = kernel_conv2d_backward(_NATIVE_BACKWARD)
triton_conv2d = kernel_conv2d(_TritonOp(TRITON_OPS[0]))
triton_conv2d_backward = kernel_conv2d_backward(_TritonOp(TRITON_OPS[1]))

IMPLEMENTATIONS: dict[str, Implementation] = {
    "reference": reference_conv2d,
    "masked": masked_conv2d,
    "cpu": _kernel("cpu", native_conv2d),
    "triton": _kernel("triton", triton_conv2d),
    "cuda": _kernel("cuda", native_conv2d),
}
_AUTO: dict[str, Implementation] = {
    "reference": reference_conv2d,
    "cpu": _auto("cpu", native_conv2d),
    "triton": _auto("triton", triton_conv2d),
    "cuda": _auto("cuda", native_conv2d),
}

BACKWARDS = {  # the backward of each backend that auto may pair with another's forward
    "reference": reference_conv2d_backward,
    "cpu": native_conv2d_backward,
    "triton": triton_conv2d_backward,
    "cuda": native_conv2d_backward,
}


def _gpu_candidates(plan: ConvPlan, x: torch.Tensor) -> list[str]:
    """The backends ``auto`` measures on CUDA tensors, in the fixed order: slice + cuDNN
    first, what runs before anything is measured (a capture, a trace, measuring off). On an
    H200 it took 1.0-1.05x cuDNN's time on compact tensors at the median of every pass; the
    Triton kernels 1.0-3.6x, the CUDA ones 3-9x (bench/results/gpu-nvidia-h200.json)."""
    kernels = [] if plan.kernel_reason is not None else [
        name for name in ("triton", "cuda") if _why_unavailable(name, x.device, x.dtype) is None]
    return ["reference", *kernels]


# Made at import, not on first use: a first CUDA call under torch.compile would otherwise
# build it inside Dynamo's trace, which cannot trace the chooser's weak registry.
_CHOOSER = Chooser({name: IMPLEMENTATIONS[name] for name in ("reference", "triton", "cuda")},
                   BACKWARDS, _gpu_candidates)


def gpu_chooser() -> Chooser:
    """The chooser of ``auto`` on CUDA tensors."""
    return _CHOOSER


def set_auto_measure(enabled: bool) -> None:
    """Turn the measuring of ``auto`` on CUDA tensors on or off (default: on, unless the
    environment variable DVN_AUTO_MEASURE=0); off, ``auto`` follows the fixed order."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    gpu_chooser().measure = enabled


_CHOSEN: dict[tuple[str, torch.device, torch.dtype], Implementation] = {}


def implementation(backend: str, x: torch.Tensor) -> Implementation:
    """The function that runs ``backend`` for tensors like ``x``: resolve_backend, remembered
    per (backend, device, dtype) so that the hot path pays a dict lookup (for 'auto' on CUDA
    tensors, the chooser's, which looks up its choice per plan)."""
    if torch.compiler.is_compiling() or type(backend) is not str:  # the latter: a clear error
        return _resolve(backend, x)
    key = (backend, x.device, x.dtype)
    impl = _CHOSEN.get(key)
    if impl is None:
        impl = _resolve(backend, x)
        _CHOSEN[key] = impl
    return impl


def _resolve(backend: str, x: torch.Tensor) -> Implementation:
    name = resolve_backend(backend, x)
    if backend == "auto" and x.device.type == "cuda":
        return gpu_chooser().conv2d
    return _AUTO[name] if backend == "auto" else IMPLEMENTATIONS[name]
