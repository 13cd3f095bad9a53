"""GPU benchmark of the sliced convolution: each pass of each kernel, per level, against cuDNN.

    python -m bench.gpu --json $OUT/gpu-<gpu>.json --budget-s 200  # on a GPU
    python -m bench.gpu --precompile --workers 12                  # compile Triton variants first
    python -m bench.gpu --dry-run                                  # CPU: the same code, tiny cases

Shapes: the 3x3 stride-1 convs of WRN-32-4's stages (batch 128, 32x32 input) and of ResNet-42's
(batch 64, 64x64 input: 32x32 after the stem); with ``--nets mobilenet-v2 resnext-50``,
MobileNetV2's depthwise 3x3 convs (stride 1 and 2) and ResNeXt-50's grouped 3x3 convs (32
groups; the compact baseline is a grouped conv of the active groups); k = 4 equal units,
levels 1..4 (the first l units on both sides). Two settings: ``bf16-cl`` (bfloat16, channels_last) and ``tf32-nchw``
(float32 with TF32, NCHW: how ``dvn`` trains). Rows come most important first: levels 1 and 4
(the smallest and the full network) of every pass in both settings, stage by stage, then levels
2 and 3 likewise (``ordered_rows``).

Every row times exactly one pass for every candidate, called directly (no autograd, so no
candidate computes a gradient the row does not ask for):

- ``fwd``: y; ``dgrad``: grad x; ``wgrad``: grad weight; ``fwd+bwd``: y, then grad x and grad
  weight in one backward call;
- ``triton``, ``cuda``: the kernel ops (``triton_sliced_conv2d[_backward]``,
  ``sliced_conv2d[_backward]``) with the backward's output mask set to the row's pass;
- ``compact``: cuDNN on pre-compacted tensors (``F.conv2d``, ``aten.convolution_backward``):
  a dense network of the active size;
- ``slice``: slice + cuDNN as autograd runs it: the weight block copied, its gradient written
  into a zero-filled full-size tensor;
- ``masked``: cuDNN on the full weight and the zero-scattered input (gradients likewise);
- ``auto``: the public API, ``dvn_kernels.planned_conv2d(plan, x, weight, backend="auto")``,
  with autograd for fwd+bwd; dgrad and wgrad run the backward ``auto`` chooses for that
  gradient mask, called directly (see ``auto_pass``). Inside a CUDA-graph capture it runs its
  graph choice, eagerly its eager choice. Its target: never more than 5% slower than ``slice``
  (what the ``reference`` backend runs: slice + cuDNN) on any row.

Per candidate: the median eager time (``triton.testing.do_bench``: CUDA events, L2 flushed),
the median CUDA-graph replay time (``do_bench_cudagraph``: the kernels without host
overhead), the host's microseconds per call, TFLOP/s of the active problem, and the relative
error of its result against compact cuDNN (every timed configuration is checked); on a GPU,
each row's ``auto_choice`` says which backend ``auto`` ran for the forward and for each
backward mask, eagerly and (keys ending in `` graph``) in CUDA graphs. The JSON is rewritten after
every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import dvn_kernels
from bench.conv import ConvCase
from bench.gpu_summary import ERROR_BOUND, auto_line  # error bounds vs compact cuDNN
from bench.timing import write_results
from dvn_kernels.channels import scatter_channels, take_channels

MODES = ("fwd+bwd", "fwd", "dgrad", "wgrad")
# name -> (dtype, channels_last, TF32)
SETTINGS = {"bf16-cl": (torch.bfloat16, True, False), "tf32-nchw": (torch.float32, False, True)}
BASELINES = ("compact", "slice", "masked")
KERNELS = ("triton", "cuda")
AUTO = "auto"  # the public op with backend="auto": a candidate on every row
Result = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Case(ConvCase):
    """One convolution shape of a network (``net``) at one level of k units."""

    net: str = ""

    def flops(self, mode: str) -> float:
        """Multiply-adds x 2 of one pass over the active channels (fwd+bwd: three)."""
        ins, outs = self.segments()
        out = (self.size + 2 * self.padding - self.kernel) // self.stride + 1
        per_output = ins.total if self.groups == 1 else self.c_in // self.groups
        one = 2.0 * self.batch * out * out * per_output * outs.total * self.kernel ** 2
        return one * (3 if mode == "fwd+bwd" else 1)


# (net, stage name, channels, feature-map size, batch[, groups, stride]): the repeated 3x3 conv
# of each stage (stride 1 unless given). ResNet-42's stem has stride 2 on 64x64 inputs.
STAGES = [("wrn-32-4", "s1", 64, 32, 128), ("wrn-32-4", "s2", 128, 16, 128),
          ("wrn-32-4", "s3", 256, 8, 128),
          ("resnet-42", "s1", 64, 32, 64), ("resnet-42", "s2", 128, 16, 64),
          ("resnet-42", "s3", 256, 8, 64), ("resnet-42", "s4", 512, 4, 64),
          ("mobilenet-v2", "dw1", 144, 56, 64, 144, 1),
          ("mobilenet-v2", "dw2", 144, 56, 64, 144, 2),
          ("mobilenet-v2", "dw3", 384, 14, 64, 384, 1),
          ("resnext-50", "g1", 128, 56, 64, 32, 1), ("resnext-50", "g2", 256, 28, 64, 32, 1)]
# --dry-run: the same code on a CPU in seconds (dense, depthwise stride 2, grouped)
TINY = [("tiny", "t1", 16, 6, 2), ("tiny", "dw", 16, 6, 2, 16, 2),
        ("tiny", "g", 16, 6, 2, 4, 1)]


def all_cases(units: int = 4, levels: Sequence[int] = (1, 2, 3, 4),
              stages: Sequence[tuple] = tuple(STAGES)) -> list[Case]:
    cases = []
    for net, name, c, size, batch, *rest in stages:
        groups, stride = (*rest, 1, 1)[:2]
        cases += [Case(name, c, c, size, 3, stride, 1, lv, units, batch, groups=groups, net=net)
                  for lv in levels]
    return cases


def ordered_rows(cases: Sequence[Case], settings: Sequence[str], modes: Sequence[str]
                 ) -> list[tuple[Case, str, str]]:
    """(case, setting, mode) most important first: levels 1 and k (the smallest and the full
    network) before levels 2..k-1; within each, stage by stage (in ``cases`` order), every
    pass at the lower level in every setting, then the higher level. A run cut short after
    any number of stages has every (setting, pass) of those stages at levels 1 and k."""
    stages = list(dict.fromkeys((c.net, c.name) for c in cases))

    def rank(row):
        case, setting, mode = row
        ends = case.level in (1, case.units)
        return (not ends, stages.index((case.net, case.name)), case.level, modes.index(mode),
                settings.index(setting))
    return sorted(((c, s, m) for c in cases for s in settings for m in modes), key=rank)


# --- the candidates ---------------------------------------------------------------------------

@dataclass
class Operands:
    """The tensors of one (case, setting), shared by every candidate and pass."""

    x: torch.Tensor           # compact input
    weight: torch.Tensor      # full weight
    w_compact: torch.Tensor   # the active block, packed (a dense network's weight)
    gy: torch.Tensor          # upstream gradient of the compact output
    plan: dvn_kernels.ConvPlan
    conv: dict
    groups: int = 1           # the full weight's; compact convs run the active groups
    compact_groups: int = 1

    @property
    def ins(self):
        return self.plan.in_segments.flat()

    @property
    def outs(self):
        return self.plan.out_segments.flat()


def operands(case: Case, setting: str, device: torch.device) -> Operands:
    dtype, channels_last, _ = SETTINGS[setting]
    gen = torch.Generator().manual_seed(0)
    ins, outs = case.segments()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    c_in_w = case.c_in // case.groups
    weight = torch.randn(case.c_out, c_in_w, case.kernel, case.kernel, generator=gen)
    # Weights in the activations' layout, as model.to(memory_format=...) leaves them.
    weight = (weight / (c_in_w * case.kernel ** 2) ** 0.5).to(device, dtype).contiguous(
        memory_format=fmt)
    x = torch.randn(case.batch, ins.total, case.size, case.size, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=fmt)
    conv = dict(stride=case.stride, padding=case.padding)
    plan = dvn_kernels.conv_plan(weight.shape, ins, outs, groups=case.groups, **conv)
    w_compact = take_channels(weight, 0, outs.flat())
    if case.groups == 1:
        w_compact = take_channels(w_compact, 1, ins.flat())
    w_compact = w_compact.contiguous(memory_format=fmt)
    compact_groups = 1 if case.groups == 1 else outs.total // (case.c_out // case.groups)
    out_size = (case.size + 2 * case.padding - case.kernel) // case.stride + 1
    gy = torch.randn(case.batch, outs.total, out_size, out_size, generator=gen)
    gy = gy.to(device, dtype).contiguous(memory_format=fmt)
    return Operands(x, weight, w_compact, gy, plan, conv, case.groups, compact_groups)


def _conv_backward(gy, x, w, o: Operands, mask: list[bool], groups: int):
    s, p = o.conv["stride"], o.conv["padding"]
    return torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False,
                                               [0, 0], groups, mask)


def _kernel_ops(name: str):
    ops = torch.ops.dvn_kernels
    if name == "triton":
        return ops.triton_sliced_conv2d.default, ops.triton_sliced_conv2d_backward.default
    return ops.sliced_conv2d.default, ops.sliced_conv2d_backward.default


def kernel_pass(name: str, mode: str, o: Operands) -> Callable[[], Result]:
    """One pass of a kernel backend (``triton`` or ``cuda``) through its ops."""
    if name == "triton":
        import dvn_kernels.triton  # noqa: F401  (registers the Triton ops)
    fwd, bwd = _kernel_ops(name)
    x, w, gy, spec = o.x, o.weight, o.gy, o.plan.spec
    if mode == "fwd":
        return lambda: fwd(x, w, None, spec)
    if mode == "dgrad":
        return lambda: bwd(gy, x, w, spec, [True, False, False])[0]
    if mode == "wgrad":
        return lambda: bwd(gy, x, w, spec, [False, True, False])[1]

    def both():
        y = fwd(x, w, None, spec)
        gx, gw, _ = bwd(gy, x, w, spec, [True, True, False])
        return y, gx, gw
    return both


def compact_pass(mode: str, o: Operands) -> Callable[[], Result]:
    x, w, gy, g = o.x, o.w_compact, o.gy, o.compact_groups
    if mode == "fwd":
        return lambda: F.conv2d(x, w, None, groups=g, **o.conv)
    if mode == "dgrad":
        return lambda: _conv_backward(gy, x, w, o, [True, False, False], g)[0]
    if mode == "wgrad":
        return lambda: _conv_backward(gy, x, w, o, [False, True, False], g)[1]

    def both():
        y = F.conv2d(x, w, None, groups=g, **o.conv)
        gx, gw, _ = _conv_backward(gy, x, w, o, [True, True, False], g)
        return y, gx, gw
    return both


def _scatter_block(block: torch.Tensor, o: Operands) -> torch.Tensor:
    """The full-size weight gradient slicing's autograd makes: zeros with the block."""
    rows = block if o.groups > 1 else scatter_channels(block, 1, o.ins, o.weight.shape[1])
    return scatter_channels(rows, 0, o.outs, o.weight.shape[0])


def slice_pass(mode: str, o: Operands) -> Callable[[], Result]:
    x, gy, g = o.x, o.gy, o.compact_groups

    def block():
        rows = take_channels(o.weight, 0, o.outs)
        return rows if o.groups > 1 else take_channels(rows, 1, o.ins)
    if mode == "fwd":
        return lambda: F.conv2d(x, block(), None, groups=g, **o.conv)
    if mode == "dgrad":
        return lambda: _conv_backward(gy, x, block(), o, [True, False, False], g)[0]
    if mode == "wgrad":
        return lambda: _scatter_block(_conv_backward(gy, x, block(), o,
                                                     [False, True, False], g)[1], o)

    def both():
        w = block()
        y = F.conv2d(x, w, None, groups=g, **o.conv)
        gx, gw, _ = _conv_backward(gy, x, w, o, [True, True, False], g)
        return y, gx, _scatter_block(gw, o)
    return both


def masked_pass(mode: str, o: Operands) -> Callable[[], Result]:
    w, g = o.weight, o.groups
    c_in = w.shape[1] * g

    def x_full():
        return scatter_channels(o.x, 1, o.ins, c_in)

    def gy_full():
        return scatter_channels(o.gy, 1, o.outs, w.shape[0])
    if mode == "fwd":
        return lambda: take_channels(F.conv2d(x_full(), w, None, groups=g, **o.conv), 1, o.outs)
    if mode == "dgrad":
        return lambda: take_channels(
            _conv_backward(gy_full(), x_full(), w, o, [True, False, False], g)[0], 1, o.ins)
    if mode == "wgrad":
        return lambda: _conv_backward(gy_full(), x_full(), w, o, [False, True, False], g)[1]

    def both():
        xf = x_full()
        y = take_channels(F.conv2d(xf, w, None, groups=g, **o.conv), 1, o.outs)
        gx, gw, _ = _conv_backward(gy_full(), xf, w, o, [True, True, False], g)
        return y, take_channels(gx, 1, o.ins), gw
    return both


def auto_pass(mode: str, o: Operands) -> Callable[[], Result]:
    """One pass of ``planned_conv2d(..., backend="auto")``.

    fwd+bwd runs the backward through autograd, as training does. dgrad and wgrad run the
    backward ``auto`` chooses for that gradient mask (measured on its first call, as autograd's
    first backward would), called directly as the kernel backends' are: a backward through
    autograd needs a kept forward, which a CUDA-graph capture of the pass cannot replay alone.
    Inside a capture the chooser runs its graph choice, eagerly its eager choice, as in use."""
    def forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return dvn_kernels.planned_conv2d(o.plan, x, w, backend=AUTO)
    if mode == "fwd":
        return lambda: forward(o.x, o.weight)
    if mode in ("dgrad", "wgrad") and not o.x.is_cuda:  # a dry run: autograd, a kept forward
        x = o.x.detach().requires_grad_(mode == "dgrad")
        w = o.weight.detach().requires_grad_(mode == "wgrad")
        y = forward(x, w)
        leaf = x if mode == "dgrad" else w
        return lambda: torch.autograd.grad(y, leaf, o.gy, retain_graph=True)[0]
    if mode in ("dgrad", "wgrad"):
        from dvn_kernels.backends import gpu_chooser
        from dvn_kernels.channels import follow_format
        chooser, x, w, gy = gpu_chooser(), o.x, o.weight, o.gy
        key = (o.plan, x.shape, x.dtype, follow_format(x), x.device, False)
        mask = (mode == "dgrad", mode == "wgrad", False)
        index = 0 if mode == "dgrad" else 1

        def backward() -> torch.Tensor:
            name = chooser.choose_backward(key, mask, o.plan, gy, x, w)
            return chooser.backward_of(name)(o.plan, gy, x, w, mask)[index]
        return backward

    def both():
        x, w = o.x.detach().requires_grad_(), o.weight.detach().requires_grad_()
        y = forward(x, w)
        gx, gw = torch.autograd.grad(y, (x, w), o.gy)
        return y.detach(), gx, gw
    return both


def candidates(o: Operands, kernels: Sequence[str], mode: str) -> dict[str, Callable[[], Result]]:
    """Closures running exactly one ``mode`` pass of every candidate on the same data."""
    fns = {k: kernel_pass(k, mode, o) for k in kernels}
    fns[AUTO] = auto_pass(mode, o)
    fns.update(compact=compact_pass(mode, o), slice=slice_pass(mode, o),
               masked=masked_pass(mode, o))
    return fns


def _as_block(t: torch.Tensor, o: Operands) -> torch.Tensor:
    """A weight gradient's active block (compact) when it is full size."""
    if t.shape == o.weight.shape and t.shape != o.w_compact.shape:
        rows = take_channels(t, 0, o.outs)
        return rows if o.groups > 1 else take_channels(rows, 1, o.ins)
    return t


def relative_error(got: Result, want: Result, o: Operands) -> float:
    """max over the pass's results of ||got - want|| / ||want|| (float64)."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    worst = 0.0
    for a, b in zip(got, want):
        a, b = _as_block(a, o).double(), _as_block(b, o).double()
        if a.shape != b.shape:
            return math.inf
        worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
    return worst


# --- timing -----------------------------------------------------------------------------------

def time_eager(fn: Callable[[], object], device: torch.device, rep_ms: int) -> float:
    """Median milliseconds per call: CUDA events on a GPU (L2 flushed); on a CPU (dry runs:
    the code path, nothing real) one call on a host clock."""
    if device.type == "cuda":
        import triton.testing

        # return_mode, not quantiles=[0.5]: Triton returns a bare float for one quantile.
        return float(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms,
                                              return_mode="median"))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_graph(fn: Callable[[], object], device: torch.device, rep_ms: int
               ) -> tuple[float | None, str | None]:
    """Median milliseconds per replay of ``fn`` captured in a CUDA graph, or (None, why)."""
    if device.type != "cuda":
        return None, "no CUDA graphs on CPU"
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")), None
    except Exception as e:  # a candidate that cannot be captured is reported, not fatal
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def host_us(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Microseconds of host time per call (launches queued, not waited for; on a CPU, where
    the call is the work, one call)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        calls = 1
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t0) / calls * 1e6
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return us


def measure_row(case: Case, setting: str, mode: str, kernels: Sequence[str],
                device: torch.device, rep_ms: int) -> dict:
    dtype, _, tf32 = SETTINGS[setting]
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    o = operands(case, setting, device)
    fns = candidates(o, kernels, mode)
    want = fns["compact"]()
    row: dict = {**asdict(case), "setting": setting, "mode": mode, "ms": {}, "graph_ms": {},
                 "host_us": {}, "tflops": {}, "error": {}, "notes": {}}
    for name, fn in fns.items():
        row["error"][name] = relative_error(fn(), want, o)
        ms = time_eager(fn, device, rep_ms)
        graph, why = time_graph(fn, device, rep_ms)
        row["ms"][name] = ms
        row["graph_ms"][name] = graph
        if why:
            row["notes"][name] = why
        row["host_us"][name] = host_us(fn, device)
        best = graph if graph is not None else ms
        row["tflops"][name] = case.flops(mode) / (best * 1e-3) / 1e12
    if device.type == "cuda":  # what auto ran: the GPU chooser's forward and backward choices
        row["auto_choice"] = dvn_kernels.backends.gpu_chooser().choices(o.plan)
    row["ratios"] = ratios(row, kernels)
    return row


def ratios(row: dict, kernels: Sequence[str]) -> dict[str, float]:
    """Baseline time / candidate time (> 1: the candidate is faster) for each kernel and
    ``auto``, on CUDA-graph times where both have one, else on eager times."""
    out = {}
    for k in [*kernels, AUTO]:
        for base in BASELINES:
            g_k, g_b = row["graph_ms"].get(k), row["graph_ms"].get(base)
            if g_k and g_b:
                out[f"{base}/{k}"] = g_b / g_k
            elif k in row["ms"] and base in row["ms"]:
                out[f"{base}/{k}"] = row["ms"][base] / row["ms"][k]
    return out


# --- tables -----------------------------------------------------------------------------------

def header(kernels: Sequence[str]) -> str:
    cols = [f"{c} ms" for c in list(kernels) + list(BASELINES)]
    cols += [f"{b}/{k}" for k in kernels for b in BASELINES]
    cols += [f"{k} err" for k in kernels] + [f"{k} host us" for k in kernels]
    return ("| net | stage | level | setting | pass | " + " | ".join(cols) + " |\n|"
            + "---|" * (5 + len(cols)))


def format_row(row: dict, kernels: Sequence[str]) -> str:
    def ms(c):
        t = row["graph_ms"].get(c) or row["ms"].get(c)
        return "-" if t is None else f"{t:.3f}"
    r = row["ratios"]
    cells = [ms(c) for c in list(kernels) + list(BASELINES)]
    cells += [f"{r[f'{b}/{k}']:.2f}x" if f"{b}/{k}" in r else "-"
              for k in kernels for b in BASELINES]
    cells += [f"{row['error'][k]:.1e}" if k in row["error"] else "-" for k in kernels]
    cells += [f"{row['host_us'][k]:.0f}" if k in row["host_us"] else "-" for k in kernels]
    shape = f"{row['name']} {row['c_in']}ch@{row['size']} b{row['batch']}"
    shape += f" g{row['groups']}" if row.get("groups", 1) > 1 else ""
    shape += f" s{row['stride']}" if row.get("stride", 1) > 1 else ""
    return "| " + " | ".join([row["net"], shape, f"{row['level']}/{row['units']}",
                              row["setting"], row["mode"]] + cells) + " |"




def summary(rows: list[dict], kernel: str) -> str:
    """The GPU targets of the kernels, checked on the measured rows of ``kernel``."""
    def worst(pred, key):
        vals = [r["ratios"][key] for r in rows if pred(r) and key in r["ratios"]]
        return f"{min(vals):.2f}x over {len(vals)} rows" if vals else "no rows"

    passes = ("fwd", "dgrad", "wgrad")
    bad = [r for r in rows if r["error"].get(kernel, 0) > ERROR_BOUND.get(r["setting"], 1e-2)]
    return "\n".join([
        f"# targets for {kernel} (worst row; > 1 means {kernel} is faster):",
        "#   each pass >= 0.9x cuDNN on compact tensors: "
        + worst(lambda r: r["mode"] in passes, f"compact/{kernel}"),
        "#   fwd+bwd >= 1.1x slice + cuDNN, levels 1..3: "
        + worst(lambda r: r["mode"] == "fwd+bwd" and r["level"] <= 3, f"slice/{kernel}"),
        "#   level 1 fwd+bwd >= 10x masked: "
        + worst(lambda r: r["mode"] == "fwd+bwd" and r["level"] == 1, f"masked/{kernel}"),
        f"#   rows over the error bound: {len(bad)} of "
        f"{sum(1 for r in rows if kernel in r['error'])}"])


def gpu_name() -> str:
    """The GPU's name; ``cpu-dry-run`` without one (the name of a dry run's results)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu-dry-run"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def result_tag(name: str) -> str:
    """The results files' tag, as bench/results names them: ``gpu-<name>`` for a GPU
    (``gpu-nvidia-h200``), ``dry-run`` for a dry run on a CPU."""
    return "dry-run" if name == "cpu-dry-run" else f"gpu-{slug(name)}"


# --- precompiling the Triton variants ---------------------------------------------------------

def _precompile_worker(jobs: list[tuple[Case, str, str]]) -> int:
    """Compiles every tile the autotuner will try for these rows' Triton launches."""
    from dvn_kernels.triton import configs

    device = torch.device("cuda")
    done = 0
    with configs.precompile_only():
        for case, setting, mode in jobs:
            o = operands(case, setting, device)
            torch.backends.cudnn.allow_tf32 = SETTINGS[setting][2]
            kernel_pass("triton", mode, o)()
            done += 1
    return done


def precompile(rows: Sequence[tuple[Case, str, str]], workers: int) -> float:
    """Compiles the Triton variants of ``rows`` in ``workers`` processes sharing one Triton
    cache (TRITON_CACHE_DIR), so that the benchmark's autotuner only loads them. Seconds."""
    t0 = time.perf_counter()
    # One pass each of fwd and of the backward covers every kernel a row launches; in the
    # rows' order, so that a precompile cut short has compiled the first rows' variants.
    jobs = list(dict.fromkeys((c, s, "fwd+bwd") for c, s, _ in rows))
    chunks = [jobs[i::workers] for i in range(workers) if jobs[i::workers]]
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        pool.map(_precompile_worker, chunks)
    return time.perf_counter() - t0


def autotune_choices() -> dict[str, dict[str, str]]:
    """The configuration each Triton autotuner chose, per key (for $OUT)."""
    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd

    out = {}
    for name, kernel in (("fwd", conv_fwd._fwd_kernel), ("dgrad", conv_bwd_input._dgrad_kernel),
                         ("wgrad", conv_bwd_weight._wgrad_kernel)):
        out[name] = {str(k): str(v) for k, v in getattr(kernel, "cache", {}).items()}
    return out


def wgmma_use() -> dict[str, bool]:
    """Whether each compiled Triton kernel variant uses Hopper's wgmma (from its PTX)."""
    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd

    found = {}
    for name, kernel in (("fwd", conv_fwd._fwd_kernel), ("dgrad", conv_bwd_input._dgrad_kernel),
                         ("wgrad", conv_bwd_weight._wgrad_kernel)):
        fn = getattr(kernel, "fn", kernel)
        for device_cache in getattr(fn, "device_caches", {}).values():
            for i, compiled in enumerate(device_cache[0].values()):
                ptx = getattr(compiled, "asm", {}).get("ptx", "")
                meta = getattr(compiled, "metadata", None)
                label = f"{name}[{i}] warps={getattr(meta, 'num_warps', '?')}"
                found[label] = "wgmma" in ptx
    return found


# --- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None,
                   help="default: bench/results/gpu-<gpu-name>.json (dry run: dry-run.json)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--nets", nargs="+", default=["wrn-32-4", "resnet-42"],
                   choices=sorted({s[0] for s in STAGES}))
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--rep-ms", type=int, default=25, help="do_bench measuring time per timing")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new row after this many seconds")
    p.add_argument("--precompile", action="store_true",
                   help="only compile the Triton variants of the rows (processes: --workers)")
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    p.add_argument("--diagnostics", default=None,
                   help="write the autotuner's choices and wgmma use to this JSON file")
    p.add_argument("--dry-run", action="store_true",
                   help="run on the CPU on a tiny case (Triton interpreter if "
                        "TRITON_INTERPRET=1): checks the benchmark's code, times nothing real")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA GPU (or --dry-run)")
    start = time.perf_counter()
    stages = TINY if args.dry_run else [s for s in STAGES if s[0] in args.nets]
    cases = all_cases(levels=args.levels, stages=stages)
    if args.dry_run:  # float32 only: the interpreter computes bfloat16 wrongly
        args.settings = ["tf32-nchw"]
    rows_todo = ordered_rows(cases, args.settings, args.modes)
    kernels = {s: [b for b in KERNELS
                   if b in dvn_kernels.available_backends(device, SETTINGS[s][0])]
               for s in args.settings}
    skipped = {b: dvn_kernels.backends._why_unavailable(b, device, torch.float32)
               for b in KERNELS if not any(b in ks for ks in kernels.values())}
    for b, why in skipped.items():
        print(f"# {b}: skipped ({why})")
    if args.precompile:
        if device.type != "cuda" or "triton" not in {k for ks in kernels.values() for k in ks}:
            print("# precompile: skipped (no Triton on a GPU here)")
            return 0
        seconds = precompile(rows_todo, args.workers)
        print(f"# precompiled the Triton variants of {len(rows_todo)} rows in {seconds:.0f} s "
              f"with {args.workers} processes")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = gpu_name() if device.type == "cuda" else "cpu-dry-run"  # a GPU's owner may dry-run
    path = args.json or f"bench/results/{result_tag(name)}.json"
    import triton

    meta = {"gpu": name, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": sys.version.split()[0], "units": 4, "settings": args.settings,
            "cudnn_benchmark": device.type == "cuda", "skipped": skipped,
            "timing": f"median: do_bench and do_bench_cudagraph, rep {args.rep_ms} ms",
            "rows_planned": len(rows_todo), "budget_s": args.budget_s,
            "command": "python -m bench.gpu " + " ".join(
                argv if argv is not None else sys.argv[1:])}
    columns = [b for b in KERNELS if any(b in ks for ks in kernels.values())] + [AUTO]
    print(f"# sliced conv GPU benchmark: {name}, torch {torch.__version__}, triton "
          f"{triton.__version__}, k=4; ms = CUDA-graph replay median (eager where no graph)")
    print(header(columns))
    rows: list[dict] = []
    complete = True
    for case, setting, mode in rows_todo:
        if time.perf_counter() - start > args.budget_s:
            complete = False
            print(f"# budget of {args.budget_s:.0f} s reached after {len(rows)} of "
                  f"{len(rows_todo)} rows")
            break
        row = measure_row(case, setting, mode, kernels[setting], device, args.rep_ms)
        rows.append(row)
        print(format_row(row, columns), flush=True)
        write_results(path, dict(meta, complete=False,
                                 seconds=round(time.perf_counter() - start, 1)), rows)
    write_results(path, dict(meta, complete=complete,
                             seconds=round(time.perf_counter() - start, 1)), rows)
    for k in columns[:-1]:
        print(summary(rows, k))
    print(f"# {auto_line(rows)}")
    if args.diagnostics and "triton" in columns:
        write_results(args.diagnostics, {"gpu": name},
                      {"autotune": autotune_choices(), "wgmma": wgmma_use()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
