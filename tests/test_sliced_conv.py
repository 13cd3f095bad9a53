"""Every backend against the contract's literal meaning, forward and gradients."""

import itertools

import pytest
import torch

import dvn_kernels
from dvn_kernels import sliced_conv2d
from helpers import SEGMENT_LAYOUTS, grads, make_problem, oracle, tolerances

BACKENDS = [b for b in ("reference", "masked", "cpu") if b in dvn_kernels.available_backends()]
GEOMETRIES = [dict(kernel=k, stride=s, padding=p, dilation=d)
              for k, s, p, d in itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2))]


def check_against_oracle(p, backend, dtype=torch.float32):
    y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                      backend=backend, **p.conv)
    expected = oracle(p)
    tol = tolerances(dtype)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    torch.testing.assert_close(y, expected, **tol)
    got, want = grads(y, p.leaves()), grads(expected, p.leaves())
    for name, a, b in zip(("x", "weight", "bias"), got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")
    return y, got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(SEGMENT_LAYOUTS))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{kernel}s{stride}p{padding}d{dilation}".format(**g))
def test_backend_matches_oracle(backend, layout, geometry):
    ins, outs = SEGMENT_LAYOUTS[layout]
    p = make_problem(ins, outs, **geometry, batch=1 if geometry["stride"] == 2 else 3,
                     bias=geometry["padding"] != 2)
    check_against_oracle(p, backend)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("layout", ["two", "one"])
def test_cpu_kernel_with_several_threads(threads, layout):
    """The CPU kernel's threaded loops against the oracle, with gradients on (the im2col bands
    run ATen ops on OpenMP's threads, which must take the caller's autograd state): scripts/test
    runs its workers with one intra-op thread each, so the threaded paths are tested here."""
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is not built")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # batch 1 runs the im2col path (small single images): bands of output rows where the
        # image has more pixels than output channels, else one unfold and threaded GEMMs;
        # batch 5 the others
        for kernel, stride, batch, size in ((3, 1, 1, (54, 54)), (3, 1, 1, (2, 2)),
                                            (3, 1, 5, (23, 19)), (1, 2, 5, (23, 19))):
            p = make_problem(*SEGMENT_LAYOUTS[layout], kernel=kernel, stride=stride,
                             padding=kernel // 2, batch=batch, size=size)
            check_against_oracle(p, "cpu")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_gradient_is_zero_outside_the_active_block(backend):
    p = make_problem(*SEGMENT_LAYOUTS["two"])
    y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                      backend=backend, **p.conv)
    _, gw, gb = grads(y, p.leaves())
    rows, cols = torch.zeros(11, dtype=torch.bool), torch.zeros(13, dtype=torch.bool)
    rows[p.outs.indices()] = True
    cols[p.ins.indices()] = True
    block = rows[:, None] & cols[None, :]
    assert torch.all(gw[~block] == 0) and torch.all(gb[~rows] == 0)
    assert torch.all(gw[block].abs().sum((-1, -2)) > 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", [1, 3])
def test_channels_last_in_and_out(backend, kernel):
    p = make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2, stride=2)
    p.x = p.x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y, (gx, _, _) = check_against_oracle(p, backend)
    if backend == "cpu":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_weight(backend):
    p = make_problem(*SEGMENT_LAYOUTS["one"])
    p.weight = p.weight.detach().to(memory_format=torch.channels_last).requires_grad_()
    check_against_oracle(p, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", [1, 3])
def test_non_contiguous_inputs(backend, kernel):
    p = make_problem(*SEGMENT_LAYOUTS["three"], kernel=kernel, padding=kernel // 2)
    wide = torch.randn(p.x.shape[0], 2 * p.x.shape[1], 10, 11)
    p.x = wide[:, ::2].transpose(2, 3).requires_grad_()  # strided channels, swapped H/W
    assert not p.x.is_contiguous()
    check_against_oracle(p, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64(backend):
    p = make_problem(*SEGMENT_LAYOUTS["two"], dtype=torch.float64, stride=2, dilation=2)
    check_against_oracle(p, backend, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", [1, 3])
def test_low_precision_on_cpu(dtype, kernel):
    if "cpu" not in dvn_kernels.available_backends("cpu", dtype):
        pytest.skip("no cpu kernel")
    p = make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2,
                     dtype=torch.float64)
    y64 = oracle(p)
    low = make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2, dtype=dtype)
    y = sliced_conv2d(low.x, low.weight, low.bias, in_segments=low.ins, out_segments=low.outs,
                      backend="cpu", **low.conv)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), y64, **tolerances(dtype))
    for a, b in zip(grads(y, low.leaves()), grads(y64, p.leaves())):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **tolerances(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", [1, 3])
def test_empty_batch(backend, kernel):
    p = make_problem(*SEGMENT_LAYOUTS["two"], kernel=kernel, padding=kernel // 2, batch=0)
    y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                      backend=backend, **p.conv)
    assert y.shape == (0, 7, 11, 10)
    gx, gw, gb = torch.autograd.grad(y.sum(), p.leaves())
    assert gx.shape == p.x.shape and torch.all(gw == 0) and torch.all(gb == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_some_inputs_need_grad(backend):
    p = make_problem(*SEGMENT_LAYOUTS["two"])
    want = grads(oracle(p), p.leaves())
    for needs in ([True, False, False], [False, True, False], [False, False, True]):
        leaves = [t.detach().requires_grad_(n) for t, n in zip(p.leaves(), needs)]
        y = sliced_conv2d(*leaves, in_segments=p.ins, out_segments=p.outs, backend=backend,
                          **p.conv)
        k = needs.index(True)
        (got,) = grads(y, [leaves[k]])
        torch.testing.assert_close(got, want[k], **tolerances(torch.float32))


def test_full_segments_equal_conv2d():
    p = make_problem(*SEGMENT_LAYOUTS["full"])
    expected = torch.nn.functional.conv2d(p.x, p.weight, p.bias, **p.conv)
    for backend in BACKENDS:
        y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                          backend=backend, **p.conv)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_plain_pairs_and_padding_strings():
    p = make_problem([(0, 4)], [(2, 3)], requires_grad=False)
    a = sliced_conv2d(p.x, p.weight, p.bias, in_segments=[(0, 4)], out_segments=((2, 3),),
                      padding="same")
    b = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs, padding=1)
    torch.testing.assert_close(a, b)
    c = sliced_conv2d(p.x, p.weight, None, in_segments=p.ins, out_segments=p.outs,
                      padding="valid")
    assert c.shape[-2:] == (9, 8)


def test_auto_picks_the_cpu_kernel_on_cpu():
    x = torch.randn(1, 2, 4, 4)
    expected = "cpu" if "cpu" in dvn_kernels.available_backends() else "reference"
    assert dvn_kernels.resolve_backend("auto", x) == expected
    assert dvn_kernels.resolve_backend("masked", x) == "masked"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_auto_on_cuda_starts_from_slice_and_cudnn(dtype):
    # The fixed order (measuring off, or not yet measured) runs slice + cuDNN first.
    x = torch.randn(1, 2, 4, 4, device="cuda", dtype=dtype)
    assert dvn_kernels.resolve_backend("auto", x) == "reference"
    if dtype != torch.float64:
        assert "triton" in dvn_kernels.available_backends("cuda", dtype)


def test_inference_mode():
    p = make_problem(*SEGMENT_LAYOUTS["two"], requires_grad=False)
    with torch.inference_mode():
        for backend in BACKENDS:
            y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                              backend=backend, **p.conv)
            torch.testing.assert_close(y, oracle(p), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "masked", "auto"])
def test_cuda_tensors_match_the_cpu_oracle(backend):
    p = make_problem(*SEGMENT_LAYOUTS["two"], dtype=torch.float64, stride=2)
    expected = oracle(p)
    want = grads(expected, p.leaves())
    leaves = [t.detach().cuda().requires_grad_() for t in p.leaves()]
    y = sliced_conv2d(*leaves, in_segments=p.ins, out_segments=p.outs, backend=backend, **p.conv)
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), expected)
    for a, b in zip(grads(y, leaves), want):
        torch.testing.assert_close(a.cpu(), b)
