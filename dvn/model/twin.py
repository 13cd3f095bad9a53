"""The masked-dense twin of a model: the correctness oracle and the speed baseline."""

from __future__ import annotations

import torch
import torch.nn as nn


class MaskedTwin(nn.Module):
    """``model`` itself (same parameters), every convolution run full width on an input whose
    inactive channels are zero, active outputs gathered (backend 'masked'): each level costs
    as much as the full network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, task: int, level: int) -> torch.Tensor:
        return self.model(x, task=task, level=level, backend="masked")
