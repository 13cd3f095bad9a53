"""Server metrics in the Prometheus text format (no client library: a few counters and
histograms under one lock)."""

from __future__ import annotations

import threading
from collections import defaultdict

#: latency histogram buckets, milliseconds
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: batch size histogram buckets
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}'
               for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        tail = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{tail} {self.sum:.6g}", f"{name}_count{tail} {self.count}"]
        return out


class Metrics:
    """Requests and deadlines by task and level, queue depth, batch sizes, latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[int, int], int] = defaultdict(int)
        self._deadlines: dict[tuple[int, int, str], int] = defaultdict(int)
        self._failed: dict[tuple[int, int], int] = defaultdict(int)
        self._latency: dict[tuple[int, int], _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._rejected = 0
        self._errors: dict[int, int] = defaultdict(int)
        self._depth = 0

    def answered(self, task: int, level: int, latency_ms: float, met: bool | None) -> None:
        """One answered request: its end-to-end latency and, with a deadline, whether it met it."""
        with self._lock:
            self._requests[(task, level)] += 1
            h = self._latency.setdefault((task, level), _Histogram(LATENCY_BUCKETS_MS))
            h.observe(latency_ms)
            if met is not None:
                self._deadlines[(task, level, "met" if met else "missed")] += 1

    def batch(self, task: int, level: int, size: int, ms: float) -> None:
        with self._lock:
            self._batches.observe(size)

    def failed(self, task: int, level: int, count: int) -> None:
        with self._lock:
            self._failed[(task, level)] += count

    def rejected(self, count: int) -> None:
        with self._lock:
            self._rejected += count

    def error(self, status: int) -> None:
        """A request answered with an HTTP error status."""
        with self._lock:
            self._errors[status] += 1

    def queue_depth(self, depth: int) -> None:
        self._depth = depth

    def snapshot(self) -> dict:
        """The counters as plain data (for tests and the benchmark)."""
        with self._lock:
            return {"requests": dict(self._requests), "deadlines": dict(self._deadlines),
                    "rejected": self._rejected, "errors": dict(self._errors),
                    "batches": self._batches.count, "queue_depth": self._depth}

    def text(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            out = ["# HELP dvn_requests_total Requests answered, by task and level.",
                   "# TYPE dvn_requests_total counter"]
            out += [f'dvn_requests_total{{task="{t}",level="{lv}"}} {n}'
                    for (t, lv), n in sorted(self._requests.items())]
            out += ["# HELP dvn_deadlines_total Requests with a deadline, by whether the answer "
                    "was ready in time.", "# TYPE dvn_deadlines_total counter"]
            out += [f'dvn_deadlines_total{{task="{t}",level="{lv}",result="{r}"}} {n}'
                    for (t, lv, r), n in sorted(self._deadlines.items())]
            out += ["# HELP dvn_failed_total Requests whose batch raised.",
                    "# TYPE dvn_failed_total counter"]
            out += [f'dvn_failed_total{{task="{t}",level="{lv}"}} {n}'
                    for (t, lv), n in sorted(self._failed.items())]
            out += ["# HELP dvn_rejected_total Requests refused by the bounded queue (503).",
                    "# TYPE dvn_rejected_total counter", f"dvn_rejected_total {self._rejected}"]
            out += ["# HELP dvn_http_errors_total Calls answered with an error status.",
                    "# TYPE dvn_http_errors_total counter"]
            out += [f'dvn_http_errors_total{{status="{s}"}} {n}'
                    for s, n in sorted(self._errors.items())]
            out += ["# HELP dvn_queue_depth Requests waiting for a batch.",
                    "# TYPE dvn_queue_depth gauge", f"dvn_queue_depth {self._depth}"]
            out += ["# HELP dvn_batch_size Requests per batch run.",
                    "# TYPE dvn_batch_size histogram"] + self._batches.lines("dvn_batch_size", "")
            out += ["# HELP dvn_latency_ms Server-side latency of a request (arrival to answer), "
                    "milliseconds.", "# TYPE dvn_latency_ms histogram"]
            for (t, lv), h in sorted(self._latency.items()):
                out += h.lines("dvn_latency_ms", f'task="{t}",level="{lv}"')
            return "\n".join(out) + "\n"
