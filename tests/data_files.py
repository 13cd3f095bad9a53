"""Tiny datasets written in the real file formats, for tests of ``dvn.data``.

Each writer fills a folder laid out like the official archive and returns the arrays a correct
reader must give back (images uint8 (N, C, H, W), labels int64, class names).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(rng: np.random.Generator, n: int, c: int, s: int) -> np.ndarray:
    return rng.integers(0, 256, (n, c, s, s), dtype=np.uint8)


def write_idx(path: Path, a: np.ndarray) -> None:
    """An idx file of unsigned bytes (gzipped when the name ends in .gz)."""
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    # Closed before returning: Python 3.12's GzipFile buffers writes until close.
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(raw)


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = _images(rng, n, 1, 28)
        y = np.arange(n) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[:, 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
        out[split] = (x, y)
    return out


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)        # like the official files: protocol 2, bytes keys


def write_cifar10(folder: Path, per_batch: int = 6, n_test: int = 10, seed: int = 0):
    """``cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names],
                                     b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    xs, ys = [], []
    for i, (f, n) in enumerate([(f"data_batch_{k}", per_batch) for k in range(1, 6)]
                               + [("test_batch", n_test)]):
        x = _images(rng, n, 3, 32)
        y = [int(v) for v in rng.integers(0, 10, n)]
        _dump(folder / f, {b"batch_label": f.encode(), b"labels": y,
                           b"data": x.reshape(n, 3072),
                           b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]})
        xs.append(x)
        ys.append(np.array(y))
    return {"train": (np.concatenate(xs[:5]), np.concatenate(ys[:5]), names),
            "test": (xs[5], ys[5], names)}


def write_cifar100(folder: Path, n_train: int = 30, n_test: int = 10, seed: int = 0):
    """``cifar-100-python``: train, test (fine and coarse labels), meta."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in fine],
                            b"coarse_label_names": [n.encode() for n in coarse]})
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = _images(rng, n, 3, 32)
        yf = rng.integers(0, 100, n)
        yc = yf % 20
        _dump(folder / split, {b"filenames": [f"{j}.png".encode() for j in range(n)],
                               b"batch_label": split.encode(),
                               b"fine_labels": [int(v) for v in yf],
                               b"coarse_labels": [int(v) for v in yc],
                               b"data": x.reshape(n, 3072)})
        out[split] = (x, yf, yc, fine, coarse)
    return out


def write_stl10(folder: Path, n_train: int = 5, n_test: int = 4, seed: int = 0):
    """``stl10_binary``: {train,test}_{X,y}.bin (images column-major, labels 1..10) and
    class_names.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = _images(rng, n, 3, 96)
        y = rng.integers(0, 10, n)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y, names)
    return out


def write_tiny_imagenet(folder: Path, n_classes: int = 4, per_class: int = 2, n_val: int = 6,
                        seed: int = 0):
    """``tiny-imagenet-200``: wnids.txt (unsorted), words.txt, train/<wnid>/images/*.JPEG,
    val/images/*.JPEG + val/val_annotations.txt. Images are flat colours (JPEG keeps them to
    within a few levels); one image per split is greyscale. Returns per split (colours
    (N, 3) in the reader's order, labels) and the sorted wnids."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    wnids = [f"n{int(v):08d}" for v in rng.choice(10**8, n_classes, replace=False)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text(
        "".join(f"{w}\tthing {w}, other name\n" for w in wnids) + "n99999999\tunused\n")
    order = sorted(wnids)

    def save(path: Path, colour: np.ndarray, grey: bool) -> np.ndarray:
        path.parent.mkdir(parents=True, exist_ok=True)
        if grey:
            colour = np.repeat(colour[:1], 3)
            Image.new("L", (64, 64), int(colour[0])).save(path, "JPEG", quality=95)
        else:
            Image.new("RGB", (64, 64), tuple(int(v) for v in colour)).save(path, "JPEG", quality=95)
        return colour

    train_c, train_y = [], []
    for w in order:                                            # reader order: sorted wnids
        for i in range(per_class):
            c = save(folder / "train" / w / "images" / f"{w}_{i}.JPEG",
                     rng.integers(0, 256, 3), grey=not train_c)
            train_c.append(c)
            train_y.append(order.index(w))
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    val_c, val_y, lines = [], [], []
    for i in range(n_val):
        w = wnids[i % n_classes]
        c = save(folder / "val" / "images" / f"val_{i}.JPEG", rng.integers(0, 256, 3),
                 grey=i == 1)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        val_c.append(c)
        val_y.append(order.index(w))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"train": (np.array(train_c), np.array(train_y)),
            "test": (np.array(val_c), np.array(val_y)), "wnids": order}
