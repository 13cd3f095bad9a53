"""GPU benchmark of the sliced convolution's three passes, per level, against the baselines.

    python -m bench.gpu                       # writes bench/results/<gpu-name>.json
    python -m bench.gpu --json out.json --budget-s 420

Shapes: the 3x3 stride-1 convs of WRN-32-4's stages (batch 128, 32x32 input) and of
ResNet-42's stages (batch 64, 64x64 input, i.e. 32x32 after the stem), k = 4 equal units,
levels 1..4 (the first l units active on both sides), channels_last activations and weights,
bfloat16 and TF32.
Passes: ``fwd``, ``dgrad`` (grad input), ``wgrad`` (grad weight) and ``fwd+bwd``.
Candidates, side by side on the same data:

- ``triton`` (and ``cuda`` when dvn_kernels lists that backend): the sliced kernels;
- ``compact``: cuDNN on pre-compacted tensors (a dense network of the active size);
- ``slice``: slice + cuDNN (backend ``reference``: weight slice copied, zero-filled full
  weight gradient), what width-adaptive projects do today;
- ``masked``: the full-width dense conv on a zero-scattered input.

Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed), cuDNN with
``benchmark=True``. Each candidate runs once before timing (Triton autotuning, cuDNN algorithm
search). The run stops starting new cases after ``--budget-s`` seconds and writes what it has.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import dvn_kernels
from bench.conv import ConvCase
from bench.timing import write_results

MODES = ("fwd", "dgrad", "wgrad", "fwd+bwd")
DTYPES = {"bfloat16": torch.bfloat16, "tf32": torch.float32}
BASELINES = ("compact", "slice", "masked")


@dataclass(frozen=True)
class Case(ConvCase):
    """One convolution shape of a network (``net``) at one level of k units."""

    net: str = ""


# (net, stage name, channels, feature-map size, batch): the repeated 3x3 stride-1 conv of
# each stage. ResNet-42's stem has stride 2 on 64x64 inputs.
STAGES = [("wrn-32-4", "s1", 64, 32, 128), ("wrn-32-4", "s2", 128, 16, 128),
          ("wrn-32-4", "s3", 256, 8, 128),
          ("resnet-42", "s1", 64, 32, 64), ("resnet-42", "s2", 128, 16, 64),
          ("resnet-42", "s3", 256, 8, 64), ("resnet-42", "s4", 512, 4, 64)]


def all_cases(units: int = 4, levels: tuple[int, ...] = (1, 2, 3, 4)) -> list[Case]:
    return [Case(name, c, c, size, 3, 1, 1, lv, units, batch, net=net)
            for net, name, c, size, batch in STAGES for lv in levels]


def candidates(case: Case, backends: list[str], mode: str, dtype: torch.dtype,
               channels_last: bool, device: torch.device) -> dict[str, Callable[[], object]]:
    """Closures running one ``mode`` pass of every candidate on the same data.

    Backward passes reuse one recorded forward graph (``retain_graph``), so ``dgrad`` and
    ``wgrad`` time exactly the gradient each candidate computes for x or for the weight.
    """
    gen = torch.Generator().manual_seed(0)
    ins, outs = case.segments()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    weight = torch.randn(case.c_out, case.c_in, case.kernel, case.kernel, generator=gen)
    # Weights in the activations' layout, as model.to(memory_format=...) leaves them.
    weight = (weight / (case.c_in * case.kernel ** 2) ** 0.5).to(device, dtype).contiguous(
        memory_format=fmt)
    x = torch.randn(case.batch, ins.total, case.size, case.size, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=fmt)
    conv = dict(stride=case.stride, padding=case.padding)
    # Level l = the first l units: the compact weight is the leading block, packed.
    w_compact = weight[: outs.total, : ins.total].contiguous(memory_format=fmt)

    def sliced(backend: str):
        return lambda xx, ww: dvn_kernels.sliced_conv2d(
            xx, ww, in_segments=ins, out_segments=outs, backend=backend, **conv)

    forwards: dict[str, tuple[Callable, torch.Tensor]] = {
        "compact": (lambda xx, ww: F.conv2d(xx, ww, **conv), w_compact),
        "slice": (sliced("reference"), weight),
        "masked": (sliced("masked"), weight)}
    for b in backends:
        forwards[b] = (sliced(b), weight)

    fns: dict[str, Callable[[], object]] = {}
    for name, (forward, w) in forwards.items():
        xx = x.detach().requires_grad_(mode != "fwd")
        ww = w.detach().requires_grad_(mode != "fwd")
        if mode == "fwd":
            def fn(forward=forward, xx=xx, ww=ww):
                with torch.no_grad():
                    return forward(xx, ww)
        elif mode == "fwd+bwd":
            def fn(forward=forward, xx=xx, ww=ww):
                y = forward(xx, ww)
                return torch.autograd.grad(y, [xx, ww], torch.ones_like(y))
        else:
            y = forward(xx, ww)
            gy = torch.randn(y.shape, generator=gen).to(device, dtype).contiguous(
                memory_format=fmt)
            target = xx if mode == "dgrad" else ww

            def fn(y=y, gy=gy, target=target):
                return torch.autograd.grad(y, [target], gy, retain_graph=True)
        fns[name] = fn
    return fns


def time_ms(fn: Callable[[], object], rep_ms: int) -> float:
    """Median milliseconds per call (CUDA events, L2 flushed between calls)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, quantiles=[0.5])
    return float(ms[0] if isinstance(ms, (list, tuple)) else ms)


def ratios(ms: dict[str, float], kernels: list[str]) -> dict[str, float]:
    """Speed of each kernel relative to each baseline (> 1: the kernel is faster)."""
    return {f"{base}/{k}": ms[base] / ms[k] for k in kernels for base in BASELINES
            if k in ms and base in ms}


def header(kernels: list[str]) -> str:
    cols = [f"{c} ms" for c in kernels + list(BASELINES)]
    cols += [f"{b}/{k}" for k in kernels for b in BASELINES]
    return ("| net | stage | level | dtype | pass | " + " | ".join(cols) + " |\n|"
            + "---|" * (5 + len(cols)))


def format_row(row: dict, kernels: list[str]) -> str:
    ms, r = row["ms"], row["ratios"]
    cells = [f"{ms[c]:.3f}" if c in ms else "-" for c in kernels + list(BASELINES)]
    cells += [f"{r[f'{b}/{k}']:.2f}x" if f"{b}/{k}" in r else "-"
              for k in kernels for b in BASELINES]
    shape = f"{row['name']} {row['c_in']}ch@{row['size']} b{row['batch']}"
    return "| " + " | ".join([row["net"], shape, f"{row['level']}/{row['units']}",
                              row["dtype"], row["mode"]] + cells) + " |"


def summary(rows: list[dict]) -> str:
    """The issue's targets, checked on the measured rows (kernel ``triton``)."""
    def worst(pred, key):
        vals = [r["ratios"][key] for r in rows if pred(r) and key in r["ratios"]]
        return f"{min(vals):.2f}x over {len(vals)} rows" if vals else "no rows"

    passes = ("fwd", "dgrad", "wgrad")
    return "\n".join([
        "# targets (worst row; > 1 means triton is faster):",
        "#   each pass >= 0.9x cuDNN on compact tensors: "
        + worst(lambda r: r["mode"] in passes, "compact/triton"),
        "#   fwd+bwd >= 1.1x slice + cuDNN, levels 1..3: "
        + worst(lambda r: r["mode"] == "fwd+bwd" and r["level"] <= 3, "slice/triton"),
        "#   level 1 fwd+bwd >= 10x masked: "
        + worst(lambda r: r["mode"] == "fwd+bwd" and r["level"] == 1, "masked/triton")])


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="default: bench/results/<gpu-name>.json")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--nets", nargs="+", default=["wrn-32-4", "resnet-42"])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--rep-ms", type=int, default=25, help="do_bench measuring time per timing")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new case after this many seconds (the run must fit 8 min)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    start = time.perf_counter()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    name = gpu_name()
    path = args.json or f"bench/results/{slug(name)}.json"
    cases = [c for c in all_cases(levels=tuple(args.levels)) if c.net in args.nets]
    import triton

    meta = {"gpu": name, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": sys.version.split()[0], "channels_last": not args.nchw, "units": 4,
            "cudnn_benchmark": True,
            "timing": f"triton.testing.do_bench median, rep {args.rep_ms} ms",
            "command": "python -m bench.gpu " + " ".join(
                argv if argv is not None else sys.argv[1:])}
    rows: list[dict] = []
    print(f"# sliced conv GPU benchmark: {name}, torch {torch.__version__}, triton "
          f"{triton.__version__}, {'NCHW' if args.nchw else 'channels_last'}, k=4, "
          f"do_bench median (ms)")
    kernels = {d: [b for b in ("triton", "cuda")
                   if b in dvn_kernels.available_backends(device, DTYPES[d])]
               for d in args.dtypes}
    columns = [b for b in ("triton", "cuda") if any(b in ks for ks in kernels.values())]
    print(header(columns))
    complete = True
    for case in cases:  # case outer, dtype inner: a cut-short run still covers both dtypes
        if time.perf_counter() - start > args.budget_s:
            complete = False
            print(f"# budget of {args.budget_s:.0f} s reached after {len(rows)} rows")
            break
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            torch.backends.cudnn.allow_tf32 = dname == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = dname == "tf32"
            for mode in args.modes:
                fns = candidates(case, kernels[dname], mode, dtype, not args.nchw, device)
                ms = {k: time_ms(fn, args.rep_ms) for k, fn in fns.items()}
                del fns
                row = {**asdict(case), "dtype": dname, "mode": mode, "ms": ms,
                       "ratios": ratios(ms, kernels[dname])}
                rows.append(row)
                print(format_row(row, columns), flush=True)
        write_results(path, dict(meta, complete=False,
                                 seconds=round(time.perf_counter() - start, 1)), rows)
    write_results(path, dict(meta, complete=complete,
                             seconds=round(time.perf_counter() - start, 1)), rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
