"""What defines a run (stored in its checkpoint; ``--resume`` reuses it) and where it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..checkpoint import CheckpointError
from .scenarios import Scenario


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


def run_config(payload: dict, path: str) -> TrainConfig:
    """The configuration stored in a training checkpoint read by :func:`dvn.checkpoint.read`."""
    try:
        return TrainConfig.from_dict(payload["extra"]["train"]["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path} holds an unreadable run configuration "
                              f"({type(e).__name__}: {e})") from None


def trained_configs(payload: dict, path: str) -> list[tuple[int, int]]:
    """The (task, level) pairs the run of a training checkpoint trains."""
    return run_config(payload, path).configs()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ValueError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device
