"""The dvn checkpoint format (``dvn-checkpoint-2``): a whole DVN in one file.

One torch zip file (``torch.save``) of a dict: ``format``, the backbone's ``spec`` (what
``dvn.build`` rebuilds it from), its ``state_dict``, ``extra`` plain data (a run's training
state, see :mod:`dvn.runs`) and ``sha256``, a digest of those three. This is the format of
``dvn.save`` / ``dvn.load`` and of a run's ``checkpoint.pt``; the deployment format, a unit
file (``dvn-units-2``, :mod:`dvn.deploy.unitfile`), stores the same model addressable by unit
block and has digests of its own.

Writes are atomic and can keep the version they replace (``<name>.prev.pt``), so a crash or a
damaged file costs at most one epoch. Loads never run code from the file
(``torch.load(weights_only=True)``) and check a SHA-256 digest of the contents, because
``torch.load`` reads a file with flipped bytes inside a tensor without complaint. Every
problem surfaces as a :class:`CheckpointError` whose one-line message names the file and what
is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from dvn_kernels.files import atomic_write, previous_path  # noqa: F401  (a run's .prev.pt)

from .model.backbones import build

FORMAT = "dvn-checkpoint-2"        # with a digest of its contents
_UNCHECKED = "dvn-checkpoint-1"    # written before the digest existed: read without the check
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, truncated or not a dvn checkpoint. The message is one
    line naming the file and what is wrong."""


def atomic_save(obj: Any, path: PathLike, *, keep_previous: bool = False) -> None:
    """torch.save, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f), keep_previous=keep_previous)


def digest(obj: Any) -> str:
    """SHA-256 of nested dicts, lists, tuples, tensors and plain values: types, shapes, bytes
    and reprs in order, so it is the same before saving and after loading."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                walk(k)
                walk(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk(obj)
    return h.hexdigest()


def _contents(payload: dict) -> dict:
    return {k: payload[k] for k in ("spec", "state_dict", "extra")}


def save(model: nn.Module, path: PathLike, *, extra: Optional[dict] = None,
         keep_previous: bool = False) -> None:
    """Saves a dvn backbone (its spec and state_dict) atomically with a digest of the contents;
    ``extra``: plain data; ``keep_previous``: see :func:`atomic_save`."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"model: {type(model).__name__} has no spec to rebuild it from; save "
                        "its state_dict with dvn.atomic_save instead")
    payload = {"format": FORMAT, "spec": spec, "state_dict": model.state_dict(),
               "extra": extra or {}}
    payload["sha256"] = digest(_contents(payload))
    atomic_save(payload, path, keep_previous=keep_previous)


_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _first_line(e: BaseException) -> str:
    """The exception's type and the first sentence that says what is wrong (torch's readers
    wrap it in paragraphs of general advice)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith(_ADVICE)] or lines
    text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def read(path: PathLike) -> dict:
    """The checked payload of a checkpoint written by :func:`save` (a run's training state is
    checked by :func:`dvn.runs.read`). Raises :class:`CheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint: no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint: {path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint: {path} is damaged or holds what a weights-only load "
                              f"refuses ({_first_line(e)})") from None
    except EOFError:
        raise CheckpointError(f"checkpoint: {path} is truncated (it ends before its data "
                              "does)") from None
    except Exception as e:  # the zip reader and the unpickler raise many kinds
        raise CheckpointError(f"checkpoint: {path} is damaged or truncated "
                              f"({_first_line(e)})") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (FORMAT, _UNCHECKED) or not all(
            k in payload for k in ("spec", "state_dict", "extra")):
        raise CheckpointError(f"checkpoint: {path} is not a dvn checkpoint (format "
                              f"{fmt!r}; expected {FORMAT!r})")
    if fmt == FORMAT and payload.get("sha256") != digest(_contents(payload)):
        raise CheckpointError(f"checkpoint: {path} is damaged (its contents do not match the "
                              "digest written with them)")
    return payload


def model_from(payload: dict, path: PathLike) -> nn.Module:
    """The backbone a payload of :func:`read` describes, with its weights."""
    try:
        model = build(payload["spec"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint: {os.fspath(path)} holds a model that does not "
                              f"rebuild ({_first_line(e)})") from None
    return model


def load(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuilds a model saved by :func:`save` (``torch.load(weights_only=True)``)."""
    model = model_from(read(path), path)
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
