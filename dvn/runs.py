"""A run: the folder training writes, what defines it, and reading it back.

A run folder holds ``checkpoint.pt`` (a dvn checkpoint, :mod:`dvn.checkpoint`, whose ``extra``
holds the training state, written after every epoch, the version it replaced kept as
``checkpoint.prev.pt``), and what later commands add: ``results.json`` (``dvn eval``),
``deploy.safetensors`` and ``profile.json`` (``dvn profile``). This module knows the paths,
the run's configuration (:class:`TrainConfig`: a scenario plus how it was trained) and how to
load a run (:func:`load_run`) and its tasks' data (:func:`task_splits`, :func:`make_loader`).
Training, evaluation and deployment all read runs through it; it imports none of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from dvn_kernels.files import previous_path

from .checkpoint import CheckpointError, model_from
from .checkpoint import read as read_checkpoint
from .scenarios import Scenario

__all__ = ["CHECKPOINT", "TRAIN_KEYS", "TrainConfig", "checkpoint_path", "is_training_payload",
           "load_run", "make_loader", "previous_path", "read", "run_config", "task_splits",
           "trained_configs"]

CHECKPOINT = "checkpoint.pt"       # a run folder's checkpoint, written after every epoch
#: what a training checkpoint's ``extra["train"]`` holds
TRAIN_KEYS = ("config", "epoch", "step", "optimizer", "rng", "history")
PathLike = Union[str, os.PathLike]


def checkpoint_path(run: PathLike) -> str:
    """``run`` is a run folder (its ``checkpoint.pt``) or a checkpoint file."""
    run = os.fspath(run)
    return os.path.join(run, CHECKPOINT) if os.path.isdir(run) else run


def is_training_payload(payload: dict) -> bool:
    """Whether a checkpoint payload holds a training state (a run's ``checkpoint.pt``)."""
    state = payload["extra"].get("train") if isinstance(payload.get("extra"), dict) else None
    return isinstance(state, dict) and all(k in state for k in TRAIN_KEYS)


def read(path: PathLike, *, training: bool = False) -> dict:
    """The checked payload of a checkpoint (:func:`dvn.checkpoint.read`); ``training``: it
    must also hold a training state (a run's ``checkpoint.pt``). Raises CheckpointError."""
    payload = read_checkpoint(path)
    if training:
        state = payload["extra"].get("train") if isinstance(payload["extra"], dict) else None
        missing = [k for k in TRAIN_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"checkpoint: {os.fspath(path)} is not a dvn training "
                                  f"checkpoint (no {', '.join(missing)})")
    return payload


@dataclass
class TrainConfig:
    """Everything that defines a run.

    ``only``: train just these (task, level) configurations with cross-entropy on each task's
    own data: an independent network of exactly that level's size (the baselines; for a
    sequential scenario, the old network). ``teacher``: the old network's run for a sequential
    scenario.
    """

    scenario: Scenario
    preset: str
    out: str
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    only: tuple[tuple[int, int], ...] = ()
    teacher: Optional[str] = None
    data_root: Optional[str] = None

    def to_dict(self) -> dict:
        return dict(scenario=self.scenario.to_dict(), preset=self.preset, out=self.out,
                    seed=self.seed, device=self.device, backend=self.backend,
                    only=[list(c) for c in self.only], teacher=self.teacher,
                    data_root=self.data_root)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(Scenario.from_dict(d["scenario"]), d["preset"], d["out"], d["seed"],
                   d["device"], d["backend"], tuple(tuple(c) for c in d["only"]), d["teacher"],
                   d["data_root"])

    @property
    def kind(self) -> str:
        """What this run trains: the scenario's kind for a DVN, ``independent`` with ``only``."""
        return "independent" if self.only else self.scenario.kind

    def configs(self) -> list[tuple[int, int]]:
        """The (task, level) pairs this run trains."""
        if self.only:
            return list(self.only)
        s = self.scenario
        return [(j, l) for j in range(1, len(s.tasks) + 1) for l in range(1, s.units + 1)]

    def check(self) -> None:
        """Raises ValueError naming the argument when the run cannot be trained as given."""
        s, n = self.scenario, len(self.scenario.tasks)
        for j, l in self.configs():
            if not (1 <= j <= n and 1 <= l <= s.units):
                raise ValueError(f"only: ({j}, {l}) is not a (task, level) of {s.name} "
                                 f"(tasks 1..{n}, levels 1..{s.units})")
        if self.kind == "sequential" and not self.teacher:
            raise ValueError(f"teacher: scenario {s.name} is sequential; train the old network "
                             "first (--only 1:1 ... --only 1:K: every level of the old task) "
                             "and pass its run as --teacher")


def run_config(payload: dict, path: PathLike) -> TrainConfig:
    """The configuration stored in a training checkpoint read by :func:`read`."""
    try:
        return TrainConfig.from_dict(payload["extra"]["train"]["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {os.fspath(path)} holds an unreadable run "
                              f"configuration ({type(e).__name__}: {e})") from None


def trained_configs(payload: dict, path: PathLike) -> list[tuple[int, int]]:
    """The (task, level) pairs the run of a training checkpoint trains."""
    return run_config(payload, path).configs()


def load_run(run: PathLike, device: torch.device) -> tuple[nn.Module, TrainConfig, dict]:
    """The model, configuration and checkpoint payload of a run folder or checkpoint file.
    A missing or damaged checkpoint raises CheckpointError, which points to the previous
    epoch's checkpoint where one is kept."""
    path = checkpoint_path(run)
    try:
        payload = read(path, training=True)
    except CheckpointError as e:
        prev = previous_path(path)
        if os.path.isfile(prev):
            raise CheckpointError(f"{e}; the previous epoch's checkpoint is {prev}") from None
        raise
    return model_from(payload, path).to(device).eval(), run_config(payload, path), payload


def task_splits(scenario: Scenario, split: str, *, root: Optional[str] = None,
                subset: Optional[int] = None, seed: int = 0,
                tasks: Optional[Sequence[int]] = None) -> dict[int, "object"]:
    """Task number (1-based) -> dvn.data Split of ``split``, cut to ``subset`` images
    (synthetic stand-ins when ``DVN_SYNTHETIC_DATA`` is set: :mod:`dvn.data.synthetic`)."""
    from .data import task
    from .data.synthetic import ENV, enabled, synthetic_task
    if enabled():
        print(f"warning: {ENV} is set: synthetic stand-in data, not the real datasets",
              file=sys.stderr)
        task = synthetic_task
    out = {}
    for j in (tasks or range(1, len(scenario.tasks) + 1)):
        s = task(scenario.tasks[j - 1], split, root=root)
        if subset is not None and subset < len(s):
            s = s.subset(subset, seed=seed)
        out[j] = s
    return out


def make_loader(split, scenario: Scenario, task: int, *, train: bool, batch_size: int, seed: int,
                rank: int = 0, world_size: int = 1):
    """A loader of ``split`` at the task's input size and channels; training loaders augment
    unless the scenario turns augmentation off."""
    from .data import loader
    return loader(split, batch_size=batch_size, train=train,
                  size=scenario.input_sizes[task - 1], channels=scenario.channels[task - 1],
                  augment=None if scenario.augment else False, seed=seed, rank=rank,
                  world_size=world_size)
