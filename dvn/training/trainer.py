"""The training loop: objective, schedule, per-epoch atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from .. import backbones
from ..checkpoint import FORMAT, save
from ..export import count_parameters
from ..norm import SlicedBatchNorm2d
from . import distributed
from .data import Batches, hierarchy, make_loader, task_splits
from .losses import joint_loss, sequential_loss
from .progress import Progress
from .scenarios import Scenario

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in its checkpoint; ``--resume`` reuses it).

    ``only``: train just these (task, level) configurations with cross-entropy on each task's
    own data: an independent network of exactly that level's size (the baselines). ``teacher``:
    the old network's checkpoint for a sequential scenario.
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

    def configs(self) -> list[tuple[int, int]]:
        """The (task, level) pairs this run trains."""
        if self.only:
            return list(self.only)
        s = self.scenario
        return [(j, l) for j in range(1, len(s.tasks) + 1) for l in range(1, s.units + 1)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device


def build_model(scenario: Scenario, num_classes: list[int], backend: str) -> nn.Module:
    """The scenario's backbone: k units, one virtual network per task."""
    kw = dict(units=scenario.units, tasks=len(scenario.tasks), num_classes=list(num_classes),
              input_sizes=list(scenario.input_sizes), image_channels=list(scenario.channels),
              backend=backend)
    if scenario.arch == "wrn":
        return backbones.wrn(scenario.depth, scenario.width, **kw)
    if scenario.arch == "resnet":
        return backbones.resnet(scenario.depth, **kw)
    raise ValueError(f"arch: unknown backbone {scenario.arch!r} (wrn, resnet)")


def lr_at(scenario: Scenario, step: int, total: int) -> float:
    """lr decayed by ``gamma`` at each milestone fraction of the ``total`` steps."""
    passed = sum(step >= int(f * total) for f in scenario.milestones)
    return scenario.lr * scenario.gamma ** passed


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_payload(path: str) -> dict:
    """A training checkpoint, loaded without running code (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or "train" not in payload.get("extra", {}):
        raise ValueError(f"checkpoint: {path} is not a dvn training checkpoint")
    return payload


def checkpoint_path(run: str) -> str:
    """``run`` is a run folder or a checkpoint file."""
    return os.path.join(run, CHECKPOINT) if os.path.isdir(run) else run


def trained_configs(payload: dict) -> list[tuple[int, int]]:
    return TrainConfig.from_dict(payload["extra"]["train"]["config"]).configs()


class Objective(nn.Module):
    """One training step's loss as a single module call, so DDP sees one forward per backward.
    The teacher is kept outside the module tree (never trained, never synchronised)."""

    def __init__(self, model: nn.Module, config: TrainConfig, teacher=None) -> None:
        super().__init__()
        self.model, self.config = model, config
        self.__dict__["teacher"] = teacher

    def forward(self, batches: dict) -> tuple[torch.Tensor, dict]:
        stats: dict = {}
        s = self.config.scenario
        if s.kind == "sequential" and not self.config.only:
            n = len(s.tasks)
            batch = batches[n]
            loss = sequential_loss(self.model, self.teacher, batch, range(1, n), n, s.units,
                                   temperature=s.temperature, weight=s.distill_weight,
                                   stats=stats)
        else:
            loss = joint_loss(self.model, batches, self.config.configs(), stats)
        return loss, stats


def freeze_batch_norm(model: nn.Module, tasks) -> None:
    """Puts the batch norms of ``tasks`` (every level) in eval mode: sequential learning sees
    only the new task's images, which would otherwise overwrite the old tasks' statistics
    (measured: with lr 0, one epoch of Fashion-MNIST 5-9 takes the old task 0-4 from 85% to 40%)
    and normalise the distillation differently from the teacher. Their affine parameters still
    train. Call after every ``model.train()``."""
    prefixes = tuple(f"t{j}_" for j in tasks)
    for m in model.modules():
        if isinstance(m, SlicedBatchNorm2d):
            for key, bn in m.norms.items():
                if key.startswith(prefixes):
                    bn.eval()


class Teacher:
    """The old network of a sequential scenario: each old task's logits at the level it was
    trained at (its top trained level)."""

    def __init__(self, path: str, device: torch.device) -> None:
        payload = load_payload(checkpoint_path(path))
        self.spec = payload["spec"]
        self.model = backbones.build(payload["spec"])
        self.model.load_state_dict(payload["state_dict"])
        self.model.to(device).eval().requires_grad_(False)
        self.levels: dict[int, int] = {}
        for task, level in trained_configs(payload):
            self.levels[task] = max(level, self.levels.get(task, 0))
        self.path = path

    def __call__(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task not in self.levels:
            raise ValueError(f"teacher: {self.path} was not trained on task {task}")
        return self.model(x, task=task, level=self.levels[task])


def _log(msg: str, world) -> None:
    if world.main:
        print(msg, flush=True)


def train(config: TrainConfig, *, resume: bool = False, stop_after: Optional[int] = None,
          quiet: bool = False) -> dict:
    """Runs (or resumes) ``config``; writes ``<out>/checkpoint.pt`` atomically after every
    epoch (model, optimizer, step, RNG states, history). Returns the run's summary (plain
    data, plus the trained ``model``)."""
    s = config.scenario
    path = os.path.join(config.out, CHECKPOINT)
    payload = None
    if resume and os.path.isfile(path):
        payload = load_payload(path)
        stored = TrainConfig.from_dict(payload["extra"]["train"]["config"])
        if stored.scenario != s or stored.only != config.only or stored.seed != config.seed:
            raise ValueError(f"resume: {path} holds a different run ({stored.scenario.name}, "
                             f"seed {stored.seed}, only {list(stored.only)}); use another --out")
    elif os.path.isfile(path) and not resume:
        raise FileExistsError(f"out: {path} exists; pass --resume to continue it or choose "
                              "another --out")

    device = resolve_device(config.device)
    world = distributed.init(device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    sequential = s.kind == "sequential" and not config.only
    if sequential and s.finetune_lr is not None:
        s = s.replace(lr=s.finetune_lr)
    if s.kind == "sequential" and not config.only and not config.teacher:
        raise ValueError(f"teacher: scenario {s.name} is sequential; train the old network "
                         "first (--only 1:1 ... --only 1:K: every level of the old task) and "
                         "pass its run as --teacher")
    tasks = sorted({j for j, _ in config.configs()})
    n = len(s.tasks)
    for j, l in config.configs():
        if not (1 <= j <= n and 1 <= l <= s.units):
            raise ValueError(f"only: ({j}, {l}) is not a (task, level) of {s.name} "
                             f"(tasks 1..{n}, levels 1..{s.units})")
    if s.kind == "hierarchical":
        need = list(range(1, n + 1))
    elif sequential:
        need = [n]
    else:
        need = tasks
    hier = s.kind == "hierarchical"
    splits = task_splits(s, "train", root=config.data_root, seed=config.seed, tasks=need,
                         subset=None if hier else s.train_subset)
    batch = max(1, s.batch_size // world.world_size)
    if hier:  # the label table from the full splits, then one subset of the fine one
        tables = {j: hierarchy(splits[j], splits[n]).to(device) if j != n else None
                  for j in tasks}
        fine = splits[n]
        if s.train_subset is not None and s.train_subset < len(fine):
            fine = fine.subset(s.train_subset, seed=config.seed)
        loaders = {n: make_loader(fine, s, n, train=True, batch_size=batch, seed=config.seed,
                                  rank=world.rank, world_size=world.world_size)}
        data = Batches(loaders, "shared", tables)
    else:
        loaders = {j: make_loader(splits[j], s, j, train=True, batch_size=batch,
                                  seed=config.seed, rank=world.rank,
                                  world_size=world.world_size) for j in need}
        steps = None
        if s.kind == "joint" and config.only:  # an epoch as long as the DVN's: its largest task
            others = task_splits(s, "train", root=config.data_root, subset=s.train_subset,
                                 seed=config.seed)
            steps = max(len(make_loader(sp, s, j, train=True, batch_size=batch,
                                        seed=config.seed, rank=world.rank,
                                        world_size=world.world_size))
                        for j, sp in others.items())
        data = Batches(loaders, "new" if sequential else "per-task", steps=steps)
    num_classes = [None] * n
    for j, split in splits.items():
        num_classes[j - 1] = split.num_classes
    teacher = Teacher(config.teacher, device) if sequential else None
    if any(c is None for c in num_classes):
        if teacher is not None:
            num_classes = teacher.spec["num_classes"]
        else:  # classes of tasks this run does not train: read their splits' metadata
            for j in range(1, n + 1):
                if num_classes[j - 1] is None:
                    num_classes[j - 1] = task_splits(s, "train", root=config.data_root,
                                                     tasks=[j])[j].num_classes
    model = build_model(s, num_classes, config.backend)
    if teacher is not None and payload is None:
        def architecture(spec: dict) -> dict:  # the backend is how it runs, not what it is
            return {k: v for k, v in spec.items() if k != "backend"}

        if architecture(teacher.spec) != architecture(model.spec):
            raise ValueError(f"teacher: {config.teacher} has another architecture "
                             f"({architecture(teacher.spec)}) than {s.name} "
                             f"({architecture(model.spec)})")
        model.load_state_dict(teacher.model.state_dict())  # LwF practice: start from the old net
        with torch.no_grad():  # the new task's stem starts as the old task's when shapes match
            old = model.stems["t1"].weight
            for j in range(2, n + 1):
                if model.stems[f"t{j}"].weight.shape == old.shape:
                    model.stems[f"t{j}"].weight.copy_(old)
    model.to(device)
    objective = Objective(model, config, teacher)
    ddp = distributed.wrap(objective, world, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                                nesterov=s.momentum > 0, weight_decay=s.weight_decay)
    steps, total = len(data), len(data) * s.epochs
    start_epoch, step, history = 0, 0, []
    if payload is not None:
        state = payload["extra"]["train"]
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        set_rng_state(state["rng"])

    summary = {"config": config.to_dict(), "world_size": world.world_size,
               "device": str(device), "steps_per_epoch": steps, "configs": config.configs(),
               "parameters": {f"t{j}_l{l}": count_parameters(model, j, l)
                              for j, l in config.configs()}}
    if start_epoch == 0:
        _log("config: " + json.dumps(summary), world)
    else:
        _log(f"resuming {path} after epoch {start_epoch}/{s.epochs} (step {step})", world)
    ran = 0
    for epoch in range(start_epoch, s.epochs):
        if stop_after is not None and ran >= stop_after:
            break
        model.train()
        if sequential:
            freeze_batch_norm(model, range(1, n))
        sums: dict = {}
        tic = time.perf_counter()
        with Progress(steps, f"epoch {epoch + 1}/{s.epochs}",
                      enabled=False if quiet or not world.main else None) as bar:
            for batches in data.epoch(epoch, device):
                lr = lr_at(s, step, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, stats = ddp(batches)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"loss: {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; "
                        f"training diverged (lower --lr); {path} still holds epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                for key, (l, c, m) in stats.items():
                    a = sums.setdefault(key, [0.0, 0, 0])
                    a[0] += l * m
                    a[1] += c
                    a[2] += m
                seen = sum(a[2] for a in sums.values())
                bar.update(loss=sum(a[0] for a in sums.values()) / max(seen, 1) * len(sums),
                           acc=100 * sum(a[1] for a in sums.values()) / max(seen, 1), lr=lr)
        distributed.average_buffers(model, world)
        keys = sorted(sums)
        flat = distributed.all_sum([v for k in keys for v in sums[k]], world, device)
        record = {"epoch": epoch + 1, "step": step, "lr": lr,
                  "seconds": round(time.perf_counter() - tic, 3)}
        for i, (j, l) in enumerate(keys):
            lsum, c, m = flat[3 * i: 3 * i + 3]
            record[f"t{j}_l{l}"] = {"loss": lsum / m, "train_acc": 100 * c / m}
        record["loss"] = sum(record[f"t{j}_l{l}"]["loss"] for j, l in keys)
        history.append(record)
        if world.main:
            save(model, path, extra={"train": {
                "config": config.to_dict(), "epoch": epoch + 1, "step": step,
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "history": history,
                "schedule": {"step": step, "total_steps": total, "lr": lr_at(s, step, total),
                             "milestones": [int(f * total) for f in s.milestones]},
                "complete": epoch + 1 == s.epochs}})
        distributed.barrier(world)
        accs = " ".join(f"t{j}l{l} {record[f't{j}_l{l}']['train_acc']:.1f}%" for j, l in keys)
        _log(f"epoch {epoch + 1}/{s.epochs} loss {record['loss']:.4f} train acc {accs} "
             f"lr {lr:.3g} {record['seconds']:.0f}s -> {path}", world)
        ran += 1
    summary.update(epochs_done=history[-1]["epoch"] if history else 0, history=history,
                   checkpoint=path, model=model)
    distributed.shutdown(world)
    return summary
