"""Fuzzing: hypothesis (float64, cpu and masked against reference) and thousands of random
float32 cases per backend against a float64 oracle, in a subprocess (tests/fuzz_conv.py)."""

import os
import subprocess
import sys
from pathlib import Path

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
def test_fuzz_against_reference(case):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(case["c_out"], case["c_in"], *case["kernel"], generator=gen,
                         dtype=torch.float64).requires_grad_()
    bias = torch.randn(case["c_out"], generator=gen, dtype=torch.float64).requires_grad_() \
        if case["bias"] else None
    x = torch.randn(case["batch"], case["ins"].total, *case["size"], generator=gen,
                    dtype=torch.float64)
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    leaves = [t for t in (x, weight, bias) if t is not None]
    conv = dict(in_segments=case["ins"], out_segments=case["outs"], stride=case["stride"],
                padding=case["padding"], dilation=case["dilation"])
    expected = sliced_conv2d(x, weight, bias, backend="reference", **conv)
    want = grads(expected, leaves)
    for backend in [b for b in ("masked", "cpu") if b in dvn_kernels.available_backends()]:
        y = sliced_conv2d(x, weight, bias, backend=backend, **conv)
        torch.testing.assert_close(y, expected)
        for a, b in zip(grads(y, leaves), want):
            torch.testing.assert_close(a, b)


def run_isolated(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """tests/fuzz_conv.py in its own process: a case that kills it fails the test, naming it."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
    return subprocess.run([sys.executable, str(root / "tests" / "fuzz_conv.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=root)


def test_thousands_of_random_cases_against_float64():
    """3,000 random float32 problems (degenerate sizes drawn often) per CPU backend, forward
    and gradients, against slicing in float64."""
    r = run_isolated(["--cases", "3000", "--seed", "0"])
    last = r.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert r.returncode == 0, (f"exit {r.returncode} (a negative code is a signal) after: "
                               f"{last[0]}\n{r.stderr[-2000:]}")
    assert "3000 cases, 0 failed" in r.stdout


CRASHES = [  # (x shape, weight shape, stride, padding, dilation): torch 2.14.1 segfaulted
    ((3, 4, 7, 1), (23, 4, 1, 1), 2, 1, 2),             # the case of issue 15
    ((3, 8, 3, 1), (12, 8, 3, 1), (3, 2), 1, (2, 3)),   # found by tests/fuzz_conv.py
    ((2, 4, 5, 1), (8, 4, 1, 1), 3, 2, 3),
    ((2, 4, 1, 5), (8, 4, 1, 1), 3, 2, 3),              # neighbours: height 1, no bias below
    ((2, 4, 1, 1), (8, 4, 1, 1), 2, 1, 2),
]


@pytest.mark.parametrize("backend", ["reference", "masked", "cpu"])
def test_layouts_that_crashed_torch_run_in_every_backend(backend):
    """channels_last inputs of height or width 1 with bias, padding, stride and dilation killed
    the process inside torch's CPU convolution; every backend routes them through NCHW. Run in
    a subprocess so that a crash fails this test instead of ending the session."""
    if backend not in dvn_kernels.available_backends():
        pytest.skip(f"{backend} unavailable")
    code = f"""
import torch, torch.nn.functional as F
import dvn_kernels
for x_shape, w_shape, stride, padding, dilation in {CRASHES!r}:
    for bias in (True, False):
        x = torch.randn(x_shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(w_shape, requires_grad=True)
        b = torch.randn(w_shape[0], requires_grad=True) if bias else None
        outs = [(1, w_shape[0] - 3), (w_shape[0] - 2, 2)]
        y = dvn_kernels.sliced_conv2d(x, w, b, in_segments=[(0, x_shape[1])], out_segments=outs,
                                      stride=stride, padding=padding, dilation=dilation,
                                      backend={backend!r})
        idx = torch.tensor([c for s, n in outs for c in range(s, s + n)])
        x64, w64 = x.detach().double(), w.detach().double()
        want = F.conv2d(x64, w64[idx], None if b is None else b.detach().double()[idx],
                        stride, padding, dilation)
        assert torch.allclose(y.double(), want, atol=1e-4), (x_shape, stride, padding, bias)
        y.backward(torch.randn_like(y).contiguous(memory_format=torch.channels_last))
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", \
        f"exit {r.returncode} (a negative code is a signal)\n{r.stderr[-2000:]}"
