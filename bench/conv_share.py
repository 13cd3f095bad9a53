"""Where a level's batch-1 time goes in a ``torch.compile`` capture and in ONNX Runtime:
convolution kernels, the host work around them, and the rest, from each runtime's own
instruments (issue 20's "where the rest of the gap goes"), beside the ``compiled`` runtime's
ahead-of-time batch-1 path that avoids that host work (``dvn.deploy.aot``).

    python -m bench.conv_share --net wrn14-2 --level 1 --threads 1

The level of ``bench.runtimes``' random-weight network is exported and loaded on ONNX Runtime,
on ``compiled`` and as the frozen ``torch.compile`` capture that ``compiled`` uses at other
batches (``dvn.deploy.runtimes``). Wall times: medians over interleaved calls, no instrument on.
ONNX Runtime, under its profiler (one thread, spinning off): each node's kernel time summed per
call, convolutions (``Conv``, ``FusedConv``) apart. The capture, under ``torch.profiler``: the
self CPU time of its convolution ops (oneDNN, weights frozen and prepacked); and in a child
process with ``ONEDNN_VERBOSE=1``: the time oneDNN itself spends executing those convolutions.
The difference is PyTorch's host work in each convolution call (tensor wrapping, primitive
lookup, output allocation). Profilers slow what they watch: read their figures as shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import subprocess
import tempfile

import torch

from .runtimes import NETS, _randomise_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV_OPS = ("Conv", "FusedConv")
MARK = "== dvn conv_share: timed calls =="


def ort_split(file: str, x: torch.Tensor, threads: int, calls: int) -> dict:
    """Per call: ORT's node time in convolutions and in total (us), from its profiler."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(file), "ort-profile")
    sess = ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(calls):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    conv = total = 0.0
    nodes = set()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "")
        total += e["dur"]
        if op in CONV_OPS:
            conv += e["dur"]
            nodes.add(e["name"])
    return {"conv_us": conv / calls, "nodes_us": total / calls, "convs": len(nodes)}


def compiled_split(fn, x: torch.Tensor, calls: int) -> dict:
    """Per call: self CPU time of the convolution ops and of the whole call (us)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn(x)
    conv = 0.0
    names = []
    for ev in prof.key_averages():
        if "convolution" in ev.key or "conv2d" in ev.key:
            conv += ev.self_cpu_time_total
            names.append(ev.key)
    return {"conv_us": conv / calls, "conv_ops": sorted(set(names))}


def capture(path: str, level: int):
    """Task 1 at ``level`` as the frozen ``torch.compile`` capture (convolutions on oneDNN);
    call it without gradients."""
    from dvn.deploy import runtimes
    from dvn.deploy.deployment import load_level
    return runtimes.frozen_capture(load_level(path, 1, level, fold_bn=True),
                                   f"conv_share_level{level}")


def onednn_exec(net: str, level: int, threads: int, calls: int) -> dict:
    """Per call of the capture: oneDNN's own execution time of its primitives (us), from
    ``ONEDNN_VERBOSE=1`` in a child process (the variable is read when oneDNN starts)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-m", "bench.conv_share", "--net", net, "--level",
                          str(level), "--threads", str(threads), "--calls", str(calls),
                          "--verbose-child"], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=600, check=True).stdout
    lines = out.split(MARK, 1)[1].splitlines() if MARK in out else []
    execs = [line.split(",") for line in lines if ",exec,cpu," in line]
    if not execs:
        raise RuntimeError("conv_share: oneDNN printed no execution lines (ONEDNN_VERBOSE)")
    kinds = sorted({e[5] for e in execs})
    return {"exec_us": 1e3 * sum(float(e[-1]) for e in execs) / calls,
            "primitives_per_call": len(execs) / calls, "kinds": kinds}


def _child(net: str, level: int, threads: int, calls: int) -> None:
    """The captured level's calls after warm-up, a marker line before them."""
    model, path, x, folder = _setup(net, threads)
    compiled = capture(path, level)
    with torch.no_grad():
        for _ in range(20):
            compiled(x)
        print(MARK, flush=True)
        for _ in range(calls):
            compiled(x)
    sys.stdout.flush()
    folder.cleanup()


def _setup(net: str, threads: int):
    import dvn.deploy as dd
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = NETS[net]().eval()
    _randomise_bn(model)
    folder = tempfile.TemporaryDirectory()
    path = os.path.join(folder.name, f"{net}.safetensors")
    dd.save(model, path)
    x = torch.randn(1, model.image_channels[0], model.input_sizes[0], model.input_sizes[0])
    return model, path, x, folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="wrn14-2", choices=list(NETS))
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=300, help="timed calls per measurement")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--verbose-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    units = NETS[a.net]().networks.units
    if not 1 <= a.level <= units:
        p.error(f"--level: expected 1-{units}, got {a.level}")
    if a.threads < 1 or a.calls < 1:
        p.error("--threads and --calls: must be positive")
    if a.verbose_child:
        _child(a.net, a.level, a.threads, a.calls)
        return 0
    from dvn.deploy import onnx as donnx
    from dvn.deploy import runtimes

    from .conv import machine_name
    from .timing import time_side_by_side, write_results
    model, path, x, folder = _setup(a.net, a.threads)
    try:
        ort_run = runtimes.load(path, 1, a.level, "onnxruntime")
        captured = capture(path, a.level)
        compiled = runtimes.load(path, 1, a.level, "compiled")
        with torch.no_grad():
            wall = time_side_by_side({"onnxruntime": lambda: ort_run(x),
                                      "torch_compile": lambda: captured(x),
                                      "compiled": lambda: compiled(x)},
                                     repeats=a.calls, warmup=5)
        ort = ort_split(donnx.cache_path(path, 1, a.level), x, a.threads, a.calls)
        comp = compiled_split(captured, x, a.calls)
    finally:
        folder.cleanup()
    comp["onednn"] = onednn_exec(a.net, a.level, a.threads, a.calls)
    w = {k: 1e6 * v for k, v in wall.items()}
    host = comp["conv_us"] - comp["onednn"]["exec_us"]
    result = {"net": a.net, "level": a.level, "threads": a.threads, "wall_us": w,
              "onnxruntime": ort, "torch_compile": comp,
              "torch_compile_conv_host_us": host,
              "torch_compile_rest_us": w["torch_compile"] - comp["conv_us"],
              "compiled_over_onnxruntime": w["compiled"] / w["onnxruntime"]}
    n = comp["onednn"]["primitives_per_call"]
    print(f"{a.net} level {a.level}, batch 1, {a.threads} thread(s), {machine_name()}, "
          f"torch {torch.__version__}:")
    print(f"  ONNX Runtime: {w['onnxruntime']:.0f} us a call; under its profiler its "
          f"{ort['convs']} convolutions {ort['conv_us']:.0f} us of {ort['nodes_us']:.0f} us "
          f"of node time")
    print(f"  torch.compile capture: {w['torch_compile']:.0f} us a call; its {n:g} convolution "
          f"calls {comp['conv_us']:.0f} us (torch.profiler, self CPU), of which oneDNN executes "
          f"{comp['onednn']['exec_us']:.0f} us (ONEDNN_VERBOSE) and PyTorch's host work is "
          f"{host:.0f} us ({host / n:.0f} us a call); the rest of the call "
          f"{result['torch_compile_rest_us']:.0f} us")
    print(f"  compiled (ahead of time, small convolutions as GEMMs): {w['compiled']:.0f} us a "
          f"call, {result['compiled_over_onnxruntime']:.2f}x ONNX Runtime")
    if a.json:
        meta = {"machine": machine_name(), "torch": torch.__version__,
                "command": "python -m bench.conv_share " + " ".join(
                    argv if argv is not None else sys.argv[1:])}
        write_results(a.json, meta, [result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
