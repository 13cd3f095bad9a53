"""Named tasks: class subsets and label sets of the datasets, as the paper's scenarios use them.

Paper ([DVN] Sec. 4): J1 = cifar10 + cifar100; J2 = tiny-imagenet-1..4; J3 = tiny-imagenet (64),
cifar100 (32), stl10 (96); H1 = cifar100-coarse / cifar100; S1 = cifar10-0-4 -> cifar10-5-9;
S2 = cifar10 -> cifar100. Analogues on installable data: fmnist + digits (joint),
fmnist-coarse / fmnist-fine (hierarchical), fmnist-0-4 -> fmnist-5-9 (sequential). The
scenarios themselves (backbones, sizes, schedules) live in ``dvn.training``.

A task's classes are relabelled 0..n-1 in the order of their original ids, and its images keep
the dataset's order, so the coarse and fine tasks of one dataset list the same images in the
same order (hierarchical scenarios pair them image by image).

Fashion-MNIST coarse grouping (project-defined; Fashion-MNIST has no official hierarchy):
``top`` {T-shirt/top 0, Pullover 2, Coat 4, Shirt 6}, ``trouser/dress`` {Trouser 1, Dress 3},
``footwear`` {Sandal 5, Sneaker 7, Ankle boot 9}, ``bag`` {Bag 8}: 4 uneven coarse classes over
the 10 fine ones, a much easier hierarchy than CIFAR-100's 20 x 5.

Tiny-ImageNet's four J2 tasks are its 200 classes in sorted-wnid order cut into consecutive
blocks of 50 (the paper does not say how it split them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .datasets import SPLITS, load
from .splits import DataFormatError, Split

__all__ = ["FASHION_MNIST_COARSE", "TASKS", "TaskDefinition", "task"]

#: (coarse name, fine Fashion-MNIST class ids), coarse label = position in this tuple
FASHION_MNIST_COARSE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("top", (0, 2, 4, 6)),
    ("trouser/dress", (1, 3)),
    ("footwear", (5, 7, 9)),
    ("bag", (8,)),
)


@dataclass(frozen=True)
class TaskDefinition:
    """How a task is cut from a dataset: a class subset (``classes``, relabelled in order) or a
    grouping of the classes into coarse labels (``coarse``); neither = the whole dataset."""

    description: str
    dataset: str
    size: int                                          # native input size (pixels)
    classes: tuple[int, ...] | None = None
    coarse: tuple[tuple[str, tuple[int, ...]], ...] | None = None

    def __str__(self) -> str:
        return self.description


def _tiny(i: int) -> TaskDefinition:
    lo = 50 * (i - 1)
    return TaskDefinition(f"Tiny-ImageNet classes {lo}-{lo + 49} (sorted wnids), 50 classes; "
                          f"J2 task {i}", "tiny-imagenet", 64, tuple(range(lo, lo + 50)))


#: task name -> :class:`TaskDefinition` (its ``str`` is a one-line description, for help texts)
TASKS: dict[str, TaskDefinition] = {
    "fmnist": TaskDefinition("Fashion-MNIST, all 10 classes", "fashion-mnist", 28),
    "fmnist-0-4": TaskDefinition("Fashion-MNIST classes 0-4 (T-shirt..Coat), 5 classes; "
                                 "sequential task 1",
                                 "fashion-mnist", 28, (0, 1, 2, 3, 4)),
    "fmnist-5-9": TaskDefinition("Fashion-MNIST classes 5-9 (Sandal..Ankle boot), 5 classes; "
                                 "sequential task 2", "fashion-mnist", 28, (5, 6, 7, 8, 9)),
    "fmnist-coarse": TaskDefinition("Fashion-MNIST 4 coarse classes (top, trouser/dress, footwear, bag); "
                                    "hierarchical task 1", "fashion-mnist", 28,
                                    coarse=FASHION_MNIST_COARSE),
    "fmnist-fine": TaskDefinition("Fashion-MNIST 10 fine classes; hierarchical task 2 (same "
                                  "images as fmnist-coarse)", "fashion-mnist", 28),
    "digits": TaskDefinition("scikit-learn digits 8x8, 10 classes (1437 train / 360 test)", "digits", 8),
    "cifar10": TaskDefinition("CIFAR-10, 10 classes", "cifar10", 32),
    "cifar10-0-4": TaskDefinition("CIFAR-10 classes 0-4 (airplane..deer); S1 task 1", "cifar10", 32,
                                  (0, 1, 2, 3, 4)),
    "cifar10-5-9": TaskDefinition("CIFAR-10 classes 5-9 (dog..truck); S1 task 2", "cifar10", 32,
                                  (5, 6, 7, 8, 9)),
    "cifar100": TaskDefinition("CIFAR-100, 100 fine classes", "cifar100", 32),
    "cifar100-coarse": TaskDefinition("CIFAR-100, 20 coarse classes (superclasses); H1 task 1",
                                      "cifar100-coarse", 32),
    "stl10": TaskDefinition("STL-10 (96x96), 10 classes", "stl10", 96),
    "tiny-imagenet": TaskDefinition("Tiny-ImageNet (64x64), 200 classes; test = val", "tiny-imagenet",
                                    64),
    **{f"tiny-imagenet-{i}": _tiny(i) for i in range(1, 5)},
}


def task(name: str, split: str = "train", *, root: str | os.PathLike | None = None) -> Split:
    """The split of task ``name`` (see :data:`TASKS`), named ``"<name>/<split>"``."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    definition = TASKS[name]
    base = load(definition.dataset, split, root=root)
    tag = f"{name}/{split}"
    if definition.coarse is not None:
        lut = torch.full((base.num_classes,), -1, dtype=torch.int64)
        for coarse, (_, ids) in enumerate(definition.coarse):
            lut[list(ids)] = coarse
        return Split(base.images, lut[base.labels], tuple(g for g, _ in definition.coarse),
                     tag, base.dataset)
    if definition.classes is None:
        return Split(base.images, base.labels, base.classes, tag, base.dataset)
    if max(definition.classes) >= base.num_classes:
        raise DataFormatError(f"task {name!r} needs classes {definition.classes[0]}..{definition.classes[-1]} "
                              f"but {base.name} has only {base.num_classes}")
    ids = torch.tensor(definition.classes, dtype=torch.int64)
    lut = torch.full((base.num_classes,), -1, dtype=torch.int64)
    lut[ids] = torch.arange(len(ids))
    keep = torch.nonzero(lut[base.labels] >= 0).flatten()
    return Split(base.images[keep], lut[base.labels[keep]],
                 tuple(base.classes[i] for i in definition.classes), tag, base.dataset)
