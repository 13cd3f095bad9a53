"""Profiles (latency and memory of every (task, level) on a device) and budgets.

``profile`` loads each (task, level) of a unit file alone (``load_level``), measures the
memory it holds (the storages of its parameters and buffers) and its latency at batch 1 and at
a given batch on each runtime asked for (``dvn.deploy.runtimes``: one row per level and
runtime), and returns a ``Profile``: a table that saves as JSON and markdown. A task's levels
and runtimes are timed interleaved (each round calls every one of them once, after warm-up,
with :mod:`dvn.timing`), so that a noisy machine slows them alike; rows give the median and
the interquartile range. The table and the choice of a level within a budget
(``choose_level``) are :mod:`dvn.deploy.profiles`, re-exported here.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Optional, Union

import torch

from ..host import machine
from ..timing import time_calls
from .deployment import load_level, storage_bytes
# the table and the choice, re-exported: dvn.deploy.budget.Profile, .file_id, ... as before
from .profiles import (MB, BudgetError, Profile, _batch_repeats, choose,  # noqa: F401
                       choose_level, file_id, runtime_of)
from .unitfile import PathLike, UnitFile


def memory_rows(file: UnitFile) -> list[dict]:
    """Per (task, level), from the file's header alone: parameters and the megabytes its
    parameters and buffers take (what ``load_level`` holds)."""
    rows = []
    for task, level in file.skeleton.networks.configs():
        params, buffers = file.config_keys(task, level)
        numel = sum(_numel(file.entries[k][1]) for k in params)
        rows.append({"task": task, "level": level, "parameters": numel,
                     "memory_mb": (file.nbytes(params) + file.nbytes(buffers)) / MB})
    return rows


def memory_profile(path: Union[PathLike, UnitFile]) -> Profile:
    """A profile of the memory each (task, level) holds, from the file's header alone (no
    loading, no timing): enough for budgets in megabytes."""
    if isinstance(path, UnitFile):
        return Profile(memory_rows(path), {"file": os.path.basename(path.path)})
    with UnitFile(path) as file:
        return memory_profile(file)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def profile(path: PathLike, *, device: Union[str, torch.device] = "cpu", batch: int = 64,
            repeats: int = 30, configs: Optional[Iterable[tuple[int, int]]] = None,
            task_names: Optional[Sequence[str]] = None, runtimes: Sequence[str] = ("torch",),
            progress: Optional[Callable[[str], None]] = None) -> Profile:
    """Measures every (task, level) of a unit file (or ``configs``) on ``device`` and each of
    ``runtimes``: each level loaded alone, the bytes it holds (as PyTorch holds it), and its
    latency at batch 1 (``repeats`` calls) and ``batch``; a task's levels and runtimes are
    timed interleaved."""
    from .runtimes import check_runtime
    from .runtimes import load as load_runner
    device = torch.device(device)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive int, got {repeats!r}")
    runtimes = list(dict.fromkeys(runtimes))
    if not runtimes:
        raise ValueError("runtime: give at least one runtime")
    for name in runtimes:
        check_runtime(name)
    with UnitFile(path) as file:
        model = file.skeleton
        todo = list(configs) if configs is not None else list(model.networks.configs())
        header = {(r["task"], r["level"]): r for r in memory_rows(file)}
    for task, level in todo:
        model.networks.check(task, level)
    rows = []
    for task in dict.fromkeys(t for t, _ in todo):
        timed = []  # (row, runner) of this task's levels and runtimes, all held at once
        for level in [lv for t, lv in todo if t == task]:
            static = load_level(path, task, level, device=device)
            held = storage_bytes([*static.parameters(), *static.buffers()])
            params = sum(p.numel() for p in static.parameters())
            static = None
            for name in runtimes:
                if progress:
                    progress(f"task {task} level {level} ({name})")
                row = {"task": task, "level": level, "runtime": name, "parameters": params,
                       "memory_mb": held / MB,
                       "header_memory_mb": header[(task, level)]["memory_mb"]}
                if task_names:
                    row["task_name"] = task_names[task - 1]
                timed.append((row, load_runner(path, task, level, name, device=device)))
        size, ch = model.input_sizes[task - 1], model.image_channels[task - 1]
        for b in sorted({1, batch}):
            reps = repeats if b == 1 else _batch_repeats(repeats)
            if progress:
                progress(f"task {task}: timing batch {b}, {reps} rounds")
            for row, ms in zip([r for r, _ in timed], _milliseconds(
                    [run for _, run in timed], (b, ch, size, size), reps, device)):
                row[f"latency_ms_b{b}"] = statistics.median(ms)
                row[f"latency_ms_b{b}_iqr"] = _quartiles(ms)
        rows += [r for r, _ in timed]
        timed = None  # freed before the next task's levels load
    meta = {"file": os.path.basename(os.fspath(path)), "file_id": file_id(path),
            "machine": machine(device), "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "runtimes": runtimes,
            "batch": batch, "repeats": repeats, "dtype": "float32"}
    return Profile(rows, meta)


def _quartiles(values: Sequence[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _milliseconds(runners: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                  shape: tuple[int, ...], repeats: int, device: torch.device) -> list[list[float]]:
    """Milliseconds of each runner's calls on one random batch of ``shape``, interleaved,
    after warm-up (which also compiles the ``compiled`` runtime's capture)."""
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        samples = time_calls([lambda r=r: r(x) for r in runners], repeats=repeats,
                             warmup=2, device=device)
    return [[1e3 * t for t in ts] for ts in samples]


