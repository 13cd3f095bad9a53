"""The deployment commands of the ``dvn`` CLI:

    dvn profile RUN [--batch 64]          # latency and memory of every (task, level)
    dvn infer RUN --task J (--level L | --budget-ms T | --budget-mb M) IMAGES...

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


def add_commands(sub, positive) -> None:
    """Adds ``profile`` and ``infer`` to the CLI's subparsers (``positive``: its int type)."""
    run_help = ("run folder (its unit file deploy.safetensors is written from checkpoint.pt "
                "on first use) or a unit file (.safetensors)")
    p = sub.add_parser("profile", help="latency and memory of every (task, level), each "
                       "loaded alone from the run's unit file",
                       description="Loads every (task, level) alone from the run's unit file, "
                       "measures the memory it holds and its latency at batch 1 and --batch, "
                       "and writes profile.json and profile.md beside the unit file.")
    p.add_argument("run", help=run_help)
    p.add_argument("--batch", type=positive, default=64, help="second batch size (default 64)")
    p.add_argument("--repeats", type=positive, default=10, help="timed calls at batch 1")
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
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--threads", type=positive, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _profile(a) -> int:
    from ..training.config import resolve_device
    from .budget import profile
    from .runs import unit_file
    from .unitfile import UnitFile
    path = unit_file(a.run)
    with UnitFile(path) as f:
        names = [t.name for t in f.tasks] if f.tasks else None
    say = None if a.quiet else (lambda m: print(f"  profiling {m}", file=sys.stderr, flush=True))
    table = profile(path, device=resolve_device(a.device), batch=a.batch, repeats=a.repeats,
                    task_names=names, progress=say)
    paths = table.save(a.out or os.path.dirname(os.path.abspath(path)))
    print(table.markdown())
    print(f"wrote {paths['json']}, {paths['markdown']}")
    return 0


def _budget_profile(a, path: str, file):
    """The table a budget is compared with: the profile for --budget-ms (it must belong to
    this unit file), else the memory each level holds, from the file's header."""
    from .budget import Profile, file_id, memory_profile
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


def _infer(a) -> int:
    import torch

    from ..training.config import resolve_device
    from .budget import choose_level
    from .deployment import load_level, storage_bytes
    from .images import image_files, read_images
    from .runs import unit_file
    from .unitfile import UnitFile
    if a.level is not None and (a.budget_ms is not None or a.budget_mb is not None):
        raise ValueError("level: give --level or a budget (--budget-ms, --budget-mb), not both")
    if a.level is None and a.budget_ms is None and a.budget_mb is None:
        raise ValueError("level: give --level L, --budget-ms T or --budget-mb M")
    path = unit_file(a.run)
    device = resolve_device(a.device)
    with UnitFile(path) as file:
        networks = file.skeleton.networks
        networks.check(a.task, a.level if a.level is not None else 1)
        if file.tasks is None:
            raise ValueError(f"run: {path} has no task input descriptions; write it with "
                             "dvn.deploy.save(model, path, tasks=...)")
        task = file.tasks[a.task - 1]
        level, why = a.level, ""
        if level is None:
            level = choose_level(_budget_profile(a, path, file), a.task, ms=a.budget_ms,
                                 mb=a.budget_mb)
            given = " and ".join(f"{v:g} {u}" for v, u in ((a.budget_ms, "ms"),
                                                           (a.budget_mb, "MB")) if v)
            why = f", the highest level within {given}"
    files = image_files(a.images)
    x = read_images(files, task).to(device)
    model = load_level(path, a.task, level, device=device)
    held = storage_bytes([*model.parameters(), *model.buffers()])
    print(f"task {a.task} ({task.name}) at level {level}{why}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {held / 1e6:.2f} MB",
          file=sys.stderr)
    with torch.no_grad():
        probs = torch.cat([model(x[i:i + a.batch_size]).softmax(1).cpu()
                           for i in range(0, len(x), a.batch_size)])
    p, idx = probs.max(1)
    rows = [{"file": f, "class": int(c), "name": task.classes[int(c)] if task.classes else None,
             "probability": round(float(q), 4)} for f, c, q in zip(files, idx, p)]
    if a.json:
        print(json.dumps({"task": a.task, "level": level, "predictions": rows}, indent=1))
    else:
        for r in rows:
            name = f"{r['name']} (class {r['class']})" if r["name"] else f"class {r['class']}"
            print(f"{r['file']}: {name}, p = {r['probability']:.3f}")
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
