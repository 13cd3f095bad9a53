"""CMakeLists.txt builds the same kernels as a plain library and its C++ tests pass.

The CMake build here compiles the CPU kernels and the C++ tests; with a CUDA build of torch and
nvcc it also configures the CUDA kernels (CMake finds the toolkit and turns them on) without
compiling them again: ``pip install -e .`` (scripts/setup) has just compiled the same
csrc/cuda sources with the same nvcc, and a second compile took ~50 s of a 2-core test run."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmake_version() -> tuple[int, ...]:
    out = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout
    return tuple(int(v) for v in out.split()[2].split(".")[:2])


def _need_cmake() -> None:
    if shutil.which("cmake") is None or _cmake_version() < (3, 27):
        if os.environ.get("DVN_REQUIRE_CMAKE") == "1":
            pytest.fail("cmake >= 3.27 is required (scripts/setup installs it)")
        pytest.skip("needs cmake >= 3.27 (pip install cmake)")


def _cmake_build(build_dir, *options, configure_only=False):
    env = dict(os.environ, PYTHON=sys.executable,
               DVN_CMAKE_CONFIGURE_ONLY="1" if configure_only else "0")
    result = subprocess.run([os.path.join(ROOT, "scripts", "cmake-build"), str(build_dir),
                             *options], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_cmake_build_and_cpp_tests(tmp_path):
    _need_cmake()
    out = _cmake_build(tmp_path, "-DDVN_WITH_CUDA=OFF")
    assert "100% tests passed" in out


def test_cmake_configures_the_cuda_kernels_with_a_cuda_torch(tmp_path):
    _need_cmake()
    import torch
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("needs a CUDA build of torch and nvcc")
    out = _cmake_build(tmp_path, configure_only=True)
    assert "dvn_kernels: CUDA kernels ON" in out, out[-4000:]
