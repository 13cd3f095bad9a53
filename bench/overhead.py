"""Host overhead: per-call cost against the dense call replaced, and batch-1 latency per level.

    python -m bench.overhead                         # both tables, 1 thread, CPU
    python -m bench.overhead --json bench/results/overhead-<machine>.json

Per call (tiny tensors, so the time is the host's): ``dvn_kernels.sliced_conv2d`` and
``planned_conv2d`` against ``F.conv2d`` on the compact weight, forward and forward+backward,
and ``SlicedConv2d(x, active)`` against ``nn.Conv2d``; batches of calls timed in an interleaved
order, medians of per-call means.

Batch-1 inference (eval, no_grad) of task 1 at every level, for ResNet-42 (k = 4, 64x64),
WRN-32-4 (k = 2, 32x32) and torchvision's MobileNetV2 (k = 4, 64x64): the DVN run eagerly (``sliced``), the same DVN through
``dvn.compile_configs`` (``captured``: one compiled graph per level), ``dvn.to_static`` of that
level run eagerly (``static``) and the masked twin (``masked``). Side by side in one process,
shuffled each round, medians.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import dvn
import dvn_kernels
from bench.models import mobilenet_v2
from bench.timing import cudagraph_skips, time_side_by_side, write_results
from dvn.host import machine
from dvn.timing import medians, time_calls

# The paper's Table 2: ResNet-42 (k = 4) batch-1 latency per level on a TITAN Xp, milliseconds.
PAPER_TABLE2_MS = {1: 0.18, 2: 0.38, 3: 0.67, 4: 1.05}

NETWORKS = {
    "resnet-42": dict(build=lambda: dvn.resnet(42, units=4, num_classes=50), size=64),
    "wrn-32-4": dict(build=lambda: dvn.wrn(32, 4, units=2, num_classes=10), size=32),
    "mobilenet-v2": dict(build=lambda: mobilenet_v2(4, 10), size=64),
}


def per_call_us(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean microseconds per call (``calls`` calls per sample)."""
    names = list(fns)
    samples = time_calls([fns[k] for k in names], repeats=rounds, warmup=calls // 10 + 1,
                         calls=calls, order="fixed")
    return {k: 1e6 * m for k, m in zip(names, medians(samples))}


def call_rows(calls: int, rounds: int) -> list[dict]:
    """The per-call comparisons: (what, candidate, baseline, microseconds each, ratio)."""
    torch.manual_seed(0)
    rows = []
    # The op on a 1x1 conv whose weight requires grad: 16 -> 16 channels in 2 units, level 1.
    w = torch.randn(16, 16, 1, 1, requires_grad=True)
    seg = dvn_kernels.segments_from_units([8, 8], [0])
    plan = dvn_kernels.conv_plan(w.shape, seg, seg)
    w_compact = w.detach()[:8, :8].clone().requires_grad_()
    x = torch.randn(1, 8, 4, 4)
    x_grad = x.clone().requires_grad_()

    def fwd_bwd(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor]):
        return lambda: torch.autograd.grad(forward().sum(), inputs)

    cases = {
        "op forward": (lambda: dvn_kernels.sliced_conv2d(x, w, in_segments=seg, out_segments=seg),
                       lambda: F.conv2d(x, w_compact), "dvn_kernels.sliced_conv2d", "F.conv2d"),
        "planned op forward": (lambda: dvn_kernels.planned_conv2d(plan, x, w),
                               lambda: F.conv2d(x, w_compact), "planned_conv2d", "F.conv2d"),
        "op forward+backward": (
            fwd_bwd(lambda: dvn_kernels.sliced_conv2d(x_grad, w, in_segments=seg,
                                                      out_segments=seg), [x_grad, w]),
            fwd_bwd(lambda: F.conv2d(x_grad, w_compact), [x_grad, w_compact]),
            "dvn_kernels.sliced_conv2d", "F.conv2d"),
    }
    # The module: a 3x3 conv of 16 -> 16 channels in 2 units at level 1 against nn.Conv2d.
    conv = dvn.SlicedConv2d(16, 16, 3, padding=1, in_units=2, out_units=2)
    dense = nn.Conv2d(8, 8, 3, padding=1)
    active = dvn.VirtualNetworks(2).active(1, 1)
    x8 = torch.randn(1, 8, 8, 8)
    cases["module forward"] = (lambda: conv(x8, active), lambda: dense(x8),
                               "SlicedConv2d(x, active)", "nn.Conv2d(x)")
    for what, (candidate, baseline, cname, bname) in cases.items():
        us = per_call_us({"candidate": candidate, "baseline": baseline}, calls, rounds)
        rows.append(dict(what=what, candidate=cname, baseline=bname, us=us,
                         ratio=us["candidate"] / us["baseline"]))
    return rows


def latency_candidates(model: nn.Module, level: int, x: torch.Tensor,
                       runner: dvn.CompiledConfigs | None) -> dict[str, Callable[[], object]]:
    """Closures running one batch-1 inference of task 1 at ``level`` per candidate."""
    static = dvn.to_static(model, 1, level).eval()
    twin = dvn.MaskedTwin(model)
    fns: dict[str, Callable[[], object]] = {
        "sliced": lambda: model(x, task=1, level=level),
        "static": lambda: static(x),
        "masked": lambda: twin(x, task=1, level=level),
    }
    if runner is not None:
        fns["captured"] = lambda: runner(x, 1, level)
    return fns


def synchronized(fns: dict[str, Callable[[], object]], device: torch.device
                 ) -> dict[str, Callable[[], object]]:
    """On a GPU a call's latency ends when its kernels do."""
    if device.type != "cuda":
        return fns

    def wrap(fn):
        def run():
            fn()
            torch.cuda.synchronize(device)
        return run
    return {k: wrap(fn) for k, fn in fns.items()}


def latency_rows(names: list[str], repeats: int, capture: bool, device: torch.device,
                 log: Callable[[str], None], levels: list[int] | None = None,
                 capture_backend: str = "inductor",
                 after_row: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    rows = []
    for name in names:
        spec = NETWORKS[name]
        torch.manual_seed(0)
        model = spec["build"]().to(device).eval()
        x = torch.randn(1, 3, spec["size"], spec["size"], device=device)
        runner = dvn.compile_configs(model, backend=capture_backend) if capture else None
        k = model.networks.units
        for level in levels or range(1, k + 1):
            if level > k:
                continue
            with torch.no_grad(), cudagraph_skips() as skips:
                if runner is not None:
                    t0 = time.perf_counter()
                    runner.warmup(x, configs=[(1, level)])
                    compile_s = time.perf_counter() - t0
                fns = synchronized(latency_candidates(model, level, x, runner), device)
                times = time_side_by_side(fns, repeats=repeats, warmup=2)
            row = dict(model=name, units=k, level=level, size=spec["size"],
                       params=dvn.count_parameters(model, 1, level),
                       ms={c: t * 1e3 for c, t in times.items()})
            if runner is not None:
                row["compile_s"] = compile_s
                row["cudagraph_skips"] = skips
            rows.append(row)
            log(format_latency(row))
            for message in sorted(set(row.get("cudagraph_skips", []))):
                log(f"# captured level {level} ran without CUDA graphs: {message}")
            after_row(rows)
    return rows


CALL_HEADER = ("| per call | candidate us | baseline us | ratio |\n|---|---|---|---|")
LATENCY_HEADER = ("| model | level | parameters | sliced ms | captured ms | static ms | masked ms "
                  "| sliced/static | captured/static | masked/sliced |\n"
                  "|---|---|---|---|---|---|---|---|---|---|")


def format_call(row: dict) -> str:
    return (f"| {row['what']}: {row['candidate']} vs {row['baseline']} "
            f"| {row['us']['candidate']:.2f} | {row['us']['baseline']:.2f} "
            f"| {row['ratio']:.2f}x |")


def format_latency(row: dict) -> str:
    ms = row["ms"]
    cap = ms.get("captured")
    captured = "-" if cap is None else f"{cap:.2f}"
    captured_ratio = "-" if cap is None else f"{cap / ms['static']:.2f}x"
    return (f"| {row['model']} ({row['size']}x{row['size']}, batch 1) | {row['level']}/"
            f"{row['units']} | {row['params'] / 1e6:.2f}M | {ms['sliced']:.2f} | {captured} "
            f"| {ms['static']:.2f} | {ms['masked']:.2f} | {ms['sliced'] / ms['static']:.2f}x "
            f"| {captured_ratio} | {ms['masked'] / ms['sliced']:.1f}x |")


def summary(calls: list[dict], latency: list[dict]) -> list[str]:
    """The issue's CPU targets against what was measured."""
    lines = []
    by = {r["what"]: r for r in calls}
    if "op forward" in by:
        r = by["op forward"]["ratio"]
        lines.append(f"op per call <= 2.0x F.conv2d: {r:.2f}x ({'met' if r <= 2.0 else 'NOT met'})")
    if "module forward" in by:
        r = by["module forward"]["ratio"]
        lines.append(f"SlicedConv2d(x, active) <= 1.5x nn.Conv2d: {r:.2f}x "
                     f"({'met' if r <= 1.5 else 'NOT met'})")
    for name in sorted({r["model"] for r in latency}):
        rows = [r for r in latency if r["model"] == name]
        ratios = [r["ms"]["sliced"] / r["ms"]["static"] for r in rows]
        lines.append(f"{name} batch 1, eager sliced/static <= 1.10x at every level: "
                     f"{' / '.join(f'{v:.2f}' for v in ratios)} "
                     f"({'met' if max(ratios) <= 1.10 else 'NOT met'})")
        cap = [r["ms"]["captured"] / r["ms"]["static"] for r in rows if "captured" in r["ms"]]
        if cap:
            lines.append(f"{name} captured no slower than static eager: "
                         f"{' / '.join(f'{v:.2f}' for v in cap)} "
                         f"({'met' if max(cap) <= 1.0 else 'NOT met'})")
        if name == "resnet-42":
            best = [(r["level"], r["ms"].get("captured", r["ms"]["sliced"])) for r in rows]
            lines.append("resnet-42 batch-1 latency (captured, else eager) vs the paper's "
                         "Table 2 on a TITAN Xp: " + " / ".join(
                             f"{ms:.2f} vs {PAPER_TABLE2_MS[lv]:.2f} ms" for lv, ms in best))
        full = rows[-1]["ms"]
        if rows[-1]["level"] != rows[-1]["units"]:
            continue
        for mode in ("sliced", "captured", "static"):
            if mode in full:
                speedups = [full[mode] / r["ms"][mode] for r in rows[:-1]]
                lines.append(f"{name} level speedups vs the full level, {mode}: "
                             f"{' / '.join(f'{v:.2f}' for v in speedups)}x"
                             + (" (paper: 5.8 / 2.8 / 1.6x)" if name == "resnet-42" else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--levels", type=int, nargs="+", default=None, help="1-based (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--calls", type=int, default=2000, help="calls per per-call sample")
    p.add_argument("--rounds", type=int, default=9, help="per-call samples per candidate")
    p.add_argument("--repeats", type=int, default=21, help="rounds of the latency table")
    p.add_argument("--no-capture", action="store_true", help="skip dvn.compile_configs")
    p.add_argument("--capture-backend", default="inductor",
                   help="torch.compile backend of the captured runner (cudagraphs: CUDA graphs "
                        "without Inductor's code generation, which compiles in seconds)")
    p.add_argument("--skip-calls", action="store_true", help="only the latency table")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = machine(device, threads=False)
    print(f"# host overhead: {where}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32")
    calls: list[dict] = []
    if not args.skip_calls:
        print(CALL_HEADER)
        calls = call_rows(args.calls, args.rounds)
        for row in calls:
            print(format_call(row))
    print(LATENCY_HEADER)
    for level in args.levels or []:
        if level < 1:
            p.error(f"--levels: levels are 1-based, got {level}")
    meta = {"machine": where, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device), "command": "python -m bench.overhead " + " ".join(
                argv if argv is not None else sys.argv[1:])}

    def save(latency: list[dict]) -> None:  # after every row: a run cut short keeps its rows
        if args.json:
            write_results(args.json, meta, {"calls": calls, "latency": latency})

    save([])
    latency = latency_rows(args.models, args.repeats, not args.no_capture, device, print,
                           args.levels, args.capture_backend, after_row=save)
    for line in summary(calls, latency):
        print(f"# {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
