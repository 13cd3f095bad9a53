"""The unit file of what ``dvn infer`` / ``dvn profile`` / ``dvn serve`` are given: a run
folder (or its checkpoint), a model saved with ``dvn.save``, or a unit file itself. A unit
file is written from the checkpoint on first use (and again when the checkpoint is newer),
with its tasks' input descriptions (what ``dvn infer`` needs to prepare images as the
training data was)."""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch

from ..checkpoint import model_from
from ..runs import CHECKPOINT, TrainConfig, checkpoint_path, is_training_payload, load_run, make_loader, \
    read, task_splits
from .images import TaskInput
from .unitfile import save

#: the unit file's name in a run folder
UNIT_FILE = "deploy.safetensors"


def unit_file(run: str) -> str:
    """The unit file of ``run``: ``run`` itself when it is a ``.safetensors`` file, else
    ``<run folder>/deploy.safetensors`` for a run folder or its ``checkpoint.pt``, else
    ``<model>.safetensors`` beside a model saved with ``dvn.save``; (re)written from the
    checkpoint when it is missing or older than the checkpoint."""
    run = os.fspath(run)
    if os.path.isfile(run) and run.endswith(".safetensors"):
        return run
    if not os.path.exists(run):
        raise FileNotFoundError(f"run: no run folder or unit file at {run}")
    checkpoint = checkpoint_path(run)
    if os.path.isdir(run) or os.path.basename(run) == CHECKPOINT:
        path = os.path.join(run if os.path.isdir(run) else os.path.dirname(run) or ".",
                            UNIT_FILE)
    else:   # a model file of dvn.save: its own unit file beside it
        path = os.path.splitext(run)[0] + ".safetensors"
    if not os.path.isfile(checkpoint):
        if os.path.isfile(path):
            return path
        raise FileNotFoundError(f"run: no checkpoint at {checkpoint} and no {UNIT_FILE}")
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(checkpoint):
        write_unit_file(checkpoint, path)
    return path


def write_unit_file(checkpoint: str, path: str) -> None:
    """The checkpoint's model as a unit file at ``path``, with its tasks' inputs: from the
    run's data for a training checkpoint; for a model of ``dvn.save``, those its ``extra``
    holds under ``"tasks"`` (``TaskInput.to_dict()`` each), else plain ones
    (:func:`plain_inputs`)."""
    payload = read(checkpoint)
    if is_training_payload(payload):
        model, config, _ = load_run(checkpoint, torch.device("cpu"))
        save(model, path, tasks=task_inputs(config))
        return
    model = model_from(payload, checkpoint)
    given = payload["extra"].get("tasks") if isinstance(payload["extra"], dict) else None
    if given is not None:
        tasks = [TaskInput.from_dict(t) for t in given]
    else:
        tasks = plain_inputs(model)
        print(f"warning: {checkpoint} holds no input descriptions (dvn.save(..., extra="
              "{'tasks': [TaskInput.to_dict(), ...]})); images are read at each task's input "
              "size and channels, scaled to 0..1 without normalisation", file=sys.stderr)
    save(model, path, tasks=tasks)


def plain_inputs(model: torch.nn.Module, names: Optional[list[str]] = None) -> list[TaskInput]:
    """Input descriptions that say only what the network takes: each task's images at its
    input size and channels, pixel values scaled to 0..1 (mean 0, std 1), no class names."""
    out = []
    for j, (size, channels) in enumerate(zip(model.input_sizes, model.image_channels), 1):
        name = names[j - 1] if names else f"task{j}"
        out.append(TaskInput(name, channels, (size, size), size, channels, (0.0,) * channels,
                             (1.0,) * channels))
    return out


def task_inputs(config: TrainConfig) -> list[TaskInput]:
    """Each task's input description, from its training split as the loader prepared it
    (falling back to the dataset's known statistics, without class names, when the data is
    not on this machine)."""
    from ..data import DatasetNotFoundError
    from ..data.loading import MEAN_STD
    from ..data.tasks import TASKS
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
