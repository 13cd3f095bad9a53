"""The one timer of evaluation, profiles, serving start-up and the benchmarks.

:func:`time_calls` times several callables side by side in one process: warm-up rounds, then
rounds that call every function once each (optionally after ``settle`` untimed calls), in an
order that changes from round to round, so that a noisy machine slows them all alike. On a CUDA
device it synchronises after warm-up and after each timed call (host clock around the whole
call). It returns every sample; :func:`medians` and :func:`side_by_side` reduce them. (The
kernels' own choice among backends on a GPU times with CUDA events: ``dvn_kernels.choice``.)
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Optional, Union

import torch

ORDERS = ("rotate", "shuffle", "fixed")


def time_calls(fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 2,
               order: str = "rotate", settle: int = 0, calls: int = 1,
               min_seconds: float = 0.0, seed: int = 0,
               device: Optional[Union[str, torch.device]] = None) -> list[list[float]]:
    """Seconds per call of each ``fn()``: one sample per round, at least ``repeats`` rounds
    (more while the rounds took under ``min_seconds`` in all), after ``warmup`` untimed
    rounds. ``order``: ``rotate`` (round r starts with function r mod n), ``shuffle`` (a fresh
    order each round from ``seed``) or ``fixed``. ``settle``: untimed calls of a function just
    before its timed one, so that it sees the caches and the allocator as it leaves them, not
    as the previous function did. ``calls``: calls per sample (the mean of a sample's calls,
    for functions too quick to time alone). ``device``: synchronised when CUDA."""
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    if repeats < 1 or calls < 1:
        raise ValueError(f"repeats and calls must be at least 1, got {repeats} and {calls}")
    dev = torch.device(device) if device is not None else None
    sync = (lambda: torch.cuda.synchronize(dev)) if dev is not None and dev.type == "cuda" \
        else (lambda: None)
    n = len(fns)
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync()
    rng = random.Random(seed)
    indices = list(range(n))
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    r = 0
    while r < repeats or time.perf_counter() - start < min_seconds:
        if order == "shuffle":
            rng.shuffle(indices)
        elif order == "rotate":
            indices = [(i + r) % n for i in range(n)]
        for j in indices:
            fn = fns[j]
            for _ in range(settle):
                fn()
            if settle:
                sync()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            samples[j].append((time.perf_counter() - t) / calls)
        r += 1
    return samples


def medians(samples: Sequence[Sequence[float]]) -> list[float]:
    """The median of each function's samples."""
    return [statistics.median(s) for s in samples]


def side_by_side(fns: Mapping[str, Callable[[], object]], *, repeats: int = 15,
                 warmup: int = 3, order: str = "shuffle", settle: int = 1,
                 **kwargs) -> dict[str, float]:
    """Median seconds per call of each named function, timed with :func:`time_calls`
    (shuffled rounds, one settling call before each timed one)."""
    names = list(fns)
    samples = time_calls([fns[k] for k in names], repeats=repeats, warmup=warmup, order=order,
                         settle=settle, **kwargs)
    return dict(zip(names, medians(samples)))
