"""The Triton backend against the contract's oracle.

On a CPU machine the kernels run under TRITON_INTERPRET=1 (scripts/test sets it) on small
shapes, float32 and float16 (the interpreter computes bfloat16 wrongly); on a GPU the same
tests run on CUDA tensors, plus real-size, bfloat16 and TF32 tests marked ``gpu``.
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dvn_kernels
from dvn_kernels import BackendUnavailableError, sliced_conv2d
from dvn_kernels.backends import _why_unavailable
from helpers import SEGMENT_LAYOUTS, Problem, make_problem, oracle

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    "triton" not in dvn_kernels.available_backends(DEVICE),
    reason=f"triton backend unavailable: {_why_unavailable('triton', DEVICE, torch.float32)}")
if "triton" in dvn_kernels.available_backends(DEVICE):
    import dvn_kernels.triton  # noqa: F401  (registers the Triton ops some tests call directly)

GEOMETRIES = {
    "k3s1p1": dict(kernel=3, stride=1, padding=1),
    "k3s2p1d2": dict(kernel=3, stride=2, padding=1, dilation=2),
    "k3-asym": dict(kernel=3, stride=(1, 2), padding=(0, 2), dilation=(2, 1)),
    "k1s1": dict(kernel=1, stride=1, padding=0),
    "k1s2": dict(kernel=1, stride=2, padding=0),
    "k5s3p2": dict(kernel=5, stride=3, padding=2),
}
# Relative error bounds (vs a float64 oracle on the same rounded inputs).
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, "tf32": 5e-3}


@pytest.fixture(autouse=True)
def _ieee_float32():
    """Float32 tests compare exact arithmetic: no TF32 unless a test asks for it."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def lowered(p: Problem, dtype: torch.dtype) -> tuple[Problem, Problem]:
    """(p rounded to dtype on DEVICE, the same values in float64 on CPU for the oracle)."""
    def cast(t, d, dev):
        return None if t is None else t.detach().to(dev, d).requires_grad_()
    low = Problem(cast(p.x, dtype, DEVICE), cast(p.weight, dtype, DEVICE),
                  cast(p.bias, dtype, DEVICE), p.ins, p.outs, p.conv)
    exact = Problem(cast(low.x, torch.float64, "cpu"), cast(low.weight, torch.float64, "cpu"),
                    cast(low.bias, torch.float64, "cpu"), p.ins, p.outs, p.conv)
    if p.x.is_contiguous(memory_format=torch.channels_last) and not p.x.is_contiguous():
        low.x = low.x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    return low, exact


def assert_near(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """Norm-relative error below ``rel`` (absolute for an all-zero reference)."""
    assert got.shape == want.shape, what
    err = (got.detach().double().cpu() - want.detach()).norm().item()
    scale = max(want.norm().item(), 1e-30 if rel < 1e-3 else 1.0)
    assert err <= rel * scale, f"{what}: relative error {err / scale:.2e} > {rel:.0e}"


def run(p: Problem, **kw) -> torch.Tensor:
    return sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                         backend="triton", **p.conv, **kw)


def check(p: Problem, dtype=torch.float32, rel=None, seed=1):
    """Forward and all three gradients against the oracle; returns (y, grads)."""
    rel = rel or REL[dtype]
    low, exact = lowered(p, dtype)
    y = run(low)
    want = oracle(exact)
    assert y.dtype == dtype and y.device.type == DEVICE.type
    assert_near(y, want, rel, "y")
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(dtype).double()  # the rounded upstream gradient both sides see
    leaves = [t for t in (low.x, low.weight, low.bias) if t is not None]
    got = torch.autograd.grad(y, leaves, g.to(DEVICE, dtype))
    expected = torch.autograd.grad(want, [t for t in (exact.x, exact.weight, exact.bias)
                                          if t is not None], g)
    for name, a, b in zip(("grad x", "grad weight", "grad bias"), got, expected):
        assert a.dtype == dtype, name
        assert_near(a, b, rel, name)
    return y, got


@pytest.mark.parametrize("layout", ["one", "two", "three"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_matches_oracle(layout, geometry):
    p = make_problem(*SEGMENT_LAYOUTS[layout], **GEOMETRIES[geometry],
                     batch=1 if "s2" in geometry else 2, bias=geometry not in ("k1s1", "k5s3p2"))
    check(p)


@pytest.mark.parametrize("side", ["in", "out"])
def test_more_than_two_ranges_on_one_side(side):
    """Three ranges on one side take the gathered path on that side only."""
    three, two = [(0, 2), (5, 3), (10, 3)], [(1, 3), (9, 2)]
    ins, outs = (three, two) if side == "in" else (two, three)
    check(make_problem(ins, outs, c_in=13, c_out=13, stride=2, batch=2))


@pytest.mark.parametrize("layout", ["one", "two"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_float16(layout, kernel):
    p = make_problem(*SEGMENT_LAYOUTS[layout], kernel=kernel, padding=kernel // 2)
    check(p, torch.float16)


@pytest.mark.parametrize("ins, outs, align", [
    ([(3, 21), (30, 19)], [(1, 18), (25, 23)], 1),  # 40 channels each side, odd offsets
    ([(16, 16), (48, 32)], [(0, 32), (48, 16)], 16),  # unit-aligned: scalars passed / 16
    ([(8, 24)], [(4, 36)], 4)])
def test_several_tiles_per_dimension(ins, outs, align):
    """N, K and (in grad weight) M span several blocks; segment scalars at each alignment."""
    from dvn_kernels.triton.configs import channel_align
    p = make_problem(ins, outs, c_in=80, c_out=64, size=(9, 7), batch=3)
    scalars = p.ins.kernel_scalars()[:3] + p.outs.kernel_scalars()[:3]
    assert channel_align(p.ins.total, p.outs.total, *scalars) == align
    check(p)


@pytest.mark.parametrize("kernel", [1, 3])
def test_channels_last(kernel):
    p = make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2, stride=2)
    p.x = p.x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y, (gx, _, _) = check(p)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert gx.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_weight_and_strided_x():
    p = make_problem(*SEGMENT_LAYOUTS["two"])
    low, exact = lowered(p, torch.float32)
    low.weight = low.weight.detach().to(memory_format=torch.channels_last).requires_grad_()
    wide = torch.zeros(2, 2 * p.x.shape[1], 10, 11, device=DEVICE)
    wide[:, ::2] = low.x.detach().transpose(2, 3)
    low.x = wide[:, ::2].transpose(2, 3).requires_grad_()  # strided channels, swapped H/W
    assert not low.x.is_contiguous()
    y = run(low)
    assert_near(y, oracle(exact), REL[torch.float32], "y")
    gx, gw = torch.autograd.grad(y.sum(), [low.x, low.weight])
    ex, ew = torch.autograd.grad(oracle(exact).sum(), [exact.x, exact.weight])
    assert_near(gx, ex, REL[torch.float32], "grad x")
    assert_near(gw, ew, REL[torch.float32], "grad weight")
    assert gw.is_contiguous(memory_format=torch.channels_last)


def test_gradients_are_zero_outside_the_active_block():
    p, _ = lowered(make_problem(*SEGMENT_LAYOUTS["two"]), torch.float32)
    gx, gw, gb = torch.autograd.grad(run(p).square().sum(), [p.x, p.weight, p.bias])
    rows = torch.zeros(11, dtype=torch.bool, device=DEVICE)
    cols = torch.zeros(13, dtype=torch.bool, device=DEVICE)
    rows[p.outs.indices()] = True
    cols[p.ins.indices()] = True
    block = rows[:, None] & cols[None, :]
    assert torch.all(gw[~block] == 0) and torch.all(gb[~rows] == 0)
    assert torch.all(gw[block].abs().sum((-1, -2)) > 0) and torch.all(gb[rows] != 0)


@pytest.mark.parametrize("kernel", [1, 3])
def test_empty_batch(kernel):
    p, _ = lowered(make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2,
                                batch=0), torch.float32)
    y = run(p)
    assert y.shape == (0, 7, 11, 10)
    gx, gw, gb = torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    assert gx.shape == p.x.shape and torch.all(gw == 0) and torch.all(gb == 0)


def test_only_some_inputs_need_grad():
    p, exact = lowered(make_problem(*SEGMENT_LAYOUTS["two"], stride=2), torch.float32)
    want = torch.autograd.grad(oracle(exact).sum(), [exact.x, exact.weight, exact.bias])
    for k in range(3):
        leaves = [t.detach().requires_grad_(i == k) for i, t in enumerate((p.x, p.weight, p.bias))]
        y = sliced_conv2d(*leaves, in_segments=p.ins, out_segments=p.outs, backend="triton",
                          **p.conv)
        (got,) = torch.autograd.grad(y.sum(), [leaves[k]])
        assert_near(got, want[k], REL[torch.float32], f"gradient {k}")


@pytest.mark.parametrize("geometry", ["k3s1p1", "k3s2p1d2", "k1s2"])
def test_split_k_matches_one_split(geometry):
    """Each pass with 3 K-splits (float32 workspace + ordered reduction) equals the oracle,
    for one and two ranges per side."""
    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd

    geo = GEOMETRIES[geometry]
    p = make_problem(*SEGMENT_LAYOUTS["two"], **geo, batch=2)
    low, exact = lowered(p, torch.float32)
    want = oracle(exact)
    g = torch.randn(want.shape, dtype=torch.float64)
    ex, ew, eb = torch.autograd.grad(want, [exact.x, exact.weight, exact.bias], g)
    ins, outs = p.ins, p.outs
    conv = [tuple(v) if isinstance(v, tuple) else (v, v)
            for v in (geo["stride"], geo["padding"], geo.get("dilation", 1))]
    x, w, b = low.x.detach(), low.weight.detach(), low.bias.detach()
    gy = g.to(DEVICE, torch.float32)
    for split in (1, 3):
        y = torch.empty(want.shape, device=DEVICE)
        conv_fwd.conv_forward(x, w, b, ins, outs, y, *conv, "ieee", split_k=split)
        assert_near(y, want, REL[torch.float32], f"y, split {split}")
        gx = torch.empty_like(x)
        conv_bwd_input.conv_grad_input(gy, w, ins, outs, gx, *conv, "ieee", split_k=split)
        assert_near(gx, ex, REL[torch.float32], f"grad x, split {split}")
        gw = torch.zeros_like(w)
        conv_bwd_weight.conv_grad_weight(gy, x, ins, outs, gw, *conv, "ieee", split_k=split)
        assert_near(gw, ew, REL[torch.float32], f"grad weight, split {split}")


def test_split_k_heuristic():
    from dvn_kernels.triton.configs import bucket, choose_split_k

    assert choose_split_k(tiles=100, k_chunks=1000, sms=132) == 1  # tiles fill the GPU
    assert choose_split_k(tiles=9, k_chunks=2048, sms=132) == 30  # wgrad: few tiles, long K
    assert choose_split_k(tiles=9, k_chunks=2048, sms=132, max_split=16) == 16
    assert choose_split_k(tiles=16, k_chunks=18, sms=132) == 2  # capped by the K length
    assert choose_split_k(tiles=64, k_chunks=9, sms=132) == 1  # K too short to split
    assert [bucket(n) for n in (1, 16, 17, 48, 64, 65, 8192)] == [16, 16, 32, 64, 64, 128, 8192]


def test_tiles_pruned_for_the_problem():
    """16-wide K tiles only for reductions over <= 16 channels; wgrad tiles fit wgmma."""
    from dvn_kernels.triton import configs

    gemm = [configs._cfg(*c) for c in configs._GEMM_GPU]
    for k_bucket, want_k16 in ((16, True), (32, False), (256, False)):
        kept = configs.prune(gemm, dict(M_BUCKET=8192, N_BUCKET=64, K_BUCKET=k_bucket))
        assert kept and all((c.kwargs["BLOCK_K"] == 16) == want_k16 for c in kept)
    assert all(c[0] >= 64 for c in configs._WGRAD_GPU)  # BLOCK_M: one warpgroup's 64 rows
    wgrad = [configs._cfg(*c) for c in configs._WGRAD_GPU]
    assert configs.prune(wgrad, dict(M_BUCKET=16, N_BUCKET=16, K_BUCKET=65536))


def test_autotune_keys_are_few_for_all_levels():
    """All levels of WRN-32-4 (k=4) share a handful of bucketed keys per stage and pass."""
    from dvn_kernels.triton.configs import bucket

    keys = set()
    for channels, size in ((64, 32), (128, 16), (256, 8)):
        for level in range(1, 5):
            c = channels * level // 4
            keys.add(("fwd", bucket(128 * size * size), bucket(c), bucket(c)))
            keys.add(("wgrad", bucket(c), bucket(c), bucket(128 * size * size)))
    # Per pass: 3 keys per stage (levels 3 and 4 share one; 16 channels have their own, for
    # the 16-wide K tiles): 9 keys for 12 widths.
    assert len(keys) == 2 * (3 + 3 + 3)


def spec_of(p: Problem) -> str:
    """The kernels' spec string of a problem with at most two ranges per side."""
    return dvn_kernels.conv_plan(p.weight.shape, p.ins, p.outs, **p.conv).spec


def test_opcheck_forward():
    p, _ = lowered(make_problem(*SEGMENT_LAYOUTS["two"], stride=2), torch.float32)
    torch.library.opcheck(torch.ops.dvn_kernels.triton_sliced_conv2d.default,
                          (p.x, p.weight, p.bias, spec_of(p)))


@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True],
                                  [False, False, True]])
def test_opcheck_backward_op(mask):
    """The backward op has no derivative of its own (no double backward), so it is checked on
    inputs that do not require grad; it computes only what the mask asks for."""
    p, _ = lowered(make_problem(*SEGMENT_LAYOUTS["two"], kernel=1, padding=0, stride=2),
                   torch.float32)
    x, w = p.x.detach(), p.weight.detach()
    y = sliced_conv2d(x, w, None, in_segments=p.ins, out_segments=p.outs, backend="triton",
                      **p.conv)
    torch.library.opcheck(torch.ops.dvn_kernels.triton_sliced_conv2d_backward.default,
                          (torch.randn_like(y), x, w, spec_of(p), mask))


def test_same_schema_as_the_native_ops():
    """One op contract: the Triton ops take the native ops' arguments and return their
    results (the backward with its output mask)."""
    if not dvn_kernels.extension.LOADED:
        pytest.skip("the C++ extension is not built")
    ops = torch.ops.dvn_kernels
    for native, triton in ((ops.sliced_conv2d, ops.triton_sliced_conv2d),
                           (ops.sliced_conv2d_backward, ops.triton_sliced_conv2d_backward)):
        a, b = native.default._schema, triton.default._schema
        assert [(x.name, str(x.type)) for x in a.arguments] == \
            [(x.name, str(x.type)) for x in b.arguments]
        assert [str(r.type) for r in a.returns] == [str(r.type) for r in b.returns]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    p, _ = lowered(make_problem(*SEGMENT_LAYOUTS["two"]), torch.float32)

    def f(x, w, b):
        return run(Problem(x, w, b, p.ins, p.outs, p.conv)).relu().square().sum()

    leaves = [p.x, p.weight, p.bias]
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(f(*leaves), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_availability_and_auto():
    bf16 = _why_unavailable("triton", torch.device("cpu"), torch.bfloat16)
    f64 = _why_unavailable("triton", DEVICE, torch.float64)
    assert f64 and "float64" in f64
    if DEVICE.type == "cpu":
        assert bf16 and "interpreter" in bf16
        # auto never picks the interpreter
        assert dvn_kernels.resolve_backend("auto", torch.randn(1, 2, 4, 4)) != "triton"
    else:
        assert dvn_kernels.resolve_backend("auto", torch.randn(1, 2, 4, 4, device=DEVICE)) \
            == "reference"  # slice + cuDNN until measured
    p = make_problem(*SEGMENT_LAYOUTS["one"], dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="backend: 'triton' is unavailable: "
                                                      "it supports"):
        sliced_conv2d(p.x.to(DEVICE), p.weight.to(DEVICE), None, in_segments=p.ins,
                      out_segments=p.outs, backend="triton")
    meta = _why_unavailable("triton", torch.device("meta"), torch.float32)
    assert meta and "CUDA tensors" in meta


@pytest.mark.host
def test_kernels_compile_for_sm90():
    """The interpreter runs no compiler: build every pass for sm_90 (no GPU needed), so type,
    constexpr and shared-memory errors show on CPU CI too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # A cache of this Triton version alone: compile_check checks Triton's cubin against a
    # rerun of its ptxas, which a cubin cached by another Triton or ptxas would fail.
    env["TRITON_CACHE_DIR"] = str(Path(__file__).resolve().parents[1] / ".cache" /
                                  f"triton-{importlib.metadata.version('triton')}-sm90")
    r = subprocess.run([sys.executable, "-m", "dvn_kernels.triton.compile_check", "--dtypes",
                        "bf16"], env=env, capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok, shared") == 14, r.stdout


# ----------------------------------------------------------------------------- GPU only


def wrn_problem(channels, size, level, batch, *, cyclic=False, kernel=3, stride=1, c_in=None,
                seed=0):
    """WRN-like layer at a level of k=4 equal units (cyclic: units {0, 3})."""
    c_in = c_in or channels
    active = [0, 3] if cyclic else list(range(level))
    ins = dvn_kernels.segments_from_units(dvn_kernels.split_channels(c_in, 4), active)
    outs = dvn_kernels.segments_from_units(dvn_kernels.split_channels(channels, 4), active)
    return make_problem(ins.pairs, outs.pairs, c_in=c_in, c_out=channels, kernel=kernel,
                        batch=batch, size=(size, size), stride=stride, padding=kernel // 2,
                        seed=seed)


REAL = [dict(channels=64, size=32, level=lv) for lv in (1, 2, 3, 4)] + [
    dict(channels=256, size=8, level=1), dict(channels=128, size=16, level=2, cyclic=True),
    dict(channels=128, size=32, level=3, kernel=1, stride=2, c_in=64)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "tf32", "bfloat16", "float16"])
@pytest.mark.parametrize("spec", REAL, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_real_sizes_on_gpu(spec, dtype):
    p = wrn_problem(**spec, batch=16)
    if dtype == "tf32":
        torch.backends.cudnn.allow_tf32 = True
        check(p, torch.float32, rel=REL["tf32"])
    else:
        check(p, getattr(torch, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_results_are_deterministic(channels_last):
    p, _ = lowered(wrn_problem(64, 32, 1, batch=64), torch.bfloat16)
    if channels_last:
        p.x = p.x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    runs = [torch.autograd.grad(run(p).float().square().sum(), [p.x, p.weight, p.bias])
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_a_new_width_does_not_recompile():
    """Levels 3 and 4 of a 256-channel stage fall in one bucket: the second width reuses
    the compiled kernels (segment offsets and lengths are not specialised)."""
    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd

    kernels = [conv_fwd._fwd_kernel, conv_bwd_input._dgrad_kernel, conv_bwd_weight._wgrad_kernel]

    def compiled() -> int:
        return sum(len(cache[0]) for k in kernels for cache in k.fn.device_caches.values())

    def step(level):
        p, _ = lowered(wrn_problem(256, 8, level, batch=128), torch.bfloat16)
        torch.autograd.grad(run(p).float().sum(), [p.x, p.weight])

    step(3)
    before = compiled()
    assert before > 0
    step(4)
    assert compiled() == before


@pytest.mark.gpu
def test_torch_compile_sees_the_triton_kernels():
    """On a GPU the forward op is a triton_op: Inductor's graph holds the user kernel."""
    from torch._inductor.utils import run_and_get_code

    p, _ = lowered(wrn_problem(64, 16, 2, batch=4), torch.float32)
    compiled = torch.compile(lambda x, w, b: run(Problem(x, w, b, p.ins, p.outs, p.conv)),
                             fullgraph=True)
    y, code = run_and_get_code(compiled, p.x.detach(), p.weight.detach(), p.bias.detach())
    assert "_fwd_kernel" in "\n".join(code)
    torch.testing.assert_close(y, run(p).detach())


def test_autotuned_launches_replay_the_tuners_choice_without_its_key():
    """After the first launch of a key, an eager launch of an autotuned kernel skips Triton's
    Autotuner.run (whose per-call key costs tens of microseconds) and runs the configuration
    it chose; a new key (another dtype here) goes through the autotuner again."""
    import triton

    from dvn_kernels.triton import configs

    configs._TUNED.clear()
    calls = []
    real_run = triton.runtime.Autotuner.run

    def counting_run(self, *args, **kwargs):
        calls.append(self.base_fn.__name__)
        return real_run(self, *args, **kwargs)

    p = make_problem(*SEGMENT_LAYOUTS["two"], size=(5, 6))
    want = oracle(p).float()
    x, w, b = (t.detach().float().to(DEVICE) for t in (p.x, p.weight, p.bias))
    triton.runtime.Autotuner.run = counting_run
    try:
        first = sliced_conv2d(x, w, b, backend="triton", in_segments=p.ins,
                              out_segments=p.outs, **p.conv)
        after_first = len(calls)
        again = sliced_conv2d(x, w, b, backend="triton", in_segments=p.ins,
                              out_segments=p.outs, **p.conv)
        after_again = len(calls)
        half = sliced_conv2d(x.half(), w.half(), b.half(), backend="triton",
                             in_segments=p.ins, out_segments=p.outs, **p.conv)
    finally:
        triton.runtime.Autotuner.run = real_run
    assert after_first >= 1 and after_again == after_first, calls
    assert len(calls) > after_again  # float16: a key of its own
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert_near(first, want.double(), REL[torch.float32], "float32")
    assert_near(half, want.double(), REL[torch.float16], "float16")
