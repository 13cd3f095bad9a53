"""Whole DVNs per level: sliced model vs its exported static network vs its masked twin.

    python -m bench.models                    # WRN-32-4 (k=2, 32x32) and ResNet-42 (k=4, 64x64)
    python -m bench.models --json bench/results/models-<machine>.json

For each level (task 1), times one training step's forward+backward (cross-entropy on random
labels, gradients set to None before each step) of: the DVN running its sliced convolutions
(``sliced``), ``dvn.to_static`` of that level (``static``: plain Conv2d/BatchNorm2d/Linear on
compact weights, what a dedicated network of that size costs) and the masked twin (``masked``:
full-width convolutions). Side by side in one process, medians; train mode throughout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dvn
from bench.conv import machine_name
from bench.timing import time_side_by_side, write_results

MODELS = {
    "wrn-32-4": dict(build=lambda backend: dvn.wrn(32, 4, units=2, num_classes=10,
                                                   backend=backend), size=32, batch=32),
    "resnet-42": dict(build=lambda backend: dvn.resnet(42, units=4, num_classes=50,
                                                       backend=backend), size=64, batch=16),
}


def candidates(model: torch.nn.Module, level: int, x: torch.Tensor, y: torch.Tensor,
               modes: tuple[str, ...] = ("sliced", "static", "masked")
               ) -> dict[str, Callable[[], object]]:
    """Closures running one forward+backward of each candidate for task 1 at ``level``."""
    static = dvn.to_static(model, 1, level)
    twin = dvn.MaskedTwin(model)

    def step(net: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def fn():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(forward(), y).backward()
        return fn

    runs = {"sliced": step(model, lambda: model(x, task=1, level=level)),
            "static": step(static, lambda: static(x)),
            "masked": step(model, lambda: twin(x, task=1, level=level))}
    return {k: runs[k] for k in modes}


def setup(name: str, batch: int | None, backend: str):
    """(model in train mode, inputs, labels) of one benchmark model."""
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec["build"](backend).train()
    n = batch or spec["batch"]
    x = torch.randn(n, 3, spec["size"], spec["size"])
    y = torch.randint(0, model.heads.num_classes[0], (n,))
    return model, x, y


def run(names: list[str], levels: list[int] | None, batch: int | None, repeats: int,
        warmup: int, backend: str, log: Callable[[str], None] = print) -> list[dict]:
    rows = []
    for name in names:
        model, x, y = setup(name, batch, backend)
        k = model.networks.units
        for level in levels or range(1, k + 1):
            if level > k:
                continue
            times = time_side_by_side(candidates(model, level, x, y), repeats=repeats,
                                      warmup=warmup)
            row = dict(model=name, units=k, level=level, batch=x.shape[0], size=x.shape[-1],
                       params=dvn.count_parameters(model, 1, level),
                       ms={c: t * 1e3 for c, t in times.items()})
            rows.append(row)
            log(format_row(row))
    return rows


def profile(name: str, level: int, batch: int | None, backend: str, steps: int = 3) -> None:
    """Prints the operators that take the time in the sliced and the static step."""
    from torch.profiler import profile as torch_profile

    model, x, y = setup(name, batch, backend)
    runs = candidates(model, level, x, y, modes=("sliced", "static"))
    for label, fn in runs.items():
        fn()
        with torch_profile() as prof:
            for _ in range(steps):
                fn()
        print(f"# {name} level {level}, {label}: {steps} steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


HEADER = ("| model | level | parameters | sliced ms | static ms | masked ms | sliced/static "
          "| masked/sliced |\n|---|---|---|---|---|---|---|---|")


def format_row(row: dict) -> str:
    ms = row["ms"]
    return (f"| {row['model']} ({row['size']}x{row['size']}, batch {row['batch']}) "
            f"| {row['level']}/{row['units']} | {row['params'] / 1e6:.2f}M "
            f"| {ms['sliced']:.1f} | {ms['static']:.1f} | {ms['masked']:.1f} "
            f"| {ms['sliced'] / ms['static']:.2f}x | {ms['masked'] / ms['sliced']:.1f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--levels", type=int, nargs="+", default=None, help="1-based (default: all)")
    p.add_argument("--batch", type=int, default=None, help="default: 32 for WRN, 16 for ResNet")
    p.add_argument("--backend", default="auto", help="the sliced model's conv backend")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, print torch.profiler's top operators of the sliced "
                        "and static steps (first model and level given)")
    args = p.parse_args(argv)
    for level in args.levels or []:
        if level < 1:
            p.error(f"--levels: levels are 1-based, got {level}")
    if args.profile:
        profile(args.models[0], (args.levels or [1])[0], args.batch, args.backend)
        return 0
    print(f"# DVN training step (forward+backward) per level: {machine_name()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, float32, "
          f"backend {args.backend}, median of {args.repeats}")
    print(HEADER)
    rows = run(args.models, args.levels, args.batch, args.repeats, args.warmup, args.backend)
    if args.json:
        meta = {"machine": machine_name(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "repeats": args.repeats, "backend": args.backend,
                "command": "python -m bench.models " + " ".join(
                    argv if argv is not None else sys.argv[1:])}
        write_results(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
