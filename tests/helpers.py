"""Random sliced-convolution problems and the literal oracle of the op contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels import ChannelSegments

requires_cpu_kernel = pytest.mark.skipif(
    "cpu" not in dvn_kernels.available_backends("cpu"),
    reason="the C++ extension dvn_kernels._C is not built")

# Segment layouts for 13 input and 11 output channels: starts not multiples of 8, one, two,
# three ranges, and everything.
SEGMENT_LAYOUTS = {
    "one": ([(3, 7)], [(0, 5)]),
    "two": ([(1, 3), (9, 4)], [(2, 2), (6, 5)]),
    "three": ([(0, 2), (5, 3), (10, 3)], [(1, 1), (4, 3), (8, 3)]),
    "full": ([(0, 13)], [(0, 11)]),
}


@dataclass
class Problem:
    x: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    ins: ChannelSegments
    outs: ChannelSegments
    conv: dict = field(default_factory=dict)

    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.weight, self.bias) if t is not None]


def make_problem(ins, outs, *, c_in=13, c_out=11, kernel=3, batch=2, size=(11, 10),
                 stride=1, padding=1, dilation=1, bias=True, dtype=torch.float32,
                 requires_grad=True, seed=0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    ins, outs = ChannelSegments(ins), ChannelSegments(outs)
    fan_in = c_in * kernel * kernel
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=gen) / fan_in ** 0.5
    b = torch.randn(c_out, generator=gen) if bias else None
    x = torch.randn(batch, ins.total, *size, generator=gen)
    cast = [t.to(dtype).requires_grad_(requires_grad) if t is not None else None
            for t in (x, weight, b)]
    return Problem(cast[0], cast[1], cast[2], ins, outs,
                   dict(stride=stride, padding=padding, dilation=dilation))


def oracle(p: Problem) -> torch.Tensor:
    """The contract's meaning, literally: conv2d(x, weight[out_idx][:, in_idx], bias[out_idx])."""
    out_idx = torch.tensor(p.outs.indices())
    in_idx = torch.tensor(p.ins.indices())
    w = p.weight[out_idx][:, in_idx]
    b = p.bias[out_idx] if p.bias is not None else None
    return F.conv2d(p.x, w, b, **p.conv)


def grads(y: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """Gradients of <y, g> for a fixed random g."""
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    return list(torch.autograd.grad(y, inputs, g))


def tolerances(dtype: torch.dtype) -> dict:
    return {torch.float64: dict(rtol=1e-10, atol=1e-10),
            torch.float32: dict(rtol=1e-4, atol=1e-4),
            torch.float16: dict(rtol=1e-2, atol=2e-2),
            torch.bfloat16: dict(rtol=4e-2, atol=8e-2)}[dtype]
