"""``load(dataset, split)``: one whole dataset split from local files, as a :class:`Split`.

Where each dataset is looked for (first match wins):

1. the ``root`` argument;
2. the dataset's environment variable (``DVN_DATA_CIFAR10``, ... see :data:`ENV_VARS`);
3. ``$DVN_DATA/<standard folder name>`` (``cifar-10-batches-py``, ``stl10_binary``, ...);
4. a default: only Fashion-MNIST has one, Debian's ``/usr/share/datasets/fashion-mnist``.

A root may be the dataset's folder itself or its parent (holding the standard folder name).
Missing files raise :class:`DatasetNotFoundError` saying what was expected where and how to
get it. Loaded splits are cached in memory (a few at most); Tiny-ImageNet, whose 110k JPEGs
take a while to decode, is also cached on disk as ``.npy`` under ``$DVN_CACHE``
(default ``~/.cache/dvn``; ``DVN_CACHE=off`` disables it).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dvn_kernels.files import atomic_write

from . import formats
from .splits import DataFormatError, DatasetNotFoundError, Split

__all__ = ["DATASETS", "ENV_VARS", "DIGITS_TEST_PER_CLASS", "FASHION_MNIST_CLASSES", "load",
           "resolve_root"]

SPLITS = ("train", "test")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DIGITS_TEST_PER_CLASS = 36
DIGITS_SEED = 0


@dataclass(frozen=True)
class _Source:
    description: str
    env: str | None            # environment variable naming the folder
    folder: str | None         # standard folder name under $DVN_DATA
    marker: str | None         # a file that identifies the folder
    default: str | None        # default folder
    how: str                   # how to get the files


_SOURCES: dict[str, _Source] = {
    "fashion-mnist": _Source(
        "Fashion-MNIST, 60k/10k 28x28 grey, 10 classes (idx files)", "DVN_DATA_FASHION_MNIST",
        "fashion-mnist", "train-labels-idx1-ubyte.gz", "/usr/share/datasets/fashion-mnist",
        "install Debian's package: apt-get install dataset-fashion-mnist (puts the idx .gz files "
        "in /usr/share/datasets/fashion-mnist), or point DVN_DATA_FASHION_MNIST at a folder with "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"),
    "digits": _Source(
        "scikit-learn's bundled digits, 1797 8x8 grey, 10 classes (1437 train / 360 test)",
        None, None, None, None, "pip install scikit-learn (the digits ship inside its wheel)"),
    "cifar10": _Source(
        "CIFAR-10, 50k/10k 32x32 RGB, 10 classes (python pickle batches)", "DVN_DATA_CIFAR10",
        "cifar-10-batches-py", "batches.meta", None,
        "unpack the official archive cifar-10-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar.html) and set DVN_DATA_CIFAR10 to its "
        "cifar-10-batches-py folder (or DVN_DATA to the folder holding it)"),
    "cifar100": _Source(
        "CIFAR-100, 50k/10k 32x32 RGB, 100 fine classes (python pickle)", "DVN_DATA_CIFAR100",
        "cifar-100-python", "meta", None,
        "unpack the official archive cifar-100-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar.html) and set DVN_DATA_CIFAR100 to its "
        "cifar-100-python folder (or DVN_DATA to the folder holding it)"),
    "stl10": _Source(
        "STL-10, 5k/8k 96x96 RGB, 10 classes (binary files)", "DVN_DATA_STL10", "stl10_binary",
        "train_X.bin", None,
        "unpack the official archive stl10_binary.tar.gz (https://cs.stanford.edu/~acoates/stl10/) "
        "and set DVN_DATA_STL10 to its stl10_binary folder (or DVN_DATA to the folder holding it)"),
    "tiny-imagenet": _Source(
        "Tiny-ImageNet, 100k/10k (val) 64x64 RGB, 200 classes (JPEG folders)",
        "DVN_DATA_TINY_IMAGENET", "tiny-imagenet-200", "wnids.txt", None,
        "unzip the official archive tiny-imagenet-200.zip "
        "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) and set DVN_DATA_TINY_IMAGENET to its "
        "tiny-imagenet-200 folder (or DVN_DATA to the folder holding it)"),
}
_SOURCES["cifar100-coarse"] = _Source(
    "CIFAR-100 with its 20 coarse (superclass) labels", "DVN_DATA_CIFAR100", "cifar-100-python",
    "meta", None, _SOURCES["cifar100"].how)

#: dataset name -> one-line description
DATASETS: dict[str, str] = {k: v.description for k, v in _SOURCES.items()}
#: dataset name -> environment variable naming its folder
ENV_VARS: dict[str, str] = {k: v.env for k, v in _SOURCES.items() if v.env}

# files each (dataset, split) needs, relative to the dataset folder
_FILES: dict[str, dict[str, list[str]]] = {
    "fashion-mnist": {s: [f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz"]
                      for s, p in (("train", "train"), ("test", "t10k"))},
    "cifar10": {"train": ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["batches.meta", "test_batch"]},
    "cifar100": {"train": ["meta", "train"], "test": ["meta", "test"]},
    "stl10": {"train": ["class_names.txt", "train_X.bin", "train_y.bin"],
              "test": ["class_names.txt", "test_X.bin", "test_y.bin"]},
    "tiny-imagenet": {"train": ["wnids.txt", "words.txt", "train/"],
                      "test": ["wnids.txt", "words.txt", "val/val_annotations.txt", "val/images/"]},
}
_FILES["cifar100-coarse"] = _FILES["cifar100"]


def _exists(folder: Path, rel: str) -> bool:
    if rel.endswith("/"):
        return (folder / rel).is_dir()
    if (folder / rel).is_file():
        return True
    # idx files may also be stored uncompressed
    return rel.endswith(".gz") and (folder / rel[:-3]).is_file()


def resolve_root(dataset: str, split: str = "train", root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``dataset``'s files for ``split``, else :class:`DatasetNotFoundError`."""
    src = _SOURCES[dataset]
    need = _FILES[dataset][split]
    tried: list[tuple[str, Path]] = []
    if root is not None:
        tried.append(("root argument", Path(root)))
    elif src.env and os.environ.get(src.env):
        tried.append((f"${src.env}", Path(os.environ[src.env])))
    elif os.environ.get("DVN_DATA"):
        tried.append(("$DVN_DATA", Path(os.environ["DVN_DATA"])))
    if root is None and src.default:
        tried.append(("default", Path(src.default)))
    for _, base in tried:
        for folder in (base, base / src.folder) if src.folder else (base,):
            if all(_exists(folder, f) for f in need):
                return folder
    if tried:
        where = "; ".join(f"{how} {p} (or {p / src.folder})" if src.folder and p.name != src.folder
                          else f"{how} {p}" for how, p in tried)
    else:
        where = "nowhere: no root argument, $" + (src.env or "DVN_DATA") + " nor $DVN_DATA is set"
    raise DatasetNotFoundError(
        f"{dataset} ({split}) not found. Expected files {', '.join(need)} in: {where}. "
        f"To get them: {src.how}.")


# ------------------------------------------------------------------------------------ readers
def _fashion_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    prefix = "train" if split == "train" else "t10k"

    def find(name: str) -> Path:
        p = folder / f"{name}.gz"
        return p if p.is_file() else folder / name

    ip, lp = find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte")
    x, y = formats.read_idx(ip, 3), formats.read_idx(lp, 1)
    if len(x) != len(y):
        raise DataFormatError(f"{lp}: {len(y)} labels for {len(x)} images in {ip}")
    if y.size and y.max() > 9:
        raise DataFormatError(f"{lp}: labels must be 0..9, got up to {y.max()}")
    return x[:, None], y.astype(np.int64), FASHION_MNIST_CLASSES


def _digits(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """scikit-learn's 1797 digits, values 0..16 scaled to 0..255, and a fixed split: per class
    (in class order) a permutation from ``torch.Generator().manual_seed(0)``; its first 36
    images are the test set (360, balanced), the rest train (1437)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError(
            "digits needs scikit-learn, which bundles them: pip install scikit-learn") from None
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    g = torch.Generator().manual_seed(DIGITS_SEED)
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        perm = torch.randperm(len(idx), generator=g).numpy()
        test[idx[perm[:DIGITS_TEST_PER_CLASS]]] = True
    keep = test if split == "test" else ~test
    return x[keep], y[keep], tuple(str(i) for i in range(10))


def _cifar10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    names = formats.read_cifar_meta(folder / "batches.meta", "label_names")
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [formats.read_cifar_batch(folder / f, ("labels",)) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1][0] for p in parts])
    return x, y, tuple(names)


def _cifar100(folder: Path, split: str, coarse: bool,
              ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    key = "coarse" if coarse else "fine"
    names = formats.read_cifar_meta(folder / "meta", f"{key}_label_names")
    x, (y,) = formats.read_cifar_batch(folder / split, (f"{key}_labels",))
    return x, y, tuple(names)


def _stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    names = tuple(n.strip() for n in (folder / "class_names.txt").read_text().splitlines()
                  if n.strip())
    if len(names) != 10:
        raise DataFormatError(f"{folder / 'class_names.txt'}: expected 10 class names, "
                              f"got {len(names)}")
    x = formats.read_stl_images(folder / f"{split}_X.bin")
    y = formats.read_stl_labels(folder / f"{split}_y.bin", len(x))
    return x, y, names


def _tiny_wnids(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    """Class order: the wnids sorted (as torchvision's ImageFolder orders them); names are the
    first synonym in words.txt."""
    lines = (folder / "wnids.txt").read_text().splitlines()
    wnids = sorted({w.strip() for w in lines if w.strip()})
    words: dict[str, str] = {}
    for line in (folder / "words.txt").read_text().splitlines():
        if "\t" in line:
            w, text = line.split("\t", 1)
            words[w.strip()] = text.split(",")[0].strip()
    return wnids, tuple(words.get(w, w) for w in wnids)


def _cache_dir() -> Path | None:
    v = os.environ.get("DVN_CACHE", "")
    if v.lower() in ("off", "0", "none", "false"):
        return None
    return Path(v) if v else Path.home() / ".cache" / "dvn"


def _tiny_imagenet(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    wnids, names = _tiny_wnids(folder)
    sub = "train" if split == "train" else "val"
    stamp = [str(folder.resolve()), sub] + [
        f"{p.stat().st_mtime_ns}:{p.stat().st_size}"
        for p in (folder / "wnids.txt", folder / sub, folder / "val" / "val_annotations.txt")
        if p.exists()]
    key = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:16]
    cache = _cache_dir()
    if cache is not None:
        xp, yp = (cache / f"tiny-imagenet-{sub}-{key}-{a}.npy" for a in "xy")
        if xp.is_file() and yp.is_file():
            try:
                x, y = np.load(xp, allow_pickle=False), np.load(yp, allow_pickle=False)
                if x.shape[0] == y.shape[0] and x.shape[1:] == (3, 64, 64):
                    return x, y, names
            except (OSError, ValueError):
                pass            # a broken cache is rebuilt below
    x, y = formats.read_tiny_imagenet(folder, sub, wnids)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for p, a in ((xp, x), (yp, y)):
                atomic_write(p, lambda f, a=a: np.save(f, a, allow_pickle=False), sync=False)
        except OSError:
            pass                # caching is an optimisation only
    return x, y, names


_READERS: dict[str, Callable[[Path, str], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]] = {
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "cifar100": lambda f, s: _cifar100(f, s, coarse=False),
    "cifar100-coarse": lambda f, s: _cifar100(f, s, coarse=True),
    "stl10": _stl10,
    "tiny-imagenet": _tiny_imagenet,
}

_CACHE: OrderedDict[tuple, Split] = OrderedDict()
_CACHE_SIZE = 8


def _check_names(dataset: str, split: str) -> None:
    if not isinstance(dataset, str) or dataset not in _SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(_SOURCES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def load(dataset: str, split: str = "train", *, root: str | os.PathLike | None = None) -> Split:
    """One whole split of ``dataset`` (see :data:`DATASETS`), read from local files.

    ``split`` is ``"train"`` or ``"test"`` (Tiny-ImageNet's test split is its labelled val
    split; digits use the fixed split of :func:`_digits`). ``root`` overrides the folder
    search described in the module docstring (digits ignore it). Name: ``"<dataset>/<split>"``.
    The split is cached and shared between callers: do not modify its tensors in place.
    """
    _check_names(dataset, split)
    if dataset == "digits":
        folder = None
    else:
        folder = resolve_root(dataset, split, root)
    key = (dataset, split, str(folder.resolve()) if folder else None)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    x, y, classes = _digits(split) if folder is None else _READERS[dataset](folder, split)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataFormatError(f"{folder}: {dataset} {split} labels {y.min()}..{y.max()} do not "
                              f"fit its {len(classes)} class names")
    out = Split(torch.from_numpy(np.require(x, np.uint8, ["C", "W"])),
                torch.from_numpy(np.require(y, np.int64, ["C", "W"])),
                classes, f"{dataset}/{split}", dataset)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out
