"""AOTInductor packages called without the GIL: ``dvn_kernels::AotiPackage``
(``csrc/aoti_package.cpp``).

torch's package loader holds the GIL for a whole call, so a thread running a compiled level
stopped every other Python thread (an HTTP server's event loop included) for as long as the
level ran. Methods of a TorchScript custom class run with the GIL released; the extra cost is
about 3 us a call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional

import torch

from .extension import LOADED


def load_package(path: str) -> Optional[Callable[[list[torch.Tensor]], list[torch.Tensor]]]:
    """The boxed call of the AOTInductor package at ``path`` (inputs flattened as
    ``torch.export`` saw them; outputs likewise), run without the GIL; None where the
    extension is not loaded. The package is read now: the file may be removed afterwards."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"path: expected an AOTInductor package file, got {path!r}")
    if not LOADED:
        return None
    try:
        cls = torch.classes.dvn_kernels.AotiPackage
    except RuntimeError:  # an extension built before the class existed
        return None
    return cls(os.fspath(path)).run
