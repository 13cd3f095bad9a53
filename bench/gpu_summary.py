"""The GPU check's closing summary: each phase's status and time, and the kernel benchmark's
key ratios (read from its JSON). No torch import: it runs in a fraction of a second, after
every phase of ``scripts/gpu-check``, and prints last (a device call returns only the end of
its output).

    python -m bench.gpu_summary --phases phases.tsv --bench gpu-nvidia-h200.json --total 540

Ratios are baseline time / candidate time, as in ``bench.gpu`` (> 1: the candidate is
faster): ``compact/x`` is cuDNN on compact tensors over candidate x (target >= 0.9 for every
pass), ``masked/x`` the speedup over the masked dense conv (level 1 fwd+bwd: target >= 10),
``slice/auto`` the public op with ``backend="auto"`` against slice + cuDNN, i.e. the
``reference`` backend (target >= 0.95 on every row).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Iterable

CANDIDATES = ("triton", "cuda", "auto")
MODES = ("fwd+bwd", "fwd", "dgrad", "wgrad")
# Relative error bounds against compact cuDNN, by setting (bench.gpu's too).
ERROR_BOUND = {"bf16-cl": 2e-2, "tf32-nchw": 5e-3}


def read_phases(path: str) -> list[list[str]]:
    """Rows of the phases file: name, status, seconds, cap, note (tab-separated)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(line.rstrip("\n").split("\t") + [""] * 5)[:5] for line in f if line.strip()]


def phase_table(phases: list[list[str]]) -> list[str]:
    lines = ["| phase | status | s | cap s | note |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(p) + " |" for p in phases]
    return lines


def _worst_median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def _ratios(rows: Iterable[dict], key: str) -> list[float]:
    return [r["ratios"][key] for r in rows if key in r.get("ratios", {})]


def bench_tables(doc: dict) -> list[str]:
    """The benchmark's key ratios per setting and pass, then its targets, as text lines."""
    meta, rows = doc.get("meta", {}), doc.get("rows", [])
    lines = [f"benchmark: {len(rows)} of {meta.get('rows_planned', '?')} rows in "
             f"{meta.get('seconds', '?')} s (complete: {meta.get('complete')}); "
             f"{meta.get('gpu', '?')}, torch {meta.get('torch', '?')}, "
             f"triton {meta.get('triton', '?')}"]
    for name, why in meta.get("skipped", {}).items():
        lines.append(f"  {name}: skipped ({why})")
    if not rows:
        return lines
    lines += ["", "worst / median over rows (baseline time / candidate time; > 1: faster)",
              "| setting | pass | rows | levels | compact/triton | compact/cuda | compact/auto "
              "| slice/auto |", "|---|---|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for setting in settings:
        for mode in MODES:
            sel = [r for r in rows if r["setting"] == setting and r["mode"] == mode]
            if not sel:
                continue
            levels = ",".join(str(v) for v in sorted({r["level"] for r in sel}))
            cells = [_worst_median(_ratios(sel, f"compact/{c}")) for c in CANDIDATES]
            cells.append(_worst_median(_ratios(sel, "slice/auto")))
            lines.append(f"| {setting} | {mode} | {len(sel)} | {levels} | " + " | ".join(cells)
                         + " |")
    lines += ["", "targets (worst row):"]
    for setting in settings:
        sel = [r for r in rows if r["setting"] == setting]
        level1 = [r for r in sel if r["mode"] == "fwd+bwd" and r["level"] == 1]
        low = [r for r in sel if r["mode"] == "fwd+bwd" and r["level"] < r.get("units", 4)]
        lines.append(f"  {setting}: level-1 fwd+bwd over masked (>= 10x): " + ", ".join(
            f"{c} {_worst_median(_ratios(level1, f'masked/{c}'))}" for c in CANDIDATES))
        lines.append(f"  {setting}: fwd+bwd over slice + cuDNN, levels 1..3 (>= 1.1x): "
                     + ", ".join(f"{c} {_worst_median(_ratios(low, f'slice/{c}'))}"
                                 for c in CANDIDATES))
    lines.append("  " + auto_line(rows))
    bad = {c: sum(1 for r in rows if r["error"].get(c, 0) > ERROR_BOUND.get(r["setting"], 1e-2))
           for c in CANDIDATES}
    lines.append("  rows over the error bound: " + ", ".join(f"{c} {n}" for c, n in bad.items()))
    return lines


def auto_line(rows: list[dict]) -> str:
    """auto against reference (slice + cuDNN): the worst row and how many miss 0.95x."""
    vals = [(r["ratios"]["slice/auto"], r) for r in rows if "slice/auto" in r.get("ratios", {})]
    if not vals:
        return "auto vs reference (slice/auto >= 0.95 on every row): no rows"
    worst, r = min(vals, key=lambda v: v[0])
    slow = sum(1 for v, _ in vals if v < 0.95)
    return (f"auto vs reference (slice/auto >= 0.95 on every row): worst {worst:.2f}x at "
            f"{r['net']} {r['name']} level {r['level']} {r['setting']} {r['mode']}; "
            f"{slow} of {len(vals)} rows under 0.95")


def render(phases_path: str, bench_path: str | None, total_s: int, elapsed_s: int) -> str:
    lines = [f"== gpu-check summary: {elapsed_s} s of {total_s} ==",
             *phase_table(read_phases(phases_path)), ""]
    if bench_path and os.path.exists(bench_path):
        try:
            with open(bench_path) as f:
                lines += bench_tables(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            lines.append(f"benchmark: unreadable {bench_path}: {type(e).__name__}: {e}")
    else:
        lines.append(f"benchmark: no results ({bench_path})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phases", required=True, help="the phases file (tab-separated)")
    p.add_argument("--bench", default=None, help="bench.gpu's JSON")
    p.add_argument("--total", type=int, default=540)
    p.add_argument("--elapsed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the summary to this file")
    args = p.parse_args(argv)
    text = render(args.phases, args.bench, args.total, args.elapsed)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
