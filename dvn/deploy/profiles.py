"""Profile tables and budgets: what ``dvn profile`` measured (or a table given by hand) and
the choice of a task's level within milliseconds and megabytes.

A :class:`Profile` holds rows per (task, level, runtime) and saves as JSON and markdown;
:func:`choose_level` picks a task's highest level within a budget of milliseconds (batch-1
latency), megabytes (memory held), or both, on one runtime or the fastest one measured. The
measuring itself is :func:`dvn.deploy.budget.profile`; this module needs no model, so that a
``Deployment`` can take a budget without importing the measurement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from dvn_kernels.files import write_text

from .unitfile import PathLike

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
        paths = {"json": os.path.join(folder, f"{name}.json"),
                 "markdown": os.path.join(folder, f"{name}.md")}
        for kind, text in (("json", json.dumps({"meta": self.meta, "rows": self.rows},
                                               indent=1)), ("markdown", self.markdown())):
            write_text(paths[kind], text + "\n")
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


def file_id(path: PathLike) -> str:
    """Identifies a unit file's contents cheaply: size and modification time."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _batch_repeats(repeats: int) -> int:
    """Timed calls at the larger batch: fewer, each one is longer."""
    return max(3, repeats // 3)


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
