"""Profiles (latency and memory of every (task, level) on a device) and budgets.

``profile`` loads each (task, level) of a unit file alone (``load_level``), measures the
memory it holds (the storages of its parameters and buffers) and its latency at batch 1 and at
a given batch on each runtime asked for (``dvn.deploy.runtimes``: one row per level and
runtime), and returns a ``Profile``: a table that saves as JSON and markdown. A task's levels
and runtimes are timed interleaved (each round calls every one of them once, after warm-up),
so that a noisy machine slows them alike; rows give the median and the interquartile range.
``choose_level`` picks a task's highest level within a budget of milliseconds (batch-1
latency), megabytes (memory held), or both, from a measured profile or one given by hand
(``Profile.from_rows``), on one runtime or the fastest one measured.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from .deployment import load_level, storage_bytes
from .unitfile import PathLike, UnitFile

MB = 1e6


class BudgetError(ValueError):
    """No level of a task fits the budget (the message gives the smallest level's cost)."""


@dataclass
class Profile:
    """Rows per (task, level, runtime): ``runtime`` (``"torch"`` where a row has none),
    ``parameters``, ``memory_mb`` (parameters and buffers held), ``latency_ms_b1``,
    ``latency_ms_b<batch>`` (medians) and ``..._iqr`` ([25th, 75th] percentiles); ``meta``:
    where and how it was measured."""

    rows: list[dict]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in self.rows:
            if not isinstance(r, dict) or not all(isinstance(r.get(k), int) and
                                                  not isinstance(r.get(k), bool)
                                                  for k in ("task", "level")):
                raise ValueError(f"profile: every row needs int 'task' and 'level', got {r!r}")

    @classmethod
    def from_rows(cls, rows: Iterable[dict], **meta) -> Profile:
        """A profile given by hand, e.g. ``[{"task": 1, "level": 1, "latency_ms_b1": 2.0,
        "memory_mb": 0.7}, ...]``."""
        return cls([dict(r) for r in rows], meta)

    def row(self, task: int, level: int, runtime: Optional[str] = None) -> Optional[dict]:
        """The row of (task, level) on ``runtime``; without one, the fastest runtime's (lowest
        batch-1 latency; the first row where none has a latency)."""
        rows = [r for r in self.rows if r["task"] == task and r["level"] == level
                and (runtime is None or runtime_of(r) == runtime)]
        timed = [r for r in rows if r.get("latency_ms_b1") is not None]
        if runtime is None and timed:
            return min(timed, key=lambda r: r["latency_ms_b1"])
        return rows[0] if rows else None

    def levels(self, task: int, runtime: Optional[str] = None) -> list[int]:
        return sorted({r["level"] for r in self.rows if r["task"] == task
                       and (runtime is None or runtime_of(r) == runtime)})

    def runtimes(self) -> list[str]:
        """The runtimes the rows were measured on, in order of appearance."""
        return list(dict.fromkeys(runtime_of(r) for r in self.rows))

    def save(self, folder: str, name: str = "profile") -> dict[str, str]:
        """Writes ``<name>.json`` and ``<name>.md`` into ``folder``; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        paths = {"json": os.path.join(folder, f"{name}.json"),
                 "markdown": os.path.join(folder, f"{name}.md")}
        for kind, text in (("json", json.dumps({"meta": self.meta, "rows": self.rows},
                                               indent=1)), ("markdown", self.markdown())):
            tmp = paths[kind] + ".tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, paths[kind])
        return paths

    @classmethod
    def load(cls, path: str) -> Profile:
        """A profile saved by ``save`` (or written by hand in the same JSON form)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"profile: no profile at {path}")
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(list(data["rows"]), dict(data.get("meta", {})))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"profile: {path} is not a profile table ({e})") from None

    def markdown(self) -> str:
        batch = self.meta.get("batch")
        head = ["task", "level", "runtime", "parameters", "memory MB", "batch 1 ms"]
        keys = ["latency_ms_b1"]
        if batch and batch != 1:
            head.append(f"batch {batch} ms")
            keys.append(f"latency_ms_b{batch}")
        lines = []
        if self.meta:
            reps = self.meta.get("repeats", "?")
            if batch and batch != 1 and isinstance(reps, int):
                reps = f"{reps} (batch 1) and {_batch_repeats(reps)} (batch {batch})"
            lines += [f"Profile of {self.meta.get('file', '?')} on {self.meta.get('machine', '?')}"
                      f" ({self.meta.get('device', '?')}, torch {self.meta.get('torch', '?')}): "
                      f"each level loaded alone; a task's levels and runtimes timed "
                      f"interleaved, medians (interquartile range) of {reps} calls after "
                      f"warm-up.", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            name = r.get("task_name")
            cells = [f"{r['task']}" + (f" ({name})" if name else ""), str(r["level"]),
                     runtime_of(r), f"{r['parameters']:,}" if "parameters" in r else "-",
                     _fmt(r.get("memory_mb"), 2)] + [_fmt(r.get(k), 2) + _spread(r.get(
                         f"{k}_iqr")) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(iqr: Optional[Sequence[float]]) -> str:
    return "" if not iqr else f" ({iqr[0]:.2f}-{iqr[1]:.2f})"


def runtime_of(row: dict) -> str:
    """A row's runtime (rows written before runtimes existed were measured on torch)."""
    return row.get("runtime", "torch")


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


def file_id(path: PathLike) -> str:
    """Identifies a unit file's contents cheaply: size and modification time."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def profile(path: PathLike, *, device: Union[str, torch.device] = "cpu", batch: int = 64,
            repeats: int = 30, configs: Optional[Iterable[tuple[int, int]]] = None,
            task_names: Optional[Sequence[str]] = None, runtimes: Sequence[str] = ("torch",),
            progress: Optional[Callable[[str], None]] = None) -> Profile:
    """Measures every (task, level) of a unit file (or ``configs``) on ``device`` and each of
    ``runtimes``: each level loaded alone, the bytes it holds (as PyTorch holds it), and its
    latency at batch 1 (``repeats`` calls) and ``batch``; a task's levels and runtimes are
    timed interleaved."""
    from ..results.evaluate import machine
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


def _batch_repeats(repeats: int) -> int:
    """Timed calls at the larger batch: fewer, each one is longer."""
    return max(3, repeats // 3)


def _milliseconds(runners: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                  shape: tuple[int, ...], repeats: int, device: torch.device) -> list[list[float]]:
    """Milliseconds of each runner's calls on one random batch of ``shape``, interleaved,
    after warm-up (which also compiles the ``compiled`` runtime's capture)."""
    from ..results.evaluate import latency_samples
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        samples = latency_samples([lambda r=r: r(x) for r in runners], repeats=repeats,
                                  warmup=2, device=device)
    return [[1e3 * t for t in ts] for ts in samples]


def choose_level(profile: Profile, task: int, *, ms: Optional[float] = None,
                 mb: Optional[float] = None, runtime: Optional[str] = None) -> int:
    """The highest level of ``task`` whose batch-1 latency is at most ``ms`` and whose memory
    is at most ``mb`` (either may be None), on ``runtime`` (None: on the fastest runtime the
    profile measured for each level); raises BudgetError naming the smallest level's cost
    when none fits."""
    return choose(profile, task, ms=ms, mb=mb, runtime=runtime)[0]


def choose(profile: Profile, task: int, *, ms: Optional[float] = None,
           mb: Optional[float] = None, runtime: Optional[str] = None) -> tuple[int, str]:
    """``choose_level``, and the runtime whose row it used: (level, runtime)."""
    if ms is None and mb is None:
        raise ValueError("budget: give milliseconds, megabytes or both")
    for name, value in (("ms", ms), ("mb", mb)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ValueError(f"budget: {name} must be a positive number, got {value!r}")
    levels = profile.levels(task, runtime)
    if not levels:
        if runtime is not None and profile.levels(task):
            raise ValueError(f"runtime: the profile has no {runtime} rows for task {task} "
                             f"(measured: {', '.join(profile.runtimes())}); profile with "
                             f"--runtime {runtime}")
        raise ValueError(f"task: the profile has no row for task {task}")
    need = [("latency_ms_b1", ms, "ms at batch 1"), ("memory_mb", mb, "MB")]
    fits = []
    for level in levels:
        row = profile.row(task, level, runtime)
        ok = True
        for key, limit, _ in need:
            if limit is None:
                continue
            if row.get(key) is None:
                raise ValueError(f"profile: the row of task {task} level {level} has no "
                                 f"{key!r} to compare the budget with")
            ok &= row[key] <= limit
        if ok:
            fits.append((level, runtime_of(row)))
    if fits:
        return max(fits)
    low = profile.row(task, levels[0], runtime)
    cost = ", ".join(f"{low[key]:.3g} {unit}" for key, limit, unit in need if limit is not None)
    given = ", ".join(f"{v:g} {u}" for v, u in ((ms, "ms"), (mb, "MB")) if v is not None)
    on = f" on {runtime}" if runtime is not None else ""
    raise BudgetError(f"budget: no level of task {task} fits {given}{on}; the smallest, level "
                      f"{levels[0]}, needs {cost}")
