"""What an idle gap before a request costs ``dvn serve`` (issue 21's added latency at light load).

    python -m bench.serve_idle --json bench/results/serve-idle-<machine>.json

Two measurements on the small stand-in of ``bench.serve`` (WRN-14-2, k = 2), one torch thread:

* the server (``dvn serve`` in a child process on 127.0.0.1): requests of task 1, one at a
  time, each sent ``gap`` ms after the previous answer. From each answer: ``latency_ms``
  (handler arrival to the batch's end), ``queued_ms`` (arrival to the batch's start: body,
  parsing, the hand-off to the batcher) and their difference, the batch's run (stack, forward,
  softmax). The level's profiled batch-1 latency (``GET /v1/models``, measured back to back
  at start-up) is the baseline "added" latency is counted from.
* the forward alone in this process, after the same gaps spent five ways: sleeping, spinning
  with ``time.sleep(0)`` (GIL released), spinning hot, reading every weight the deployment
  holds every 2 ms, and running level 1's forward every 5 ms. A core gone to sleep would be
  helped by spinning; weights gone from the caches, by reading them; the code path gone cold
  (instructions, branch predictors, the host side of each op), only by running it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request

import torch

from .serve import images, stand_in
from .timing import cpu_meta, quantile, write_results


def server_rows(path: str, gaps_ms: list[float], requests: int) -> tuple[float, list[dict]]:
    """(the top level's profiled batch-1 ms, one row per gap) from a served unit file."""
    from tests.serve_helpers import ServerProcess
    server = ServerProcess([path, "--threads", "1", "--max-batch", "16"], timeout=300)
    try:
        with urllib.request.urlopen(server.url + "/v1/models") as r:
            models = json.loads(r.read())
        task1 = next(t for t in models["tasks"] if t["task"] == 1)
        top = max(task1["levels"], key=lambda lv: lv["level"])
        body = json.dumps({"task": 1, "image": images(2, [(28, 28), (8, 8)])[1]}).encode()
        rows = []
        for gap in gaps_ms:
            got = []
            for _ in range(requests + 5):
                req = urllib.request.Request(server.url + "/v1/predict", body,
                                             {"content-type": "application/json"})
                with urllib.request.urlopen(req) as r:
                    answer = json.loads(r.read())
                got.append((answer["latency_ms"], answer["queued_ms"], answer["level"]))
                time.sleep(gap / 1e3)
            got = got[5:]  # the first answers after a gap change
            assert all(level == top["level"] for *_, level in got)
            server_ms = [a for a, *_ in got]
            queued = [q for _, q, _ in got]
            run = [a - q for a, q, _ in got]
            rows.append({"gap_ms": gap, "requests": len(got),
                         "server_ms": {"p50": quantile(server_ms, .5),
                                       "p99": quantile(server_ms, .99)},
                         "queued_ms": {"p50": quantile(queued, .5),
                                       "p99": quantile(queued, .99)},
                         "run_ms": {"p50": quantile(run, .5), "p99": quantile(run, .99)},
                         "added_ms_in_server": {
                             "p50": quantile(server_ms, .5) - top["latency_ms_b1"],
                             "p99": quantile(server_ms, .99) - top["latency_ms_b1"]}})
        return top["latency_ms_b1"], rows
    finally:
        server.stop()


def forward_rows(path: str, gaps_ms: list[float], calls: int) -> list[dict]:
    """The top level's forward in this process after each gap, spent sleeping or spinning."""
    from dvn.deploy.deployment import Deployment
    from dvn.deploy.unitfile import UnitFile
    file = UnitFile(path)
    configs = sorted(file.skeleton.networks.configs())
    dep = Deployment(file, configs)
    top = max(level for task, level in configs if task == 1)
    x = torch.randn(1, 1, 28, 28)

    def forward() -> None:
        with torch.no_grad():
            dep(x, 1, top)

    def spin(seconds: float, hot: bool) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if not hot:
                time.sleep(0)

    held = [t for group in dep.tensors() for t in group]
    x1 = torch.randn(1, 1, 28, 28)

    def busy(seconds: float, work, every_s: float) -> None:
        """``work`` now and every ``every_s`` until ``seconds`` have passed, sleeping between."""
        end = time.perf_counter() + seconds
        while True:
            work()
            left = end - time.perf_counter()
            if left <= 0:
                return
            time.sleep(min(every_s, left))

    def touch() -> None:  # reads every weight and buffer the deployment holds
        for t in held:
            t.sum()

    def level1() -> None:
        with torch.no_grad():
            dep(x1, 1, 1)
    waits = {"sleep": time.sleep, "spin_sleep0": lambda s: spin(s, False),
             "spin_hot": lambda s: spin(s, True),
             "touch_weights_2ms": lambda s: busy(s, touch, 2e-3),
             "level1_forward_5ms": lambda s: busy(s, level1, 5e-3)}
    for _ in range(20):
        forward()
    rows = []
    try:
        for gap in gaps_ms:
            row = {"gap_ms": gap}
            for name, wait in waits.items():
                times = []
                for _ in range(calls + 3):
                    wait(gap / 1e3)
                    t0 = time.perf_counter()
                    forward()
                    times.append((time.perf_counter() - t0) * 1e3)
                row[name] = {"p50": quantile(times[3:], .5), "p90": quantile(times[3:], .9),
                             "p99": quantile(times[3:], .99)}
            rows.append(row)
    finally:
        dep.close()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaps-ms", type=float, nargs="+", default=[0, 2, 10, 50, 200])
    p.add_argument("--requests", type=int, default=100, help="answers per gap (server)")
    p.add_argument("--calls", type=int, default=50, help="forwards per gap and wait (alone)")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    if any(g < 0 for g in a.gaps_ms) or a.requests < 1 or a.calls < 1:
        p.error("--gaps-ms: not negative; --requests, --calls: positive")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="dvn-serve-idle-") as folder:
            path = stand_in(folder, "small")
            profiled, served = server_rows(path, a.gaps_ms, a.requests)
            alone = forward_rows(path, a.gaps_ms, a.calls)
    finally:
        torch.set_num_threads(threads)
    print(f"top level's profiled batch-1 latency: {profiled:.2f} ms")
    print("| gap ms | in the server p50 / p99 ms | queued p50 | run p50 / p99 | added in the "
          "server p50 / p99 | forward alone after the gap, p50: sleep / spin sleep(0) / "
          "spin hot / weights read every 2 ms / level 1 run every 5 ms |\n"
          "|---|---|---|---|---|---|")
    for s, f in zip(served, alone):
        print(f"| {s['gap_ms']:g} | {s['server_ms']['p50']:.2f} / {s['server_ms']['p99']:.2f} | "
              f"{s['queued_ms']['p50']:.2f} | {s['run_ms']['p50']:.2f} / "
              f"{s['run_ms']['p99']:.2f} | {s['added_ms_in_server']['p50']:.2f} / "
              f"{s['added_ms_in_server']['p99']:.2f} | {f['sleep']['p50']:.2f} / "
              f"{f['spin_sleep0']['p50']:.2f} / {f['spin_hot']['p50']:.2f} / "
              f"{f['touch_weights_2ms']['p50']:.2f} / {f['level1_forward_5ms']['p50']:.2f} |")
    if a.json:
        write_results(a.json, cpu_meta("bench.serve_idle", argv, profiled_b1_ms=profiled),
                      [{"server": s, "alone": f} for s, f in zip(served, alone)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
