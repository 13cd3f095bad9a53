"""The extension's op registration: opcheck, torch.compile, build information."""

import pytest
import torch

import dvn_kernels
from dvn_kernels import extension, sliced_conv2d
from helpers import SEGMENT_LAYOUTS, make_problem, requires_cpu_kernel

OPS = torch.ops.dvn_kernels if extension.LOADED else None


def op_operands(p):
    """(weight, bias, spec) as the kernel op takes them: more than two ranges on a side are
    gathered by the plan first (ConvPlan.kernel_operands)."""
    plan = dvn_kernels.conv_plan(p.weight.shape, p.ins, p.outs, **p.conv)
    weight, bias = plan.kernel_operands(p.weight, p.bias)
    return weight.detach().requires_grad_(p.weight.requires_grad), \
        None if bias is None else bias.detach().requires_grad_(p.bias.requires_grad), plan.spec


CASES = {
    "3x3-one-bias": dict(layout="one"),
    "3x3-two-nobias-strided": dict(layout="two", bias=False, stride=2, dilation=2),
    "1x1-three-strided": dict(layout="three", kernel=1, padding=0, stride=2),
    "5x5-full": dict(layout="full", kernel=5, padding=2),
}


def case(name, **extra):
    spec = dict(CASES[name], **extra)
    layout = spec.pop("layout")
    return make_problem(*SEGMENT_LAYOUTS[layout], **spec)


@requires_cpu_kernel
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_forward(name, channels_last):
    p = case(name)
    if channels_last:
        p.x = p.x.detach().to(memory_format=torch.channels_last).requires_grad_()
    weight, bias, spec = op_operands(p)
    torch.library.opcheck(OPS.sliced_conv2d.default, (p.x, weight, bias, spec))


@requires_cpu_kernel
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True]])
def test_opcheck_backward(name, mask):
    p = case(name, requires_grad=False)
    y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs, **p.conv)
    weight, _, spec = op_operands(p)
    torch.library.opcheck(OPS.sliced_conv2d_backward.default,
                          (torch.randn_like(y), p.x, weight, spec, mask))


@requires_cpu_kernel
def test_kernels_are_registered():
    assert extension.has_kernel("sliced_conv2d", "CPU")
    assert extension.has_kernel("sliced_conv2d_backward", "CPU")
    assert extension.has_kernel("sliced_conv2d", "Autograd")
    info = dvn_kernels.build_info()
    assert info["loaded"] and info["cpu_kernel"]
    if info.get("cuda"):
        assert info["cuda_kernel"], "built with CUDA but no CUDA kernel is registered"
    else:
        assert info["why_no_cuda"]


class TwoConvs(torch.nn.Module):
    """A 3x3 sliced conv on two ranges, a ReLU and a strided 1x1 sliced conv."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend
        self.w1 = torch.nn.Parameter(torch.randn(11, 13, 3, 3) / 10)
        self.b1 = torch.nn.Parameter(torch.randn(11))
        self.w2 = torch.nn.Parameter(torch.randn(9, 11, 1, 1) / 3)
        self.ins = dvn_kernels.ChannelSegments([(1, 3), (9, 4)])
        self.mid = dvn_kernels.ChannelSegments([(2, 2), (6, 5)])
        self.outs = dvn_kernels.ChannelSegments([(0, 4)])

    def forward(self, x):
        h = sliced_conv2d(x, self.w1, self.b1, in_segments=self.ins, out_segments=self.mid,
                          padding=1, backend=self.backend).relu()
        return sliced_conv2d(h, self.w2, None, in_segments=self.mid, out_segments=self.outs,
                             stride=2, backend=self.backend)


def compiled_matches_eager(backend: str, compiler: str):
    torch._dynamo.reset()
    model = TwoConvs(backend)
    x = torch.randn(2, 7, 9, 9, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    outs = []
    for fn in (model, compiled):
        y = fn(x)
        outs.append([y] + list(torch.autograd.grad(y.square().sum(), [x, *model.parameters()])))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@requires_cpu_kernel
@pytest.mark.slow
def test_torch_compile_fullgraph_inductor():
    compiled_matches_eager("cpu", "inductor")


@pytest.mark.parametrize("backend", ["reference", "masked", "auto"])
def test_torch_compile_fullgraph_other_backends(backend):
    compiled_matches_eager(backend, "aot_eager")
