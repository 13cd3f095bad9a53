"""Learnable synthetic stand-ins for the named tasks, for tests and smoke runs without data.

Enabled by ``DVN_SYNTHETIC_DATA=1`` (read by ``dvn.runs.task_splits`` whenever a run's tasks
are loaded: training, eval and a run's unit file; an environment variable, so it reaches
torchrun workers and subprocesses). Each image of fine class c in 0..9 is noise plus a bright
patch at a class-specific place; ``*-coarse`` tasks label the same images c // 5,
``*-0-4`` / ``*-5-9`` keep the classes 0-4 / 5-9 (relabelled 0-4), as the real tasks do.
"""

from __future__ import annotations

import os

import torch

ENV = "DVN_SYNTHETIC_DATA"


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def synthetic_task(name: str, split: str = "train", *, root=None):
    from dvn.data import Split
    n = 640 if split == "train" else 320
    gray = name.startswith(("fmnist", "digits"))
    c, s = (1, 28) if gray else (3, 32)
    g = torch.Generator().manual_seed(1234 + (split != "train") + 7 * gray)
    fine = torch.arange(n) % 10
    fine = fine[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, c, s, s), generator=g, dtype=torch.uint8)
    cell = s // 4
    for k in range(10):
        r, q = divmod(k, 4)
        images[fine == k, :, r * cell + 1:(r + 1) * cell - 1, q * cell + 1:(q + 1) * cell - 1] = 220
    if name.endswith("-coarse"):
        return Split(images, fine // 5, ("low", "high"), f"{name}/{split}")
    if name.endswith(("-0-4", "-5-9")):
        keep = fine < 5 if name.endswith("-0-4") else fine >= 5
        return Split(images[keep], fine[keep] % 5, tuple(f"c{i}" for i in range(5)),
                     f"{name}/{split}")
    return Split(images, fine, tuple(f"c{i}" for i in range(10)), f"{name}/{split}")
