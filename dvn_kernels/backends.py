"""Backend names, their availability, and the 'auto' choice.

- ``reference``: slice the weight, dense conv (pure PyTorch; the correctness oracle).
- ``masked``: dense conv of the full weight on a zero-scattered input (the speed baseline).
- ``cpu``: the C++ kernel of dvn_kernels._C, on CPU tensors.
- ``triton``: GPU kernels (reserved; not built yet).
- ``cuda``: the CUDA kernels of dvn_kernels._C (implicit GEMM, tensor cores), on CUDA tensors of
  float16, bfloat16, float32 (TF32 when torch.backends.cudnn.allow_tf32, else exact) or
  float64; available when the extension was built with CUDA.
- ``auto``: the fastest available for the input: ``cpu`` on CPU tensors of a supported dtype;
  otherwise ``reference``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import extension
from .native import native_conv2d
from .reference import masked_conv2d, reference_conv2d

BACKENDS = ("auto", "reference", "masked", "cpu", "triton", "cuda")
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
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
        return "its GPU kernels are not implemented yet (use 'reference' on GPUs for now)"
    if name == "cuda":
        return _why_cuda_unavailable(device, dtype)
    raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


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
    """The concrete backend that runs for input ``x``; raises for unknown/unavailable ones."""
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


IMPLEMENTATIONS: dict[str, Callable] = {
    "reference": reference_conv2d,
    "masked": masked_conv2d,
    "cpu": native_conv2d,
    "cuda": native_conv2d,
}
