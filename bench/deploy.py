"""Deploying ResNet-42 (k = 4 tasks x 4 levels, 64x64) from a unit file.

    python -m bench.deploy                                   # every section, 1 thread
    python -m bench.deploy --json bench/results/deploy-<machine>.json

Sections (the targets of issue 14):

* layout: bytes read from disk to get level 1's conv weights, from the unit file (one tensor
  per unit block, read with pread) and from a plain safetensors file of full tensors read by
  slices (safetensors' ``get_slice``, pread and mmap backends). pread bytes come from the
  process's I/O counter ``rchar``; mmap bytes from ``read_bytes`` (storage reads) after the
  file's pages are dropped from the page cache (``posix_fadvise(DONTNEED)``).
* load: ``load_level`` of every level of tasks 1 and 3: bytes read (``rchar``), parameter bytes
  held (the storages of the loaded network's parameters) against parameters x 4 bytes.
* grow: a deployed task moved 1 -> 2 -> 3 -> 4 and back: bytes read against the added blocks;
  output equal to a level loaded directly; bytes held after each move.
* shared: all 4 tasks at each level in one deployment, in both layouts (``blocks``: exactly
  the blocks in use, one conv per row group; ``union``: one tensor per layer over the units
  in use): parameters held against the sum of 4 static exports, and batch-1 latency of each
  task against its static export.
* latency: ``load_level`` against ``dvn.to_static`` of the trained model, every level of task
  1, batch 1 and 16, side by side: medians, and the median of the per-round ratios.
* threads: 4 threads calling different (task, level)s of one deployment; outputs compared
  with single-threaded ones.
* memory (not run by default: it exports k x k levels to ONNX, minutes): every (task, level)
  served at once, each way measured in a fresh process as resident memory (VmRSS) after
  loading and one batch-1 call of each configuration, minus the process's resident memory
  after its imports: one shared-weight ``Deployment`` of all k x k configurations, k x k
  separately loaded static levels (``load_level``), and k x k ONNX Runtime sessions on the
  levels' exports (one thread each, as ``dvn infer`` makes them).
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import dvn
import dvn.deploy as dd
from bench.conv import machine_name
from bench.timing import write_results
from dvn.timing import time_calls

SIZE, TASKS = 64, 4
MB = 1e6


def io_counters() -> dict[str, int]:
    """This process's I/O counters (Linux), read unbuffered; the read itself is subtracted by
    ``measure``."""
    with open("/proc/self/io", "rb", buffering=0) as f:
        text = f.read()
    out = {k.decode(): int(v) for k, v in (line.split(b":") for line in text.splitlines())}
    out["_own"] = len(text)
    return out


def measure(fn, cold: str | None = None) -> tuple[object, dict[str, float]]:
    """(fn(), {"rchar": bytes through read/pread, "disk": bytes read from storage, "s": time});
    ``cold``: a file whose pages are dropped from the page cache first."""
    if cold is not None:
        fd = os.open(cold, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    a = io_counters()
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    b = io_counters()
    return result, {"rchar": b["rchar"] - a["rchar"] - a["_own"],
                    "disk": b["read_bytes"] - a["read_bytes"], "s": seconds}


def paired(fns: dict, base: str, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Side by side: each round runs every function once (shuffled order, one untimed call
    before each timed one). Returns each function's median ms and, as ``<name>/<base>``, the
    median over rounds of its time divided by ``base``'s time in the same round: on a shared
    machine, a paired ratio cancels the load that changes from round to round."""
    names = list(fns)
    samples = time_calls([fns[k] for k in names], repeats=rounds, warmup=warmup,
                         order="shuffle", settle=1)
    times = dict(zip(names, samples))
    out = {f"{name}_ms": 1e3 * statistics.median(ts) for name, ts in times.items()}
    for name in fns:
        if name != base:
            out[f"{name}/{base}"] = statistics.median(
                a / b for a, b in zip(times[name], times[base]))
    return out


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch norm statistics, so that equal outputs mean equal configurations."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def block_bytes(file: dd.UnitFile, task: int, level: int) -> int:
    params, _ = file.config_keys(task, level)
    return file.nbytes([k for k in params if "@" in k])


def level_bytes(file: dd.UnitFile, task: int, level: int) -> tuple[int, int]:
    params, buffers = file.config_keys(task, level)
    return file.nbytes(params), file.nbytes(buffers)


def layout_rows(model: torch.nn.Module, units: str, plain: str, file: dd.UnitFile) -> list[dict]:
    """Level 1 of task 1: its conv weights read from blocks vs from full tensors by slices."""
    from safetensors import safe_open
    active = model.networks.active(1, 1)
    keys, slices, need = [], [], 0
    for name, conv in dd.unitfile.sliced_convs(model).items():
        if name.startswith("stems.") and name != "stems.t1":
            continue
        ins, outs = conv.segments(active)
        assert ins.num_ranges == outs.num_ranges == 1  # level 1: one unit, one range
        (i0, il), (o0, ol) = ins.flat(), outs.flat()
        slices.append((f"{name}.weight", slice(o0, o0 + ol), slice(i0, i0 + il)))
        ins_units = active.unit_set if conv.in_layout.split else (None,)
        keys += [dd.block_key(name, a, b) for a in active.unit_set for b in ins_units]
        need += ol * il * conv.weight[0, 0].numel() * 4

    def blocks():
        return file.read(keys)

    def sliced(backend):
        def fn():
            with safe_open(plain, framework="pt", backend=backend) as f:
                return [f.get_slice(k)[o, i].clone() for k, o, i in slices]
        return fn

    def blocks_mmap():
        with safe_open(units, framework="pt", backend="mmap") as f:
            return [f.get_tensor(k).clone() for k in keys]

    rows = []
    for name, fn, path in [("unit file, blocks, pread", blocks, units),
                           ("unit file, blocks, mmap", blocks_mmap, units),
                           ("full tensors by slices, pread", sliced("pread"), plain),
                           ("full tensors by slices, mmap", sliced("mmap"), plain)]:
        out, m = measure(fn, cold=path)
        got = sum(t.nbytes for t in (out.values() if isinstance(out, dict) else out))
        assert got == need, (name, got, need)
        rows.append({"how": name, "needed_bytes": need, "rchar": m["rchar"], "disk": m["disk"],
                     "seconds": m["s"]})
    return rows


def load_rows(model, units: str, file: dd.UnitFile, tasks=(1, 3)) -> list[dict]:
    rows = []
    for task in tasks:
        for level in range(1, TASKS + 1):
            loaded, m = measure(lambda: dd.load_level(units, task, level), cold=units)
            params = sum(p.numel() for p in loaded.parameters())
            held = dd.storage_bytes(list(loaded.parameters()))
            p_bytes, b_bytes = level_bytes(file, task, level)
            rows.append({"task": task, "level": level, "parameters": params,
                         "count_parameters": dvn.count_parameters(model, task, level),
                         "parameter_bytes_held": held, "buffer_bytes_held":
                         dd.storage_bytes(list(loaded.buffers())), "level_bytes": p_bytes + b_bytes,
                         "bytes_read": m["rchar"], "disk_bytes": m["disk"], "seconds": m["s"],
                         "read_ratio": m["rchar"] / (p_bytes + b_bytes),
                         "read_vs_parameter_bytes": m["rchar"] / (4 * params)})
    return rows


def grow_rows(model, units: str, file: dd.UnitFile, tasks=(1, 3)) -> list[dict]:
    rows = []
    for task in tasks:
        x = torch.randn(1, 3, SIZE, SIZE)
        dep = dd.Deployment(units, {task: 1})
        for old, new in [(1, 2), (2, 3), (3, 4), (4, 3), (3, 2), (2, 1)]:
            _, m = measure(lambda: dep.set_level(task, new))
            added = max(0, block_bytes(file, task, new) - block_bytes(file, task, old))
            p_bytes, b_bytes = level_bytes(file, task, new)
            private = p_bytes + b_bytes - block_bytes(file, task, new)
            with torch.no_grad():
                equal = torch.equal(dep(x, task), dd.load_level(units, task, new)(x))
            rows.append({"task": task, "from": old, "to": new, "bytes_read": m["rchar"],
                         "added_block_bytes": added, "new_private_bytes": private,
                         "read_vs_added": m["rchar"] / added if added else None,
                         "held_bytes": dep.bytes_held(), "level_bytes": p_bytes + b_bytes,
                         "equal_to_direct_load": equal, "seconds": m["s"]})
        dep.close()
    return rows


def union_parameters(model, configs) -> int:
    """Parameters of one tensor per layer over the union of the units the configurations use
    (the alternative to row groups), plus the private batch norms and heads."""
    total = 0
    for name, conv in dd.unitfile.sliced_convs(model).items():
        sets = [model.networks.active(t, lv).unit_set for t, lv in configs
                if not name.startswith("stems.") or name == f"stems.t{t}"]
        if not sets:
            continue
        union = sorted(set().union(*sets))
        rows = sum(conv.out_layout.sizes[a - 1] for a in union)
        cols = conv.in_channels if not conv.in_layout.split else \
            sum(conv.in_layout.sizes[b - 1] for b in union)
        total += rows * cols * conv.weight[0, 0].numel()
    for t, lv in configs:
        key = model.networks.active(t, lv).key
        total += sum(p.numel() for n, p in model.named_parameters() if f".{key}." in n)
    return total


def shared_rows(model, units: str, repeats: int) -> list[dict]:
    """All tasks at each level, in both layouts: memory, and batch-1 latency against each
    task's static export."""
    rows = []
    deps = {layout: dd.Deployment(units, {1: 1}, layout=layout) for layout in dd.LAYOUTS}
    x = torch.randn(1, 3, SIZE, SIZE)
    for level in range(1, TASKS + 1):
        configs = [(t, level) for t in range(1, TASKS + 1)]
        for dep in deps.values():
            dep.deploy(configs)
        exports = sum(dvn.count_parameters(model, t, level) for t in range(1, TASKS + 1))
        row = {"level": level, "sum_of_exports": exports}
        for layout, dep in deps.items():
            row[f"held_{layout}"] = dep.parameters_held()
            row[f"latency_ratio_{layout}"] = {}
            row[f"convs_per_layer_{layout}"] = {
                t: max(len(layer.state.steps[model.networks.active(t, level).unit_set])
                       for name, layer in dep._convs.items() if not name.startswith("stems."))
                for t in range(1, TASKS + 1)}
        assert row["held_union"] == union_parameters(model, configs)
        for t in range(1, TASKS + 1):
            static = deps["blocks"].export(t)
            fns = {layout: (lambda dep=dep: dep(x, t)) for layout, dep in deps.items()}
            with torch.no_grad():
                torch.testing.assert_close(deps["union"](x, t), deps["blocks"](x, t),
                                           atol=1e-4, rtol=1e-4)
                times = paired({**fns, "static": lambda: static(x)}, "static", repeats)
            for layout in deps:
                row[f"latency_ratio_{layout}"][t] = times[f"{layout}/static"]
        rows.append(row)
    for dep in deps.values():
        dep.close()
    return rows


def latency_rows(model, units: str, repeats: int, batches=(1, 16)) -> list[dict]:
    rows = []
    for level in range(1, TASKS + 1):
        loaded = dd.load_level(units, 1, level)
        static = dvn.to_static(model, 1, level).eval()
        for b in batches:
            x = torch.randn(b, 3, SIZE, SIZE)
            with torch.no_grad():
                assert torch.equal(loaded(x), static(x))
                t = paired({"load_level": lambda: loaded(x), "to_static": lambda: static(x)},
                           "to_static", repeats if b == 1 else max(7, repeats // 3))
            rows.append({"level": level, "batch": b, "load_level_ms": t["load_level_ms"],
                         "to_static_ms": t["to_static_ms"], "ratio": t["load_level/to_static"]})
    return rows


def thread_rows(units: str, threads: int = 4, calls: int = 8) -> dict:
    configs = [(1, 1), (2, 2), (3, 3), (4, 4), (3, 1), (1, 4)]
    dep = dd.Deployment(units, configs)
    g = torch.Generator().manual_seed(0)
    inputs = {c: torch.randn(1, 3, SIZE, SIZE, generator=g) for c in configs}
    want = {c: dep(inputs[c], *c) for c in configs}
    bad, done = [], [0]
    barrier = threading.Barrier(threads)

    def work(i):
        barrier.wait()
        for n in range(calls):
            c = configs[(i + n) % len(configs)]
            if not torch.equal(dep(inputs[c], *c), want[c]):
                bad.append(c)
            done[0] += 1

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dep.close()
    return {"threads": threads, "calls": done[0], "configs": configs, "unequal": len(bad)}


# Run in a fresh interpreter: prints {"base": rss after imports, "loaded": rss after loading
# and one call of every configuration} in bytes. argv: kind, unit file, export folder.
_MEMORY_CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
import dvn.deploy as dd
from dvn.deploy import onnx as donnx
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
kind, units, folder = sys.argv[1:4]
with dd.UnitFile(units) as f:
    configs = list(f.skeleton.networks.configs())
x = torch.randn(1, 3, %d, %d)
if kind == "onnxruntime":
    import onnxruntime
base = rss()
keep = []
with torch.no_grad():
    if kind == "shared":
        dep = dd.Deployment(units, configs)
        keep.append(dep)
        for t, lv in configs:
            dep(x, t, lv)
    elif kind == "static":
        for t, lv in configs:
            m = dd.load_level(units, t, lv)
            keep.append(m)
            m(x)
    else:
        for t, lv in configs:
            s = donnx.session(f"{folder}/{donnx.level_name(t, lv)}", threads=1)
            keep.append(s)
            donnx.run_session(s, x)
print(json.dumps({"base": base, "loaded": rss(), "configs": len(configs)}))
""" % (SIZE, SIZE)


def memory_rows(model, units: str, folder: str) -> dict:
    """Resident memory of serving every (task, level) at once: shared weights, separate static
    levels, separate ONNX Runtime sessions (each measured in a fresh process)."""
    from dvn.deploy import onnx as donnx
    exports = os.path.join(folder, "onnx")
    donnx.export_all(units, exports)
    configs = list(model.networks.configs())
    out = {"configs": len(configs),
           "parameter_bytes_full": 4 * sum(p.numel() for p in model.parameters()),
           "parameter_bytes_sum_of_levels": 4 * sum(
               dvn.count_parameters(model, t, lv) for t, lv in configs)}
    for kind in ("shared", "static", "onnxruntime"):
        r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, kind, units, exports],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"memory ({kind}): {r.stderr[-2000:]}")
        got = json.loads(r.stdout.strip().splitlines()[-1])
        out[kind] = {"resident_bytes": got["loaded"] - got["base"], "base_bytes": got["base"]}
    return out


def table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table under a heading."""
    return [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def layout_table(rows: list[dict]) -> list[str]:
    return table("layout: level 1 of task 1, its conv weights",
                 ["how", "needed MB", "read, rchar MB", "read from disk MB", "disk / needed"],
                 [[r["how"], f"{r['needed_bytes'] / MB:.2f}", f"{r['rchar'] / MB:.2f}",
                   f"{r['disk'] / MB:.2f}", f"{r['disk'] / r['needed_bytes']:.2f}x"]
                  for r in rows])


def load_table(rows: list[dict]) -> list[str]:
    return table("load_level",
                 ["task", "level", "parameters", "parameter MB held", "parameters x 4 B",
                  "MB read", "read / level bytes", "read / parameter bytes"],
                 [[str(r["task"]), str(r["level"]), f"{r['parameters']:,}",
                   f"{r['parameter_bytes_held'] / MB:.3f}", f"{4 * r['count_parameters'] / MB:.3f}",
                   f"{r['bytes_read'] / MB:.3f}", f"{r['read_ratio']:.3f}x",
                   f"{r['read_vs_parameter_bytes']:.3f}x"] for r in rows])


def grow_table(rows: list[dict]) -> list[str]:
    return table("grow and shrink",
                 ["task", "from", "to", "MB read", "added blocks MB", "read / added", "MB held",
                  "level MB", "equal to a direct load"],
                 [[str(r["task"]), str(r["from"]), str(r["to"]), f"{r['bytes_read'] / MB:.3f}",
                   f"{r['added_block_bytes'] / MB:.3f}",
                   "-" if r["read_vs_added"] is None else f"{r['read_vs_added']:.3f}x",
                   f"{r['held_bytes'] / MB:.2f}", f"{r['level_bytes'] / MB:.2f}",
                   str(r["equal_to_direct_load"])] for r in rows])


def shared_table(rows: list[dict]) -> list[str]:
    cells = []
    for r in rows:
        row = [str(r["level"]), f"{r['sum_of_exports'] / 1e6:.2f}M"]
        for layout in dd.LAYOUTS:
            held = r[f"held_{layout}"]
            row += [f"{held / 1e6:.2f}M", f"{held / r['sum_of_exports']:.2f}",
                    " / ".join(f"{v:.2f}" for v in r[f"latency_ratio_{layout}"].values())]
            if layout == "blocks":
                row.append(" / ".join(str(v) for v in r["convs_per_layer_blocks"].values()))
        cells.append(row)
    return table("all 4 tasks at one level: held parameters, latency / static export (batch 1)",
                 ["level", "sum of 4 exports", "blocks: held", "held / exports",
                  "latency, tasks 1-4", "convs per layer", "union: held", "held / exports",
                  "latency, tasks 1-4"], cells)


def latency_table(rows: list[dict]) -> list[str]:
    return table("latency: load_level vs dvn.to_static (task 1)",
                 ["level", "batch", "load_level ms", "to_static ms", "ratio (median of rounds)"],
                 [[str(r["level"]), str(r["batch"]), f"{r['load_level_ms']:.2f}",
                   f"{r['to_static_ms']:.2f}", f"{r['ratio']:.3f}"] for r in rows])


def threads_table(t: dict) -> list[str]:
    return [f"## threads: {t['threads']} threads, {t['calls']} calls over {len(t['configs'])} "
            f"configurations: {t['unequal']} outputs differ from the single-threaded ones"]


def memory_table(m: dict) -> list[str]:
    rows = [[kind, f"{m[kind]['resident_bytes'] / MB:.0f}",
             f"{m[kind]['resident_bytes'] / m['parameter_bytes_full']:.2f}"]
            for kind in ("shared", "static", "onnxruntime")]
    return table(f"memory: all {m['configs']} (task, level)s served at once (full parameters "
                 f"{m['parameter_bytes_full'] / MB:.0f} MB, sum of the levels' "
                 f"{m['parameter_bytes_sum_of_levels'] / MB:.0f} MB)",
                 ["served as", "resident MB", "/ full parameters"], rows)


TABLES = {"layout": layout_table, "load": load_table, "grow": grow_table,
          "shared": shared_table, "latency": latency_table, "threads": threads_table,
          "memory": memory_table}


SECTIONS = tuple(TABLES)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "memory")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=41, help="timed rounds at batch 1")
    p.add_argument("--depth", type=int, default=42, help="ResNet depth (default 42)")
    p.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS),
                   choices=list(SECTIONS))
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--dir", default=None, help="folder for the model files (default: a "
                   "temporary folder; 250 MB)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    where = machine_name()
    print(f"# deployment of ResNet-{args.depth}, k = 4, {SIZE}x{SIZE}: {where}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, float32")
    torch.manual_seed(0)
    model = randomized(dvn.resnet(args.depth, units=TASKS, num_classes=50, input_sizes=SIZE))
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        units, plain = os.path.join(folder, "r42.safetensors"), os.path.join(folder, "plain.st")
        dd.save(model, units)
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, plain)
        file = dd.UnitFile(units)
        results = {"header_bytes": file.bytes_read, "file_bytes": os.path.getsize(units)}
        sections = {"layout": lambda: layout_rows(model, units, plain, file),
                    "load": lambda: load_rows(model, units, file),
                    "grow": lambda: grow_rows(model, units, file),
                    "shared": lambda: shared_rows(model, units, args.repeats),
                    "latency": lambda: latency_rows(model, units, args.repeats),
                    "threads": lambda: thread_rows(units),
                    "memory": lambda: memory_rows(model, units, folder)}
        for name in args.sections:
            t = time.perf_counter()
            results[name] = sections[name]()
            print(f"# {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        file.close()
    print(f"# unit file: {results['file_bytes'] / MB:.1f} MB, header "
          f"{results['header_bytes'] / 1e3:.0f} kB")
    for name in args.sections:
        for line in ["", *TABLES[name](results[name])]:
            print(line)
    if args.json:
        meta = {"machine": where, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "command": "python -m bench.deploy " + " ".join(
                    argv if argv is not None else sys.argv[1:])}
        write_results(args.json, meta, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
