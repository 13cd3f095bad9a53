"""Results files of an evaluation: JSON, a markdown table, and PNG plots (accuracy against
parameters per task, like the paper's Fig. 5; speedup per level)."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from dvn_kernels.files import write_text


def attach_baselines(result: dict, baselines: list[dict]) -> dict:
    """Adds, per (task, level) row, the accuracy of the independent network of the same size
    (``indep_same``) and of the full size (``indep_full``: same parameters as the top level),
    from the evaluations of independent runs of the same scenario."""
    top = result["units"]
    found: dict[tuple[int, int], dict] = {}
    for b in baselines:
        if b["scenario"] != result["scenario"] or b["units"] != result["units"]:
            raise ValueError(f"baseline: {b['run']} is a run of {b['scenario']} (k={b['units']}), "
                             f"not of {result['scenario']} (k={result['units']})")
        for row in b["rows"]:
            found[(row["task"], row["level"])] = dict(row, run=b["run"])
    for row in result["rows"]:
        same = found.get((row["task"], row["level"]))
        full = found.get((row["task"], top))
        row["indep_same"] = same["accuracy"] if same else None
        row["indep_same_parameters"] = same["parameters"] if same else None
        row["indep_full"] = full["accuracy"] if full else None
    result["baselines"] = [b["run"] for b in baselines]
    result["checks"] = checks(result)
    return result


def checks(result: dict) -> list[dict]:
    """The issue's accuracy targets, evaluated on this result where the baselines exist."""
    out = []
    rows = {(r["task"], r["level"]): r for r in result["rows"]}
    top, tasks = result["units"], sorted({r["task"] for r in result["rows"]})

    def add(what: str, value: Optional[float], limit: float) -> None:
        if value is not None:
            out.append({"check": what, "value": round(value, 2), "limit": limit,
                        "met": value >= limit})

    if result["independent"]:
        return out
    if result["kind"] == "sequential":
        old, new = tasks[:-1], tasks[-1]
        for j in old:  # against the old network at the same level where it has one
            for level in range(1, top + 1):
                r = rows.get((j, level))
                if r and r["indep_same"] is not None:
                    add(f"old task {j} level {level} - old network level {level}",
                        r["accuracy"] - r["indep_same"], -1.5)
                elif r and r["indep_full"] is not None:
                    add(f"old task {j} level {level} - old network",
                        r["accuracy"] - r["indep_full"], -1.5)
        r = rows.get((new, top))
        if r and r["indep_full"] is not None:
            add(f"new task {new} top level - independent network", r["accuracy"] - r["indep_full"],
                -1.0)
    else:
        for j in tasks:
            r = rows.get((j, top))
            if r and r["indep_full"] is not None:
                add(f"task {j} top level - independent network (same total parameters)",
                    r["accuracy"] - r["indep_full"], -0.5)
            if r and (j, 1) in rows:
                add(f"task {j} level 1 - top level", rows[(j, 1)]["accuracy"] - r["accuracy"],
                    -3.0)
    return out


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ms(r: dict, key: str, fmt: str) -> str:
    """A latency cell: the median, and its 25th-75th percentile range when measured."""
    iqr = r.get(f"{key}_iqr")
    cell = format(r[key], fmt)
    return cell if not iqr else f"{cell} ({format(iqr[0], fmt)}-{format(iqr[1], fmt)})"


def markdown(result: dict) -> str:
    """The per-(task, level) table plus the checks, as markdown."""
    b = result.get("latency_batch")
    lines = [f"### {result['scenario']} ({result['preset']} preset): {result['description']}",
             "",
             f"{result['epochs']} epochs in {result['train_seconds']:.0f} s of training, seed "
             f"{result['seed']}, backend `{result['backend']}`, {result['machine']}, "
             f"torch {result['torch']}. Run: `{result['run']}`.",
             ""]
    head = ["task", "level", "parameters", "density", "accuracy %", "indep. same size %",
            "indep. full size %"]
    if b:
        head += ["ms (b=1, median (p25-p75))", f"ms (b={b})", "speedup vs full (b=1 / b=%d)" % b,
                 "speedup vs masked twin (b=1 / b=%d)" % b]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [f"{r['task']} ({r['task_name']})", str(r["level"]), f"{r['parameters']:,}",
                 f"{100 * r['density']:.1f}%", f"{r['accuracy']:.2f}",
                 _f(r.get("indep_same"), ".2f"), _f(r.get("indep_full"), ".2f")]
        if b:
            cells += [_ms(r, "latency_ms_b1", ".2f"), _ms(r, f"latency_ms_b{b}", ".1f"),
                      f"{_f(r['speedup_vs_full_b1'], '.2f')} / "
                      f"{_f(r[f'speedup_vs_full_b{b}'], '.2f')}",
                      f"{r['speedup_vs_masked_b1']:.2f} / {r[f'speedup_vs_masked_b{b}']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("checks"):
        lines += ["", "Targets (accuracy points):", ""]
        for c in result["checks"]:
            lines.append(f"- {c['check']}: {c['value']:+.2f} (limit {c['limit']:+.1f}): "
                         f"{'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_dir: str) -> list[str]:
    """accuracy_vs_parameters.png (per task: DVN levels, independent networks) and, with
    latencies, speedup.png (per (task, level): vs the full level and vs the masked twin).
    Without matplotlib it says so and draws nothing: the JSON and markdown still hold it all."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed, so no plots (pip install matplotlib)",
              file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tasks = sorted({r["task"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, j in zip(axes[0], tasks):
        rows = sorted((r for r in result["rows"] if r["task"] == j), key=lambda r: r["level"])
        ax.plot([r["parameters"] / 1e6 for r in rows], [r["accuracy"] for r in rows], "o-",
                label="DVN levels")
        for r in rows:
            ax.annotate(f"L{r['level']}", (r["parameters"] / 1e6, r["accuracy"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=8)
        ind = [(r["indep_same_parameters"], r["indep_same"]) for r in rows
               if r.get("indep_same") is not None]
        if ind:
            ax.plot([p / 1e6 for p, _ in ind], [a for _, a in ind], "s", label="independent")
        ax.set_title(f"task {j}: {rows[0]['task_name']}")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['scenario']} ({result['backbone']}, k={result['units']})")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "accuracy_vs_parameters.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    b = result.get("latency_batch")
    if b:
        rows = result["rows"]
        labels = [f"t{r['task']} L{r['level']}" for r in rows]
        series = [("vs masked twin, b=1", "speedup_vs_masked_b1"),
                  (f"vs masked twin, b={b}", f"speedup_vs_masked_b{b}"),
                  ("vs full level, b=1", "speedup_vs_full_b1"),
                  (f"vs full level, b={b}", f"speedup_vs_full_b{b}")]
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.4))
        w = 0.8 / len(series)
        for i, (name, key) in enumerate(series):
            ax.bar([x + (i - 1.5) * w for x in range(len(rows))],
                   [r[key] or 0 for r in rows], w, label=name)
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), labels)
        ax.set_ylabel("speedup (x)")
        ax.set_title(f"{result['scenario']}: measured inference speedup per level "
                     f"({result['backend']})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "speedup.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write(result: dict, out_dir: str) -> dict:
    """Writes results.json, results.md and the plots into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"),
             "markdown": os.path.join(out_dir, "results.md")}
    write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    write_text(paths["markdown"], markdown(result))
    paths["plots"] = plot(result, out_dir)
    return paths
