"""Builds dvn_kernels._C_torch<version>: the C++ CPU kernels always, the CUDA kernels when possible.

The extension is named after the torch it is compiled against (dvn_kernels/build_tag.py), so
builds for several torch stacks coexist in one tree. The CUDA sources (csrc/cuda) are compiled
when torch is a CUDA build and a CUDA toolkit is found; otherwise the extension is built for
CPU only and the reason is printed and recorded in dvn_kernels/<module>.json (read by
dvn_kernels.build_info()). Install with
`pip install -e . --no-build-isolation` so the extension is compiled against the torch it
runs with.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(message: str) -> None:
    print(f"dvn setup: {message}", file=sys.stderr)


def _nvcc_toolkit_root() -> str | None:
    """The CUDA toolkit root that nvcc on PATH really uses (it may be a wrapper script)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry.stderr + dry.stdout, re.MULTILINE)
    root = os.path.realpath(match.group(1).strip()) if match else None
    return root if root and os.path.isdir(os.path.join(root, "include")) else None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: derive it first.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    _root = _nvcc_toolkit_root()
    if _root:
        os.environ["CUDA_HOME"] = _root

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _module_name() -> str:
    """dvn_kernels/build_tag.py's name for this torch (loaded by path: the package itself
    is not importable before it is built)."""
    spec = importlib.util.spec_from_file_location(
        "dvn_build_tag", os.path.join(ROOT, "dvn_kernels", "build_tag.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.extension_name(torch.__version__)


MODULE = _module_name()


def _sources(*patterns: str) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        found += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    return found


CPP_SOURCES = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
CUDA_SOURCES = _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp")


def _why_no_cuda() -> str | None:
    """None when the CUDA kernels can be built, else the reason they are not."""
    if os.environ.get("DVN_NO_CUDA") == "1":
        return "DVN_NO_CUDA=1 is set"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (put nvcc on PATH or set CUDA_HOME)"
    if not CUDA_SOURCES:
        return "csrc/cuda has no sources yet"
    return None


def _nvidia_include_dirs() -> list[str]:
    """Headers of torch's own nvidia wheels (cuBLAS, cuSPARSE), missing from minimal toolkits."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += [d for d in glob.glob(os.path.join(base, "cu*", "include")) if os.path.isdir(d)]
    return dirs


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's CPU ops run on OpenMP: without it ATen's at::parallel_for
    (a header template) compiles to a serial loop in this extension, and runs its body as if
    inside a parallel region, so even the GEMMs it calls run on one thread. The extension then
    uses torch's own OpenMP runtime (already loaded, same soname)."""
    if sys.platform == "win32" or not torch.backends.openmp.is_available():
        return []
    return ["-fopenmp"]


def _extension():
    why_not = _why_no_cuda()
    # Py_LIMITED_API is defined by torch's build for py_limited_api (3.10's stable ABI); a
    # second, different definition here made every file warn "Py_LIMITED_API redefined".
    link_flags = _openmp_flags()
    cxx_flags = ["-O3", f"-DDVN_MODULE={MODULE}", *link_flags]
    if why_not is not None:
        _log(f"building the C++ CPU kernels only: {why_not}")
        ext = cpp_extension.CppExtension(
            f"dvn_kernels.{MODULE}", CPP_SOURCES, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags, py_limited_api=True)
        return ext, {"cuda": False, "why_no_cuda": why_not}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch cannot detect an architecture without a GPU; default to Hopper (H100/H200).
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected from the local GPU")
    _log(f"building the C++ CPU and CUDA kernels (CUDA_HOME={cpp_extension.CUDA_HOME}, "
         f"TORCH_CUDA_ARCH_LIST={arch})")
    ext = cpp_extension.CUDAExtension(
        f"dvn_kernels.{MODULE}", CPP_SOURCES + CUDA_SOURCES,
        include_dirs=_nvidia_include_dirs(),
        define_macros=[("DVN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"] + (
            # Registers, spills and shared memory per kernel in the build log (scripts/gpu-check).
            ["-Xptxas=-v"] if os.environ.get("DVN_NVCC_RESOURCE_USAGE") == "1" else [])},
        extra_link_args=link_flags, py_limited_api=True)
    return ext, {"cuda": True, "cuda_arch_list": arch, "cuda_version": torch.version.cuda}


EXTENSION, BUILD_INFO = _extension()
BUILD_INFO["torch"] = torch.__version__
BUILD_INFO["module"] = MODULE
with open(os.path.join(ROOT, "dvn_kernels", f"{MODULE}.json"), "w") as f:
    json.dump(BUILD_INFO, f, indent=1)

setup(
    packages=find_packages(include=["dvn", "dvn.*", "dvn_kernels", "dvn_kernels.*"]),
    package_data={"dvn_kernels": [f"{MODULE}.json"]},
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
