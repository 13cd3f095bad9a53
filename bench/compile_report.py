"""Compile-time performance report for sm_90, without a GPU: every default Triton variant and
every CUDA kernel instantiation, with registers, spills, shared memory, wgmma and 16-byte loads.

    python -m bench.compile_report --json bench/results/compile-sm90.json \\
        --md bench/results/compile-sm90.md [--parts triton cuda]

Triton: dvn_kernels.triton.compile_check (Triton's own ptxas log, PTX load widths). CUDA:
bench.cuda_resources (nvcc -Xptxas -v per csrc/cuda/*.cu, SASS load widths). Run without
TRITON_INTERPRET. tests/test_compile_report.py checks the same figures against the limits.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

# Hopper's largest shared memory per block (227 KiB, with the opt-in attribute).
SHARED_LIMIT = 232448
ROOT = Path(__file__).resolve().parents[1]
COMMAND = ("python -m bench.compile_report --json bench/results/compile-sm90.json "
           "--md bench/results/compile-sm90.md")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def collect(parts: tuple[str, ...] = ("triton", "cuda"), arch: int = 90,
            cache_dir: Path | None = None) -> dict:
    """The report as one JSON-able dict: versions, the shared-memory limit and the records
    of each part asked for."""
    report: dict = {"arch": arch, "shared_limit": SHARED_LIMIT,
                    "versions": {"torch": _version("torch"), "triton": _version("triton")}}
    if "triton" in parts:
        from triton import knobs

        from dvn_kernels.triton import compile_check

        report["versions"]["triton_ptxas"] = knobs.nvidia.ptxas.version
        report["triton"] = [r.as_dict() for r in compile_check.check(arch)]
    if "cuda" in parts:
        from . import cuda_resources

        nvcc = cuda_resources.find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc not found (put it on PATH or set CUDA_HOME)")
        report["versions"]["nvcc"] = cuda_resources.nvcc_version(nvcc)
        report["nvcc_flags"] = cuda_resources.NVCC_FLAGS
        report["cuda"] = [r.as_dict() for r in cuda_resources.check(arch, cache_dir=cache_dir)]
    return report


def _short(name: str) -> str:
    """A CUDA kernel's demangled name without namespaces and parameter list."""
    name = name.split(">(")[0] + ">" if ">(" in name else name.split("(")[0]
    name = re.sub(r"\(dvn::cuda::Pass\)(\d)",
                  lambda m: ("fprop", "dgrad", "wgrad")[int(m.group(1))], name)
    return name.replace("dvn::cuda::detail::", "")


def _loads(r: dict) -> str:
    if r["loads_16b"] < 0:
        return "n/a"
    return f"{r['loads_16b'] + r.get('tma', 0)} / {r['loads_narrow']}"


def to_markdown(report: dict) -> str:
    """The report as Markdown tables with a summary and the command that made it."""
    v = report["versions"]
    lines = [f"# Compile report: sm_{report['arch']} (no GPU)", "",
             f"Made with `{COMMAND}` on a CPU machine (no GPU needed; run without "
             "TRITON_INTERPRET). Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
             "", f"Shared memory limit per block: {report['shared_limit']} B (227 KiB). "
             "Loads: static counts of global load instructions, 16-byte / narrower "
             "(Triton: PTX `ld.global.v4`, `cp.async ... 16`, TMA; CUDA: SASS `LDG/LDGSTS .128`).",
             ""]
    if "triton" in report:
        rows = report["triton"]
        ok = [r for r in rows if not r["error"]]
        lines += ["## Triton: default tile of every pass", "",
                  f"{len(rows)} variants; max registers {max(r['registers'] for r in ok)}, "
                  f"spills {sum(r['spill_stores'] + r['spill_loads'] for r in ok)} B in all, "
                  f"max shared memory {max(r['shared'] for r in ok)} B; wgmma in "
                  f"{sum(r['mma'] == 'wgmma' for r in ok)} of {sum(r['gemm'] for r in rows)} "
                  "GEMM passes.", "",
                  "| variant | dtype | tile | warps/stages | target | registers | spill st/ld B "
                  "| shared B | mma | 16-byte / narrower loads |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["error"]:
                lines.append(f"| {r['name']} | {r['dtype']} | {r['tile']} | | | FAILED: "
                             f"{r['error'][:80]} | | | | |")
                continue
            lines.append(f"| {r['name']} | {r['dtype']} | {r['tile'] or '-'} | "
                         f"{r['num_warps']}/{r['num_stages']} | {r['target']} | "
                         f"{r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                         f"{r['shared']} | {r['mma']} | {_loads(r)} |")
        lines.append("")
    if "cuda" in report:
        rows = report["cuda"]
        lines += ["## CUDA kernels: every instantiation (csrc/cuda)", "",
                  f"nvcc flags: `-arch=sm_{report['arch']} {' '.join(report['nvcc_flags'])}`. "
                  f"{len(rows)} kernels; max registers {max(r['registers'] for r in rows)}, "
                  f"spills {sum(r['spill_stores'] + r['spill_loads'] for r in rows)} B in all, "
                  f"max shared memory {max(r['shared'] for r in rows)} B. conv_gemm_kernel's "
                  "arguments: type, pass, tensor cores (WMMA; float: TF32), BLOCK_M.", "",
                  "| kernel | source | registers | spill st/ld B | stack B | shared B "
                  "| 16-byte / narrower loads |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{_short(r['name'])}` | {r['source']} | {r['registers']} | "
                         f"{r['spill_stores']}/{r['spill_loads']} | {r['stack_frame']} | "
                         f"{r['shared']} | {_loads(r)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--md", type=Path, help="write the report as Markdown here")
    p.add_argument("--parts", nargs="+", choices=("triton", "cuda"), default=["triton", "cuda"])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="keep the CUDA records here, keyed by a hash of the sources")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter does not compile")
    report = collect(tuple(args.parts), args.arch, args.cache_dir)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    if args.md:
        args.md.write_text(to_markdown(report))
    if not args.json and not args.md:
        print(to_markdown(report))
    failed = [r for r in report.get("triton", []) if r["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
