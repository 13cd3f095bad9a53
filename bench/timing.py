"""Side-by-side timing (candidates round-robin in one process, medians) and result files.

The timer is dvn's own (:mod:`dvn.timing`), shared with ``dvn eval``, ``dvn profile`` and
``dvn serve``; the result files are written with the project's one atomic write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Optional

from dvn.timing import side_by_side
from dvn_kernels.files import write_json


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
    return side_by_side(fns, repeats=repeats, warmup=warmup, min_seconds=min_seconds,
                        settle=settle, order="shuffle")


def quantile(values, q: float) -> float:
    """The ``q`` quantile of ``values`` (the sorted value at index ``int(q * n)``, clamped):
    what the serving benchmarks report as p50 and p99."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# torch logs "skipping cudagraphs due to ..." on this artifact logger, off unless TORCH_LOGS
# names it; the compiled function then runs without CUDA graphs.
_CUDAGRAPH_LOG = "torch._inductor.cudagraph_utils.__cudagraphs"


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage().split(". Found from")[0].splitlines()[0])


@contextlib.contextmanager
def cudagraph_skips() -> Iterator[list[str]]:
    """The list of torch's CUDA-graph skip messages logged while the block runs.

    A ``torch.compile`` capture that torch ran without its CUDA graphs (an unsupported op, a
    CPU tensor, a mutated input) would otherwise be timed as if it were one: a benchmark row
    of a capture carries this list.
    """
    import torch._inductor.cudagraph_utils  # noqa: F401  (registers the logger)

    log = logging.getLogger(_CUDAGRAPH_LOG)
    messages: list[str] = []
    handler, level = _Collect(messages), log.level
    log.addHandler(handler)
    if not log.isEnabledFor(logging.WARNING):
        log.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def write_results(path: str, meta: dict, rows: list[dict]) -> None:
    """Writes {"meta", "rows"} as JSON, atomically (``dvn_kernels.files``)."""
    write_json(path, {"meta": meta, "rows": rows}, indent=1)
    print(f"# wrote {path}")


def cpu_meta(module: str, argv: Optional[Sequence[str]], **extra) -> dict:
    """A CPU benchmark's ``meta``: the command that made it (``python -m module`` and its
    arguments), the machine, torch's version, ``extra``, the load average and the caveat."""
    import torch

    from dvn.host import machine
    args = list(argv) if argv is not None else sys.argv[1:]
    return {"command": " ".join(["python -m", module, *args]),
            "machine": machine(torch.device("cpu")), "torch": torch.__version__, **extra,
            "load_average": os.getloadavg(), "note": "shared 2-core machine: noisy"}
