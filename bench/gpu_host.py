"""Where one sliced convolution call's host time goes, per backend, on a tiny problem.

    python -m bench.gpu_host --device cuda --json $OUT/host-gpu-<gpu>.json
    python -m bench.gpu_host --dry-run          # CPU, reference and masked only (CI smoke)

The first H200 run measured 337 us of host time for a Triton forward and 1005 us for a
forward+backward, against 50 and 158 us for cuDNN (bench/results/gpu-nvidia-h200.json). This
answers where: for each backend, forward (no grad) and forward+backward, the microseconds per
call (time.perf_counter over calls that do not wait for the GPU; the device is synchronised
between samples only), next to ``F.conv2d`` on the compact tensors, and cProfile's top
functions by cumulative time over a batch of calls, so that dvn's own layers (the op's
dispatch, argument checks, layout, launch arguments) can be told from Triton's launcher and
PyTorch's dispatcher.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels.backends import _why_unavailable
from bench.gpu import host_us as gpu_host_us
from bench.timing import write_results
from dvn.host import machine

# 64 -> 64 channels, 3x3, level 1 of 4 units (16 active channels each side), 8x8, batch 2:
# small enough that every backend is host-bound on a GPU.
C, UNITS, SIZE, BATCH = 64, 4, 8, 2


def problem(device: torch.device) -> tuple[dvn_kernels.ConvPlan, torch.Tensor, torch.Tensor]:
    w = torch.randn(C, C, 3, 3, device=device)
    active = C // UNITS
    plan = dvn_kernels.conv_plan(w.shape, [(0, active)], [(0, active)], padding=1)
    x = torch.randn(BATCH, active, SIZE, SIZE, device=device)
    return plan, x, w


def calls(backend: str, plan, x: torch.Tensor, w: torch.Tensor
          ) -> dict[str, Callable[[], object]]:
    """The forward (no grad) and forward+backward of one backend, or of compact F.conv2d."""
    active = x.shape[1]
    if backend == "compact":
        wc = w[:active, :active].contiguous()

        def fwd():
            with torch.no_grad():
                return F.conv2d(x, wc, padding=1)

        def both():
            xg, wg = x.detach().requires_grad_(), wc.detach().requires_grad_()
            return torch.autograd.grad(F.conv2d(xg, wg, padding=1).sum(), (xg, wg))
        return {"fwd": fwd, "fwd+bwd": both}

    def fwd():
        with torch.no_grad():
            return dvn_kernels.planned_conv2d(plan, x, w, None, backend)

    def both():
        xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = dvn_kernels.planned_conv2d(plan, xg, wg, None, backend)
        return torch.autograd.grad(y.sum(), (xg, wg))
    return {"fwd": fwd, "fwd+bwd": both}


def host_us(fn: Callable[[], object], device: torch.device, n: int, rounds: int) -> float:
    """Median over rounds of ``bench.gpu.host_us`` (n calls queued, the device synchronised
    only around them), after warm-up calls."""
    for _ in range(max(3, n // 5)):
        fn()
    return statistics.median(gpu_host_us(fn, device, n) for _ in range(rounds))


def profile(fn: Callable[[], object], n: int, top: int) -> list[dict]:
    """cProfile's ``top`` functions by cumulative time over n calls: microseconds per call."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": f"{path.split('site-packages/')[-1]}:{line}({name})",
                     "calls_per_call": ncalls / n, "self_us": tottime / n * 1e6,
                     "cumulative_us": cumtime / n * 1e6})
    rows.sort(key=lambda r: -r["cumulative_us"])
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", nargs="+", default=["triton", "cuda", "reference", "auto"])
    p.add_argument("--calls", type=int, default=50, help="calls per timed sample")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--top", type=int, default=30, help="profile rows kept per call")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, reference and masked, few calls: checks the code path")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.backends, args.calls, args.rounds = "cpu", ["reference", "masked"], 5, 2
    device = torch.device(args.device)
    plan, x, w = problem(device)
    rows = []
    print(f"# host microseconds per call, {BATCH}x{C // UNITS}x{SIZE}x{SIZE} level 1 of "
          f"{UNITS}, {machine(device)}, torch {torch.__version__}")
    print("| backend | pass | host us | / compact |")
    print("|---|---|---|---|")
    compact = {k: host_us(fn, device, args.calls, args.rounds)
               for k, fn in calls("compact", plan, x, w).items()}
    for k, us in compact.items():
        rows.append({"backend": "compact", "pass": k, "host_us": us})
        print(f"| compact | {k} | {us:.1f} | 1.00 |")
    for backend in args.backends:
        why = None if backend == "auto" else _why_unavailable(backend, device, x.dtype)
        if why is not None:
            print(f"# {backend}: skipped ({why})")
            continue
        for k, fn in calls(backend, plan, x, w).items():
            us = host_us(fn, device, args.calls, args.rounds)
            row = {"backend": backend, "pass": k, "host_us": us,
                   "profile": profile(fn, args.calls, args.top)}
            rows.append(row)
            print(f"| {backend} | {k} | {us:.1f} | {us / compact[k]:.2f} |")
    for row in rows:
        if "profile" in row:
            print(f"\n# {row['backend']} {row['pass']}: cProfile, us per call (cumulative / self)")
            for r in row["profile"][:args.top]:
                print(f"{r['cumulative_us']:9.1f} {r['self_us']:8.1f}  {r['function']}")
    if args.json:
        meta = {"machine": machine(device), "device": device.type, "torch": torch.__version__,
                "command": "python -m bench.gpu_host " + " ".join(sys.argv[1:])}
        write_results(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
