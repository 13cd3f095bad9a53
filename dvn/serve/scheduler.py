"""Dynamic batching per (task, level): one worker thread takes the most urgent waiting request,
decides its batch's level (``policy``) and runs every waiting request of that (task, level) with
it, up to ``max_batch``; the queue is bounded and drains on close.

Requests wait in one list ordered by urgency (earliest deadline first; a request without a
deadline counts as due ``default_slack_ms`` after it arrived, so it is never starved). The
worker batches without waiting for a batch to fill: under light load each request runs alone
at once, under a burst the requests that arrive while a batch runs form the next one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional

import torch

from .metrics import Metrics
from .policy import Calibrated, LatencyModel, fixed_level, slack_fit


class QueueFull(RuntimeError):
    """The bounded queue cannot take the requests (answered 503 with Retry-After)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("queue: the server is at its queue limit; retry later")
        self.retry_after_s = retry_after_s


class Closing(RuntimeError):
    """The server is shutting down and takes no new requests (answered 503)."""


@dataclass
class Request:
    """One image of one task, prepared as its network takes it (``x``: C x H x W).
    ``level``: explicit, or None; ``deadline``: absolute ``time.perf_counter()`` seconds, or
    None; ``arrived``: when the server received it."""

    task: int
    x: torch.Tensor
    level: Optional[int] = None
    deadline: Optional[float] = None
    arrived: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)

    @property
    def flexible(self) -> bool:
        """The policy picks its level (it has a deadline and no level)."""
        return self.level is None and self.deadline is not None


Run = Callable[[torch.Tensor, int, int], torch.Tensor]  # (x, task, level) -> logits
Answer = Callable[[Request, int, torch.Tensor, float, float, int], dict]


class Scheduler:
    """Batches requests per (task, level) on one worker thread and answers each request's
    future with ``answer(request, level, probs, started, finished, batch)``.

    ``run(x, task, level)``: the network (e.g. a ``Deployment``); ``levels``: task -> its
    levels; ``latency``: the profile's latency model, scaled by the batch times observed here
    (``policy.Calibrated``) unless ``calibrate`` is false; ``margin_ms``: time kept for the
    answer's way back (subtracted from the slack).
    """

    def __init__(self, run: Run, levels: dict[int, Sequence[int]], latency: LatencyModel,
                 answer: Answer, metrics: Metrics, *, max_batch: int = 16, max_queue: int = 256,
                 margin_ms: float = 1.0, default_slack_ms: float = 1000.0,
                 calibrate: bool = True) -> None:
        self._run, self._levels = run, {t: sorted(v) for t, v in levels.items()}
        self.latency = Calibrated(latency) if calibrate else latency
        self._answer, self.metrics = answer, metrics
        self.max_batch, self.max_queue = max_batch, max_queue
        self.margin_ms, self.default_slack_ms = margin_ms, default_slack_ms
        self._pending: list[Request] = []
        self._cond = threading.Condition()
        self._closing = False
        self._busy_ms = 0.0  # the running batch's predicted time, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="dvn-serve-batcher", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------- the queue side
    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._pending)

    def submit(self, requests: Sequence[Request]) -> None:
        """Queues the requests, all or none: raises ``Closing`` while shutting down and
        ``QueueFull`` (with a retry estimate) when they do not fit the bound."""
        with self._cond:
            if self._closing:
                raise Closing("server: shutting down; it takes no new requests")
            if len(self._pending) + len(requests) > self.max_queue:
                self.metrics.rejected(len(requests))
                raise QueueFull(self._retry_after_s())
            self._pending.extend(requests)
            self.metrics.queue_depth(len(self._pending))
            self._cond.notify()

    def _retry_after_s(self) -> float:
        """About how long the queue takes to drain, at the top levels' batch latency."""
        lat = max((self.latency.ms(t, max(lv), self.max_batch) for t, lv in self._levels.items()),
                  default=1.0)
        batches = math.ceil(len(self._pending) / self.max_batch)
        return max(1.0, (batches * lat + self._busy_ms) / 1e3)

    def close(self, drain: bool = True, timeout: float = 30.0) -> bool:
        """Stops taking requests; with ``drain`` answers those queued first, else fails them.
        Returns whether the worker stopped within ``timeout`` seconds."""
        with self._cond:
            self._closing = True
            if not drain:
                for r in self._pending:
                    r.future.set_exception(Closing("server: shut down before this request ran"))
                self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------------- the worker side
    def _due(self, r: Request) -> float:
        return r.deadline if r.deadline is not None else r.arrived + self.default_slack_ms / 1e3

    def _take(self) -> tuple[int, int, list[Request]]:
        """(task, level, batch) of the most urgent request, removed from the queue."""
        first = min(self._pending, key=self._due)
        task, levels = first.task, self._levels[first.task]
        same = sorted((r for r in self._pending if r.task == task), key=self._due)
        if first.flexible:
            group = [r for r in same if r.flexible]
            slack_ms = (first.deadline - time.perf_counter()) * 1e3 - self.margin_ms
            level, b = slack_fit(self.latency, task, levels, slack_ms, len(group), self.max_batch)
            batch = group[:b]
        else:
            level = fixed_level(levels, first.level)
            batch = [r for r in same if not r.flexible and fixed_level(levels, r.level) == level]
            batch = batch[:self.max_batch]
        chosen = set(map(id, batch))
        self._pending = [r for r in self._pending if id(r) not in chosen]
        return task, level, batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:  # closing and drained
                    return
                try:
                    task, level, batch = self._take()
                    self._busy_ms = self.latency.ms(task, level, len(batch))
                except Exception as e:  # never lose the worker: fail what it could not place
                    for r in self._pending:
                        r.future.set_exception(e)
                    self._pending.clear()
                    continue
                finally:
                    self.metrics.queue_depth(len(self._pending))
            self._execute(task, level, batch)
            self._busy_ms = 0.0

    def _execute(self, task: int, level: int, batch: list[Request]) -> None:
        started = time.perf_counter()
        try:
            x = torch.stack([r.x for r in batch])
            probs = self._run(x, task, level).float().softmax(1).cpu()
        except Exception as e:  # a failing batch fails its requests, never the worker
            for r in batch:
                r.future.set_exception(e)
            self.metrics.failed(task, level, len(batch))
            return
        finished = time.perf_counter()
        ms = (finished - started) * 1e3
        self.metrics.batch(task, level, len(batch), ms)
        if isinstance(self.latency, Calibrated):
            self.latency.observe(task, level, len(batch), ms)
        for i, r in enumerate(batch):
            try:
                r.future.set_result(self._answer(r, level, probs[i], started, finished, len(batch)))
            except Exception as e:
                r.future.set_exception(e)
