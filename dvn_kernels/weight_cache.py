"""Weights whose derived copies kernels must not cache (the Triton op's channels_last copies).

A cached copy is made on one call and read by later ones. Under compiled CUDA graphs that is
wrong twice over: a replay would read the copy made at capture after the weight changed (an
optimizer step, ``load_state_dict``), and a copy made while a graph's memory pool is active
(torch.compile's CUDA-graph warm-up, forward or backward) lives in that pool untracked, which
CUDA-graph trees reject ("tensors in the cudagraph pool not tracked as outputs"). A capture
is detected by the kernels themselves; a warm-up is not detectable, and a backward runs on
autograd's own threads. So code that runs a model through compiled graphs
(``dvn.compile_configs``) excludes the model's weights here, by their storage: every call on
them, eager or compiled, forward or backward, on any thread, then converts afresh.
``weight_cache_bypassed`` does the same for every weight, in one thread, for a block: what
``auto`` times as the kernel time a graph replays.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator

import torch

_excluded: dict[int, weakref.ref] = {}  # data pointer -> the tensor excluded there
_lock = threading.Lock()
_bypass = threading.local()  # .on: no cached copies in this thread (weight_cache_bypassed)


def exclude_from_weight_cache(tensors: Iterable[torch.Tensor]) -> None:
    """Kernels never cache copies of these tensors' storage (matched by data pointer, so
    views and aliases of a weight count too). Holds no reference: an entry whose tensor died,
    or moved to other storage, no longer excludes anything. After a weight gets new storage
    (``param.data = ...``, ``model.to(...)``), exclude it again."""
    with _lock:
        for t in tensors:
            ptr = t.data_ptr()
            if ptr:
                _excluded[ptr] = weakref.ref(t)
        for ptr in [p for p, ref in _excluded.items() if ref() is None]:
            del _excluded[ptr]


def weight_cache_allowed(t: torch.Tensor) -> bool:
    """False when ``t``'s storage was excluded (``exclude_from_weight_cache``): the tensor
    excluded there lives and still has that storage (not one since moved elsewhere, whose old
    address another tensor may now hold); False for every tensor inside
    ``weight_cache_bypassed``."""
    if getattr(_bypass, "on", False):
        return False
    ptr = t.data_ptr()
    ref = _excluded.get(ptr)
    if ref is None:
        return True
    owner = ref()
    return owner is None or owner.data_ptr() != ptr


@contextlib.contextmanager
def weight_cache_bypassed() -> Iterator[None]:
    """Within the block, in this thread, kernels neither read nor make cached copies of any
    weight: each call converts afresh, as its replay in a CUDA graph does."""
    old = getattr(_bypass, "on", False)
    _bypass.on = True
    try:
        yield
    finally:
        _bypass.on = old
