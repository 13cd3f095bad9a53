"""Side-by-side timing (candidates round-robin in one process, medians) and result files."""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping


def time_side_by_side(fns: Mapping[str, Callable[[], object]], *, repeats: int = 15,
                      warmup: int = 3, min_seconds: float = 0.0,
                      settle: int = 1) -> dict[str, float]:
    """Median seconds per call of each function.

    Each round calls every function in a freshly shuffled order, so that a noisy neighbour
    slows all candidates alike; ``warmup`` rounds are discarded. Before its timed call each
    function runs ``settle`` untimed calls: the timed call then sees the caches and the
    allocator as that function left them, not as the previous candidate did. (Without it, a
    memory-hungry candidate such as the masked dense conv slowed whichever candidate ran next
    by up to 1.7x, and a fixed shuffle seed made that the same candidate in every row.) At
    least ``repeats`` rounds run, more while the total is under ``min_seconds``.
    """
    order = list(fns)
    rng = random.Random(0)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - start < min_seconds:
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in samples.items()}


def write_results(path: str, meta: dict, rows: list[dict]) -> None:
    """Writes {"meta", "rows"} as JSON: to a temporary file, then renamed over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.replace(tmp, path)
    print(f"# wrote {path}")
