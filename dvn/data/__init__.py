"""Datasets and tasks for DVN experiments; nothing is downloaded at run time.

* :func:`load` reads one dataset split into memory (:class:`Split`, uint8 images):
  Fashion-MNIST (Debian ``dataset-fashion-mnist``, idx files), scikit-learn's bundled digits,
  CIFAR-10/100 (python pickle format, read with a restricted unpickler), STL-10 (binary
  format) and Tiny-ImageNet (folder format) from a local folder.
* :func:`task` gives the named tasks (:data:`TASKS`) of the paper's scenarios and their
  Fashion-MNIST analogues: class subsets relabelled 0..n-1 and the coarse label sets.
* :func:`loader` iterates a split as normalised float batches, with torch-only augmentation,
  deterministic per-epoch shuffling and sharding for DistributedDataParallel.
"""

from .datasets import DATASETS, ENV_VARS, load
from .loading import Loader, loader
from .splits import DataFormatError, DatasetNotFoundError, Split
from .tasks import FASHION_MNIST_COARSE, TASKS, TaskDefinition, task

__all__ = [
    "DATASETS", "DataFormatError", "DatasetNotFoundError", "ENV_VARS",
    "FASHION_MNIST_COARSE", "Loader", "Split", "TASKS", "TaskDefinition",
    "load", "loader", "task",
]
