"""Export of one (task, level) as a plain static model, and parameter counts per level."""

from __future__ import annotations

import torch.nn as nn

from .twin import MaskedTwin


def to_static(model: nn.Module, task: int, level: int, *, fold_bn: bool = False) -> nn.Module:
    """Task ``task`` at level ``level`` (1-based) as ordinary Conv2d / BatchNorm2d / Linear
    layers holding copies of only that level's parameters.

    Equal in output to ``model(x, task=task, level=level)`` in the same train/eval mode;
    exportable with ``torch.export`` and savable alone. ``fold_bn`` folds each batch norm that
    directly follows a convolution into it, using running statistics (equal in eval mode).
    """
    if isinstance(model, MaskedTwin):
        model = model.model
    export = getattr(model, "export", None)
    if export is None:
        raise TypeError(f"model: {type(model).__name__} has no per-level export; use a dvn "
                        "backbone (dvn.wrn, dvn.resnet) or dvn.convert_to_sliced")
    return export(task, level, fold_bn=fold_bn)


def count_parameters(model: nn.Module, task: int, level: int) -> int:
    """Parameters that task ``task`` at level ``level`` uses: its weight blocks (connections
    among its active units included), batch norm, stem and head."""
    return sum(p.numel() for p in to_static(model, task, level).parameters())
