"""The one way this project replaces a file: :func:`atomic_write`.

A temporary file beside the target is written, flushed to disk and renamed over it, so a crash
never leaves a truncated file where a good one was. It lives at the lowest layer (dvn_kernels
imports nothing of dvn) so that every package can use it: dvn's checkpoints, unit files,
profiles and results, its data cache, dvn_kernels' choice cache and bench's result files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO, Optional, Union

PathLike = Union[str, os.PathLike]


def previous_path(path: PathLike) -> str:
    """Where the version that ``path`` replaced is kept: ``run/checkpoint.prev.pt``."""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.prev{ext or '.pt'}"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], *,
                 keep_previous: bool = False, sync: bool = True) -> None:
    """Calls ``write(f)`` on a temporary file beside ``path`` (binary, opened for writing),
    flushes it (to disk unless ``sync=False``), then renames it over ``path``; the temporary
    file is removed when anything fails. ``keep_previous`` first moves the file being replaced
    to :func:`previous_path` (a crash between the two renames leaves that one, which a resume
    falls back to). Creates the folder when missing."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if keep_previous and os.path.isfile(path):
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(folder)


def write_bytes(path: PathLike, data: bytes, **kwargs: Any) -> None:
    """``data`` into ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(data), **kwargs)


def write_text(path: PathLike, text: str, **kwargs: Any) -> None:
    """``text`` (UTF-8) into ``path`` with :func:`atomic_write`."""
    write_bytes(path, text.encode("utf-8"), **kwargs)


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 1,
               sort_keys: bool = False, newline: bool = False, **kwargs: Any) -> None:
    """``obj`` as JSON into ``path`` with :func:`atomic_write`; ``newline``: end with one."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    write_text(path, text + ("\n" if newline else ""), **kwargs)


def move_aside(path: PathLike, suffix: str) -> str:
    """Renames ``path`` to ``path + suffix`` (e.g. a damaged checkpoint to
    ``checkpoint.pt.damaged``), replacing what was there; returns the new path."""
    target = os.fspath(path) + suffix
    os.replace(path, target)
    return target
