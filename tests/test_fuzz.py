"""Hypothesis fuzz: random shapes, geometry and segments; cpu and masked against reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dvn_kernels
from dvn_kernels import ChannelSegments, sliced_conv2d
from helpers import grads


@st.composite
def segments(draw, channels: int) -> ChannelSegments:
    """Random sorted, disjoint ranges; adjacent ranges are allowed (and kept separate)."""
    cuts = sorted(draw(st.sets(st.integers(1, channels - 1), max_size=4))) if channels > 1 else []
    bounds = [0] + cuts + [channels]
    pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    keep = draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    chosen = [p for p, k in zip(pieces, keep) if k] or [pieces[draw(st.integers(0, len(pieces) - 1))]]
    return ChannelSegments(chosen)


@st.composite
def problems(draw):
    c_in, c_out = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    h = draw(st.integers(max(1, span_h - 2 * padding[0]), 12))
    w = draw(st.integers(max(1, span_w - 2 * padding[1]), 12))
    ins, outs = draw(segments(c_in)), draw(segments(c_out))
    return dict(c_in=c_in, c_out=c_out, kernel=(kh, kw), stride=stride, padding=padding,
                dilation=dilation, size=(h, w), batch=draw(st.integers(1, 3)), ins=ins,
                outs=outs, bias=draw(st.booleans()), channels_last=draw(st.booleans()))


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(problems())
def test_fuzz_against_reference(spec):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(spec["c_out"], spec["c_in"], *spec["kernel"], generator=gen,
                         dtype=torch.float64).requires_grad_()
    bias = torch.randn(spec["c_out"], generator=gen, dtype=torch.float64).requires_grad_() \
        if spec["bias"] else None
    x = torch.randn(spec["batch"], spec["ins"].total, *spec["size"], generator=gen,
                    dtype=torch.float64)
    if spec["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    leaves = [t for t in (x, weight, bias) if t is not None]
    conv = dict(in_segments=spec["ins"], out_segments=spec["outs"], stride=spec["stride"],
                padding=spec["padding"], dilation=spec["dilation"])
    expected = sliced_conv2d(x, weight, bias, backend="reference", **conv)
    want = grads(expected, leaves)
    for backend in [b for b in ("masked", "cpu") if b in dvn_kernels.available_backends()]:
        y = sliced_conv2d(x, weight, bias, backend=backend, **conv)
        torch.testing.assert_close(y, expected)
        for a, b in zip(grads(y, leaves), want):
            torch.testing.assert_close(a, b)
