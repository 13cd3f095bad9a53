"""Channels-last operands for the Triton kernels, whatever layout the caller uses.

The implicit-GEMM kernels tile (pixels x channels) and (channels x channels): a tile's loads
and stores are coalesced 16-byte vectors only along a unit-stride channel dimension (Triton
specialises a stride of 1 and sees the contiguity). Along pixels Triton cannot prove any
contiguity (the pixel index goes through ``% Q``), so an NCHW operand costs one 4-byte
transaction per element: a TF32 NCHW training step ran at an estimated 10-20% of cuDNN.

So the op hands the kernels unit-stride channels always:

- activations and incoming gradients: ``channels_last`` copies unless already so (one
  coalesced copy at memory bandwidth, far cheaper than the uncoalesced GEMM reads);
- weights: a ``channels_last`` (KRSC) copy, cached per weight version (a weight changes once
  per optimizer step, is read by every forward and grad-input pass of every level);
- results: written on a ``channels_last`` scratch and copied into the result the caller gets
  (``dvn_kernels.ops.empty_output``'s layout: NCHW callers get NCHW). Writing an NCHW result
  from the kernel directly would make its stores uncoalesced for the same reason as the loads; one
  coalesced store plus one copy (both at bandwidth) beats it.

Under tracing (torch.compile, export, any dispatch mode, tensor subclasses), inside a CUDA-graph
capture and for weights given to ``dvn_kernels.exclude_from_weight_cache``, the weight cache is
bypassed: the conversion is a plain ``.contiguous(memory_format=torch.channels_last)`` the
compiler sees, or a graph replays.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import torch

from ..weight_cache import weight_cache_allowed

# Bound on cached weight copies. Entries die with their weight (weak references), so this only
# matters with more live sliced weights than this (several large models in one process);
# beyond it the oldest conversions are dropped and recomputed on their next use.
MAX_CACHED_WEIGHTS = 1024

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def unit_channel_stride(t: torch.Tensor) -> bool:
    """True when the kernels read or write ``t`` coalesced as it is: unit channel stride (a
    single channel has no channel stride to speak of)."""
    return t.shape[1] <= 1 or t.stride(1) == 1


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` when its channels are unit-stride, else a channels_last copy."""
    if unit_channel_stride(t):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def gemm_layout(x: torch.Tensor) -> bool:
    """True for strictly channels_last x: an autotune key of the implicit GEMMs (the best tile
    differs)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


def kernel_output(t: torch.Tensor) -> torch.Tensor:
    """Where the kernels write result ``t``: ``t`` itself when its channels are unit-stride,
    else an uninitialised channels_last scratch of its shape (copy it back with ``finish``)."""
    if unit_channel_stride(t):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last)


def finish(t: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    """``t`` holding what the kernels wrote into ``written`` (from ``kernel_output(t)``)."""
    if written is not t:
        t.copy_(written)
    return t


class _Entry(NamedTuple):
    ref: weakref.ref  # the weight (the entry goes when it dies)
    key: tuple  # what must not have changed: version, storage, shape, strides, dtype
    copy: torch.Tensor  # its channels_last copy


_cache: dict[int, _Entry] = {}  # id(weight) -> entry; insertion order = age
_lock = threading.RLock()  # RLock: a weakref callback may run inside a locked block (GC)


def _traced(w: torch.Tensor) -> bool:
    """True when ``w`` is being traced or is no plain tensor: no cache (nothing Python-side
    may outlive a trace, and fake or functional tensors have no data pointer)."""
    return (type(w) not in _PLAIN or torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() > 0 or w.is_inference())


def _uncached(w: torch.Tensor) -> bool:
    """True when no copy may be cached or reused: under tracing, inside a CUDA-graph capture
    (a replay must convert the weight as it is then), or for a weight excluded from the cache
    (``dvn_kernels.weight_cache``: a model run through compiled CUDA graphs)."""
    return (_traced(w) or not weight_cache_allowed(w)
            or (w.is_cuda and torch.cuda.is_current_stream_capturing()))


def weight_channels_last(w: torch.Tensor) -> torch.Tensor:
    """``w`` with unit-stride input channels: itself when so already (channels_last weights,
    1x1 and depthwise kernels), else its channels_last copy, cached while ``w`` lives and is
    unchanged.

    The key is the tensor's identity (checked through a weak reference), its version counter
    (bumped by every in-place change: optimizer steps, ``load_state_dict``, ``nn.init``), its
    data pointer, shape, strides and dtype. Writes that bypass the version counter (through
    ``w.data``, raw collectives) are not seen: call ``clear_weight_cache`` after those.
    """
    if unit_channel_stride(w):
        return w
    if _uncached(w):
        return w.contiguous(memory_format=torch.channels_last)
    try:
        key = (w._version, w.data_ptr(), w.shape, w.stride(), w.dtype)
    except RuntimeError:  # no storage (a functional wrapper, say): nothing to key on
        return w.contiguous(memory_format=torch.channels_last)
    wid = id(w)
    entry = _cache.get(wid)
    if entry is not None and entry.key == key and entry.ref() is w:
        return entry.copy
    copy = w.detach().contiguous(memory_format=torch.channels_last)

    def drop(ref: weakref.ref, wid: int = wid) -> None:
        with _lock:
            if (e := _cache.get(wid)) is not None and e.ref is ref:
                del _cache[wid]

    with _lock:
        _cache.pop(wid, None)  # a stale copy (older version) goes now, not at eviction
        _cache[wid] = _Entry(weakref.ref(w, drop), key, copy)
        while len(_cache) > MAX_CACHED_WEIGHTS:
            del _cache[next(iter(_cache))]
    return copy


def clear_weight_cache() -> None:
    """Drops every cached weight copy (after writes the version counter does not see)."""
    with _lock:
        _cache.clear()


def cached_weights() -> int:
    """Number of cached weight copies (tests, memory accounting)."""
    return len(_cache)
