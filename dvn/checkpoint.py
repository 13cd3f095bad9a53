"""Saving and loading whole DVNs: atomic writes, loads that never run code."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .backbones import build

FORMAT = "dvn-checkpoint-1"
PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> None:
    """torch.save to a temporary file beside ``path``, flushed to disk, then renamed over it:
    a crash never leaves a truncated file where a good one was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(model: nn.Module, path: PathLike, *, extra: Optional[dict] = None) -> None:
    """Saves a dvn backbone (its spec and state_dict) atomically; ``extra``: plain data."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"model: {type(model).__name__} has no spec to rebuild it from; save "
                        "its state_dict with dvn.atomic_save instead")
    atomic_save({"format": FORMAT, "spec": spec, "state_dict": model.state_dict(),
                 "extra": extra or {}}, path)


def load(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuilds a model saved by :func:`save` (``torch.load(weights_only=True)``)."""
    payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"path: {os.fspath(path)} is not a {FORMAT} file")
    model = build(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
