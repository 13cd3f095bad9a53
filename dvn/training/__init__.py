"""Training of DVNs: the paper's objectives, scenarios and presets, each scenario kind's recipe,
the loop with exact resume, DistributedDataParallel under torchrun, and the joint-objective
throughput benchmark.

The loop (``train``) is imported on first use, so the objectives and data recipes load without
it. What a run is (its scenario, ``TrainConfig``, paths, ``load_run``) is :mod:`dvn.scenarios`
and :mod:`dvn.runs`, re-exported here; ``dvn.results``, ``dvn eval`` and deployment read runs
through those and never import the trainer.
"""

from ..host import resolve_device
from ..runs import TrainConfig
from ..scenarios import PRESETS, SCENARIOS, Scenario, get_scenario
from .losses import distillation_loss, joint_loss, label_map, sequential_loss
from .schedule import lr_at

__all__ = [
    "PRESETS", "SCENARIOS", "Scenario", "TrainConfig", "build_model", "distillation_loss",
    "get_scenario", "joint_loss", "label_map", "lr_at", "resolve_device", "sequential_loss",
    "train",
]


def __getattr__(name: str):
    if name in ("train", "build_model"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
