"""The sm_90 compile report's limits, checked without a GPU (bench.compile_report).

Runs the report in a subprocess without TRITON_INTERPRET (the interpreter compiles nothing)
and fails on any spill, on shared memory over 227 KiB, on a Triton GEMM pass without wgmma
and on an aligned Triton variant without 16-byte global loads. Compiles are cached under
.cache/ so that reruns take seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
SHARED_LIMIT = 232448  # 227 KiB: Hopper's shared memory per block with the opt-in attribute
# TF32 wgmma reads only K-major shared tiles, and both operands of the grad weight (output x
# input channels, reduced over pixels) are channel-contiguous in global memory: Triton copies
# them element by element (4-byte cp.async) to transpose them. Known, to be fixed in the kernel.
TF32_TRANSPOSED = {("wgrad", "fp32")}


def _report(tmp_path_factory, part: str) -> dict:
    out = tmp_path_factory.mktemp(f"compile-report-{part}") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # One cache per Triton version: ptxas_log compares Triton's cubin with a rerun of its
    # ptxas, which a cubin cached by another Triton (the other CI stack) would fail.
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / (
        f"triton-{importlib.metadata.version('triton')}-compile-report")))
    r = subprocess.run([sys.executable, "-m", "bench.compile_report", "--parts", part,
                        "--json", str(out), "--cache-dir", str(ROOT / ".cache" / "compile-report")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def triton_rows(tmp_path_factory) -> list[dict]:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    return _report(tmp_path_factory, "triton")["triton"]


@pytest.fixture(scope="module")
def cuda_rows(tmp_path_factory) -> list[dict]:
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("nvcc not found: the CUDA kernels are not compiled here")
    return _report(tmp_path_factory, "cuda")["cuda"]


def _kernel(row: dict) -> str:
    """A CUDA kernel's name without its parameter list."""
    return row["name"].split(">(")[0] + ">"


def _ids(rows: list[dict]) -> list[str]:
    return [f"{r['name']} {r['dtype']}" for r in rows]


def test_triton_variants_compile_without_spills(triton_rows):
    assert not [(r["name"], r["dtype"], r["error"]) for r in triton_rows if r["error"]]
    assert len(triton_rows) == 18, _ids(triton_rows)
    spilled = [(f"{r['name']} {r['dtype']}", r["spill_stores"], r["spill_loads"])
               for r in triton_rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, f"spills (stores, loads in bytes): {spilled}"


def test_triton_shared_memory_within_limit(triton_rows):
    over = [(f"{r['name']} {r['dtype']}", r["shared"]) for r in triton_rows
            if r["shared"] > SHARED_LIMIT]
    assert not over, over


def test_triton_gemm_passes_use_wgmma(triton_rows):
    gemms = [r for r in triton_rows if r["gemm"]]
    assert {r["name"] for r in gemms} == {"fwd", "dgrad", "dgrad-strided", "wgrad",
                                         "fwd-grouped", "dgrad-grouped", "wgrad-grouped"}
    lost = [(f"{r['name']} {r['dtype']}", r["mma"]) for r in gemms if r["mma"] != "wgmma"]
    assert not lost, f"GEMM passes without wgmma on sm_90: {lost}"


def test_triton_aligned_variants_load_16_bytes(triton_rows):
    narrow = [(f"{r['name']} {r['dtype']}", r["loads_narrow"]) for r in triton_rows
              if r["wide_loads_expected"] and r["loads_16b"] + r["tma"] == 0
              and (r["name"], r["dtype"]) not in TF32_TRANSPOSED]
    assert not narrow, f"aligned channels but no 16-byte global loads (narrower ones): {narrow}"


@pytest.mark.xfail(strict=True, reason="TF32 grad weight: both operands are copied 4 bytes at a "
                   "time into K-major shared tiles (see TF32_TRANSPOSED); remove this mark when "
                   "the kernel loads them 16 bytes wide")
def test_triton_tf32_wgrad_loads_16_bytes(triton_rows):
    rows = [r for r in triton_rows if (r["name"], r["dtype"]) in TF32_TRANSPOSED]
    assert rows and all(r["loads_16b"] + r["tma"] > 0 for r in rows)


def test_cuda_kernels_do_not_spill(cuda_rows):
    assert any("conv_gemm_kernel" in r["name"] for r in cuda_rows)
    assert any("depthwise_wgrad_kernel" in r["name"] for r in cuda_rows)
    spilled = [(_kernel(r), r["registers"], r["spill_stores"], r["spill_loads"])
               for r in cuda_rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, f"spills (registers, stores, loads in bytes): {spilled}"


def test_cuda_shared_memory_within_limit(cuda_rows):
    over = [(_kernel(r), r["shared"]) for r in cuda_rows if r["shared"] > SHARED_LIMIT]
    assert not over, over
    assert all(r["shared"] > 0 for r in cuda_rows if "conv_gemm_kernel" in r["name"])
