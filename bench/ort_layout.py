"""How much of ONNX Runtime's lead over dvn's ``compiled`` runtime is its layout optimization
(issue 20's "where the rest of the gap goes").

    python -m bench.ort_layout --net resnet42 --threads 1 2 --conv-layouts
        --json bench/results/ort-layout-<machine>.json      (one command)

At its default level (``ORT_ENABLE_ALL``) ONNX Runtime's CPU provider rewrites convolutions to
its NCHWc blocked layout (MLAS kernels over channel blocks of 8 or 16); ``ORT_ENABLE_EXTENDED``
and ``ORT_ENABLE_BASIC`` keep every other fusion but not that layout. Per level of
``bench.runtimes``' random-weight network and thread count, side by side in one process
(``bench.timing.time_side_by_side``: shuffled rounds, medians), batch 1:

* ``ort_all``, ``ort_extended``, ``ort_basic``: a plain ``InferenceSession`` on the level's
  export at that optimization level (same intra-op threads, spinning off);
* ``compiled``: dvn's ``compiled`` runtime (AOTInductor, weights frozen, ``dvn.deploy.aot``).

With ``--conv-layouts``, also the level's convolutions alone, summed per call, in three
layouts PyTorch offers: NCHW, channels_last, and oneDNN's own blocked format
(``torch.utils.mkldnn``: weights and activations as MKL-DNN tensors), to see whether PyTorch
has a blocked path of its own that would close the gap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from .runtimes import NETS, _randomise_bn
from .timing import cpu_meta, time_side_by_side, write_results

LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC")


def session(file: str, threads: int, level: str):
    """A plain ONNX Runtime session at graph optimization ``level``, spinning off."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])


def conv_layouts(static: nn.Module, example: torch.Tensor, calls: int) -> dict[str, float]:
    """ms per call of ``static``'s convolutions alone, summed, in NCHW, channels_last and
    oneDNN's blocked format (each convolution timed on its own input shape, medians)."""
    from torch.utils.mkldnn import MkldnnConv2d
    shapes: dict[nn.Module, torch.Size] = {}

    def record(module, inputs, output) -> None:
        shapes.setdefault(module, inputs[0].shape)
    hooks = [m.register_forward_hook(record) for m in static.modules()
             if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            static(example)
    finally:
        for h in hooks:
            h.remove()

    def median_ms(fn) -> float:
        for _ in range(max(2, calls // 10)):
            fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    total = {"nchw": 0.0, "channels_last": 0.0, "onednn_blocked": 0.0}
    with torch.no_grad():
        for conv, shape in shapes.items():
            x = torch.randn(shape)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            conv_cl = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                conv.stride, conv.padding, conv.dilation, conv.groups,
                                bias=conv.bias is not None).eval()
            conv_cl.load_state_dict(conv.state_dict())
            conv_cl = conv_cl.to(memory_format=torch.channels_last)
            blocked, x_blocked = MkldnnConv2d(conv, torch.float), x.to_mkldnn()
            total["nchw"] += median_ms(lambda: conv(x))
            total["channels_last"] += median_ms(lambda: conv_cl(x_cl))
            total["onednn_blocked"] += median_ms(lambda: blocked(x_blocked))
    return {"convs": len(shapes), **total}


def bench_net(name: str, threads: list[int], levels: list[int], repeats: int,
              with_convs: bool, say) -> list[dict]:
    import dvn.deploy as dd
    from dvn.deploy import onnx as donnx
    from dvn.deploy import runtimes
    from dvn.deploy.deployment import load_level
    torch.manual_seed(0)
    model = NETS[name]().eval()
    _randomise_bn(model)
    size, ch = model.input_sizes[0], model.image_channels[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dvn-ort-layout-") as folder:
        path = os.path.join(folder, f"{name}.safetensors")
        dd.save(model, path)
        for level in levels:
            runtimes.load(path, 1, level, "onnxruntime")  # exports the level once
            file = donnx.cache_path(path, 1, level)
            for n in threads:
                torch.set_num_threads(n)
                say(f"{name} level {level}, {n} thread(s): compiling")
                compiled = runtimes.load(path, 1, level, "compiled")
                sessions = {lv: session(file, n, lv) for lv in LEVELS}
                x = torch.randn(1, ch, size, size)
                xn = x.numpy()
                fns = {f"ort_{lv.removeprefix('ORT_ENABLE_').lower()}":
                       (lambda s=s: s.run(None, {"x": xn})) for lv, s in sessions.items()}
                fns["compiled"] = lambda: compiled(x)
                say(f"{name} level {level}, {n} thread(s): {repeats} rounds")
                with torch.no_grad():
                    med = time_side_by_side(fns, repeats=repeats, warmup=3)
                ms = {k: 1e3 * v for k, v in med.items()}
                row = {"net": name, "level": level, "threads": n, "batch": 1,
                       "rounds": repeats, "ms": ms,
                       "over_ort_all": {k: v / ms["ort_all"] for k, v in ms.items()}}
                if with_convs:
                    static = load_level(path, 1, level, fold_bn=True).eval()
                    row["conv_ms"] = conv_layouts(static, x, max(20, repeats * 5))
                rows.append(row)
                say(markdown([row], header=False))
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| net | level | threads | ort_all ms | ort_extended / ort_all | "
                  "ort_basic / ort_all | compiled / ort_all | compiled / ort_basic | "
                  "convs NCHW / channels_last / oneDNN blocked ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, o = r["ms"], r["over_ort_all"]
        convs = r.get("conv_ms")
        conv_text = (f"{convs['nchw']:.2f} / {convs['channels_last']:.2f} / "
                     f"{convs['onednn_blocked']:.2f}") if convs else "-"
        lines.append(f"| {r['net']} | {r['level']} | {r['threads']} | {ms['ort_all']:.2f} | "
                     f"{o['ort_extended']:.2f} | {o['ort_basic']:.2f} | {o['compiled']:.2f} | "
                     f"{ms['compiled'] / ms['ort_basic']:.2f} | {conv_text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="resnet42", choices=list(NETS))
    p.add_argument("--levels", type=int, nargs="+", help="default: every level")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per row")
    p.add_argument("--conv-layouts", action="store_true",
                   help="also time the level's convolutions alone in three layouts")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    units = NETS[a.net]().networks.units
    levels = a.levels or list(range(1, units + 1))
    if any(not 1 <= lv <= units for lv in levels):
        p.error(f"--levels: expected levels in 1-{units}, got {levels}")
    if any(n < 1 for n in a.threads) or a.repeats < 1:
        p.error("--threads and --repeats: must be positive")
    before = torch.get_num_threads()
    try:
        rows = bench_net(a.net, a.threads, levels, a.repeats, a.conv_layouts,
                         lambda m: print(f"# {m}", file=sys.stderr, flush=True))
    finally:
        torch.set_num_threads(before)
    print(markdown(rows))
    if a.json:
        import onnxruntime
        write_results(a.json, cpu_meta("bench.ort_layout", argv,
                                       onnxruntime=onnxruntime.__version__), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
