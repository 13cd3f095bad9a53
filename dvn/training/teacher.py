"""The old network of a sequential scenario and what the new-task stage does with it: start
from it, keep the old tasks' batch norm statistics, distil toward its outputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checkpoint import model_from
from ..model.norm import SlicedBatchNorm2d
from ..runs import checkpoint_path, read, trained_configs


class Teacher:
    """The old network: each old task's logits at the level it was trained at (its top
    trained level). Never trained, never synchronised."""

    def __init__(self, run: str, device: torch.device) -> None:
        path = checkpoint_path(run)
        payload = read(path, training=True)
        self.spec = payload["spec"]
        self.model = model_from(payload, path).to(device).eval().requires_grad_(False)
        self.levels: dict[int, int] = {}
        for task, level in trained_configs(payload, path):
            self.levels[task] = max(level, self.levels.get(task, 0))
        self.path = run

    def __call__(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task not in self.levels:
            raise ValueError(f"teacher: {self.path} was not trained on task {task}")
        return self.model(x, task=task, level=self.levels[task])

    def initialise(self, student: nn.Module) -> None:
        """LwF practice: the student starts as the old network (same architecture, any
        backend); each new task's stem starts as task 1's where the shapes match."""
        def architecture(spec: dict) -> dict:  # the backend is how it runs, not what it is
            return {k: v for k, v in spec.items() if k != "backend"}

        if architecture(self.spec) != architecture(student.spec):
            raise ValueError(f"teacher: {self.path} has another architecture "
                             f"({architecture(self.spec)}) than the student "
                             f"({architecture(student.spec)})")
        student.load_state_dict(self.model.state_dict())
        with torch.no_grad():
            old = student.stems["t1"].weight
            for j in range(2, student.networks.tasks + 1):
                if student.stems[f"t{j}"].weight.shape == old.shape:
                    student.stems[f"t{j}"].weight.copy_(old)


def freeze_batch_norm(model: nn.Module, tasks) -> None:
    """Puts the batch norms of ``tasks`` (every level) in eval mode: sequential learning sees
    only the new task's images, which would otherwise overwrite the old tasks' statistics
    (measured: with lr 0, one epoch of Fashion-MNIST 5-9 takes the old task 0-4 from 85% to 40%)
    and normalise the distillation differently from the teacher. Their affine parameters still
    train. Call after every ``model.train()``."""
    prefixes = tuple(f"t{j}_" for j in tasks)
    for m in model.modules():
        if isinstance(m, SlicedBatchNorm2d):
            for key, bn in m.norms.items():
                if key.startswith(prefixes):
                    bn.eval()
