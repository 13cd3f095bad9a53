"""Loading of the compiled extension dvn_kernels._C_torch<version> (C++ CPU and CUDA kernels).

The package works without it (backends 'reference' and 'masked'); the native backends then
raise BackendUnavailableError saying why the extension is missing.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Optional

import torch

from .build_tag import extension_name

MODULE = extension_name(torch.__version__)
LOAD_ERROR: Optional[str] = None
try:  # importing it registers the ops with torch.library
    importlib.import_module(f".{MODULE}", __package__)
except ImportError as exc:  # not built for this torch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name == f"{__package__}.{MODULE}":
        here = os.path.dirname(__file__)
        builds = sorted(f for f in os.listdir(here) if f.startswith("_C_") and ".so" in f)
        LOAD_ERROR = (f"dvn_kernels.{MODULE} is not built: the extension was not built for "
                      f"torch {torch.__version__} (in {here}: {', '.join(builds) or 'no build'})")

LOADED = LOAD_ERROR is None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the extension registered a kernel of ``dvn_kernels::<op>`` for the key."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dvn_kernels::{op}", dispatch_key)


# Asked once, at import (the kernels register when _C is imported): a plain constant, which
# torch.compile reads without tracing the dispatcher query (Dynamo cannot trace it).
_HAS_CUDA_KERNEL = has_kernel("sliced_conv2d", "CUDA") and has_kernel("sliced_conv2d_backward",
                                                                      "CUDA")


def has_cuda_kernel() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _HAS_CUDA_KERNEL


def build_info() -> dict[str, Any]:
    """How the extension was built (written by setup.py) and whether it loaded."""
    path = os.path.join(os.path.dirname(__file__), f"{MODULE}.json")
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
