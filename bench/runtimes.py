"""Every level of task 1 on each runtime, against a plain ONNX Runtime session (issue 20).

    python -m bench.runtimes --json bench/results/runtimes-<machine>.json
    python -m bench.runtimes --nets wrn --threads 1 --batches 1     # a quick look

Per network (ResNet-42, k = 4, 64x64, 50 classes; the main job's WRN-14-2, k = 2, 28x28 grey,
10 classes: random weights and batch norm statistics), level, thread count and batch, side by
side in one process (``bench.timing.time_side_by_side``: shuffled rounds, medians):

* ``sliced``: the trained model's eager forward on the sliced kernels, ``model(x, task, level)``;
* ``torch``: dvn's ``torch`` runtime (the level loaded alone, plain layers, eager);
* ``onnxruntime``: dvn's ``onnxruntime`` runtime (the cached export, ``dvn.deploy.runtimes``);
* ``compiled`` (``--compiled``, batch 1 only): dvn's ``compiled`` runtime, compiled ahead of time
  for batch 1 (``dvn.deploy.aot``) once per thread count;
* ``plain_ort``: what a user does by hand: an ``InferenceSession`` with default options on
  the same exported file, but the same intra-op thread count and thread spinning off
  (``session.intra_op.allow_spinning`` = 0), so both sides get the same cores.

Reported: medians in ms, dvn's fastest runtime / plain ORT, sliced / torch (static), and level
1's speedup over the top level for each runtime. With ``--runs N``, the whole measurement N
times (each run compiles and loads again): each ratio's median over the runs and its range
(``summarise``), since single runs here disagree by up to 0.1 in a ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

import dvn
import dvn.deploy as dd
from dvn.deploy import onnx as donnx
from dvn.deploy import runtimes

from .timing import cpu_meta, time_side_by_side, write_results

NETS = {
    "resnet42": lambda: dvn.resnet(42, units=4, num_classes=50, input_sizes=64),
    "wrn14-2": lambda: dvn.wrn(14, 2, units=2, num_classes=10, input_sizes=28,
                               image_channels=1),
}


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 0.4 - 0.2)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


#: dvn's runtimes that ``--runtimes`` can pick (each timed beside a plain ORT session)
RUNTIMES = ("sliced", "torch", "onnxruntime", "compiled")


def bench_net(name: str, folder: str, threads: list[int], batches: list[int], repeats: int,
              compiled: bool, say, only: tuple[str, ...] = RUNTIMES) -> list[dict]:
    """Rows of ``name``'s levels; ``only``: the runtimes timed beside plain ORT (``compiled``
    also needs ``compiled``)."""
    compiled = compiled and "compiled" in only
    torch.manual_seed(0)
    model = NETS[name]().eval()
    _randomise_bn(model)
    path = os.path.join(folder, f"{name}.safetensors")
    dd.save(model, path)
    k = model.networks.units
    size, ch = model.input_sizes[0], model.image_channels[0]
    rows = []
    for level in range(1, k + 1):
        say(f"{name} level {level}: exporting and loading")
        torch.set_num_threads(max(threads))
        run = {rt: runtimes.load(path, 1, level, rt) for rt in ("torch", "onnxruntime")}
        plain_file = donnx.cache_path(path, 1, level)
        for n in threads:
            torch.set_num_threads(n)
            if compiled:  # Inductor's kernels keep the thread count they were compiled with
                say(f"{name} level {level}, {n} thread(s): compiling")
                run["compiled"] = runtimes.load(path, 1, level, "compiled")
            import onnxruntime as ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = n
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            plain = ort.InferenceSession(plain_file, so, providers=["CPUExecutionProvider"])
            dvn_ort = (runtimes.load(path, 1, level, "onnxruntime")  # this thread count
                       if "onnxruntime" in only else None)
            for b in batches:
                x = torch.randn(b, ch, size, size)
                xn = x.numpy()
                fns = {"sliced": lambda: model(x, task=1, level=level),
                       "torch": lambda: run["torch"](x),
                       "onnxruntime": lambda: dvn_ort(x),
                       "plain_ort": lambda: plain.run(None, {"x": xn})}
                if compiled and b == 1:
                    fns["compiled"] = lambda: run["compiled"](x)
                fns = {k_: f for k_, f in fns.items() if k_ in only or k_ == "plain_ort"}
                if len(fns) == 1:
                    continue  # only compiled asked for, and it runs at batch 1 only
                reps = repeats if b == 1 else max(3, repeats // 8)
                say(f"{name} level {level}, {n} thread(s), batch {b}: {reps} rounds")
                with torch.no_grad():
                    med = time_side_by_side(fns, repeats=reps, warmup=2)
                ms = {k_: 1e3 * v for k_, v in med.items()}
                row = {"net": name, "level": level, "threads": n, "batch": b,
                       "rounds": reps, "ms": ms}
                dvn_rts = [rt for rt in ms if rt not in ("sliced", "plain_ort")]
                if dvn_rts:
                    best = min(dvn_rts, key=ms.get)
                    row.update(dvn_fastest=best,
                               fastest_over_plain_ort=ms[best] / ms["plain_ort"])
                if "compiled" in ms:
                    row["compiled_over_plain_ort"] = ms["compiled"] / ms["plain_ort"]
                if "sliced" in ms and "torch" in ms:
                    row["sliced_over_static"] = ms["sliced"] / ms["torch"]
                rows.append(row)
    for r in rows:
        top = next((t for t in rows if t["net"] == r["net"] and t["level"] == k
                    and t["threads"] == r["threads"] and t["batch"] == r["batch"]), None)
        if r["level"] == 1 and top is not None:
            r["level1_speedup"] = {rt: top["ms"][rt] / r["ms"][rt] for rt in r["ms"]}
    return rows


#: the ratios a row carries, summarised across runs (median, and min-max as ``spread``)
RATIOS = ("fastest_over_plain_ort", "compiled_over_plain_ort", "sliced_over_static")


def summarise(runs: list[list[dict]]) -> list[dict]:
    """One row per (net, level, threads, batch) over whole runs of ``bench_net``: each
    runtime's median ms, each ratio's median over the runs with its ``spread`` (min, max),
    ``dvn_fastest`` the runtime fastest in most runs, the medians of level 1's speedups, and
    each run's ms (``per_run_ms``).
    A ratio is taken per run (both sides timed in that run's rounds), then summarised."""
    groups: dict[tuple, list[dict]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r["net"], r["level"], r["threads"], r["batch"]), []).append(r)
    out = []
    for (net, level, threads, batch), rs in groups.items():
        row = {"net": net, "level": level, "threads": threads, "batch": batch,
               "rounds": rs[0]["rounds"], "runs": len(rs),
               "ms": {rt: statistics.median(r["ms"][rt] for r in rs)
                      for rt in rs[0]["ms"] if all(rt in r["ms"] for r in rs)},
               "spread": {}, "per_run_ms": [r["ms"] for r in rs]}
        for name in RATIOS:
            values = [r[name] for r in rs if name in r]
            if values:
                row[name] = statistics.median(values)
                row["spread"][name] = [min(values), max(values)]
        fastest = [r["dvn_fastest"] for r in rs if "dvn_fastest" in r]
        if fastest:
            row["dvn_fastest"] = max(sorted(set(fastest)), key=fastest.count)
        speedups = [r["level1_speedup"] for r in rs if "level1_speedup" in r]
        if speedups:
            row["level1_speedup"] = {rt: statistics.median(sp[rt] for sp in speedups)
                                     for rt in speedups[0]
                                     if all(rt in sp for sp in speedups)}
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    """The rows as two tables; a runtime or ratio not measured reads "-"; a row summarised
    over several runs (``summarise``) gives each ratio's median with its range."""
    def ms(r, rt):
        return f"{r['ms'][rt]:.2f}" if rt in r["ms"] else "-"

    def ratio(r, name):
        value = r.get(name)
        if value is None and name == "compiled_over_plain_ort" and "compiled" in r["ms"]:
            value = r["ms"]["compiled"] / r["ms"]["plain_ort"]  # rows written before the field
        if value is None:
            return "-"
        lo_hi = r.get("spread", {}).get(name)
        return f"{value:.2f}" + (f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})"
                                 if lo_hi and r.get("runs", 1) > 1 else "")
    lines = ["| net | threads | batch | level | sliced ms | torch ms | compiled ms | "
             "onnxruntime ms | plain ORT ms | dvn fastest / plain ORT | compiled / plain ORT | "
             "sliced / static |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fastest = (f"{ratio(r, 'fastest_over_plain_ort')} ({r['dvn_fastest']})"
                   if "dvn_fastest" in r else "-")
        lines.append(f"| {r['net']} | {r['threads']} | {r['batch']} | {r['level']} | "
                     + " | ".join(ms(r, rt) for rt in ("sliced", "torch", "compiled",
                                                       "onnxruntime", "plain_ort"))
                     + f" | {fastest} | {ratio(r, 'compiled_over_plain_ort')} | "
                     f"{ratio(r, 'sliced_over_static')} |")
    lines += ["", "| net | threads | batch | level-1 speedup over the top level: " +
              " / ".join(["sliced", "torch", "compiled", "onnxruntime", "plain ORT"]) + " |",
              "|---|---|---|---|"]
    for r in rows:
        if "level1_speedup" in r:
            sp = r["level1_speedup"]
            lines.append(f"| {r['net']} | {r['threads']} | {r['batch']} | " + " / ".join(
                f"{sp[k]:.1f}x" if k in sp else "-"
                for k in ("sliced", "torch", "compiled", "onnxruntime", "plain_ort")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=30, help="rounds at batch 1 (an eighth, "
                   "at least 3, at larger batches)")
    p.add_argument("--compiled", action="store_true", help="also torch.compile (batch 1)")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES),
                   help="time only these beside plain ORT (default: all; compiled needs "
                   "--compiled): fewer runtimes in a round, less that each call's caches and "
                   "threads inherit from the others")
    p.add_argument("--runs", type=int, default=1, help="whole runs (each compiles and "
                   "loads again); more than one: each ratio's median over the runs and its "
                   "range (this machine's run-to-run spread is about 5%%)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    if a.runtimes == ["compiled"] and not a.compiled:
        p.error("--runtimes: compiled is timed only with --compiled")
    if a.runs < 1:
        p.error(f"--runs: expected at least 1, got {a.runs}")
    say = lambda m: print(f"  {m}", file=sys.stderr, flush=True)  # noqa: E731
    runs = []
    for i in range(a.runs):
        if a.runs > 1:
            say(f"run {i + 1} of {a.runs}")
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for net in a.nets:
                rows += bench_net(net, folder, a.threads, a.batches, a.repeats, a.compiled,
                                  say, tuple(a.runtimes))
        runs.append(rows)
    rows = runs[0] if a.runs == 1 else summarise(runs)
    print(markdown(rows))
    if a.json:
        import onnxruntime
        write_results(a.json, cpu_meta("bench.runtimes", argv, runs=a.runs,
                                       onnxruntime=onnxruntime.__version__), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
