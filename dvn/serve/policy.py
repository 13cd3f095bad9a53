"""The level policy: which level a batch runs at, from the profile and the requests' slack.

SlackFit (SuperServe, NSDI 2025): a batch takes the highest level whose profiled latency at
that batch size fits the slack of the most urgent request waiting, so light load runs the top
level and bursts run lower levels in larger batches. A request with an explicit level runs at
it; one with neither level nor deadline runs at the top level.
"""

from __future__ import annotations

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


def slack_fit(model: LatencyModel, task: int, levels: Sequence[int], slack_ms: float,
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
