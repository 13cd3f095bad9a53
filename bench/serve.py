"""``dvn serve`` under a bursty trace: the deadline policy against fixed levels and against one
separately loaded model per (task, level).

    python -m bench.serve                                  # fmnist-joint's WRN-14-2, k = 2
    python -m bench.serve --stand-in small --burst-rps 800 --json serve-small.json

The server runs in a child process on 127.0.0.1 (an ephemeral port), one torch thread; the
client (this process, asyncio and ``bench.http_client``) replays one open-loop trace per mode:
Poisson arrivals alternating light phases and bursts, tasks at random, every request with the
same deadline, bounded in count and time (it stops by itself). Modes, on the same trace:

* ``deadline``: no level given, the server's SlackFit policy picks it from the deadline;
* ``top`` / ``level 1``: the level given explicitly;
* ``separate``: the deadline policy on a server that loads every (task, level) alone (k x k
  copies of the weights).

Reported per mode and phase: deadline attainment (end to end at the client; a 503 or an error
is a miss), mean accuracy of the answers (each (task, level)'s measured test accuracy, from the
run's ``results.json``: by default the committed fmnist-joint small-preset results, whose
architecture the random-weight stand-in has), throughput, the server's resident memory (VmRSS,
VmHWM of its process), and at light load the p99 of end-to-end latency minus the level's
profiled batch-1 latency (what HTTP, the queue and batching add). After each trace, ``--alone``
requests go one at a time: the same figure for a request that finds the server idle (no other
request's batch to wait for).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .timing import quantile, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results", "cpu-epyc-2core", "fmnist-joint", "results.json")


def stand_in(folder: str, preset: str = "small") -> str:
    """fmnist-joint's architecture at ``preset`` (small: WRN-14-2, full: WRN-14-4; k = 2;
    Fashion-MNIST 28x28 and digits 8x8 -> 16x16, grey) with random weights, as a unit file
    with its tasks' inputs."""
    import dvn.deploy as dd
    from dvn.model import backbones
    from dvn.data.loading import MEAN_STD
    from dvn.scenarios import get_scenario
    s = get_scenario("fmnist-joint", preset)
    torch.manual_seed(0)
    model = backbones.build(s.backbone_spec([10, 10], "auto")).eval()
    tasks = [dd.TaskInput("fmnist", 1, (28, 28), s.input_sizes[0], 1, *MEAN_STD["fashion-mnist"],
                          tuple(f"c{i}" for i in range(10))),
             dd.TaskInput("digits", 1, (8, 8), s.input_sizes[1], 1, *MEAN_STD["digits"],
                          tuple(str(i) for i in range(10)))]
    path = os.path.join(folder, "deploy.safetensors")
    dd.save(model, path, tasks=tasks)
    return path


def accuracies(path: str) -> dict[tuple[int, int], float]:
    with open(path) as f:
        rows = json.load(f)["rows"]
    return {(r["task"], r["level"]): float(r["accuracy"]) for r in rows if "accuracy" in r}


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def trace(n: int, seconds: float, light_rps: float, burst_rps: float, light_s: float,
          burst_s: float, tasks: int, seed: int = 0) -> list[tuple[float, int, str]]:
    """(send time s, task, phase) of an open-loop bursty trace: Poisson arrivals, light and
    burst phases alternating, at most ``n`` requests and ``seconds``."""
    rng = random.Random(seed)
    out, t, phase_end, phase = [], 0.0, light_s, "light"
    while len(out) < n:
        t += rng.expovariate(light_rps if phase == "light" else burst_rps)
        while t >= phase_end:
            phase = "burst" if phase == "light" else "light"
            phase_end += burst_s if phase == "burst" else light_s
        if t >= seconds:
            break
        out.append((t, rng.randint(1, tasks), phase))
    return out


def images(tasks: int, sizes: list[tuple[int, int]]) -> dict[int, str]:
    """A base64 PNG per task (random grey pixels at its native size)."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    out = {}
    for j in range(1, tasks + 1):
        h, w = sizes[j - 1]
        buf = io.BytesIO()
        Image.fromarray(torch.randint(0, 256, (h, w), dtype=torch.uint8, generator=g).numpy(),
                        "L").save(buf, "PNG")
        out[j] = base64.b64encode(buf.getvalue()).decode()
    return out


def _bodies(payloads: dict[int, str], deadline_ms: float, level) -> dict[int, bytes]:
    """The request body of each task, serialised once."""
    bodies = {}
    for task, image in payloads.items():
        body = {"task": task, "image": image, "deadline_ms": deadline_ms}
        if level is not None:
            body["level"] = level
        bodies[task] = json.dumps(body).encode()
    return bodies


def _answered(rec: dict, status: int, body: bytes) -> None:
    """Fills a record from an answer: its status, and the server's figures when it is 200."""
    rec["status"] = status
    if status == 200:
        a = json.loads(body)
        rec.update(level=a["level"], server_ms=a["latency_ms"], batch=a["batch"],
                   queued_ms=a["queued_ms"], server_met=a.get("deadline_met"))


async def replay(url: str, events, payloads: dict[int, str], deadline_ms: float,
                 level, timeout_s: float) -> list[dict]:
    """Sends every event at its time (open loop); each record: phase, task, status, level, e2e ms.
    The client is ``bench.http_client`` (keep-alive HTTP/1.1, bodies serialised once per
    task): on this shared machine the load generator's own CPU is part of what is measured."""
    from bench.http_client import Client, HTTPError
    bodies = _bodies(payloads, deadline_ms, level)
    records: list[dict] = []
    client = Client(url, max_connections=512)
    start = time.perf_counter()

    async def one(t, task, phase):
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        rec = {"phase": phase, "task": task, "status": None, "level": None}
        try:
            _answered(rec, *await client.post("/v1/predict", bodies[task], timeout_s))
        except (HTTPError, OSError, asyncio.TimeoutError) as e:
            rec["status"] = type(e).__name__
        rec["e2e_ms"] = (time.perf_counter() - sent) * 1e3
        records.append(rec)

    tasks = [asyncio.create_task(one(*e)) for e in events]
    done, pending = await asyncio.wait(tasks, timeout=events[-1][0] + timeout_s + 5)
    for p in pending:
        p.cancel()
    await client.close()
    return records


async def alone(url: str, n: int, payloads: dict[int, str], deadline_ms: float, level,
                mean_gap_s: float, timeout_s: float, seed: int = 1) -> list[dict]:
    """``n`` requests one at a time (each sent after the previous answer and a random pause of
    mean ``mean_gap_s``), tasks alternating: what the server adds to a request that finds it
    idle, with no other request's batch to wait for. Records as ``replay``'s."""
    from bench.http_client import Client
    rng = random.Random(seed)
    bodies = _bodies(payloads, deadline_ms, level)
    client = Client(url, max_connections=1)
    records = []
    try:
        for i in range(n):
            task = 1 + i % len(payloads)
            await asyncio.sleep(rng.expovariate(1 / mean_gap_s))
            sent = time.perf_counter()
            answer = await client.post("/v1/predict", bodies[task], timeout_s)
            rec = {"phase": "alone", "task": task, "status": None, "level": None,
                   "e2e_ms": (time.perf_counter() - sent) * 1e3}
            _answered(rec, *answer)
            records.append(rec)
    finally:
        await client.close()
    return records


def summarize(records: list[dict], deadline_ms: float, acc: dict, b1: dict, span_s: float,
              top: int) -> dict:
    ok = [r for r in records if r["status"] == 200]
    met = [r for r in ok if r["e2e_ms"] <= deadline_ms]
    out = {"requests": len(records), "answered": len(ok),
           "rejected_503": sum(r["status"] == 503 for r in records),
           "errors": sum(r["status"] not in (200, 503) for r in records),
           "attainment": len(met) / max(1, len(records)),
           # the server's view: its handler's arrival to the answer (no client, no socket queue)
           "attainment_server": sum(bool(r.get("server_met")) for r in ok) / max(1, len(records)),
           "throughput_rps": len(ok) / span_s if span_s > 0 else None,
           "levels": {str(lv): sum(r["level"] == lv for r in ok) for lv in range(1, top + 1)}}
    if ok and acc:
        out["mean_accuracy"] = statistics.fmean(acc[(r["task"], r["level"])] for r in ok)
    if ok:
        e2e = [r["e2e_ms"] for r in ok]
        out["p50_ms"], out["p99_ms"] = quantile(e2e, .5), quantile(e2e, .99)
        added = [r["e2e_ms"] - b1[(r["task"], r["level"])] for r in ok if r.get("batch") == 1]
        if added:
            out["p99_added_ms_batch1"] = quantile(added, .99)
            out["p50_added_ms_batch1"] = quantile(added, .5)
            # the server's own part: its handler's arrival to the answer, minus the profile
            inside = [r["server_ms"] - b1[(r["task"], r["level"])] for r in ok
                      if r.get("batch") == 1]
            out["p99_server_added_ms_batch1"] = quantile(inside, .99)
            out["p50_server_added_ms_batch1"] = quantile(inside, .5)
        out["mean_batch"] = statistics.fmean(r["batch"] for r in ok)
    return out


def start_server(unit: str, extra: list[str], max_batch: int, max_queue: int, margin_ms: float):
    from tests.serve_helpers import ServerProcess
    return ServerProcess([unit, "--max-batch", str(max_batch), "--max-queue", str(max_queue),
                          "--threads", "1", "--margin-ms", str(margin_ms), *extra], timeout=300)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a run folder or unit file (default: the stand-in)")
    p.add_argument("--stand-in", default="small", choices=["small", "full"],
                   help="without --run: fmnist-joint's architecture at this preset (small: "
                   "WRN-14-2, whose accuracy results/ holds; full: WRN-14-4, 4x the compute, "
                   "no measured accuracy)")
    p.add_argument("--results", help="results.json with each level's accuracy (default: the "
                   "run's, else the committed fmnist-joint small-preset results)")
    p.add_argument("--requests", type=int, default=4000, help="most requests per mode")
    p.add_argument("--seconds", type=float, default=20.0, help="longest trace per mode")
    p.add_argument("--light-rps", type=float, default=40.0)
    p.add_argument("--burst-rps", type=float, default=400.0)
    p.add_argument("--light-s", type=float, default=3.0)
    p.add_argument("--burst-s", type=float, default=2.0)
    p.add_argument("--deadline-ms", type=float, default=50.0)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--margin-ms", type=float, default=1.0, help="the server's --margin-ms")
    p.add_argument("--alone", type=int, default=200, help="after each mode's trace, this many "
                   "requests one at a time (the server idle when each arrives; mean pause "
                   "1/light-rps): the latency the server adds without queueing (0: skip)")
    p.add_argument("--server-args", default="", help="more options for dvn serve, one "
                   "string (e.g. --server-args=\"--runtime onnxruntime\")")
    p.add_argument("--modes", nargs="+", default=["deadline", "top", "level1", "separate"])
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from bench.conv import machine_name
    import dvn.deploy as dd

    with tempfile.TemporaryDirectory() as folder:
        unit = dd.runs.unit_file(a.run) if a.run else stand_in(folder, a.stand_in)
        results = a.results or (os.path.join(a.run, "results.json") if a.run and os.path.isfile(
            os.path.join(a.run, "results.json")) else RESULTS if a.stand_in == "small" and
            not a.run else "")
        acc = accuracies(results) if os.path.isfile(results) else {}
        with dd.UnitFile(unit) as f:
            specs = f.tasks
            configs = sorted(f.skeleton.networks.configs())
        ntasks, top = len(specs), max(lv for _, lv in configs)
        payloads = images(ntasks, [t.native_size for t in specs])
        events = trace(a.requests, a.seconds, a.light_rps, a.burst_rps, a.light_s, a.burst_s,
                       ntasks)
        span = events[-1][0]
        rows, servers = [], {}
        for mode in a.modes:
            kind = "separate" if mode == "separate" else "shared"
            if kind not in servers:
                for s in servers.values():
                    s.stop()
                extra = (["--separate-models"] if kind == "separate" else []) + \
                    a.server_args.split()
                servers = {kind: start_server(unit, extra, a.max_batch, a.max_queue,
                                              a.margin_ms)}
            server = servers[kind]
            import httpx
            models = httpx.get(server.url + "/v1/models", timeout=30).json()
            b1 = {(t["task"], lv["level"]): lv["latency_ms_b1"] for t in models["tasks"]
                  for lv in t["levels"]}
            level = {"top": top, "level1": 1}.get(mode)
            print(f"# {mode}: {len(events)} requests over {span:.1f} s", file=sys.stderr)
            records = asyncio.run(replay(server.url, events, payloads, a.deadline_ms, level,
                                         timeout_s=10.0))
            if a.alone:
                single = asyncio.run(alone(server.url, a.alone, payloads, a.deadline_ms, level,
                                           1 / a.light_rps, timeout_s=10.0))
            mem = rss_kb(server.proc.pid)
            row = {"mode": mode, "server": kind, "held_mb": models["held"]["memory_mb"],
                   "rss_mb": mem["VmRSS"] / 1e3, "peak_rss_mb": mem["VmHWM"] / 1e3,
                   "profile_ms_b1": {f"{t}:{lv}": v for (t, lv), v in b1.items()},
                   "all": summarize(records, a.deadline_ms, acc, b1, span, top)}
            for phase in ("light", "burst"):
                part = [r for r in records if r["phase"] == phase]
                phase_s = sum(a.light_s if phase == "light" else a.burst_s for _ in [0]) * \
                    (span / (a.light_s + a.burst_s))
                row[phase] = summarize(part, a.deadline_ms, acc, b1, phase_s, top)
            if a.alone:
                row["alone"] = summarize(single, a.deadline_ms, acc, b1, 0.0, top)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("mode", "rss_mb", "held_mb")} |
                             {"all": row["all"]}), file=sys.stderr)
        for s in servers.values():
            s.stop()
        top_bytes = sum(os.path.getsize(unit) for _ in [0])
    meta = {"machine": f"{machine_name()} ({os.cpu_count()} cores, shared)",
            "command": "python -m bench.serve " + " ".join(argv if argv is not None
                                                            else sys.argv[1:]),
            "torch": torch.__version__, "model": a.run or f"fmnist-joint {a.stand_in} stand-in "
            "(random weights)",
            "accuracy_from": os.path.relpath(results, ROOT) if acc else None,
            "trace": {"requests": len(events), "seconds": span, "light_rps": a.light_rps,
                      "burst_rps": a.burst_rps, "light_s": a.light_s, "burst_s": a.burst_s,
                      "deadline_ms": a.deadline_ms},
            "alone": a.alone, "server_args": a.server_args, "max_batch": a.max_batch,
            "margin_ms": a.margin_ms, "unit_file_bytes": top_bytes,
            "load_average": os.getloadavg()}
    print(markdown(meta, rows))
    if a.json:
        write_results(a.json, meta, rows)
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _added(part: dict) -> str:
    """p50 / p99 added ms at batch 1, end to end and in the server, of a summary."""
    if part.get("p99_added_ms_batch1") is None:
        return "-"
    return (f"{part['p50_added_ms_batch1']:.1f} / {part['p99_added_ms_batch1']:.1f}, "
            f"{part['p50_server_added_ms_batch1']:.1f} / "
            f"{part['p99_server_added_ms_batch1']:.1f}")


def markdown(meta: dict, rows: list[dict]) -> str:
    t = meta["trace"]
    lines = [f"{meta['machine']}, torch {meta['torch']}: {t['requests']} requests over "
             f"{t['seconds']:.1f} s, light {t['light_rps']:g}/s for {t['light_s']:g} s and "
             f"bursts {t['burst_rps']:g}/s for {t['burst_s']:g} s, deadline {t['deadline_ms']:g} "
             f"ms; {meta['model']}; accuracy from {meta['accuracy_from']}.", "",
             "| mode | attainment (all / light / burst) | in the server (all) | mean accuracy (all / light / burst) | "
             "throughput /s | mean batch | levels | added ms at batch 1, light: p50 / p99 "
             "end to end, p50 / p99 in the server | same, one request at a time | "
             "RSS MB (peak) | weights held MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda key, d=2: " / ".join("-" if r[p].get(key) is None else   # noqa: E731
                                        f"{r[p][key] * (100 if key == 'attainment' else 1):.{d}f}"
                                        for p in ("all", "light", "burst"))
        lines.append(f"| {r['mode']} | {f('attainment', 1)} % | "
                     f"{_pct(r['all'].get('attainment_server'))} | {f('mean_accuracy')} | "
                     f"{r['all']['throughput_rps']:.0f} | {r['all'].get('mean_batch', 0):.1f} | "
                     f"{r['all']['levels']} | {_added(r['light'])} | "
                     f"{_added(r.get('alone', {}))} | "
                     f"{r['rss_mb']:.0f} ({r['peak_rss_mb']:.0f}) | {r['held_mb']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
