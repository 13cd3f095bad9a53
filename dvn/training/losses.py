"""The paper's objectives: joint (Eq. 4), sequential with distillation (Eq. 6), hierarchical.

Every objective is a plain unweighted sum over (task, level) terms: the significance of a unit
for a task comes only from how many levels include it (Eq. 5), never from a weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]
Stats = dict[tuple[int, int], tuple[float, int, int]]  # (task, level) -> (loss, correct, seen)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """LwF's modified cross-entropy: -sum softmax(t/T) log softmax(s/T), mean over the batch.

    (softmax(t)^(1/T) renormalised equals softmax(t/T); LwF uses T = 2 and no T^2 factor.)
    """
    if student.shape != teacher.shape:
        raise ValueError(f"teacher: logits of shape {tuple(teacher.shape)} do not match the "
                         f"student's {tuple(student.shape)}")
    target = F.softmax(teacher.detach() / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()


def _record(stats: Optional[Stats], key: tuple[int, int], loss: torch.Tensor,
            logits: torch.Tensor, target: torch.Tensor) -> None:
    if stats is None:
        return
    with torch.no_grad():
        if target.dtype == torch.int64:
            correct = int((logits.argmax(1) == target).sum())
        else:  # soft targets: agreement with the teacher's top class
            correct = int((logits.argmax(1) == target.argmax(1)).sum())
    stats[key] = (float(loss.detach()), correct, int(logits.shape[0]))


def joint_loss(model: nn.Module, batches: Mapping[int, Batch],
               configs: Iterable[tuple[int, int]], stats: Optional[Stats] = None) -> torch.Tensor:
    """Eq. (4): sum of cross-entropy over ``configs`` (task, level), task j on ``batches[j]``.

    Hierarchical classification is this loss with the same images in every task's batch
    (coarse labels for one task, fine labels for the other).
    """
    total = None
    for task, level in configs:
        x, y = batches[task]
        logits = model(x, task=task, level=level)
        loss = F.cross_entropy(logits, y)
        _record(stats, (task, level), loss, logits, y)
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("configs: no (task, level) to train")
    return total


def sequential_loss(model: nn.Module, teacher: Callable[[torch.Tensor, int], torch.Tensor],
                    batch: Batch, old_tasks: Sequence[int], new_task: int, levels: int, *,
                    temperature: float = 2.0, weight: float = 1.0,
                    stats: Optional[Stats] = None) -> torch.Tensor:
    """Eq. (6): every level of every old task distils toward the old network's output for that
    task on the *new* data, plus cross-entropy of the new task at every level.

    ``teacher(x, task)`` gives the old network's logits for an old task (computed without grad).
    """
    x, y = batch
    total = None
    for task in old_tasks:
        with torch.no_grad():
            target = teacher(x, task)
        for level in range(1, levels + 1):
            logits = model(x, task=task, level=level)
            loss = weight * distillation_loss(logits, target, temperature)
            _record(stats, (task, level), loss, logits, target)
            total = loss if total is None else total + loss
    for level in range(1, levels + 1):
        logits = model(x, task=new_task, level=level)
        loss = F.cross_entropy(logits, y)
        _record(stats, (new_task, level), loss, logits, y)
        total = loss if total is None else total + loss
    return total


def label_map(coarse: torch.Tensor, fine: torch.Tensor, num_fine: int) -> torch.Tensor:
    """The table fine label -> coarse label of a hierarchy, derived from two labelings of the
    same images; raises ValueError when the coarse labels are not a function of the fine."""
    if coarse.shape != fine.shape:
        raise ValueError(f"tasks: hierarchical tasks need the same images; got {coarse.numel()} "
                         f"coarse and {fine.numel()} fine labels")
    table = torch.full((num_fine,), -1, dtype=torch.int64)
    for f in range(num_fine):
        values = torch.unique(coarse[fine == f])
        if values.numel() > 1:
            raise ValueError(f"tasks: fine class {f} has several coarse labels "
                             f"{values.tolist()}; not a hierarchy")
        if values.numel() == 1:
            table[f] = values[0]
    return table
