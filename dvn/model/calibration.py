"""Batch norm calibration: recompute the running statistics of chosen configurations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional, Union

import torch
import torch.nn as nn

from .norm import SlicedBatchNorm2d

Batches = Iterable


def calibrate_bn(model: nn.Module, loader: Union[Batches, Mapping[int, Batches]],
                 configs: Optional[Iterable[tuple[int, int]]] = None, *,
                 max_batches: Optional[int] = None) -> None:
    """Recomputes the batch norm running statistics of each (task, level) in ``configs``
    (default: all) as the plain average over the batches of ``loader``.

    ``loader`` yields input batches, or (input, ...) tuples; a mapping task -> loader gives each
    task its own data. Only the statistics of the given configurations change; the model's
    train/eval mode and each norm's momentum are restored afterwards.
    """
    networks = model.networks
    configs = list(networks.configs()) if configs is None else [tuple(c) for c in configs]
    for task, level in configs:
        networks.check(task, level)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches: must be at least 1, got {max_batches}")
    layers = [m for m in model.modules() if isinstance(m, SlicedBatchNorm2d)]
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for task, level in configs:
                key = networks.active(task, level).key
                norms = [layer.norms[key] for layer in layers if layer.norms[key].track_running_stats]
                momenta = [n.momentum for n in norms]
                for n in norms:
                    n.reset_running_stats()
                    n.momentum = None  # cumulative average over the calibration batches
                batches = loader[task] if isinstance(loader, Mapping) else loader
                seen = 0
                try:
                    for batch in batches:
                        x = batch[0] if isinstance(batch, (tuple, list)) else batch
                        model(x.to(device), task=task, level=level)
                        seen += 1
                        if max_batches is not None and seen >= max_batches:
                            break
                finally:
                    for n, m in zip(norms, momenta):
                        n.momentum = m
                if seen == 0:
                    raise ValueError(f"loader: gave no batches for task {task}")
    finally:
        model.train(was_training)
