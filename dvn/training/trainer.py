"""The training loop: resume or start, the scenario kind's recipe, the epochs, and an atomic
checkpoint after each (the previous one kept beside it) from which a resumed run continues
exactly as an uninterrupted one would."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import torch
import torch.nn as nn

from dvn_kernels.files import move_aside

from ..model import backbones
from ..checkpoint import CheckpointError, save
from ..model.export import count_parameters
from ..host import resolve_device
from ..runs import CHECKPOINT, TrainConfig, previous_path, read, run_config
from ..scenarios import Scenario
from . import distributed
from .recipes import Recipe, make_recipe
from .progress import Progress
from .rng import rng_state, seed_all, set_rng_state
from .schedule import lr_at


def build_model(scenario: Scenario, num_classes: list[int], backend: str) -> nn.Module:
    """The scenario's backbone (``dvn.model.backbones.BUILDERS``): k units, one virtual network per
    task."""
    return backbones.build(scenario.backbone_spec(num_classes, backend))


class Objective(nn.Module):
    """One training step's loss as a single module call, so DDP sees one forward per backward.
    The recipe (and its teacher) is plain data, outside the module tree: never trained, never
    synchronised."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, batches: dict, step: int) -> tuple[torch.Tensor, dict]:
        stats: dict = {}
        return self.recipe.loss(self.model, batches, stats, step), stats


def resume_point(config: TrainConfig, resume: bool, world: distributed.World) -> Optional[dict]:
    """The checkpoint to continue from, or None to start. With ``resume``, a damaged or missing
    ``checkpoint.pt`` falls back to the previous epoch's ``checkpoint.prev.pt`` (the damaged
    file is set aside as ``checkpoint.pt.damaged``); without it, an existing run is never
    overwritten."""
    path = os.path.join(config.out, CHECKPOINT)
    candidates = [p for p in (path, previous_path(path)) if os.path.isfile(p)]
    if candidates and not resume:
        raise FileExistsError(f"out: {candidates[0]} exists; pass --resume to continue it or "
                              "choose another --out")
    errors = []
    for p in candidates:
        try:
            payload = read(p, training=True)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        differs = _differences(run_config(payload, p), config)
        if differs:
            raise ValueError(f"resume: {p} holds a different run ({differs}); resume it with "
                             "the same arguments or use another --out")
        if p != path and world.main:
            if errors:
                move_aside(path, ".damaged")
            why = f"{errors[0]}; moved it to {path}.damaged" if errors else f"no {path}"
            print(f"warning: {why}; resuming from the previous epoch's {p}", file=sys.stderr,
                  flush=True)
        return payload
    if errors:
        raise CheckpointError(f"resume: no usable checkpoint in {config.out}: "
                              + "; ".join(errors))
    return None


def _differences(stored: TrainConfig, config: TrainConfig) -> str:
    """What makes ``config`` another run than ``stored`` (empty when it is the same run; the
    description is words about the run, not part of it)."""
    pairs = [(f"scenario.{k}", v, getattr(config.scenario, k))
             for k, v in stored.scenario.to_dict().items() if k != "description"]
    pairs += [("only", stored.only, config.only), ("seed", stored.seed, config.seed)]
    return ", ".join(f"{name} {a!r} there, {b!r} here" for name, a, b in pairs
                     if (list(a) if isinstance(a, tuple) else a) !=
                     (list(b) if isinstance(b, tuple) else b))


def train(config: TrainConfig, *, resume: bool = False, stop_after: Optional[int] = None,
          quiet: bool = False) -> dict:
    """Runs (or resumes) ``config``; writes ``<out>/checkpoint.pt`` atomically after every
    epoch (model, optimizer, step, RNG states, history), keeping the previous one as
    ``checkpoint.prev.pt``. Returns the run's summary (plain data, plus the trained
    ``model``)."""
    config.check()
    device = resolve_device(config.device)
    world = distributed.init(device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    payload = resume_point(config, resume, world)
    seed_all(config.seed)
    recipe = make_recipe(config, world, device)
    model = build_model(recipe.scenario, recipe.num_classes, config.backend)
    if payload is None:
        recipe.start(model)
    run = _Run(config, recipe, model.to(device), world, device, quiet)
    run.begin(payload)
    for epoch in range(run.done, min(run.epochs, run.done + (stop_after or run.epochs))):
        run.train_epoch(epoch)
        run.save()
    distributed.shutdown(world)
    return run.summary


class _Run:
    """The state of one run's epoch loop: optimizer, step, history; saved after every epoch."""

    def __init__(self, config: TrainConfig, recipe: Recipe, model: nn.Module,
                 world: distributed.World, device: torch.device, quiet: bool) -> None:
        s = recipe.scenario
        self.config, self.recipe, self.model, self.world, self.device = \
            config, recipe, model, world, device
        self.quiet = quiet or not world.main
        self.step_fn = distributed.wrap(Objective(model, recipe), world, device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                                         nesterov=s.momentum > 0, weight_decay=s.weight_decay)
        self.path = os.path.join(config.out, CHECKPOINT)
        self.epochs, self.steps = s.epochs, len(recipe.data)
        self.total = self.steps * s.epochs
        self.done, self.step, self.history = 0, 0, []
        self.summary = {
            "config": config.to_dict(), "world_size": world.world_size, "device": str(device),
            "steps_per_epoch": self.steps, "configs": config.configs(),
            "parameters": {f"t{j}_l{l}": count_parameters(model, j, l)
                           for j, l in config.configs()},
            "epochs_done": 0, "history": self.history, "checkpoint": self.path, "model": model}

    def log(self, msg: str) -> None:
        if self.world.main:
            print(msg, flush=True)

    def begin(self, payload: Optional[dict]) -> None:
        """Continues from a checkpoint's state, or announces a new run."""
        if payload is None:
            plain = {k: v for k, v in self.summary.items()
                     if k not in ("model", "history", "checkpoint", "epochs_done")}
            self.log("config: " + json.dumps(plain))
            return
        state = payload["extra"]["train"]
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.done, self.step = state["epoch"], state["step"]
        self.history[:] = state["history"]
        set_rng_state(state["rng"])
        self.summary["epochs_done"] = self.done
        self.log(f"resuming {self.config.out} after epoch {self.done}/{self.epochs} "
                 f"(step {self.step})")

    def train_epoch(self, epoch: int) -> None:
        """One pass over the recipe's data; appends the epoch's record (per (task, level) mean
        loss and training accuracy over every rank) to the history."""
        s, model, optimizer = self.recipe.scenario, self.model, self.optimizer
        self.recipe.train_mode(model)
        sums: dict = {}
        tic = time.perf_counter()
        with Progress(self.steps, f"epoch {epoch + 1}/{self.epochs}",
                      enabled=False if self.quiet else None) as bar:
            for batches in self.recipe.data.epoch(epoch, self.device):
                lr = lr_at(s, self.step, self.total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, stats = self.step_fn(batches, self.step)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"loss: {float(loss.detach())} at epoch {epoch + 1}, step "
                        f"{self.step + 1}; training diverged (lower --lr); {self.path} still "
                        f"holds epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.recipe.before_update(model, self.step)
                optimizer.step()
                self.step += 1
                for key, (l, c, m) in stats.items():
                    a = sums.setdefault(key, [0.0, 0, 0])
                    a[0] += l * m
                    a[1] += c
                    a[2] += m
                seen = sum(a[2] for a in sums.values())
                bar.update(loss=sum(a[0] for a in sums.values()) / max(seen, 1) * len(sums),
                           acc=100 * sum(a[1] for a in sums.values()) / max(seen, 1), lr=lr)
        distributed.average_buffers(model, self.world)
        keys = sorted(sums)
        flat = distributed.all_sum([v for k in keys for v in sums[k]], self.world, self.device)
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr,
                  "seconds": round(time.perf_counter() - tic, 3)}
        for i, (j, l) in enumerate(keys):
            lsum, c, m = flat[3 * i: 3 * i + 3]
            record[f"t{j}_l{l}"] = {"loss": lsum / m, "train_acc": 100 * c / m}
        record["loss"] = sum(record[f"t{j}_l{l}"]["loss"] for j, l in keys)
        self.history.append(record)
        self.done = self.summary["epochs_done"] = epoch + 1
        accs = " ".join(f"t{j}l{l} {record[f't{j}_l{l}']['train_acc']:.1f}%" for j, l in keys)
        self.log(f"epoch {epoch + 1}/{self.epochs} loss {record['loss']:.4f} train acc {accs} "
                 f"lr {lr:.3g} {record['seconds']:.0f}s -> {self.path}")

    def save(self) -> None:
        """The checkpoint of the last finished epoch (rank 0 writes; every rank waits)."""
        if self.world.main:
            s, step, total = self.recipe.scenario, self.step, self.total
            save(self.model, self.path, keep_previous=True, extra={"train": {
                "config": self.config.to_dict(), "epoch": self.done, "step": step,
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                "history": self.history,
                "schedule": {"step": step, "total_steps": total, "lr": lr_at(s, step, total),
                             "milestones": [int(f * total) for f in s.milestones]},
                "complete": self.done == self.epochs}})
        distributed.barrier(self.world)
