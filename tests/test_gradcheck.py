"""Numerical gradients in float64 (torch.autograd.gradcheck) for every backend."""

import pytest
import torch

import dvn_kernels
from dvn_kernels import sliced_conv2d
from helpers import SEGMENT_LAYOUTS, make_problem

BACKENDS = [b for b in ("reference", "masked", "cpu") if b in dvn_kernels.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout, kernel, stride, padding, dilation", [
    ("one", 3, 1, 1, 1), ("two", 3, 2, 0, 2), ("three", 1, 2, 0, 1), ("two", 1, 1, 0, 1),
])
def test_gradcheck(backend, layout, kernel, stride, padding, dilation):
    p = make_problem(*SEGMENT_LAYOUTS[layout], kernel=kernel, stride=stride, padding=padding,
                     dilation=dilation, batch=2, size=(6, 5), dtype=torch.float64)

    def f(x, weight, bias):
        return sliced_conv2d(x, weight, bias, in_segments=p.ins, out_segments=p.outs,
                             backend=backend, **p.conv)

    assert torch.autograd.gradcheck(f, (p.x, p.weight, p.bias))


def test_double_backward_is_refused_clearly_by_the_cpu_kernel():
    if "cpu" not in BACKENDS:
        pytest.skip("no cpu kernel")
    p = make_problem(*SEGMENT_LAYOUTS["one"], dtype=torch.float64)
    y = sliced_conv2d(p.x, p.weight, p.bias, in_segments=p.ins, out_segments=p.outs,
                      backend="cpu", **p.conv)
    (gx,) = torch.autograd.grad(y.square().sum(), [p.x], create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward .* backend='reference'"):
        gx.sum().backward()


def test_reference_supports_double_backward():
    p = make_problem(*SEGMENT_LAYOUTS["two"], size=(5, 5), dtype=torch.float64)

    def f(x, weight, bias):
        return sliced_conv2d(x, weight, bias, in_segments=p.ins, out_segments=p.outs,
                             backend="reference", **p.conv)

    assert torch.autograd.gradgradcheck(f, (p.x, p.weight, p.bias))
