"""The deployment commands of the ``dvn`` CLI:

    dvn profile RUN [--batch 64] [--runtime torch compiled onnxruntime]
    dvn infer RUN --task J (--level L | --budget-ms T | --budget-mb M) [--runtime R] IMAGES...

RUN is a run folder (its unit file ``deploy.safetensors`` is written from ``checkpoint.pt`` on
first use) or a unit file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _positive_number(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def _runtime(value: str) -> str:
    from .runtimes import RUNTIMES
    if value not in RUNTIMES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(RUNTIMES)}, got "
                                         f"{value!r}")
    return value


def default_runtimes() -> list[str]:
    """What ``dvn profile`` measures without --runtime: eager PyTorch, and ONNX Runtime where
    the deploy extra is installed (``compiled`` compiles every level: asked for by name)."""
    from .runtimes import installed
    return ["torch"] + (["onnxruntime"] if installed("onnxruntime") else [])


def add_commands(sub, positive) -> None:
    """Adds ``profile`` and ``infer`` to the CLI's subparsers (``positive``: its int type)."""
    run_help = ("run folder (its unit file deploy.safetensors is written from checkpoint.pt "
                "on first use), a model saved with dvn.save (MODEL.pt: MODEL.safetensors is "
                "written beside it) or a unit file (.safetensors)")
    p = sub.add_parser("profile", help="latency and memory of every (task, level), each "
                       "loaded alone from the run's unit file",
                       description="Loads every (task, level) alone from the run's unit file, "
                       "measures the memory it holds and its latency at batch 1 and --batch, "
                       "and writes profile.json and profile.md beside the unit file.")
    p.add_argument("run", help=run_help)
    p.add_argument("--batch", type=positive, default=64, help="second batch size (default 64)")
    p.add_argument("--repeats", type=positive, default=30, help="timed calls at batch 1 "
                   "(default 30; a third of them at --batch)")
    p.add_argument("--runtime", type=_runtime, nargs="+", metavar="R",
                   help="runtimes to measure, of torch, compiled (Inductor), onnxruntime "
                   "(default: torch, and onnxruntime when installed)")
    p.add_argument("--out", help="folder for profile.json/.md (default: the unit file's)")
    p.add_argument("--threads", type=positive, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = sub.add_parser("infer", help="predict image files with one task, at a level or the "
                       "highest level within a budget",
                       description="Loads one (task, level) alone from the run's unit file "
                       "and prints a prediction per image (PNG/JPEG files or folders of them), "
                       "prepared as the task's training data. --budget-ms picks the highest "
                       "level whose batch-1 latency in the profile fits; --budget-mb the "
                       "highest whose parameters and buffers fit.")
    p.add_argument("run", help=run_help)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--level", type=int)
    p.add_argument("--budget-ms", type=_positive_number, metavar="T")
    p.add_argument("--budget-mb", type=_positive_number, metavar="M")
    p.add_argument("--profile", help="profile table for --budget-ms (default: profile.json "
                   "beside the unit file, written by dvn profile)")
    p.add_argument("--runtime", type=_runtime, help="torch, compiled (Inductor) or "
                   "onnxruntime (default: the fastest one the run's profile measured for the "
                   "level; torch without a profile)")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--threads", type=positive, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _profile(a) -> int:
    from ..host import resolve_device
    from .budget import profile
    from .runs import unit_file
    from .unitfile import UnitFile
    path = unit_file(a.run)
    with UnitFile(path) as f:
        names = [t.name for t in f.tasks] if f.tasks else None
    say = None if a.quiet else (lambda m: print(f"  profiling {m}", file=sys.stderr, flush=True))
    runtimes = a.runtime or default_runtimes()
    if "onnxruntime" in runtimes:
        from .onnx import require
        require()
    table = profile(path, device=resolve_device(a.device), batch=a.batch, repeats=a.repeats,
                    task_names=names, runtimes=runtimes, progress=say)
    paths = table.save(a.out or os.path.dirname(os.path.abspath(path)))
    print(table.markdown())
    print(f"wrote {paths['json']}, {paths['markdown']}")
    return 0


def _budget_profile(a, path: str, file):
    """The table a budget is compared with: the profile for --budget-ms (it must belong to
    this unit file), else the memory each level holds, from the file's header."""
    from .budget import memory_profile
    from .profiles import Profile, file_id
    if a.budget_ms is None:
        return memory_profile(file)
    where = a.profile or os.path.join(os.path.dirname(os.path.abspath(path)), "profile.json")
    if not os.path.isfile(where):
        raise FileNotFoundError(f"profile: no profile at {where}; run `dvn profile {a.run}` "
                                "first (or pass --profile)")
    table = Profile.load(where)
    if a.profile is None and table.meta.get("file_id") != file_id(path):
        raise ValueError(f"profile: {where} was measured for another version of {path}; rerun "
                         f"`dvn profile {a.run}`")
    return table


def _own_profile(a, path: str):
    """The run's own profile when it was measured on this version of the unit file (for the
    default runtime), else None."""
    from .profiles import Profile, file_id
    where = a.profile or os.path.join(os.path.dirname(os.path.abspath(path)), "profile.json")
    try:
        table = Profile.load(where)
    except (FileNotFoundError, ValueError):
        return None
    return table if a.profile or table.meta.get("file_id") == file_id(path) else None


def _default_runtime(a, path: str, level: int) -> tuple[str, str]:
    """(runtime, why): --runtime, else the fastest installed one the profile measured for
    (task, level), else torch."""
    from .profiles import runtime_of
    from .runtimes import installed
    if a.runtime:
        return a.runtime, ""
    table = _own_profile(a, path)
    rows = [r for r in (table.rows if table else []) if r["task"] == a.task
            and r["level"] == level and r.get("latency_ms_b1") is not None
            and installed(runtime_of(r))]
    if not rows:
        return "torch", ""
    best = min(rows, key=lambda r: r["latency_ms_b1"])
    return runtime_of(best), " (the fastest in the profile)" if len(rows) > 1 else ""


def _infer(a) -> int:
    import torch

    from ..host import resolve_device
    from .budget import memory_rows
    from .images import image_files, read_readable
    from .profiles import choose
    from .runs import unit_file
    from .runtimes import load as load_runner
    from .unitfile import UnitFile
    if a.level is not None and (a.budget_ms is not None or a.budget_mb is not None):
        raise ValueError("level: give --level or a budget (--budget-ms, --budget-mb), not both")
    if a.level is None and a.budget_ms is None and a.budget_mb is None:
        raise ValueError("level: give --level L, --budget-ms T or --budget-mb M")
    if a.runtime == "onnxruntime":
        from .onnx import require
        require()
    path = unit_file(a.run)
    device = resolve_device(a.device)
    with UnitFile(path) as file:
        networks = file.skeleton.networks
        networks.check(a.task, a.level if a.level is not None else 1)
        if file.tasks is None:
            raise ValueError(f"run: {path} has no task input descriptions; write it with "
                             "dvn.deploy.save(model, path, tasks=...)")
        task = file.tasks[a.task - 1]
        level, why, chosen = a.level, "", None
        if level is None:
            level, chosen = choose(_budget_profile(a, path, file), a.task, ms=a.budget_ms,
                              mb=a.budget_mb, runtime=a.runtime if a.budget_ms else None)
            given = " and ".join(f"{v:g} {u}" for v, u in ((a.budget_ms, "ms"),
                                                           (a.budget_mb, "MB")) if v)
            why = f", the highest level within {given}"
        cost = next(r for r in memory_rows(file) if (r["task"], r["level"]) == (a.task, level))
    if a.runtime is None and a.budget_ms is not None:   # the runtime whose row fits
        runtime, which = chosen, " (the fastest in the profile)"
    else:
        runtime, which = _default_runtime(a, path, level)
    files = image_files(a.images)
    x, readable, unreadable = read_readable(files, task)
    if x is None and len(unreadable) == 1:
        raise ValueError(unreadable[0][1])
    for _, message in unreadable:   # each its own line; the others are still predicted
        print(f"dvn infer: error: {message}", file=sys.stderr)
    if x is None:
        raise ValueError(f"images: none of the {len(files)} images could be read")
    run = load_runner(path, a.task, level, runtime, device=device)
    print(f"task {a.task} ({task.name}) at level {level}{why}: {cost['parameters']:,} "
          f"parameters, {cost['memory_mb']:.2f} MB; runtime {runtime}{which}", file=sys.stderr)
    x = x.to(device)
    probs = torch.cat([run(x[i:i + a.batch_size]).softmax(1).cpu()
                       for i in range(0, len(x), a.batch_size)])
    p, idx = probs.max(1)
    rows = [{"file": f, "class": int(c), "name": task.classes[int(c)] if task.classes else None,
             "probability": round(float(q), 4)} for f, c, q in zip(readable, idx, p)]
    if a.json:
        print(json.dumps({"task": a.task, "level": level, "runtime": runtime,
                          "predictions": rows,
                          "errors": [{"file": f, "error": m} for f, m in unreadable]}, indent=1))
    else:
        for r in rows:
            name = f"{r['name']} (class {r['class']})" if r["name"] else f"class {r['class']}"
            print(f"{r['file']}: {name}, p = {r['probability']:.3f}")
    if unreadable:
        print(f"dvn infer: {len(unreadable)} of {len(files)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


def _one_line_os_errors(handler):
    """A file that exists but cannot be read or written (permissions, a full disk) as the
    CLI's one-line error, naming the file."""
    def run(a) -> int:
        try:
            return handler(a)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            name = e.filename2 or e.filename or "file"   # a rename names its target second
            raise ValueError(f"{name}: {e.strerror or e}") from None
    return run


#: command -> handler, for the CLI's dispatch
HANDLERS = {"profile": _one_line_os_errors(_profile), "infer": _one_line_os_errors(_infer)}
