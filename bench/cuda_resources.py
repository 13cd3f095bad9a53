"""Registers, spills, shared memory and load widths of every CUDA kernel for sm_90, no GPU.

Each csrc/cuda/*.cu is torch-free, so nvcc compiles it alone to a cubin in about a second
(with setup.py's -O3 -lineinfo and -DDVN_WITH_CUDA, plus -Xptxas -v): ptxas's log gives
registers, spills and static shared memory per kernel instantiation, the cubin's SASS the
width of its global loads. Dynamic shared memory is a launch argument: a small host program
prints the sizes the launchers pass (``_DYNAMIC_SMEM``), compiled against the same headers.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dvn_kernels.ptx_stats import count_sass_loads, parse_ptxas_log

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC_FLAGS = ["-O3", "-lineinfo", "-std=c++17", "-DDVN_WITH_CUDA=1", "-Xptxas", "-v"]

# Dynamic shared memory per launch, as the launchers compute it, by kernel (demangled name
# without its template arguments) -> C++ expression of the template arguments.
_DYNAMIC_SMEM = {
    "dvn::cuda::detail::conv_gemm_kernel":
        lambda a: f"dvn::cuda::detail::Tiles<{a[0]}, {a[1]}, {a[3]}>::kSmemBytes",
    "dvn::cuda::detail::depthwise_wgrad_kernel":
        lambda a: f"dvn::cuda::kThreads * sizeof(dvn::cuda::detail::Num<{a[0]}>::Acc)",
}


@dataclass
class CudaRecord:
    """One kernel instantiation: ptxas's figures, dynamic + static shared memory, and static
    counts of its global loads in SASS (16-byte LDG/LDGSTS vs narrower; -1: no cuobjdump)."""

    name: str
    source: str
    target: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared: int
    dynamic_shared: int
    loads_16b: int = -1
    loads_narrow: int = -1

    def as_dict(self) -> dict:
        return asdict(self)


def find_nvcc() -> str | None:
    """nvcc on PATH or under CUDA_HOME, else None."""
    nvcc = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if nvcc is None and home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        nvcc = os.path.join(home, "bin", "nvcc")
    return nvcc


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else "unknown"


def _cuobjdump() -> str | None:
    """The toolkit's cuobjdump, else the one Triton bundles, else None."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    path = Path(nv.__file__).parent / "bin" / "cuobjdump"
    return str(path) if path.exists() else None


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def _template_args(demangled: str) -> tuple[str, list[str]]:
    """'ns::k<A, (P)0, true, 128>(params)' -> ('ns::k', ['A', '(P)0', 'true', '128'])."""
    m = re.match(r"(?:void )?([\w:]+)<(.*)>\(", demangled)
    if not m:
        return demangled.split("(")[0].removeprefix("void "), []
    args, depth, cur = [], 0, ""
    for ch in m.group(2):
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += 1 if ch in "<(" else -1 if ch in ">)" else 0
        cur += ch
    return m.group(1), args + [cur.strip()]


def _kernels_with_dynamic_smem() -> set[str]:
    """Kernels whose body declares extern __shared__ (they need a _DYNAMIC_SMEM entry)."""
    names = set()
    for path in CUDA_DIR.glob("*.cu*"):
        text = path.read_text()
        for m in re.finditer(r"extern __shared__", text):
            kernels = re.findall(r"__global__\s+void(?:\s+__launch_bounds__\([^)]*\))?\s+(\w+)\(",
                                 text[:m.start()])
            if kernels:
                names.add(kernels[-1])
    return names


def _compile(nvcc: str, source: Path, out_dir: Path, arch: int) -> tuple[str, str, Path]:
    cubin = out_dir / (source.stem + ".cubin")
    cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, f"-I{CUDA_DIR}", str(source),
           "-o", str(cubin)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{r.stderr}\n{' '.join(cmd)}")
    return source.name, r.stdout + r.stderr, cubin


def _dynamic_shared(nvcc: str, exprs: list[str], out_dir: Path, arch: int) -> list[int]:
    """Evaluates the launchers' dynamic shared memory expressions in a host program."""
    if not exprs:
        return []
    probe = out_dir / "smem_probe.cu"
    lines = ['#include <cstdio>', '#include "conv_gemm_kernel.cuh"',
             '#include "depthwise_kernel.cuh"', 'int main() {']
    lines += [f'  std::printf("%lld\\n", (long long)({e}));' for e in exprs]
    probe.write_text("\n".join(lines + ["}"]) + "\n")
    exe = out_dir / "smem_probe"
    r = subprocess.run([nvcc, f"-arch=sm_{arch}", "-std=c++17", "-DDVN_WITH_CUDA=1",
                        f"-I{CUDA_DIR}", str(probe), "-o", str(exe)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the shared-memory probe failed to compile:\n{r.stderr}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [int(v) for v in out.split()]


def check(arch: int = 90, jobs: int = 2, cache_dir: Path | None = None) -> list[CudaRecord]:
    """Compiles every csrc/cuda/*.cu for sm_``arch`` and returns one record per kernel
    instantiation (kernels compiled in several files are listed once). With ``cache_dir`` the
    records are kept there under a hash of the sources, flags and nvcc version (the files
    take tens of seconds to compile on two cores)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (put it on PATH or set CUDA_HOME)")
    cached = None
    if cache_dir is not None:
        h = hashlib.sha256(f"{arch} {NVCC_FLAGS} {nvcc_version(nvcc)}".encode())
        for path in sorted(CUDA_DIR.iterdir()):
            h.update(path.name.encode() + path.read_bytes())
        h.update(Path(__file__).read_bytes())
        cached = Path(cache_dir) / f"cuda-{h.hexdigest()[:24]}.json"
        if cached.exists():
            return [CudaRecord(**r) for r in json.loads(cached.read_text())]
    records = _check(nvcc, arch, jobs)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps([r.as_dict() for r in records]))
    return records


def _check(nvcc: str, arch: int, jobs: int) -> list[CudaRecord]:
    missing = _kernels_with_dynamic_smem() - {k.rsplit("::", 1)[-1] for k in _DYNAMIC_SMEM}
    if missing:
        raise RuntimeError(f"kernels with dynamic shared memory not in _DYNAMIC_SMEM: {missing}")
    sources = sorted(CUDA_DIR.glob("*.cu"))
    cuobjdump = _cuobjdump()
    with tempfile.TemporaryDirectory(prefix="dvn-cuda-report-") as tmp:
        out_dir = Path(tmp)
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            built = list(pool.map(lambda s: _compile(nvcc, s, out_dir, arch), sources))
        per_kernel: dict[str, tuple[str, object]] = {}
        sass_loads = {}
        for source, log, cubin in built:
            for name, res in parse_ptxas_log(log).items():
                per_kernel.setdefault(name, (source, res))
            if cuobjdump:
                sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True,
                                      text=True).stdout
                for part in re.split(r"\n\s*Function : ", sass)[1:]:
                    name = part.split("\n", 1)[0].strip()
                    sass_loads.setdefault(name, count_sass_loads(part))
        names = sorted(per_kernel)
        demangled = _demangle(names)
        exprs, where = [], {}
        for n in names:
            base, args = _template_args(demangled[n])
            if base in _DYNAMIC_SMEM:
                where[n] = len(exprs)
                exprs.append(_DYNAMIC_SMEM[base](args))
        dynamic = _dynamic_shared(nvcc, exprs, out_dir, arch)
    records = []
    for n in names:
        source, res = per_kernel[n]
        dyn = dynamic[where[n]] if n in where else 0
        loads = sass_loads.get(n)
        records.append(CudaRecord(
            demangled[n].removeprefix("void "), source, f"sm_{arch}", res.registers,
            res.spill_stores, res.spill_loads, res.stack_frame, dyn + res.static_shared, dyn,
            loads.wide if loads else -1, loads.narrow if loads else -1))
    return records
