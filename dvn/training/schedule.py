"""The learning-rate schedule: a function of the step, so a resumed run needs only the step."""

from __future__ import annotations

from .scenarios import Scenario


def lr_at(scenario: Scenario, step: int, total: int) -> float:
    """lr decayed by ``gamma`` at each milestone fraction of the ``total`` steps."""
    passed = sum(step >= int(f * total) for f in scenario.milestones)
    return scenario.lr * scenario.gamma ** passed
