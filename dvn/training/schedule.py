"""The learning-rate schedule: a function of the step, so a resumed run needs only the step."""

from __future__ import annotations

from ..scenarios import Scenario


def lr_at(scenario: Scenario, step: int, total: int) -> float:
    """lr of ``step`` (0-based) of ``total``: a linear warm-up over the first ``warmup`` fraction,
    then decayed by ``gamma`` at each milestone fraction (``step``, the paper's) or linearly to
    0 at the end (``linear``)."""
    warm = int(scenario.warmup * total)
    if step < warm:
        return scenario.lr * (step + 1) / warm
    if scenario.schedule == "linear":
        return scenario.lr * (total - step) / max(total - warm, 1)
    passed = sum(step >= int(f * total) for f in scenario.milestones)
    return scenario.lr * scenario.gamma ** passed
