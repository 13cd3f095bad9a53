"""Each scenario kind's recipe, in one place: which tasks' data a run draws and how, its loss,
the learning rate it trains at, and what it does to the model (start from a teacher, keep the
old tasks' batch norm statistics).

Kinds (``TrainConfig.kind``): ``joint`` (one mini-batch per task per step, Eq. 4),
``hierarchical`` (the same images with each task's labels), ``sequential`` (the new task's
stage: its images only, distillation toward the old network, Eq. 6) and ``independent``
(``--only``: cross-entropy of the given (task, level) pairs, the baselines and the old network).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..runs import TrainConfig
from ..scenarios import Scenario
from . import distributed
from .data import Batches, hierarchy, make_loader, task_splits
from .losses import Stats, joint_loss, sequential_loss
from .teacher import Teacher, freeze_batch_norm

Loss = Callable[[nn.Module, dict, Stats, int], torch.Tensor]  # (model, batches, stats, step)


@dataclass
class Recipe:
    """How one run trains. ``scenario`` is the scenario as this run trains it (the sequential
    stage at its ``finetune_lr``); ``frozen_norms``: tasks whose batch norm statistics stay."""

    scenario: Scenario
    data: Batches
    num_classes: list[int]
    loss: Loss
    teacher: Optional[Teacher] = None
    frozen_norms: tuple[int, ...] = ()
    warmup_steps: int = 0
    warmup_tasks: tuple[int, ...] = ()

    def start(self, model: nn.Module) -> None:
        """Initialises a new (not resumed) model: from the teacher where there is one."""
        if self.teacher is not None:
            self.teacher.initialise(model)

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        freeze_batch_norm(model, self.frozen_norms)

    def before_update(self, model: nn.Module, step: int) -> None:
        """During the first ``warmup_steps``, only the parameters of ``warmup_tasks`` (their
        stems, batch norms and heads) are updated: the others' gradients are dropped, so SGD
        leaves them, their momentum and their weight decay alone."""
        if step >= self.warmup_steps:
            return
        own = re.compile(r"(^|\.)t(" + "|".join(map(str, self.warmup_tasks))
                         + r")(_l\d+)?(\.|$)")
        for name, p in model.named_parameters():
            if not own.search(name):
                p.grad = None


class _Source:
    """The run's splits and loaders (per rank, each rank's share of the batch)."""

    def __init__(self, config: TrainConfig, world: distributed.World, subset: bool = True):
        s = config.scenario
        self.config, self.world = config, world
        self.batch = max(1, s.batch_size // world.world_size)
        self.splits = task_splits(s, "train", root=config.data_root, seed=config.seed,
                                  subset=s.train_subset if subset else None)
        self.num_classes = [self.splits[j].num_classes for j in sorted(self.splits)]

    def loader(self, split, task: int):
        return make_loader(split, self.config.scenario, task, train=True,
                           batch_size=self.batch, seed=self.config.seed, rank=self.world.rank,
                           world_size=self.world.world_size)


def _cross_entropy(configs: list[tuple[int, int]]) -> Loss:
    return lambda model, batches, stats, step: joint_loss(model, batches, configs, stats)


def _joint(config: TrainConfig, world: distributed.World, device: torch.device) -> Recipe:
    src = _Source(config, world)
    loaders = {j: src.loader(split, j) for j, split in src.splits.items()}
    return Recipe(config.scenario, Batches(loaders, "per-task"), src.num_classes,
                _cross_entropy(config.configs()))


def _hierarchical(config: TrainConfig, world: distributed.World, device: torch.device) -> Recipe:
    """The label tables come from the full splits, then one subset of the fine task's images
    serves every task (with or without ``only``)."""
    s = config.scenario
    src = _Source(config, world, subset=False)
    n = len(s.tasks)
    tasks = sorted({j for j, _ in config.configs()})
    tables = {j: hierarchy(src.splits[j], src.splits[n]).to(device) if j != n else None
              for j in tasks}
    fine = src.splits[n]
    if s.train_subset is not None and s.train_subset < len(fine):
        fine = fine.subset(s.train_subset, seed=config.seed)
    return Recipe(s, Batches({n: src.loader(fine, n)}, "shared", tables), src.num_classes,
                _cross_entropy(config.configs()))


def _independent(config: TrainConfig, world: distributed.World, device: torch.device) -> Recipe:
    """Each trained task on its own data. Of a joint scenario, an epoch is as long as the
    DVN's (its largest task), so an independent network trains as many steps as its task gets
    in the DVN; of a sequential one, a pass over its task, as in that task's stage."""
    s = config.scenario
    if s.kind == "hierarchical":
        return _hierarchical(config, world, device)
    src = _Source(config, world)
    tasks = sorted({j for j, _ in config.configs()})
    loaders = {j: src.loader(src.splits[j], j) for j in tasks}
    steps = None
    if s.kind == "joint":
        steps = max(len(src.loader(split, j)) for j, split in src.splits.items())
    return Recipe(s, Batches(loaders, "per-task", steps=steps), src.num_classes,
                _cross_entropy(config.configs()))


def _sequential(config: TrainConfig, world: distributed.World, device: torch.device) -> Recipe:
    """The new task's stage: starts from the old network (the teacher), sees the new task's
    images only, distils every level of the old tasks toward the teacher's outputs on them and
    keeps the old tasks' batch norm statistics. With ``lwf_warmup``, LwF's warm-up comes
    first: cross-entropy of the new task alone, training only its own parameters."""
    s = config.scenario
    if s.finetune_lr is not None:
        s = s.replace(lr=s.finetune_lr)
    n = len(s.tasks)
    teacher = Teacher(config.teacher, device)
    src = _Source(config, world)
    data = Batches({n: src.loader(src.splits[n], n)}, "new")
    warmup = int(s.lwf_warmup * len(data) * s.epochs)
    new_only = _cross_entropy([(n, l) for l in range(1, s.units + 1)])

    def loss(model: nn.Module, batches: dict, stats: Stats, step: int) -> torch.Tensor:
        if step < warmup:
            return new_only(model, batches, stats, step)
        return sequential_loss(model, teacher, batches[n], range(1, n), n, s.units,
                               temperature=s.temperature, weight=s.distill_weight, stats=stats)

    return Recipe(s, data, src.num_classes, loss, teacher=teacher,
                frozen_norms=tuple(range(1, n)), warmup_steps=warmup, warmup_tasks=(n,))


PLANS = {"joint": _joint, "hierarchical": _hierarchical, "independent": _independent,
         "sequential": _sequential}


def make_recipe(config: TrainConfig, world: distributed.World, device: torch.device) -> Recipe:
    """The recipe of ``config``'s kind."""
    return PLANS[config.kind](config, world, device)
