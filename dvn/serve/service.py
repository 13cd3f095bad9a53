"""What a server holds: the run's unit file loaded once (every task at every level on one copy
of the weights), its tasks' input descriptions, the latency profile and the batcher.

Independent of HTTP: ``app.create_app`` puts it behind FastAPI, ``replicas`` behind Ray Serve.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Optional, Union

import torch

from ..deploy.deployment import Deployment, load_level, storage_bytes
from ..deploy.profiles import Profile, file_id
from ..deploy.runtimes import check_runtime
from ..deploy.runtimes import load as load_runtime
from ..timing import time_calls
from .metrics import Metrics
from .policy import LatencyModel
from .scheduler import Request, Scheduler


def measure_profile(dep, batch: int, repeats: int = 15, runtime: str = "torch") -> Profile:
    """Batch-1 and batch-``batch`` latency (ms, medians after one warm-up call) of every
    deployed (task, level), measured on the deployment itself: quick, for a server whose
    run has no ``profile.json``."""
    rows = []
    model = dep.model
    for task, level in sorted(dep.configs):
        size, ch = model.input_sizes[task - 1], model.image_channels[task - 1]
        row = {"task": task, "level": level, "runtime": runtime}
        for b in sorted({1, batch}):
            x = torch.randn(b, ch, size, size, device=dep.device)
            # compiled levels settle over their first calls (compiles per batch size)
            times, = time_calls([lambda: dep(x, task, level)],
                                warmup=1 if runtime == "torch" else 5,
                                repeats=repeats if b == 1 else max(3, repeats // 3),
                                device=dep.device)
            row[f"latency_ms_b{b}"] = 1e3 * sorted(times)[len(times) // 2]
        rows.append(row)
    return Profile(rows, {"batch": batch, "repeats": repeats, "source": "measured at start-up",
                          "device": str(dep.device), "torch": torch.__version__})


class SeparateModels:
    """Every (task, level) loaded alone on ``runtime`` (``dvn.deploy.runtimes``: ``torch``,
    ``compiled`` or ``onnxruntime``): k x k separate copies of the weights, called like a
    ``Deployment``. On ``torch``, the baseline ``bench.serve`` compares one shared copy with;
    on the other runtimes, what ``dvn serve --runtime`` holds (faster levels, more memory)."""

    def __init__(self, file, configs, device: Union[str, torch.device] = "cpu",
                 runtime: str = "torch") -> None:
        self.file, self.device, self.runtime = file, torch.device(device), runtime
        self.model = file.skeleton  # meta device: the spec's input sizes and channels
        self.configs = frozenset(configs)
        if runtime == "torch":
            self.models = {c: load_level(file.path, *c, device=self.device)
                           for c in sorted(configs)}
        else:
            self.models = {c: load_runtime(file.path, *c, runtime, device=self.device)
                           for c in sorted(configs)}
        if runtime == "compiled":
            self._warm()

    def __call__(self, x: torch.Tensor, task: int, level: int) -> torch.Tensor:
        with torch.no_grad():
            return self.models[(task, level)](x)

    #: batch sizes that make ``compiled``'s graphs for larger batches before the first request
    #: (on torch 2.14 one for 2-15 and one for 16 or more; the first batch of 3 took 3.4 s)
    WARM_BATCHES = (2, 16)

    def _warm(self) -> None:
        for (task, level) in sorted(self.models):
            size = self.model.input_sizes[task - 1]
            channels = self.model.image_channels[task - 1]
            for b in self.WARM_BATCHES:
                self(torch.zeros(b, channels, size, size, device=self.device), task, level)

    def parameters_held(self) -> int:
        if self.runtime != "torch":  # one copy of each level's weights in its runtime
            return sum(r["parameters"] for r in self._memory())
        return sum(p.numel() for m in self.models.values() for p in m.parameters())

    def bytes_held(self) -> int:
        if self.runtime != "torch":
            return int(sum(r["memory_mb"] for r in self._memory()) * 1e6)
        return storage_bytes([t for m in self.models.values()
                              for t in (*m.parameters(), *m.buffers())])

    def _memory(self) -> list[dict]:
        from ..deploy.budget import memory_rows
        return [r for r in memory_rows(self.file) if (r["task"], r["level"]) in self.configs]

    def close(self) -> None:
        self.file.close()


def find_profile(path: str, given: Optional[str] = None) -> Optional[Profile]:
    """``given``, else ``profile.json`` beside the unit file when it was measured for this
    version of it (``dvn profile``); None when there is none."""
    where = given or os.path.join(os.path.dirname(os.path.abspath(path)), "profile.json")
    if not os.path.isfile(where):
        if given:
            raise FileNotFoundError(f"profile: no profile at {given}")
        return None
    table = Profile.load(where)
    if given is None and table.meta.get("file_id") != file_id(path):
        return None  # measured for another version of the file
    return table


class Service:
    """A run served: ``predict`` queues prepared requests, ``models`` describes what it holds.

    ``run``: a run folder or unit file; ``profile``: a profile table (default: the run's own
    when current, else measured at start-up on the deployment); ``max_batch`` / ``max_queue``:
    the batcher's bounds; ``separate``: load every (task, level) alone instead (k x k copies
    of the weights: the baseline of ``bench.serve``); ``runtime``: ``torch`` (one shared copy
    of the weights, eager), or ``compiled`` / ``onnxruntime``, which run each (task, level)
    alone on that runtime (``dvn.deploy.runtimes``; one copy of the weights per level). The
    level policy uses the profile's rows of the runtime in use.
    """

    def __init__(self, run: str, *, device: Union[str, torch.device] = "cpu",
                 max_batch: int = 16, max_queue: int = 256, profile: Optional[str] = None,
                 margin_ms: float = 1.0, max_body_bytes: int = 8 << 20,
                 separate: bool = False, runtime: str = "torch", say=None) -> None:
        from ..deploy.runs import unit_file
        from ..deploy.unitfile import UnitFile
        say = say or (lambda m: None)
        self.runtime = check_runtime(runtime)
        started = time.perf_counter()
        self.path = unit_file(run)
        self.run = run
        file = UnitFile(self.path)
        if file.tasks is None:
            file.close()
            raise ValueError(f"run: {self.path} has no task input descriptions; write it with "
                             "dvn.deploy.save(model, path, tasks=...)")
        networks = file.skeleton.networks
        configs = sorted(networks.configs())
        if runtime != "torch":
            say(f"loading every (task, level) alone on {runtime}")
        self.dep = SeparateModels(file, configs, device, runtime) \
            if separate or runtime != "torch" else Deployment(file, configs, device=device)
        self.tasks = {j: file.tasks[j - 1] for j in sorted({t for t, _ in configs})}
        self.levels = {j: sorted(lv for t, lv in configs if t == j) for j in self.tasks}
        self.max_body_bytes = max_body_bytes
        table = find_profile(self.path, profile)
        if table is None or not all(table.row(t, lv, runtime) for t, lv in configs):
            say(f"no profile.json with {runtime} rows for this unit file (dvn profile): "
                "measuring latency")
            table = measure_profile(self.dep, max_batch, runtime=runtime)
        self.profile = table
        self.latency = LatencyModel.from_profile(table, configs, runtime)
        self.metrics = Metrics()
        self.scheduler = Scheduler(self.dep, self.levels, self.latency, self._answer,
                                   self.metrics, max_batch=max_batch, max_queue=max_queue,
                                   margin_ms=margin_ms)
        self.startup_s = time.perf_counter() - started

    def _answer(self, r: Request, level: int, probs: torch.Tensor, started: float,
                finished: float, batch: int) -> dict:
        classes = self.tasks[r.task].classes
        label = (lambda c: classes[c] if classes else str(c))
        p, idx = probs.topk(min(5, probs.numel()))
        latency_ms = (finished - r.arrived) * 1e3
        met = None if r.deadline is None else finished <= r.deadline
        self.metrics.answered(r.task, level, latency_ms, met)
        out = {"task": r.task, "level": level, "class": int(idx[0]), "label": label(int(idx[0])),
               "top5": [[label(int(c)), round(float(q), 6)] for c, q in zip(idx, p)],
               "latency_ms": round(latency_ms, 3),
               "queued_ms": round((started - r.arrived) * 1e3, 3), "batch": batch}
        if met is not None:
            out["deadline_met"] = met
        return out

    def models(self) -> dict:
        """Tasks, labels, levels with parameters, memory and profiled latency."""
        from ..deploy.budget import memory_rows
        memory = {(r["task"], r["level"]): r for r in memory_rows(self.dep.file)}
        tasks = []
        for j, task_def in self.tasks.items():
            levels = []
            for lv in self.levels[j]:
                m, prof = memory[(j, lv)], self.profile.row(j, lv, self.runtime) or {}
                entry = {"level": lv, "parameters": m["parameters"],
                         "memory_mb": round(m["memory_mb"], 4),
                         **{k: round(v, 4) for k, v in prof.items()
                            if k.startswith("latency_ms_")}}
                scale = getattr(self.scheduler.latency, "scale", None)
                if scale is not None:  # observed batch time / profiled, batches of 1 and more
                    entry["latency_scale"] = [round(scale(j, lv, 1), 3),
                                              round(scale(j, lv, 2), 3)]
                levels.append(entry)
            tasks.append({"task": j, "name": task_def.name, "labels": list(task_def.classes or ()),
                          "input": {"channels": task_def.native_channels,
                                    "size": list(task_def.native_size)},
                          "levels": levels})
        return {"file": os.path.basename(self.path), "runtime": self.runtime, "tasks": tasks,
                "held": {"parameters": self.dep.parameters_held(),
                         "memory_mb": round(self.dep.bytes_held() / 1e6, 4)},
                "profile": {k: v for k, v in self.profile.meta.items()
                            if k in ("batch", "machine", "source", "device", "torch")},
                "max_batch": self.scheduler.max_batch, "max_queue": self.scheduler.max_queue}

    def close(self, drain: bool = True, timeout: float = 30.0) -> bool:
        """Answers what is queued (``drain``), stops the batcher, closes the file."""
        ok = self.scheduler.close(drain, timeout)
        self.dep.close()
        return ok


#: a serving process's GIL switch interval (seconds; Python's default is 0.005)
SWITCH_INTERVAL_S = 0.0005


def tune_process() -> None:
    """Settings for a process that serves: the batcher thread gets the GIL back from the
    event loop within 0.5 ms (Python's default switch interval is 5 ms, and a forward takes the
    GIL back between its ops), and what start-up allocated leaves the garbage collector's
    generations (``gc.freeze``), so a full collection no longer walks torch's and FastAPI's
    objects in the middle of a request."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def log(message: str) -> None:
    print(f"dvn serve: {message}", file=sys.stderr, flush=True)
