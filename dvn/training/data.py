"""The data side of a scenario: its tasks' splits, loaders and the per-step batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch

from ..runs import make_loader, task_splits  # noqa: F401  (the recipes load their data with them)
from .losses import label_map


def hierarchy(coarse, fine) -> torch.Tensor:
    """fine -> coarse label table of two splits holding the same images."""
    if len(coarse) != len(fine) or coarse.images.shape != fine.images.shape:
        raise ValueError(f"tasks: {coarse.name} and {fine.name} must hold the same images to "
                         "be a hierarchy")
    return label_map(coarse.labels, fine.labels, fine.num_classes)


class Batches:
    """Per-step batches of a scenario, deterministic per (seed, epoch) so a resumed run sees
    exactly the data an uninterrupted one would.

    ``mode``: ``per-task`` (one loader per task; smaller loaders restart within an epoch),
    ``shared`` (hierarchical: one loader, each task gets the same images with its own labels
    through ``tables``), ``new`` (sequential: the new task's loader only).
    An epoch is one pass over the largest loader, or ``steps`` batches (an independent network
    of one task of a joint scenario trains as many steps as that task gets in the DVN).
    """

    def __init__(self, loaders: dict, mode: str, tables: Optional[dict] = None,
                 steps: Optional[int] = None) -> None:
        self.loaders, self.mode, self.tables, self.steps = loaders, mode, tables or {}, steps
        if not loaders or any(len(loader) == 0 for loader in loaders.values()):
            raise ValueError("data: a task has no full batch; use a smaller --batch-size or "
                             "more data")

    def __len__(self) -> int:
        return self.steps or max(len(loader) for loader in self.loaders.values())

    @staticmethod
    def _cycle(loader, epoch: int, steps: int) -> Iterator:
        n, p = 0, 0
        while True:
            loader.set_epoch(epoch + 100003 * p)
            for batch in loader:
                if n == steps:
                    return
                yield batch
                n += 1
            p += 1

    def epoch(self, epoch: int, device: torch.device) -> Iterator[dict]:
        steps = len(self)
        its = {j: self._cycle(loader, epoch, steps) for j, loader in self.loaders.items()}
        for _ in range(steps):
            got = {j: next(it) for j, it in its.items()}
            got = {j: (x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                   for j, (x, y) in got.items()}
            if self.mode == "shared":
                (j, (x, y)), = got.items()
                yield {t: (x, table[y] if table is not None else y)
                       for t, table in self.tables.items()}
            else:
                yield got
