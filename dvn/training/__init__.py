"""Training of DVNs: the paper's objectives, scenarios and presets, the loop with exact resume,
DistributedDataParallel under torchrun, and the joint-objective throughput benchmark."""

from .losses import distillation_loss, joint_loss, label_map, sequential_loss
from .scenarios import PRESETS, SCENARIOS, Scenario, get_scenario
from .trainer import TrainConfig, build_model, load_payload, lr_at, train

__all__ = [
    "PRESETS", "SCENARIOS", "Scenario", "TrainConfig", "build_model", "distillation_loss",
    "get_scenario", "joint_loss", "label_map", "load_payload", "lr_at", "sequential_loss",
    "train",
]
