"""Grouped and depthwise sliced convolutions: every backend against the literal meaning."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels import ChannelSegments, sliced_conv2d

BACKENDS = [b for b in ("reference", "masked", "cpu", "auto")
            if b == "auto" or b in dvn_kernels.available_backends()]


def meaning(x, w, b, ins, outs, groups, **conv):
    """The contract: x scattered into the full input channels (zeros elsewhere), the grouped
    conv of the full weight, the active outputs kept."""
    full = x.new_zeros(x.shape[0], w.shape[1] * groups, *x.shape[2:])
    full[:, ins.indices()] = x
    return F.conv2d(full, w, b, groups=groups, **conv)[:, outs.indices()]


# (groups, input channels per group, output channels per group, in units, out units):
# depthwise (1 and 1), depthwise with a multiplier (1 and 2), grouped (4 and 4), and one group
# per unit or several.
SHAPES = {"depthwise": (8, 1, 1), "depthwise-x2": (6, 1, 2), "grouped": (4, 4, 4),
          "grouped-wide": (2, 3, 5)}


def whole_groups(groups, c_in_g, c_out_g, active):
    return (ChannelSegments([(g * c_in_g, c_in_g) for g in active]),
            ChannelSegments([(g * c_out_g, c_out_g) for g in active]))


LAYOUTS = {  # active groups, by the number of groups
    "first": lambda g: [0],
    "leading-half": lambda g: list(range(g // 2)),
    "two-ranges": lambda g: [0, g - 1],
    "three-ranges": lambda g: [0, 2, g - 1] if g > 3 else [0, g - 1],
    "all": lambda g: list(range(g)),
}
GEOMETRIES = [dict(kernel=k, stride=s, padding=p, dilation=d)
              for k, s, p, d in [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (1, 2, 0, 1)]]


def problem(shape, layout, geometry, seed=0, dtype=torch.float64, bias=True):
    groups, c_in_g, c_out_g = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    ins, outs = whole_groups(groups, c_in_g, c_out_g, LAYOUTS[layout](groups))
    k = geometry["kernel"]
    w = torch.randn(groups * c_out_g, c_in_g, k, k, generator=gen, dtype=dtype)
    b = torch.randn(groups * c_out_g, generator=gen, dtype=dtype) if bias else None
    x = torch.randn(2, ins.total, 9, 8, generator=gen, dtype=dtype)
    conv = {key: geometry[key] for key in ("stride", "padding", "dilation")}
    return x, w, b, ins, outs, groups, conv


def check(backend, x, w, b, ins, outs, groups, conv, tol=None):
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    x, w = leaves[0], leaves[1]
    b = leaves[2] if len(leaves) == 3 else None
    y = sliced_conv2d(x, w, b, in_segments=ins, out_segments=outs, groups=groups,
                      backend=backend, **conv)
    want = meaning(x, w, b, ins, outs, groups, **conv)
    tol = tol or dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y, want, **tol)
    g = torch.randn_like(y)
    for name, a, e in zip(("x", "weight", "bias"), torch.autograd.grad(y, leaves, g),
                          torch.autograd.grad(want, leaves, g)):
        torch.testing.assert_close(a, e, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{kernel}s{stride}p{padding}d{dilation}".format(**g))
def test_whole_groups_match_the_meaning(backend, shape, layout, geometry):
    check(backend, *problem(shape, layout, geometry, bias=geometry["kernel"] != 5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_channels_last_and_the_zero_gradient_outside_the_groups(backend):
    x, w, b, ins, outs, groups, conv = problem("grouped", "two-ranges", GEOMETRIES[0],
                                               dtype=torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    check(backend, x, w, b, ins, outs, groups, conv, dict(rtol=1e-4, atol=1e-4))
    w = w.detach().requires_grad_()
    y = sliced_conv2d(x, w, None, in_segments=ins, out_segments=outs, groups=groups,
                      backend=backend, **conv)
    (gw,) = torch.autograd.grad(y.sum(), [w])
    rows = torch.zeros(w.shape[0], dtype=torch.bool)
    rows[outs.indices()] = True
    assert torch.all(gw[~rows] == 0) and torch.all(gw[rows].abs().sum((1, 2, 3)) > 0)


CUT = [  # segments that cut through groups of 4 channels, or differ between the sides
    ([(2, 4)], [(0, 4)]),
    ([(0, 4)], [(4, 4)]),
    ([(0, 8)], [(0, 4)]),
    ([(1, 2), (9, 3)], [(3, 6)]),
]


@pytest.mark.parametrize("ins, outs", CUT)
@pytest.mark.parametrize("backend", ["reference", "masked", "auto"])
def test_segments_cutting_groups_follow_the_meaning(ins, outs, backend):
    x, w, b, _, _, groups, conv = problem("grouped", "all", GEOMETRIES[0])
    ins, outs = ChannelSegments(ins), ChannelSegments(outs)
    check(backend, x[:, : ins.total], w, b, ins, outs, groups, conv)


@pytest.mark.parametrize("ins, outs", CUT)
def test_kernels_refuse_segments_cutting_groups(ins, outs):
    if "cpu" not in dvn_kernels.available_backends():
        pytest.skip("no cpu kernel")
    x, w, b, _, _, groups, conv = problem("grouped", "all", GEOMETRIES[0])
    ins = ChannelSegments(ins)
    with pytest.raises(NotImplementedError, match="backend: 'cpu' cannot run this convolution: "
                                                  "groups: the segments must hold whole groups"):
        sliced_conv2d(x[:, : ins.total], w, b, in_segments=ins, out_segments=outs,
                      groups=groups, backend="cpu", **conv)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_every_kernel_backend_takes_whole_groups(backend):
    plan = dvn_kernels.conv_plan((8, 1, 3, 3), [(0, 4)], [(0, 4)], padding=1, groups=8)
    assert plan.kernel_reason is None
    assert dvn_kernels.backends.kernel_unsupported(backend, plan) is None


requires_cuda_kernel = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in dvn_kernels.available_backends("cuda"),
    reason="needs a GPU and the cuda kernels")


@requires_cuda_kernel
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("layout", ["first", "two-ranges", "all"])
@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=lambda g: "k{kernel}s{stride}p{padding}d{dilation}".format(**g))
def test_cuda_grouped_and_depthwise_float64(shape, layout, geometry):
    """The grouped implicit GEMM (the group as grid z) and the direct depthwise kernels."""
    x, w, b, ins, outs, groups, conv = problem(shape, layout, geometry)
    check("cuda", x.cuda(), w.cuda(), b.cuda(), ins, outs, groups, conv)


@requires_cuda_kernel
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_grouped_and_depthwise_low_precision(shape, dtype):
    x, w, b, ins, outs, groups, conv = problem(shape, "two-ranges", GEOMETRIES[0])
    leaves = [t.to("cuda", dtype) for t in (x, w, b)]
    leaves[0] = leaves[0].contiguous(memory_format=torch.channels_last)
    # Both sides round alike (bfloat16 storage; float32 as TF32, cuDNN's default too).
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-2, atol=1e-2)
    check("cuda", *leaves, ins, outs, groups, conv, tol)


@requires_cuda_kernel
def test_cuda_depthwise_many_pixels_splits_the_weight_gradient():
    """MobileNet-sized depthwise layer: the pixel-split weight gradient and its reduction."""
    gen = torch.Generator().manual_seed(3)
    ins = outs = ChannelSegments([(0, 48), (96, 48)])
    x = torch.randn(4, 96, 28, 28, generator=gen, dtype=torch.float64).cuda()
    w = torch.randn(144, 1, 3, 3, generator=gen, dtype=torch.float64).cuda()
    check("cuda", x, w, None, ins, outs, 144, dict(stride=1, padding=1))


TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def ieee_float32():
    """The Triton tests compare float32 with float64 closely: no TF32 on a GPU."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old
requires_triton = pytest.mark.skipif(
    "triton" not in dvn_kernels.available_backends(TRITON_DEVICE),
    reason="triton unavailable (CPU tests need TRITON_INTERPRET=1)")


@requires_triton
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("layout", ["first", "two-ranges", "three-ranges", "all"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[3]],
                         ids=["k3s1", "k3s2", "k3d2"])
@pytest.mark.usefixtures("ieee_float32")
def test_triton_grouped(shape, layout, geometry):
    """The Triton kernels' groups (grid axis 1 runs over the active groups), float32 against
    the meaning in float64."""
    x, w, b, ins, outs, groups, conv = problem(shape, layout, geometry)
    leaves = [t.float().to(TRITON_DEVICE).requires_grad_() for t in (x, w, b)]
    y = sliced_conv2d(*leaves, in_segments=ins, out_segments=outs, groups=groups,
                      backend="triton", **conv)
    exact = [t.detach().double().cpu().requires_grad_() for t in leaves]
    want = meaning(*exact, ins, outs, groups, **conv)
    torch.testing.assert_close(y.double().cpu(), want, rtol=1e-4, atol=1e-4)
    g = torch.randn(want.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, leaves, g.float().to(TRITON_DEVICE))
    for name, a, e in zip(("x", "weight", "bias"), got, torch.autograd.grad(want, exact, g)):
        torch.testing.assert_close(a.double().cpu(), e, rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"grad of {name}: {m}")


@requires_triton
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.usefixtures("ieee_float32")
def test_triton_depthwise_many_pixels(channels_last):
    """The direct depthwise kernels over several grad-weight chunks and tiles, two ranges."""
    gen = torch.Generator().manual_seed(3)
    groups = 48
    ins, outs = whole_groups(groups, 1, 2, [0, 1, 2, 40, 41])
    w = torch.randn(2 * groups, 1, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(2 * groups, generator=gen, dtype=torch.float64)
    x = torch.randn(3, ins.total, 23, 21, generator=gen, dtype=torch.float64)
    conv = dict(stride=2, padding=1, dilation=1)
    leaves = [t.float().to(TRITON_DEVICE) for t in (x, w, b)]
    if channels_last:
        leaves[0] = leaves[0].contiguous(memory_format=torch.channels_last)
    leaves = [t.requires_grad_() for t in leaves]
    y = sliced_conv2d(*leaves, in_segments=ins, out_segments=outs, groups=groups,
                      backend="triton", **conv)
    exact = [t.requires_grad_() for t in (x, w, b)]
    want = meaning(*exact, ins, outs, groups, **conv)
    torch.testing.assert_close(y.double().cpu(), want, rtol=1e-4, atol=1e-4)
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(y, leaves, g.float().to(TRITON_DEVICE))
    for a, e in zip(got, torch.autograd.grad(want, exact, g)):
        torch.testing.assert_close(a.double().cpu(), e, rtol=1e-4, atol=1e-4)


@requires_triton
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.usefixtures("ieee_float32")
def test_triton_grouped_split_k(split):
    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd

    x, w, b, ins, outs, groups, conv = problem("grouped", "two-ranges", GEOMETRIES[1])
    want = meaning(x, w, None, ins, outs, groups, **conv)
    g = torch.randn_like(want)
    ex, ew = torch.autograd.grad(meaning(x.requires_grad_(), w.requires_grad_(), None, ins,
                                         outs, groups, **conv), [x, w], g)
    xf, wf, gf = (t.detach().float().to(TRITON_DEVICE) for t in (x, w, g))
    geo = [(conv[k], conv[k]) for k in ("stride", "padding", "dilation")]
    y = torch.empty(want.shape, device=TRITON_DEVICE)
    conv_fwd.conv_forward(xf, wf, None, ins, outs, y, *geo, "ieee", split_k=split, groups=groups)
    gx = torch.empty_like(xf)
    conv_bwd_input.conv_grad_input(gf, wf, ins, outs, gx, *geo, "ieee", split_k=split,
                                   groups=groups)
    gw = torch.zeros_like(wf)
    conv_bwd_weight.conv_grad_weight(gf, xf, ins, outs, gw, *geo, "ieee", split_k=split,
                                     groups=groups)
    for got, exp in ((y, want), (gx, ex), (gw, ew)):
        torch.testing.assert_close(got.double().cpu(), exp, rtol=1e-4, atol=1e-4)


def test_plan_of_more_than_two_ranges_runs_a_compact_grouped_conv():
    plan = dvn_kernels.conv_plan((16, 2, 3, 3), [(0, 2), (4, 2), (12, 2)],
                                 [(0, 2), (4, 2), (12, 2)], padding=1, groups=8)
    assert plan.out_gather == (0, 1, 4, 5, 12, 13) and plan.in_gather is None
    assert "groups=3" in plan.spec and "in=0+6 out=0+6" in plan.spec


@pytest.mark.skipif("cpu" not in dvn_kernels.available_backends(), reason="no cpu kernel")
@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False]])
def test_opcheck_grouped(mask):
    x, w, b, ins, outs, groups, conv = problem("depthwise", "two-ranges", GEOMETRIES[1],
                                               dtype=torch.float32)
    plan = dvn_kernels.conv_plan(w.shape, ins, outs, groups=groups, **conv)
    ops = torch.ops.dvn_kernels
    torch.library.opcheck(ops.sliced_conv2d.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), plan.spec))
    y = ops.sliced_conv2d.default(x.detach(), w.detach(), b.detach(), plan.spec)
    torch.library.opcheck(ops.sliced_conv2d_backward.default,
                          (torch.randn_like(y), x.detach(), w.detach(), plan.spec, mask))
