"""A training run's unit file, written from its checkpoint on first use, with its tasks'
input descriptions (what ``dvn infer`` needs to prepare images as the training data was)."""

from __future__ import annotations

import os

import torch

from .images import TaskInput
from .unitfile import save

#: the unit file's name in a run folder
UNIT_FILE = "deploy.safetensors"


def unit_file(run: str) -> str:
    """The unit file of ``run``: ``run`` itself when it is a ``.safetensors`` file, else
    ``<run folder>/deploy.safetensors``, (re)written from the run's checkpoint when it is
    missing or older than the checkpoint."""
    if os.path.isfile(run) and run.endswith(".safetensors"):
        return run
    if not os.path.exists(run):
        raise FileNotFoundError(f"run: no run folder or unit file at {run}")
    from ..checkpoint import checkpoint_path
    checkpoint = checkpoint_path(run)
    path = os.path.join(run if os.path.isdir(run) else os.path.dirname(run) or ".", UNIT_FILE)
    if not os.path.isfile(checkpoint):
        if os.path.isfile(path):
            return path
        raise FileNotFoundError(f"run: no checkpoint at {checkpoint} and no {UNIT_FILE}")
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(checkpoint):
        write_unit_file(checkpoint, path)
    return path


def write_unit_file(checkpoint: str, path: str) -> None:
    """The checkpoint's model as a unit file at ``path``, with its tasks' inputs."""
    from ..results.evaluate import load_run
    model, config, _ = load_run(checkpoint, torch.device("cpu"))
    save(model, path, tasks=task_inputs(config))


def task_inputs(config) -> list[TaskInput]:
    """Each task's input description, from its training split as the loader prepared it
    (falling back to the dataset's known statistics, without class names, when the data is
    not on this machine)."""
    from ..data import DatasetNotFoundError
    from ..data.loading import MEAN_STD
    from ..data.tasks import TASKS
    from ..training.data import make_loader, task_splits
    s = config.scenario
    out = []
    for j, name in enumerate(s.tasks, start=1):
        size, channels = s.input_sizes[j - 1], s.channels[j - 1]
        try:
            split = task_splits(s, "train", root=config.data_root, tasks=[j])[j]
        except DatasetNotFoundError:
            dataset = TASKS[name].dataset
            if dataset not in MEAN_STD:
                raise ValueError(f"run: the data of task {name} is not on this machine and "
                                 "its statistics are unknown; cannot describe its inputs") \
                    from None
            mean, std = MEAN_STD[dataset]
            native = TASKS[name].size
            out.append(TaskInput(name, len(mean), (native, native), size, channels, mean, std))
            continue
        loader = make_loader(split, s, j, train=False, batch_size=1, seed=0)
        c, h, w = split.images.shape[1:]
        out.append(TaskInput(name, c, (h, w), size, channels, loader.mean[:c].tolist(),
                             loader.std[:c].tolist(), split.classes))
    return out
