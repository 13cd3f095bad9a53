"""Training throughput of the joint objective: the sliced model against its masked twin.

Both run the same parameters, the same batches and the same step (forward of every task and
level, one backward, one SGD step), alternated in one process; the ratio of median step times
is the speedup (the FLOP ideal for k tasks x k levels is k * k^2 / sum(l^2), e.g. 1.6x for k=2
and 2.13x for k=4).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from ..model import backbones
from ..timing import time_calls
from ..model.twin import MaskedTwin
from .losses import joint_loss


def flop_ideal(k: int) -> float:
    return k ** 3 / sum(l * l for l in range(1, k + 1))


def bench_joint(units: int, *, depth: int = 14, width: int = 4, batch: int = 32,
                size: int = 28, channels: int = 1, steps: int = 7, warmup: int = 2,
                backend: str = "cpu", device: str = "cpu", seed: int = 0) -> dict:
    """Median step time of the joint objective with ``backend`` and with the masked twin."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = backbones.wrn(depth, width, units=units, tasks=units, num_classes=10,
                          input_sizes=size, image_channels=channels, backend=backend).to(dev)
    runners = {backend: model, "masked": MaskedTwin(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    batches = {j: (torch.randn(batch, channels, size, size, device=dev),
                   torch.randint(0, 10, (batch,), device=dev)) for j in range(1, units + 1)}
    configs = [(j, l) for j in range(1, units + 1) for l in range(1, units + 1)]

    def step(runner) -> None:
        loss = joint_loss(runner, batches, configs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # alternating: both see the same machine noise
    names = list(runners)
    samples = time_calls([lambda r=runners[k]: step(r) for k in names], repeats=steps,
                         warmup=warmup, order="fixed", device=dev)
    times = dict(zip(names, samples))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"units": units, "backbone": f"wrn-{depth}-{width}", "batch_per_task": batch,
            "input": [channels, size, size], "steps": steps, "warmup": warmup,
            "backend": backend, "median_step_s": med, "speedup": med["masked"] / med[backend],
            "flop_ideal": flop_ideal(units), "threads": torch.get_num_threads()}


def bench(units: Sequence[int] = (2, 4), **kwargs) -> list[dict]:
    return [bench_joint(k, **kwargs) for k in units]
