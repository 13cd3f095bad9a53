"""The GPU check and its benchmark run on a CPU machine (so they cannot rot unseen)."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import dvn_kernels
from bench import gpu, gpu_summary

ROOT = Path(__file__).resolve().parents[1]


def test_rows_come_most_important_first():
    """Levels 1 and 4 of every pass in both settings first, stage by stage (a run cut short
    after any stage has every (setting, pass) of it), then levels 2 and 3 likewise."""
    cases = gpu.all_cases()
    assert {c.net for c in cases} == {"wrn-32-4", "resnet-42", "mobilenet-v2", "resnext-50"}
    assert {c.level for c in cases} == {1, 2, 3, 4}
    assert {(c.name, c.groups, c.stride) for c in cases if c.groups > 1} == {
        ("dw1", 144, 1), ("dw2", 144, 2), ("dw3", 384, 1), ("g1", 32, 1), ("g2", 32, 1)}
    settings, modes = list(gpu.SETTINGS), list(gpu.MODES)
    rows = gpu.ordered_rows(cases, settings, modes)
    assert len(rows) == len(cases) * len(settings) * len(modes)
    per_stage = 2 * len(settings) * len(modes)  # levels 1 and 4
    ends = rows[: len(gpu.STAGES) * per_stage]
    assert {case.level for case, _, _ in ends} == {1, 4}
    assert {case.level for case, _, _ in rows[len(ends):]} == {2, 3}
    for i, (net, name, *_) in enumerate(gpu.STAGES):
        stage = ends[i * per_stage:(i + 1) * per_stage]
        assert {(c.net, c.name) for c, _, _ in stage} == {(net, name)}
        assert {(c.level, s, m) for c, s, m in stage} == {
            (lv, s, m) for lv in (1, 4) for s in settings for m in modes}
    assert rows[0][0].level == 1 and rows[0][2] == "fwd+bwd"


def test_precompile_follows_the_rows():
    """The precompile's jobs come in the rows' order (one fwd+bwd per case and setting)."""
    rows = gpu.ordered_rows(gpu.all_cases(), list(gpu.SETTINGS), list(gpu.MODES))
    jobs = list(dict.fromkeys((c, s, "fwd+bwd") for c, s, _ in rows))
    assert jobs[0][0].level == 1 and jobs[1][0].level == 1 and jobs[2][0].level == 4
    assert len(jobs) == len(gpu.all_cases()) * len(gpu.SETTINGS)


@pytest.mark.parametrize("stage", gpu.TINY, ids=lambda s: s[1])
@pytest.mark.parametrize("mode", gpu.MODES)
def test_every_candidate_runs_exactly_its_pass(mode, stage):
    """On tiny CPU cases (dense, depthwise stride 2, grouped): every candidate's result for the
    pass equals compact cuDNN's (the kernels' backward called with the pass's output mask
    only; compact is a grouped conv of the active groups)."""
    case = gpu.all_cases(levels=[2], stages=[stage])[0]
    o = gpu.operands(case, "tf32-nchw", torch.device("cpu"))
    kernels = [k for k in gpu.KERNELS if k in dvn_kernels.available_backends("cpu")]
    fns = gpu.candidates(o, kernels, mode)
    assert set(fns) == set(kernels) | set(gpu.BASELINES) | {gpu.AUTO}
    want = fns["compact"]()
    for name, fn in fns.items():
        got = fn()
        n = 3 if mode == "fwd+bwd" else 1
        assert len(got) == n if isinstance(got, tuple) else n == 1, name
        assert gpu.relative_error(got, want, o) < 1e-5, name


def test_measure_row_and_table_on_cpu():
    case = gpu.all_cases(levels=[1], stages=gpu.TINY)[0]
    kernels = [k for k in gpu.KERNELS if k in dvn_kernels.available_backends("cpu")]
    row = gpu.measure_row(case, "tf32-nchw", "wgrad", kernels, torch.device("cpu"), rep_ms=1)
    for key in ("ms", "graph_ms", "host_us", "tflops", "error"):
        assert set(row[key]) == set(kernels) | set(gpu.BASELINES) | {gpu.AUTO}, key
    assert all(v is None for v in row["graph_ms"].values())  # no CUDA graphs on a CPU
    assert max(row["error"].values()) < 1e-5
    columns = ["triton", "cuda"]
    assert gpu.format_row(row, columns).count("|") == gpu.header(columns).splitlines()[0].count("|")
    synthetic = dict(row, setting="bf16-cl", mode="fwd+bwd", level=1, error={"triton": 0.1},
                     ratios={"compact/triton": 2.0, "slice/triton": 3.0, "masked/triton": 4.0})
    text = gpu.summary([synthetic], "triton")
    assert "fwd+bwd >= 1.1x slice + cuDNN, levels 1..3: 3.00x over 1 rows" in text
    assert "rows over the error bound: 1 of 1" in text
    assert {"compact/auto", "slice/auto", "masked/auto"} <= set(row["ratios"])


def test_summary_of_phases_and_ratios(tmp_path):
    """bench.gpu_summary: the phase table and, per setting and pass, worst / median ratios of
    triton, cuda and auto, and auto against reference (slice + cuDNN)."""
    phases = tmp_path / "phases.tsv"
    phases.write_text("build\tfailed (rc 1)\t12\t90\t\ntests\tok\t40\t50\t9 passed\n")

    def row(level, mode, auto):
        return {"net": "wrn-32-4", "name": "s1", "level": level, "units": 4, "mode": mode,
                "setting": "bf16-cl", "error": {"auto": 1e-3},
                "ratios": {"compact/triton": 0.8 + level / 10, "slice/auto": auto,
                           "masked/triton": 12.0, "compact/auto": 1.0}}
    doc = {"meta": {"rows_planned": 10, "complete": False, "gpu": "NVIDIA H200"},
           "rows": [row(1, "fwd+bwd", 0.9), row(4, "fwd+bwd", 1.0), row(1, "wgrad", 1.2)]}
    path = tmp_path / "gpu-nvidia-h200.json"
    path.write_text(json.dumps(doc))
    text = gpu_summary.render(str(phases), str(path), 540, 500)
    assert "| build | failed (rc 1) | 12 | 90 |  |" in text
    assert "benchmark: 3 of 10 rows" in text
    assert "| bf16-cl | fwd+bwd | 2 | 1,4 | 0.90 / 1.05 | - | 1.00 / 1.00 | 0.90 / 0.95 |" in text
    assert "level-1 fwd+bwd over masked (>= 10x): triton 12.00 / 12.00" in text
    assert "worst 0.90x at wrn-32-4 s1 level 1 bf16-cl fwd+bwd; 1 of 3 rows under 0.95" in text
    assert len(text) < 12000
    assert "no results" in gpu_summary.render(str(phases), None, 540, 1)


def test_result_file_names():
    assert gpu.result_tag("NVIDIA H200") == "gpu-nvidia-h200"
    assert gpu.result_tag("cpu-dry-run") == "dry-run"


@pytest.mark.host
def test_gpu_check_dry_run(tmp_path):
    """scripts/gpu-check --dry-run with this interpreter: every phase of the GPU call on this
    CPU machine in under a minute; what lands in $OUT is what a device call brings back (<= 8 files: the results,
    the summary, one archive of the logs), the summary printed last, the schedule checked."""
    env = dict(os.environ, OUT=str(tmp_path), DVN_PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        log = tar.extractfile("./phases.log").read().decode()
        gpu_txt = tar.extractfile("./gpu.txt").read().decode()
        assert {"./tests.log", "./compile-tests.log", "./bench.log"} <= set(tar.getnames())
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-2000:]}\n{log}"
    for phase in ("schedule: ok", "probe: done", "build: skipped", "tests: rc=0",
                  "compile-tests: rc=0", "precompile: rc=0", "host: rc=0", "bench: rc=0",
                  "latency: rc=0",
                  "models: rc=0", "models-reference: rc=0", "memcheck: skipped",
                  "done: tests rc=0"):
        assert phase in log, f"{phase!r} not in\n{log}"
    assert sorted(os.listdir(tmp_path)) == ["dry-run.json", "host-dry-run.json", "logs.tar.gz",
                                            "models-dry-run.json",
                                            "models-reference-dry-run.json",
                                            "overhead-dry-run.json", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text()
    assert r.stdout.rstrip().endswith(summary.rstrip())
    assert "| files | ok |" in summary and "| tf32-nchw | wgrad |" in summary
    rows = json.loads((tmp_path / "dry-run.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == set(gpu.MODES) and all(r["error"] for r in rows)
    assert all("slice/auto" in r["ratios"] for r in rows)
    assert gpu_txt.startswith("dry run: no GPU")
    assert json.loads((tmp_path / "overhead-dry-run.json").read_text())["rows"]["latency"]
    assert json.loads((tmp_path / "host-dry-run.json").read_text())["rows"]


@pytest.mark.host
def test_gpu_check_skips_phases(tmp_path):
    """DVN_GPU_CHECK_SKIP: the phases named are recorded as skipped and run nothing (no result
    file of theirs); the benchmark gets their reserved time; the run still succeeds."""
    env = dict(os.environ, OUT=str(tmp_path), DVN_PYTHON=sys.executable,
               DVN_GPU_CHECK_SKIP="tests host models models-reference")
    r = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    for phase in ("tests", "host", "models", "models-reference"):
        assert f"{phase}: skipped (DVN_GPU_CHECK_SKIP)" in r.stdout
        assert f"| {phase} | skipped | 0 |" in r.stdout
    assert "compile-tests: rc=0" in r.stdout and "latency: rc=0" in r.stdout
    files = set(os.listdir(tmp_path))
    assert "dry-run.json" in files and "overhead-dry-run.json" in files
    assert not files & {"host-dry-run.json", "models-dry-run.json",
                        "models-reference-dry-run.json"}
    cap = int(next(line.split("cap ")[1].split(" s")[0] for line in r.stdout.splitlines()
                   if "bench: start" in line))
    # Without skipping, the benchmark keeps at most 540 s less the later phases' reserve
    # (latency 30, models 45 and 20, 3 kills of 3 s, wrap-up 10) and a kill's 3 s: 423 s.
    # Skipping both models phases gives it their 65 s (the dry run's first phases take ~15 s).
    assert cap > 540 - (30 + 45 + 20 + 9 + 10) - 3
