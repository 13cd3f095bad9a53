"""The CUDA kernels of dvn_kernels._C (backend 'cuda').

On a CPU machine: the kernels' index math runs as a host program, the kernels' own code runs on
CPU threads through a CUDA shim (both in csrc/tests), the build has registered the CUDA kernels
for both ops, and the .cu sources stay free of torch headers. On a
GPU: every pass against the float64 oracle over random shapes, strides, paddings, dilations,
segments, layouts and dtypes, with every output poisoned (NaN) before the kernels run so that
elements no kernel wrote show up.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels import ChannelSegments, extension, sliced_conv2d
from dvn_kernels.channels import follow_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_BUILT = bool(dvn_kernels.build_info().get("cuda"))
requires_cuda_build = pytest.mark.skipif(
    not CUDA_BUILT and os.environ.get("DVN_REQUIRE_CUDA_BUILD") != "1",
    reason="the extension was built without CUDA kernels (CPU torch or no nvcc)")
gpu = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("DVN_CUDA_POISON_OUTPUTS", "1")


# --- CPU checks -------------------------------------------------------------------------------

@pytest.mark.host
def test_index_math_host_program(tmp_path):
    """conv_gemm.h (all of the kernels' address math) against a direct convolution, on the CPU."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "test_conv_gemm_index"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "csrc", "tests", "test_conv_gemm_index.cpp"), "-o",
                    str(exe)], check=True, capture_output=True, text=True, timeout=300)
    result = subprocess.run([str(exe), "400"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "index tests passed" in result.stdout


def _build_emulation(tmp_path, *flags: str):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "test_conv_gemm_emulated"
    build = subprocess.run([cxx, "-std=c++17", "-pthread", "-Wall", "-Wno-unknown-pragmas",
                            "-Werror", "-DDVN_EMULATE_CUDA", *flags, "-I",
                            os.path.join(ROOT, "csrc"),
                            os.path.join(ROOT, "csrc", "tests", "test_conv_gemm_emulated.cpp"),
                            "-o", str(exe)], capture_output=True, text=True, timeout=600)
    return exe, build


@pytest.mark.host
def test_kernels_emulated_on_the_cpu(tmp_path):
    """The kernels' own code (conv_gemm_kernel.cuh) on CPU threads through csrc/tests'
    CUDA shim: every pass, tensor-core and FMA paths, vector and element loads, split-K."""
    exe, build = _build_emulation(tmp_path, "-O2")
    assert build.returncode == 0, build.stderr[-3000:]
    result = subprocess.run([str(exe), "8"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "emulated CUDA kernels passed" in result.stdout


@pytest.mark.slow
@pytest.mark.host
def test_kernels_emulated_under_thread_sanitizer(tmp_path):
    """The same under ThreadSanitizer: a missing __syncthreads shows as a data race."""
    exe, build = _build_emulation(tmp_path, "-O1", "-g", "-fsanitize=thread")
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip("the C++ compiler has no ThreadSanitizer")
    assert build.returncode == 0, build.stderr[-3000:]
    result = subprocess.run([str(exe), "2"], capture_output=True, text=True, timeout=600)
    if "FATAL: ThreadSanitizer" in result.stderr:  # e.g. an unsupported memory layout (ASLR)
        pytest.skip(result.stderr.strip().splitlines()[0])
    assert result.returncode == 0 and "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]


@requires_cuda_build
def test_cuda_kernels_are_registered():
    assert dvn_kernels.build_info()["cuda"], "DVN_REQUIRE_CUDA_BUILD=1 but built without CUDA"
    for op in ("sliced_conv2d", "sliced_conv2d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dvn_kernels::{op}", "CUDA"), op
    assert extension.has_cuda_kernel()
    assert dvn_kernels.build_info()["cuda_kernel"]


@requires_cuda_build
def test_cuda_backend_availability():
    backends = dvn_kernels.backends
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert "cuda" in dvn_kernels.available_backends("cuda", dtype)
    assert "cuda" not in dvn_kernels.available_backends("cpu", torch.float32)
    assert "int32" in backends._why_unavailable("cuda", torch.device("cuda"), torch.int32)
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(backends.BackendUnavailableError, match="runs on CUDA tensors"):
        sliced_conv2d(x, torch.randn(3, 2, 1, 1), in_segments=[(0, 2)],
                      out_segments=[(0, 3)], backend="cuda")


@pytest.mark.host
def test_cuda_sources_are_torch_free():
    """.cu/.cuh and the launcher headers include no torch, ATen or c10 header (fast nvcc)."""
    folder = os.path.join(ROOT, "csrc", "cuda")
    glue = {"sliced_conv2d_cuda.cpp", "cuda_check.h"}
    for name in sorted(os.listdir(folder)):
        if name in glue:
            continue
        with open(os.path.join(folder, name)) as f:
            includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', f.read())
        bad = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")]
        assert not bad, f"{name} includes {bad}"


@pytest.mark.host
def test_memcheck_script_is_ready():
    """scripts/cuda-memcheck (run by the GPU script) is executable and its Python case compiles."""
    path = os.path.join(ROOT, "scripts", "cuda-memcheck")
    assert os.access(path, os.X_OK)
    text = open(path).read()
    case = text.split("<<'PY'", 1)[1].split("\n", 1)[1].split("\nPY\n", 1)[0]
    compile(case, "cuda-memcheck", "exec")
    assert subprocess.run(["bash", "-n", path]).returncode == 0


# --- GPU checks -------------------------------------------------------------------------------

def _random_segments(rng: random.Random, full: int, unit: int) -> ChannelSegments:
    """One, two or three random ranges of whole units (unit channels each) of a `full`-channel
    weight, with at least one inactive unit between ranges."""
    n = full // unit
    count = min(rng.choice([1, 2, 2, 3]), (n + 1) // 2)
    cuts = sorted(rng.sample(range(n + 1), 2 * count))
    return ChannelSegments([(cuts[i] * unit, (cuts[i + 1] - cuts[i]) * unit)
                            for i in range(0, 2 * count, 2)])


def _random_problem(seed: int):
    rng = random.Random(seed)
    unit_in = rng.choice([1, 3, 8, 16])      # 8, 16: the 16-byte vector paths
    unit_out = rng.choice([1, 5, 8, 16])
    c_in_full = unit_in * rng.randint(2, 6)
    c_out_full = unit_out * rng.randint(2, 6)
    ins = _random_segments(rng, c_in_full, unit_in)
    outs = _random_segments(rng, c_out_full, unit_out)
    kh, kw = rng.choice([1, 3, 3, 5]), rng.choice([1, 3, 3])
    stride = (rng.randint(1, 2), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    h = max(rng.randint(1, 19), dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    w = max(rng.randint(1, 23), dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    batch = rng.randint(1, 3)
    conv = dict(stride=stride, padding=padding, dilation=dilation)
    layout = rng.choice(["nchw", "channels_last", "strided"])
    weight_layout = rng.choice(["contiguous", "channels_last"])
    bias = rng.random() < 0.7
    return (batch, c_in_full, c_out_full, ins, outs, (kh, kw), (h, w), conv, layout,
            weight_layout, bias)


def _oracle(x, weight, bias, ins, outs, conv):
    """The contract's meaning in float64 on the CPU: conv2d of the gathered weight block."""
    x, weight = x.detach().cpu().double().requires_grad_(), weight.detach().cpu().double().requires_grad_()
    bias = bias.detach().cpu().double().requires_grad_() if bias is not None else None
    w = weight[torch.tensor(outs.indices())][:, torch.tensor(ins.indices())]
    b = bias[torch.tensor(outs.indices())] if bias is not None else None
    return F.conv2d(x, w, b, **conv), [t for t in (x, weight, bias) if t is not None]


# Error relative to the largest magnitude of the float64 result: TF32 and the 16-bit formats
# round their inputs (10-, 10- and 7-bit mantissas) and accumulate in float32.
REL_TOL = {"float64": 1e-12, "float32": 3e-5, "tf32": 4e-3, "float16": 4e-3, "bfloat16": 3e-2}


def _assert_close(got: torch.Tensor, want: torch.Tensor, precision: str, what: str):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got = got.detach().cpu().double()
    assert torch.isfinite(got).all(), f"{what}: NaN/inf (an element the kernels never wrote?)"
    scale = want.abs().max().item() + 1e-30
    err = (got - want).abs().max().item() / scale
    assert err <= REL_TOL[precision], f"{what}: max error {err:.3g} x max|want| > {REL_TOL[precision]}"


def _precision_setup(precision: str):
    dtype = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32,
             "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]
    return dtype, precision == "tf32"


def _run_problem(seed: int, precision: str, backend: str = "cuda", device: str = "cuda"):
    (batch, c_in_full, c_out_full, ins, outs, (kh, kw), (h, w), conv, layout, weight_layout,
     has_bias) = _random_problem(seed)
    dtype, tf32 = _precision_setup(precision)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ins.total, h, w, generator=gen)
    weight = torch.randn(c_out_full, c_in_full, kh, kw, generator=gen) / (ins.total * kh * kw) ** 0.5
    bias = torch.randn(c_out_full, generator=gen) if has_bias else None
    # Values rounded to the dtype first: the oracle sees exactly the kernel's inputs.
    x, weight = x.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    xd = x.to(device)
    if layout == "channels_last":
        xd = xd.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other channel of a wider tensor, H and W swapped twice
        wide = torch.zeros(batch, 2 * ins.total, w, h, dtype=dtype, device=device)
        wide[:, ::2] = xd.transpose(2, 3)
        xd = wide[:, ::2].transpose(2, 3)
    wd = weight.to(device)
    if weight_layout == "channels_last":
        wd = wd.contiguous(memory_format=torch.channels_last)
    bd = bias.to(device) if bias is not None else None
    leaves = [t.requires_grad_() for t in (xd, wd, bd) if t is not None]
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        y = sliced_conv2d(xd, wd, bd, in_segments=ins, out_segments=outs, backend=backend, **conv)
        g = torch.randn(y.shape, generator=gen).to(dtype)
        grads = torch.autograd.grad(y, leaves, g.to(device))
    finally:
        torch.backends.cudnn.allow_tf32 = old
    want, want_leaves = _oracle(x, weight, bias, ins, outs, conv)
    want_grads = torch.autograd.grad(want, want_leaves, g.double())
    name = f"seed {seed} {precision} in={ins} out={outs} k={kh}x{kw} {conv} {layout}/{weight_layout}"
    assert y.dtype == dtype and y.is_contiguous(memory_format=follow_format(xd))
    assert grads[0].is_contiguous(memory_format=follow_format(xd))
    _assert_close(y, want, precision, f"{name}: forward")
    for label, a, b in zip(("grad x", "grad weight", "grad bias"), grads, want_grads):
        _assert_close(a, b, precision, f"{name}: {label}")
    # The weight gradient is exactly zero outside the active block.
    gw = grads[1].detach().cpu()
    mask = torch.ones(c_out_full, c_in_full, dtype=torch.bool)
    mask[torch.tensor(outs.indices())[:, None], torch.tensor(ins.indices())[None, :]] = False
    assert torch.all(gw[mask] == 0), f"{name}: weight gradient nonzero outside the block"


PRECISIONS = ["float64", "float32", "tf32", "float16", "bfloat16"]


@pytest.mark.skipif("cpu" not in dvn_kernels.available_backends("cpu"), reason="no cpu kernel")
@pytest.mark.host
@pytest.mark.parametrize("seed", range(6))
def test_the_random_problem_harness_on_the_cpu_kernel(seed):
    """The GPU test's harness (random problems, layouts, oracle, tolerances) itself, on CPU."""
    _run_problem(seed, "float64", backend="cpu", device="cpu")
    _run_problem(seed, "float32", backend="cpu", device="cpu")


@gpu
@requires_cuda_build
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("seed", range(32))
def test_random_problems_match_the_oracle(seed, precision):
    _run_problem(seed, precision)


@gpu
@requires_cuda_build
@pytest.mark.parametrize("precision", ["tf32", "bfloat16", "float16", "float32"])
@pytest.mark.parametrize("active", [(0,), (1, 2), (0, 3)], ids=["level1", "level2", "cyclic"])
def test_wide_layer_many_tiles_and_splits(precision, active):
    """A WRN stage-1 layer (160 channels, 4 units of 40): many M tiles, split-K, vector loads."""
    dtype, tf32 = _precision_setup(precision)
    segs = ChannelSegments.from_units([40] * 4, active)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, segs.total, 32, 32, generator=gen).to(dtype)
    weight = (torch.randn(160, 160, 3, 3, generator=gen) / (segs.total * 9) ** 0.5).to(dtype)
    bias = torch.randn(160, generator=gen).to(dtype)
    leaves = [t.cuda().contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.cuda()
              for t in (x, weight, bias)]
    leaves = [t.requires_grad_() for t in leaves]
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        y = sliced_conv2d(*leaves, in_segments=segs, out_segments=segs, padding=1, backend="cuda")
        g = torch.randn(y.shape, generator=gen).to(dtype)
        grads = torch.autograd.grad(y, leaves, g.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert y.is_contiguous(memory_format=torch.channels_last)
    want, want_leaves = _oracle(x, weight, bias, segs, segs, dict(padding=1))
    want_grads = torch.autograd.grad(want, want_leaves, g.double())
    _assert_close(y, want, precision, "forward")
    for label, a, b in zip(("grad x", "grad weight", "grad bias"), grads, want_grads):
        _assert_close(a, b, precision, label)


@gpu
@requires_cuda_build
def test_weight_gradient_is_deterministic():
    segs = ChannelSegments([(8, 16), (40, 8)])
    x = torch.randn(4, segs.total, 16, 16, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    runs = []
    for _ in range(2):
        y = sliced_conv2d(x, weight, in_segments=segs, out_segments=segs, padding=1, backend="cuda")
        (gw,) = torch.autograd.grad(y.float().square().sum(), [weight])
        runs.append(gw)
    assert torch.equal(runs[0], runs[1])


@gpu
@requires_cuda_build
def test_gradcheck_float64():
    segs_in, segs_out = ChannelSegments([(1, 2), (4, 3)]), ChannelSegments([(0, 2), (3, 2)])
    x = torch.randn(2, segs_in.total, 6, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 8, 3, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: sliced_conv2d(x, w, b, in_segments=segs_in, out_segments=segs_out,
                                      stride=(2, 1), padding=1, backend="cuda"), (x, w, b))


# The kernel ops' spec string (dvn_kernels/spec.py) with padding k.
SPEC = "in={ins} out={outs} stride=1,1 padding={k},{k} dilation=1,1 groups=1"


@gpu
@requires_cuda_build
def test_opcheck_on_cuda():
    x = torch.randn(2, 5, 7, 7, device="cuda", requires_grad=True)
    w = torch.randn(6, 8, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(6, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.dvn_kernels.sliced_conv2d.default,
                          (x, w, b, SPEC.format(ins="1+2,4+3", outs="0+2,3+2", k=1)))


@gpu
@requires_cuda_build
def test_unsupported_dtype_and_devices_raise_clear_errors():
    op = torch.ops.dvn_kernels.sliced_conv2d
    if hasattr(torch, "float8_e4m3fn"):
        x = torch.zeros(1, 2, 4, 4, device="cuda").to(torch.float8_e4m3fn)
        w = torch.zeros(3, 2, 1, 1, device="cuda").to(torch.float8_e4m3fn)
        with pytest.raises((TypeError, RuntimeError), match="cuda kernels support float16|floating point"):
            op(x, w, None, SPEC.format(ins="0+2", outs="0+3", k=0))
    x = torch.zeros(1, 2, 4, 4, device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="weight's device"):
        op(x, torch.zeros(3, 2, 1, 1), None, SPEC.format(ins="0+2", outs="0+3", k=0))


@gpu
@requires_cuda_build
def test_empty_batch_and_one_by_one():
    segs = ChannelSegments([(0, 3)])
    x = torch.randn(0, 3, 5, 5, device="cuda", requires_grad=True)
    w = torch.randn(4, 3, 1, 1, device="cuda", requires_grad=True)
    y = sliced_conv2d(x, w, in_segments=segs, out_segments=[(0, 4)], backend="cuda")
    assert y.shape == (0, 4, 5, 5)
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    assert gx.shape == x.shape and torch.all(gw == 0)
