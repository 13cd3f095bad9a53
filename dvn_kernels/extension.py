"""Loading of the compiled extension dvn_kernels._C (C++ CPU and CUDA kernels).

The package works without it (backends 'reference' and 'masked'); the native backends then
raise BackendUnavailableError saying why the extension is missing.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import torch

LOAD_ERROR: Optional[str] = None
try:
    from . import _C  # noqa: F401  (registers the ops with torch.library)
except ImportError as exc:  # not built, or built against another torch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

LOADED = LOAD_ERROR is None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the extension registered a kernel of ``dvn_kernels::<op>`` for the key."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dvn_kernels::{op}", dispatch_key)


@functools.lru_cache(maxsize=None)
def has_cuda_kernel() -> bool:
    """True when the extension was built with its CUDA kernels (asks the dispatcher, once:
    the kernels register when _C is imported)."""
    return has_kernel("sliced_conv2d", "CUDA") and has_kernel("sliced_conv2d_backward", "CUDA")


def build_info() -> dict[str, Any]:
    """How the extension was built (written by setup.py) and whether it loaded."""
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    info: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    info["loaded"] = LOADED
    if LOAD_ERROR is not None:
        info["load_error"] = LOAD_ERROR
    info["cpu_kernel"] = has_kernel("sliced_conv2d", "CPU")
    info["cuda_kernel"] = has_kernel("sliced_conv2d", "CUDA")
    return info
