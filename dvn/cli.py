"""The ``dvn`` command: train, eval, export, bench (and list).

    dvn train fmnist-joint --preset small --out runs/fmnist-joint
    dvn train fmnist-joint --preset small --only 1:2 --out runs/fmnist-joint-t1l2  # baseline
    dvn eval runs/fmnist-joint --baseline runs/fmnist-joint-t1l2 ...
    dvn export runs/fmnist-joint --task 1 --level 1 --out t1l1.pt2
    dvn export runs/fmnist-joint --task 1 --level 1 --out t1l1.onnx      # ONNX, checked in ORT
    dvn export runs/fmnist-joint --all --format onnx --out onnx/         # every level + manifest
    dvn bench --units 2 4
    dvn profile runs/fmnist-joint                  # latency and memory of every (task, level)
    dvn infer runs/fmnist-joint --task 1 --budget-ms 2 images/
    dvn serve runs/fmnist-joint --port 8000       # HTTP, every task and level, one weight copy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import dvn_kernels


def _config(value: str) -> tuple[int, int]:
    try:
        task, level = (int(v) for v in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK:LEVEL (e.g. 1:2), got {value!r}")
    return task, level


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _backend(value: str) -> str:
    if value not in dvn_kernels.BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {value!r}; choose one of "
                                         f"{', '.join(dvn_kernels.BACKENDS)}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--backend", type=_backend, default=None,
                   help=f"convolution backend: {', '.join(dvn_kernels.BACKENDS)}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    from .scenarios import PRESETS, SCENARIOS
    top = argparse.ArgumentParser(prog="dvn", description="Deep Virtual Networks: train, "
                                  "evaluate, export and benchmark.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a scenario (or resume it)",
                       description="Trains a scenario; writes OUT/checkpoint.pt atomically "
                       "after every epoch. Run under torchrun for DistributedDataParallel.")
    p.add_argument("scenario", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--preset", default="small", help=f"one of {', '.join(PRESETS)} "
                   "(default small)")
    p.add_argument("--out", help="run folder (default runs/SCENARIO-PRESET[-only...])")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=_config, action="append", metavar="TASK:LEVEL",
                   help="train an independent network: just this (task, level) (repeatable)")
    p.add_argument("--teacher", help="old network's run (sequential scenarios)")
    p.add_argument("--epochs", type=_positive)
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--lr", type=float)
    p.add_argument("--train-subset", type=_positive, help="images per task")
    p.add_argument("--test-subset", type=_positive, help="test images per task for eval")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any scenario field after the preset (repeatable), e.g. "
                   "lwf_warmup=0.5, augment=true, input_sizes=28,28")
    p.add_argument("--data-root", help="folder of the datasets (see dvn.data)")
    p.add_argument("--stop-after", type=_positive, metavar="N",
                   help="stop after N epochs of this invocation (resume later)")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    _common(p)

    p = sub.add_parser("eval", help="evaluate a run: JSON, markdown table, PNG plots")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN",
                   help="independent-network run of the same scenario (repeatable)")
    p.add_argument("--out", help="results folder (default: the run folder)")
    p.add_argument("--test-subset", type=_positive)
    p.add_argument("--latency-batch", type=_positive, default=64)
    p.add_argument("--repeats", type=_positive, default=30, help="timed calls at batch 1, "
                   "levels interleaved (default 30)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--data-root")
    p.add_argument("--threads", type=_positive)
    _common(p)

    p = sub.add_parser("export", help="one (task, level) as a static torch.export program "
                       "or an ONNX model; --all: every level as ONNX, with a manifest",
                       description="pt2: a torch.export program of the level. onnx: the level "
                       "from the run's unit file, batch norms folded, a dynamic batch axis, "
                       "checked against the model in ONNX Runtime before it is written (needs "
                       "pip install -e '.[deploy]').")
    p.add_argument("run", help="run folder or checkpoint (onnx: or a unit file)")
    p.add_argument("--task", type=int)
    p.add_argument("--level", type=int)
    p.add_argument("--all", action="store_true", help="every (task, level) into the folder "
                   "--out, with manifest.json (onnx)")
    p.add_argument("--format", choices=["pt2", "onnx"], help="default: from --out's suffix "
                   "(.onnx or --all: onnx, else pt2)")
    p.add_argument("--opset", type=_positive, help="ONNX opset (default: the exporter's)")
    p.add_argument("--out", required=True, help="output file (.pt2, .onnx), or folder (--all)")
    p.add_argument("--fold-bn", action="store_true", help="fold batch norms into convolutions "
                   "(pt2; onnx always folds)")
    _common(p)

    p = sub.add_parser("bench", help="training throughput of the joint objective: sliced "
                       "backend against the masked twin")
    p.add_argument("--units", type=_positive, nargs="+", default=[2, 4])
    p.add_argument("--depth", type=int, default=14)
    p.add_argument("--width", type=_positive, default=4)
    p.add_argument("--batch", type=_positive, default=32, help="batch per task")
    p.add_argument("--size", type=_positive, default=28)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--steps", type=_positive, default=7)
    p.add_argument("--warmup", type=_positive, default=2)
    p.add_argument("--out", help="write the results as JSON and markdown into this folder")
    p.add_argument("--threads", type=_positive)
    _common(p)

    sub.add_parser("list", help="list scenarios and presets")
    from .deploy.commands import add_commands
    add_commands(sub, _positive)  # profile, infer
    from .serve.command import add_command as add_serve
    add_serve(sub, _positive)
    return top


def _train(a) -> int:
    from .runs import TrainConfig
    from .scenarios import get_scenario, parse_setting
    from .training.trainer import train
    scenario = get_scenario(a.scenario, a.preset, epochs=a.epochs, batch_size=a.batch_size,
                            lr=a.lr, train_subset=a.train_subset, test_subset=a.test_subset)
    scenario = scenario.replace(**dict(parse_setting(t) for t in a.set))
    only = tuple(a.only or ())
    out = a.out or os.path.join("runs", f"{a.scenario}-{a.preset}" + "".join(
        f"-t{j}l{l}" for j, l in only))
    config = TrainConfig(scenario, a.preset, out, a.seed, a.device, a.backend or "auto", only,
                         a.teacher, a.data_root)
    summary = train(config, resume=a.resume, stop_after=a.stop_after, quiet=a.quiet)
    if summary.get("world_size", 1) == 1 or int(os.environ.get("RANK", "0")) == 0:
        done, total = summary["epochs_done"], scenario.epochs
        state = "done" if done == total else f"stopped after epoch {done}/{total} (--resume)"
        print(f"{state}: {summary['checkpoint']}; next: dvn eval {out}")
    return 0


def _eval(a) -> int:
    from .results import attach_baselines, evaluate, markdown, write
    say = None if a.quiet else (lambda m: print(f"  evaluating {m}", file=sys.stderr,
                                                flush=True))
    kw = dict(device=a.device, backend=a.backend, test_subset=a.test_subset,
              data_root=a.data_root)
    result = evaluate(a.run, latency_batch=a.latency_batch, repeats=a.repeats,
                      measure_latency=not a.no_latency, progress=say, **kw)
    baselines = []
    for b in a.baseline:
        cached = os.path.join(b, "results.json")
        if os.path.isfile(cached):
            with open(cached) as f:
                baselines.append(json.load(f))
        else:
            if say:
                say(f"baseline {b}")
            baselines.append(evaluate(b, measure_latency=False, **kw))
    result = attach_baselines(result, baselines)
    out = a.out or (a.run if os.path.isdir(a.run) else os.path.dirname(a.run) or ".")
    paths = write(result, out)
    print(markdown(result))
    print("wrote " + ", ".join([paths["json"], paths["markdown"], *paths["plots"]]))
    return 0


def _export(a) -> int:
    fmt = a.format or ("onnx" if a.all or a.out.lower().endswith(".onnx") else "pt2")
    if a.all and (a.task is not None or a.level is not None):
        raise ValueError("all: give --all or --task/--level, not both")
    if not a.all and (a.task is None or a.level is None):
        raise ValueError("task: give --task T --level L (or --all)")
    if fmt == "onnx":
        return _export_onnx(a)
    if a.all:
        raise ValueError("all: --all exports ONNX (--format onnx)")
    if a.opset is not None:
        raise ValueError("opset: --opset is for --format onnx")
    return _export_pt2(a)


def _export_onnx(a) -> int:
    from .deploy import onnx
    from .deploy.runs import unit_file
    from .deploy.unitfile import UnitFile
    onnx.require()
    if a.backend is not None or a.device not in ("auto", "cpu"):
        raise ValueError("device: ONNX export runs on the CPU (leave --device and --backend)")
    path = unit_file(a.run)
    if a.all:
        if os.path.isfile(a.out):
            raise ValueError(f"out: {a.out} is a file; --all writes into a folder")
        say = None if a.quiet else (lambda m: print(f"  exporting {m}", file=sys.stderr,
                                                    flush=True))
        manifest = onnx.export_all(path, a.out, opset=a.opset, progress=say)
        for m in manifest["models"]:
            print(f"task {m['task']} level {m['level']}: {m['parameters']:,} parameters, "
                  f"max |onnxruntime - model| = {m['max_abs_error']:.2e} -> "
                  f"{os.path.join(a.out, m['file'])}")
        print(f"wrote {os.path.join(a.out, onnx.MANIFEST)} (opset {manifest['opset']})")
        return 0
    with UnitFile(path) as f:
        f.skeleton.networks.check(a.task, a.level)
    if os.path.isdir(a.out):
        raise ValueError(f"out: {a.out} is a folder; give a file name (.onnx)")
    info = onnx.export_level(path, a.task, a.level, a.out, opset=a.opset)
    print(f"task {a.task} level {a.level}: {info['parameters']:,} parameters, max |onnxruntime"
          f" - model| = {info['max_abs_error']:.2e}, opset {info['opset']} -> {a.out} "
          "(batch axis dynamic; input 'x', output 'logits')")
    return 0


def _export_pt2(a) -> int:
    import torch

    from dvn_kernels.files import atomic_write

    from .model.export import count_parameters, to_static
    from .host import resolve_device
    from .runs import load_run
    device = resolve_device(a.device)
    model, config, _ = load_run(a.run, device)
    model.networks.check(a.task, a.level)
    s = config.scenario
    static = to_static(model, a.task, a.level, fold_bn=a.fold_bn).eval()
    x = torch.randn(2, s.channels[a.task - 1], s.input_sizes[a.task - 1],
                    s.input_sizes[a.task - 1], device=device)
    with torch.no_grad():
        diff = (static(x) - model(x, task=a.task, level=a.level)).abs().max().item()
    program = torch.export.export(static, (x,),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    atomic_write(a.out, lambda f: torch.export.save(program, f))
    print(f"task {a.task} level {a.level}: {count_parameters(model, a.task, a.level):,} "
          f"parameters, max |static - dynamic| = {diff:.2e} -> {a.out} "
          "(load with torch.export.load)")
    return 0


def _bench(a) -> int:
    import torch

    from .host import machine
    from .training.bench import bench
    backend = a.backend or "cpu"
    rows = bench(a.units, depth=a.depth, width=a.width, batch=a.batch, size=a.size,
                 channels=a.channels, steps=a.steps, warmup=a.warmup, backend=backend,
                 device="cuda" if a.device == "auto" and torch.cuda.is_available()
                 else ("cpu" if a.device == "auto" else a.device))
    where = machine(torch.device("cuda" if rows and a.device.startswith("cuda") else "cpu"))
    lines = [f"Joint-objective training step, {backend} backend vs masked twin "
             f"({where}, torch {torch.__version__}); medians of {a.steps} steps after "
             f"{a.warmup} warm-up, alternated in one process.", "",
             "| k | backbone | batch per task | step (s), sliced | step (s), masked twin | "
             "speedup | FLOP ideal |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["median_step_s"]
        lines.append(f"| {r['units']} | {r['backbone']} | {r['batch_per_task']} | "
                     f"{m[backend]:.3f} | {m['masked']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['flop_ideal']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_train.json"), "w") as f:
            json.dump({"machine": where, "command": " ".join(sys.argv), "rows": rows}, f,
                      indent=1)
        with open(os.path.join(a.out, "bench_train.md"), "w") as f:
            f.write(text)
    return 0


def _list(a) -> int:
    from .scenarios import PRESETS, SCENARIOS, get_scenario
    for s in SCENARIOS.values():
        scaled = ", ".join(f"{p}: {get_scenario(s.name, p).backbone}" for p in PRESETS
                           if p != "full")
        print(f"{s.name:14s} {s.kind:13s} {', '.join(s.tasks)}\n{'':14s} {s.title} "
              f"({scaled})")
    print("\npresets: " + "; ".join(f"{k}: {v or 'the scenario as defined'}"
                                    for k, v in PRESETS.items()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    threads = getattr(a, "threads", None)
    if threads:
        import torch
        torch.set_num_threads(threads)
    try:
        from .deploy.commands import HANDLERS as deploy_handlers
        from .serve.command import serve
        return {"serve": serve, "train": _train, "eval": _eval, "export": _export, "bench": _bench,
                "list": _list, **deploy_handlers}[a.command](a)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        p.exit(2, f"dvn {a.command}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, "interrupted; the last finished epoch is saved (use --resume)\n")


if __name__ == "__main__":
    sys.exit(main())
