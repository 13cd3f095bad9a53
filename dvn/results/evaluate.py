"""Evaluation of a trained run per (task, level): parameters, density, accuracy and measured
latency (batch 1 and a batch) of the sliced model, its full level and its masked twin."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import torch
import torch.nn as nn

from ..model.export import count_parameters
from ..host import machine, resolve_device
from ..runs import load_run, make_loader, task_splits
from ..timing import medians, time_calls


def accuracy(model: nn.Module, loader: Iterable, task: int, level: int,
             device: torch.device, backend: Optional[str] = None) -> float:
    """Top-1 accuracy (%) of ``model`` at (task, level) over ``loader``, in eval mode."""
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device), task=task, level=level, backend=backend)
            correct += int((logits.argmax(1).cpu() == y).sum())
            seen += len(y)
    return 100.0 * correct / max(seen, 1)


def latency(fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 2,
            device: torch.device = torch.device("cpu")) -> list[float]:
    """Median wall time (s) of each ``fn()`` over ``repeats`` rounds after ``warmup`` rounds;
    the functions alternate within each round, so a noisy machine slows them alike."""
    return medians(time_calls(fns, repeats=repeats, warmup=warmup, device=device))


def _time_levels(model: nn.Module, rows: list[dict], s, backend: str, latency_batch: int,
                 repeats: int, dev: torch.device, progress) -> None:
    """Latency of each row's (task, level), sliced and masked, at batch 1 and
    ``latency_batch``: a task's levels timed interleaved (each round calls every one once,
    after warm-up), so that two runs agree; medians and [25th, 75th] percentiles."""
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        size, ch = s.input_sizes[task - 1], s.channels[task - 1]
        for b in (1, latency_batch):
            if progress:
                progress(f"task {task}: latency at batch {b}")
            x = torch.randn(b, ch, size, size, device=dev)
            fns = []
            for r in mine:
                for be in (backend, "masked"):
                    fns.append(lambda lv=r["level"], be=be: model(x, task=task, level=lv,
                                                                  backend=be))
            reps = repeats if b == 1 else max(3, repeats // 3)
            with torch.no_grad():
                samples = time_calls(fns, repeats=reps, device=dev)
            for i, r in enumerate(mine):
                for key, ts in ((f"latency_ms_b{b}", samples[2 * i]),
                                (f"masked_ms_b{b}", samples[2 * i + 1])):
                    ms = sorted(1e3 * t for t in ts)
                    r[key] = statistics.median(ms)
                    r[f"{key}_iqr"] = [ms[len(ms) // 4], ms[(3 * len(ms)) // 4]]


def evaluate(run: str, *, device: str = "auto", backend: Optional[str] = None,
             test_subset: Optional[int] = None, batch_size: int = 256, latency_batch: int = 64,
             repeats: int = 30, measure_latency: bool = True, data_root: Optional[str] = None,
             progress: Optional[Callable[[str], None]] = None) -> dict:
    """Evaluates every (task, level) the run trained (all of a DVN, one for an independent
    network) on its tasks' test splits. Returns a plain dict (rows plus run metadata)."""
    dev = resolve_device(device)
    model, config, payload = load_run(run, dev)
    s = config.scenario
    train_state = payload["extra"]["train"]
    configs = config.configs()
    subset = test_subset if test_subset is not None else s.test_subset
    splits = task_splits(s, "test", root=data_root or config.data_root, subset=subset,
                         seed=config.seed, tasks=sorted({j for j, _ in configs}))
    backend = backend or config.backend
    top = s.units
    rows = []
    loaders = {j: make_loader(splits[j], s, j, train=False, batch_size=batch_size, seed=0)
               for j in splits}
    for task, level in configs:
        if progress:
            progress(f"task {task} level {level}")
        loader = loaders[task]
        params = count_parameters(model, task, level)
        row = {"task": task, "task_name": s.tasks[task - 1], "level": level,
               "parameters": params,
               "density": params / count_parameters(model, task, top),
               "accuracy": accuracy(model, loader, task, level, dev, backend),
               "test_images": len(splits[task])}
        rows.append(row)
    if measure_latency:
        _time_levels(model, rows, s, backend, latency_batch, repeats, dev, progress)
        for row in rows:
            full = next((r for r in rows if r["task"] == row["task"] and r["level"] == top), None)
            for b in (1, latency_batch):
                lat = row[f"latency_ms_b{b}"]
                row[f"speedup_vs_full_b{b}"] = full[f"latency_ms_b{b}"] / lat if full else None
                row[f"speedup_vs_masked_b{b}"] = row[f"masked_ms_b{b}"] / lat
    return {"run": run, "scenario": s.name, "kind": s.kind, "preset": config.preset,
            "description": s.title, "tasks": list(s.tasks), "units": s.units,
            "backbone": s.backbone,
            "independent": bool(config.only), "configs": [list(c) for c in configs],
            "epochs": train_state["epoch"], "complete": train_state.get("complete", False),
            "train_seconds": sum(h["seconds"] for h in train_state["history"]),
            "seed": config.seed, "backend": backend, "device": str(dev),
            "machine": machine(dev), "latency_batch": latency_batch if measure_latency else None,
            "torch": torch.__version__, "rows": rows}
