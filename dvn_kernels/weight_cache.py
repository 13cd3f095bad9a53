"""The switch for kernels' cached weight copies (the Triton op's channels_last weights).

A cached copy is made on one call and read by later ones. Inside a CUDA graph that is wrong
twice over: a replay would read the copy made at capture after the weight changed (an
optimizer step, ``load_state_dict``), and a copy made while a graph's memory pool is active
(torch.compile's CUDA-graph warm-up) lives in that pool untracked, which CUDA-graph trees
reject ("tensors in the cudagraph pool not tracked as outputs"). Capture is detected by the
kernels themselves; a warm-up is not detectable, so code that runs compiled CUDA graphs
(``dvn.compile_configs``) turns the cache off around its calls with ``weight_cache_disabled``.
The switch is per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


@contextmanager
def weight_cache_disabled() -> Iterator[None]:
    """Within the block, on this thread, kernels convert weights on every call, caching none."""
    before = getattr(_state, "disabled", False)
    _state.disabled = True
    try:
        yield
    finally:
        _state.disabled = before


def weight_cache_enabled() -> bool:
    """False inside ``weight_cache_disabled`` on this thread."""
    return not getattr(_state, "disabled", False)
