"""The level policy: which level a batch runs at, from the profile and the requests' slack.

SlackFit (SuperServe, NSDI 2025): a batch takes the highest level whose profiled latency at
that batch size fits the slack of the most urgent request waiting, so light load runs the top
level and bursts run lower levels in larger batches. A request with an explicit level runs at
it; one with neither level nor deadline runs at the top level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from ..deploy.profiles import Profile


@dataclass(frozen=True)
class LatencyModel:
    """Milliseconds of one batch of ``b`` at a (task, level): linear between the profile's
    batch-1 latency and its latency at ``batch`` (extrapolated past it)."""

    b1: Mapping[tuple[int, int], float]
    bn: Mapping[tuple[int, int], float]
    batch: int

    @classmethod
    def from_profile(cls, profile: Profile, configs: Sequence[tuple[int, int]],
                     runtime: Optional[str] = None) -> LatencyModel:
        """The model of ``configs`` from a profile table's rows of ``runtime`` (None: each
        level's fastest; every config needs a batch-1 row; without a larger batch, latency
        grows in proportion to the batch)."""
        batch = int(profile.meta.get("batch") or 1)
        b1, bn = {}, {}
        for task, level in configs:
            row = profile.row(task, level, runtime)
            if row is None or row.get("latency_ms_b1") is None:
                on = f" on {runtime}" if runtime else ""
                raise ValueError(f"profile: no batch-1 latency for task {task} level {level}{on}")
            b1[(task, level)] = float(row["latency_ms_b1"])
            big = row.get(f"latency_ms_b{batch}")
            bn[(task, level)] = float(big) if big is not None else b1[(task, level)] * batch
        return cls(b1, bn, batch)

    def ms(self, task: int, level: int, b: int) -> float:
        """Predicted milliseconds of a batch of ``b`` requests at (task, level)."""
        one, big = self.b1[(task, level)], self.bn[(task, level)]
        if self.batch <= 1:
            return one * b
        per = max(big - one, 0.0) / (self.batch - 1)
        return one + per * (b - 1)


class Calibrated:
    """A ``LatencyModel`` scaled by the batch times this server observes, per (task, level)
    and for batches of one apart from larger ones.

    A profile times each level alone; in a server the batches share the CPU and the GIL with
    the HTTP loop, so they run slower than profiled (1.2-1.5x at the top level during bursts,
    measured with ``bench.serve``), and a profile's large-batch time taken from a few calls at
    start-up can be off either way. The scale follows a slower batch quickly (``rise``) and a
    faster one slowly (``fall``): an upper envelope, so the policy errs toward the deadline.
    Each observed ratio is clipped to ``bounds`` first (one preempted batch moves it at most
    that far).
    """

    def __init__(self, model: LatencyModel, *, rise: float = 0.3, fall: float = 0.05,
                 bounds: tuple[float, float] = (0.25, 4.0)) -> None:
        if not (0 < fall <= 1 and 0 < rise <= 1 and 0 < bounds[0] <= 1 <= bounds[1]):
            raise ValueError(f"calibration: rise and fall in (0, 1], bounds around 1; got "
                             f"rise {rise}, fall {fall}, bounds {bounds}")
        self.model, self.rise, self.fall, self.bounds = model, rise, fall, bounds
        self._scale: dict[tuple[int, int, bool], float] = {}

    @property
    def batch(self) -> int:
        return self.model.batch

    def scale(self, task: int, level: int, b: int = 1) -> float:
        """The factor on the profile's latency for a batch of ``b`` at (task, level)."""
        return self._scale.get((task, level, b > 1), 1.0)

    def ms(self, task: int, level: int, b: int) -> float:
        """Predicted milliseconds of a batch of ``b`` at (task, level), as observed here."""
        return self.model.ms(task, level, b) * self.scale(task, level, b)

    def observe(self, task: int, level: int, b: int, ms: float) -> None:
        """Records that a batch of ``b`` at (task, level) took ``ms`` milliseconds."""
        predicted = self.model.ms(task, level, b)
        if not (predicted > 0 and math.isfinite(ms)):
            return
        ratio = min(max(ms / predicted, self.bounds[0]), self.bounds[1])
        key = (task, level, b > 1)
        old = self._scale.get(key, 1.0)
        self._scale[key] = old + (self.rise if ratio > old else self.fall) * (ratio - old)


def slack_fit(model: "LatencyModel | Calibrated", task: int, levels: Sequence[int], slack_ms: float,
              count: int, max_batch: int) -> tuple[int, int]:
    """(level, batch size) for ``count`` flexible requests of ``task`` whose most urgent has
    ``slack_ms`` left: the highest level whose batch of ``min(count, max_batch)`` fits the
    slack; when none fits, the lowest level (its deadline is probably missed, but it is the
    soonest answer)."""
    b = max(1, min(count, max_batch))
    for level in sorted(levels, reverse=True):
        if model.ms(task, level, b) <= slack_ms:
            return level, b
    return min(levels), b


def fixed_level(levels: Sequence[int], level: Optional[int]) -> int:
    """The level of a request that names one, else the top level."""
    return max(levels) if level is None else level
