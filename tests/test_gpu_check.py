"""The GPU check and its benchmark run on a CPU machine (so they cannot rot unseen)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import dvn_kernels
from bench import gpu

ROOT = Path(__file__).resolve().parents[1]


def test_rows_come_most_important_first():
    cases = gpu.all_cases()
    assert {c.net for c in cases} == {"wrn-32-4", "resnet-42", "mobilenet-v2", "resnext-50"}
    assert {c.level for c in cases} == {1, 2, 3, 4}
    assert {(c.name, c.groups, c.stride) for c in cases if c.groups > 1} == {
        ("dw1", 144, 1), ("dw2", 144, 2), ("dw3", 384, 1), ("g1", 32, 1), ("g2", 32, 1)}
    stages = len(gpu.STAGES)
    rows = gpu.ordered_rows(cases, list(gpu.SETTINGS), list(gpu.MODES))
    assert len(rows) == len(cases) * len(gpu.SETTINGS) * len(gpu.MODES)
    first = rows[: 2 * stages * 3]  # fwd+bwd at levels 1..3: both settings, every stage
    assert all(mode == "fwd+bwd" and case.level <= 3 for case, _, mode in first)
    assert [c.level for c, _, m in first] == sorted(c.level for c, _, m in first)
    assert all(mode == "fwd+bwd" and case.level == 4 for case, _, mode in rows[-2 * stages:])


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
    assert set(fns) == set(kernels) | set(gpu.BASELINES)
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
        assert set(row[key]) == set(kernels) | set(gpu.BASELINES), key
    assert all(v is None for v in row["graph_ms"].values())  # no CUDA graphs on a CPU
    assert max(row["error"].values()) < 1e-5
    columns = ["triton", "cuda"]
    assert gpu.format_row(row, columns).count("|") == gpu.header(columns).splitlines()[0].count("|")
    synthetic = dict(row, setting="bf16-cl", mode="fwd+bwd", level=1, error={"triton": 0.1},
                     ratios={"compact/triton": 2.0, "slice/triton": 3.0, "masked/triton": 4.0})
    text = gpu.summary([synthetic], "triton")
    assert "fwd+bwd >= 1.1x slice + cuDNN, levels 1..3: 3.00x over 1 rows" in text
    assert "rows over the error bound: 1 of 1" in text


@pytest.mark.host
def test_gpu_check_dry_run(tmp_path):
    """scripts/gpu-check --dry-run: every phase of the GPU call on this CPU machine, results
    into $OUT, in a few minutes."""
    env = dict(os.environ, OUT=str(tmp_path), DVN_GPU_CHECK_S="420")
    r = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    log = (tmp_path / "phases.log").read_text()
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-2000:]}\n{log}"
    for phase in ("probe: done", "build: skipped", "tests: rc=0", "bench: rc=0",
                  "latency: rc=0", "models: rc=0", "memcheck: skipped", "done: tests rc=0"):
        assert phase in log, f"{phase!r} not in\n{log}"
    rows = json.loads((tmp_path / "cpu-dry-run.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == set(gpu.MODES) and all(r["error"] for r in rows)
    assert (tmp_path / "gpu.txt").read_text().startswith("dry run: no GPU")
    assert json.loads((tmp_path / "overhead-dry-run.json").read_text())["rows"]["latency"]
