"""Random sliced convolutions in float32, every CPU backend against a float64 oracle.

    python tests/fuzz_conv.py --cases 2000 --seed 0

Run by tests/test_fuzz.py in a subprocess, so that a case that kills the process (as torch's
CPU convolution did on some channels_last inputs of width 1) fails the test with its
description instead of taking pytest down: each case is printed before it runs. Shapes are
small and degenerate sizes (height or width 1, one channel, stride larger than the input)
are drawn often, since that is where kernels break.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels import ChannelSegments, sliced_conv2d


def random_segments(rng: random.Random, channels: int) -> ChannelSegments:
    cuts = sorted(rng.sample(range(1, channels), min(channels - 1, rng.randint(0, 4))))
    bounds = [0] + cuts + [channels]
    pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    chosen = [p for p in pieces if rng.random() < 0.5] or [rng.choice(pieces)]
    return ChannelSegments(chosen)


def random_case(rng: random.Random) -> dict:
    kh, kw = rng.choice([1, 1, 2, 3, 3, 5]), rng.choice([1, 1, 2, 3, 3])
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    dilation = (rng.randint(1, 3), rng.randint(1, 3))
    span = [d * (k - 1) + 1 for d, k in zip(dilation, (kh, kw))]
    size = [max(lo, rng.choice([1, 1, 2, 3, 5, 7, 9]))
            for lo in (span[0] - 2 * padding[0], span[1] - 2 * padding[1])]
    c_in, c_out = rng.randint(1, 12), rng.randint(1, 12)
    return dict(c_in=c_in, c_out=c_out, kernel=(kh, kw), stride=stride, padding=padding,
                dilation=dilation, size=tuple(max(1, s) for s in size),
                batch=rng.choice([1, 1, 2, 3]), ins=random_segments(rng, c_in),
                outs=random_segments(rng, c_out), bias=rng.random() < 0.5,
                channels_last=rng.random() < 0.5)


def check(case: dict, backends: list[str], gen: torch.Generator) -> list[str]:
    """Forward and gradients of every backend in float32 against float64 slicing."""
    w64 = torch.randn(case["c_out"], case["c_in"], *case["kernel"], generator=gen,
                      dtype=torch.float64)
    b64 = torch.randn(case["c_out"], generator=gen, dtype=torch.float64) if case["bias"] else None
    x64 = torch.randn(case["batch"], case["ins"].total, *case["size"], generator=gen,
                      dtype=torch.float64)
    conv = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])
    leaves64 = [t.requires_grad_() for t in (x64, w64, b64) if t is not None]
    out_idx, in_idx = torch.tensor(case["outs"].indices()), torch.tensor(case["ins"].indices())
    want = F.conv2d(x64, w64[out_idx][:, in_idx], None if b64 is None else b64[out_idx], **conv)
    g64 = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, leaves64, g64)
    errors = []
    for backend in backends:
        leaves = [t.detach().float() for t in leaves64]
        if case["channels_last"]:
            leaves[0] = leaves[0].contiguous(memory_format=torch.channels_last)
        for t in leaves:
            t.requires_grad_()
        x, w = leaves[0], leaves[1]
        b = leaves[2] if case["bias"] else None
        y = sliced_conv2d(x, w, b, in_segments=case["ins"], out_segments=case["outs"],
                          backend=backend, **conv)
        got = [y] + list(torch.autograd.grad(y, leaves, g64.float()))
        for name, a, e in zip(("y", "grad x", "grad weight", "grad bias"), got,
                              [want, *want_grads]):
            if a.shape != e.shape or not torch.allclose(a.double(), e, rtol=1e-4, atol=1e-4):
                errors.append(f"{backend}: {name} differs")
    return errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    backends = [b for b in ("reference", "masked", "cpu") if b in dvn_kernels.available_backends()]
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    failures = 0
    for i in range(args.cases):
        case = random_case(rng)
        print(f"case {i}: {case}", flush=True)  # the last line names a case that crashes
        errors = check(case, backends, gen)
        if errors:
            failures += 1
            print(f"FAILED case {i}: {'; '.join(errors)}", flush=True)
    print(f"{args.cases} cases, {failures} failed, backends {backends}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
