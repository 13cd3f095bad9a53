"""A dependency-free progress bar on stderr with running metrics (off when not a TTY)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """``with Progress(total, "epoch 1/3") as bar: bar.update(loss=..., acc=...)``.

    Draws in place on a TTY; otherwise (or with ``enabled=False``) stays silent, and the caller
    prints one summary line per epoch instead.
    """

    def __init__(self, total: int, label: str, *, enabled: Optional[bool] = None,
                 stream: Optional[TextIO] = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if enabled is None else enabled)
        self.total, self.label, self.width = max(total, 1), label, width
        self.done, self.start, self.last_draw = 0, time.perf_counter(), 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def update(self, n: int = 1, **metrics: float) -> None:
        self.done += n
        self.metrics = metrics
        if self.enabled:
            self._draw()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last_draw < 0.2 and self.done < self.total:
            return
        self.last_draw = now
        filled = int(self.width * min(self.done, self.total) / self.total)
        rate = self.elapsed / max(self.done, 1)
        eta = rate * max(self.total - self.done, 0)
        text = " ".join(f"{k} {v:.4g}" for k, v in getattr(self, "metrics", {}).items())
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total} {text} {rate:.2f}s/it eta {eta:.0f}s ")
        self.stream.flush()
