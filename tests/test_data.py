"""dvn.data: readers of the real formats, tasks, the loader (order, sharding, augmentation)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dvn.data import (DATASETS, FASHION_MNIST_COARSE, TASKS, DataFormatError,
                      DatasetNotFoundError, Split, load, loader, task)
from dvn.data import datasets as ds
from dvn.data.loading import MEAN_STD

from data_files import (write_cifar10, write_cifar100, write_fashion_mnist, write_stl10,
                        write_tiny_imagenet)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; "
           "scripts/setup does it as root)")
try:
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN,
                                   reason="scikit-learn not installed (pip install scikit-learn)")


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    """No data env vars from the caller; an empty in-memory cache; disk cache in tmp."""
    for k in list(os.environ):
        if k.startswith("DVN_DATA"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("DVN_CACHE", str(tmp_path / "cache"))
    ds._CACHE.clear()
    yield
    ds._CACHE.clear()


def toy(n: int = 20, c: int = 1, s: int = 8, classes: int = 4, dataset: str = "") -> Split:
    """Images whose pixels encode their index (so batches can be traced back)."""
    idx = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return Split(idx.expand(n, c, s, s).clone(), torch.arange(n) % classes,
                 tuple(f"c{i}" for i in range(classes)), "toy/train", dataset)


# ------------------------------------------------------------------------------- real data
@needs_fmnist
def test_fashion_mnist_real():
    tr, te = load("fashion-mnist"), load("fashion-mnist", "test")
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.images.dtype == torch.uint8 and tr.labels.dtype == torch.int64
    assert torch.bincount(tr.labels).tolist() == [6000] * 10
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    assert tr.classes[0] == "T-shirt/top" and tr.classes[9] == "Ankle boot"
    assert tr.name == "fashion-mnist/train" and tr.dataset == "fashion-mnist"
    assert 0.28 < tr.images.float().mean().item() / 255 < 0.29            # MEAN_STD matches
    assert load("fashion-mnist") is tr                                      # cached


@needs_fmnist
def test_fashion_mnist_tasks_real():
    full = task("fmnist")
    lo, hi = task("fmnist-0-4"), task("fmnist-5-9", "test")
    assert len(lo) == 30000 and lo.classes == full.classes[:5]
    assert torch.bincount(lo.labels).tolist() == [6000] * 5
    assert len(hi) == 5000 and hi.classes == full.classes[5:] and int(hi.labels.max()) == 4
    base = load("fashion-mnist", "test")
    assert torch.equal(hi.images[hi.labels == 3], base.images[base.labels == 8])   # Bag
    coarse, fine = task("fmnist-coarse"), task("fmnist-fine")
    assert coarse.classes == ("top", "trouser/dress", "footwear", "bag")
    assert torch.equal(coarse.images, fine.images)                  # same images, same order
    for c, (_, ids) in enumerate(FASHION_MNIST_COARSE):
        assert torch.equal(coarse.labels == c, torch.isin(fine.labels, torch.tensor(ids)))
    assert torch.bincount(coarse.labels).tolist() == [24000, 12000, 18000, 6000]


@needs_fmnist
def test_fashion_mnist_loader_real():
    s = task("fmnist", "test").subset(1000)
    x = torch.cat([b for b, _ in loader(s, batch_size=256, train=False, size=28, channels=1)])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1   # normalised
    x, y = next(iter(loader(s, batch_size=64, train=True, size=32, channels=3)))
    assert x.shape == (64, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])


@needs_sklearn
def test_digits_real_split():
    tr, te = load("digits"), load("digits", "test")
    assert len(tr) == 1437 and len(te) == 360 and tr.images.shape[1:] == (1, 8, 8)
    assert torch.bincount(te.labels).tolist() == [36] * 10
    assert int(tr.images.max()) == 255 and tr.classes == tuple("0123456789")
    from sklearn.datasets import load_digits
    allx = torch.from_numpy(np.rint(load_digits().images * 255 / 16).astype(np.uint8))
    both = torch.cat([tr.images[:, 0], te.images[:, 0]])
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, allx.numpy()))   # a partition
    ds._CACHE.clear()
    assert torch.equal(load("digits", "test").images, te.images)                # fixed split
    x, _ = next(iter(loader(task("digits"), batch_size=32, train=True, size=32, channels=3)))
    assert x.shape == (32, 3, 32, 32)


# ------------------------------------------------------------------- formats via tiny files
def test_fashion_mnist_files_and_roots(tmp_path, monkeypatch):
    want = write_fashion_mnist(tmp_path / "fm")
    s = load("fashion-mnist", "test", root=tmp_path / "fm")
    assert np.array_equal(s.images.numpy(), want["test"][0])
    assert np.array_equal(s.labels.numpy(), want["test"][1])
    ds._CACHE.clear()
    monkeypatch.setenv("DVN_DATA_FASHION_MNIST", str(tmp_path / "fm"))
    assert len(load("fashion-mnist")) == 40
    ds._CACHE.clear()
    monkeypatch.delenv("DVN_DATA_FASHION_MNIST")
    (tmp_path / "all").mkdir()
    (tmp_path / "fm").rename(tmp_path / "all" / "fashion-mnist")           # $DVN_DATA/<name>
    monkeypatch.setenv("DVN_DATA", str(tmp_path / "all"))
    assert len(load("fashion-mnist")) == 40


def test_idx_corrupted(tmp_path):
    write_fashion_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.gz.*truncated"):
        load("fashion-mnist", root=tmp_path)
    f.write_bytes(f.read_bytes()[:50])                                     # broken gzip stream
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.gz"):
        load("fashion-mnist", root=tmp_path)
    f.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))            # wrong type byte
    with pytest.raises(DataFormatError, match="not an idx file"):
        load("fashion-mnist", root=tmp_path)


def test_cifar10_files(tmp_path, monkeypatch):
    want = write_cifar10(tmp_path / "cifar-10-batches-py")
    for split in ("train", "test"):
        s = load("cifar10", split, root=tmp_path)                          # parent folder works
        x, y, names = want[split]
        assert s.images.shape == (len(y), 3, 32, 32)
        assert np.array_equal(s.images.numpy(), x) and np.array_equal(s.labels.numpy(), y)
        assert s.classes == tuple(names)
    ds._CACHE.clear()
    monkeypatch.setenv("DVN_DATA_CIFAR10", str(tmp_path / "cifar-10-batches-py"))
    lo, hi = task("cifar10-0-4", "test"), task("cifar10-5-9", "test")
    x, y, names = want["test"]
    assert len(lo) + len(hi) == len(y) and lo.classes == tuple(names[:5])
    assert np.array_equal(hi.labels.numpy(), y[y >= 5] - 5)
    assert np.array_equal(hi.images.numpy(), x[y >= 5])


def test_cifar100_fine_coarse(tmp_path, monkeypatch):
    want = write_cifar100(tmp_path / "c100")
    monkeypatch.setenv("DVN_DATA_CIFAR100", str(tmp_path / "c100"))
    fine, coarse = task("cifar100"), task("cifar100-coarse")
    x, yf, yc, fnames, cnames = want["train"]
    assert np.array_equal(fine.images.numpy(), x) and torch.equal(fine.images, coarse.images)
    assert np.array_equal(fine.labels.numpy(), yf) and np.array_equal(coarse.labels.numpy(), yc)
    assert fine.classes == tuple(fnames) and coarse.num_classes == 20
    assert coarse.classes == tuple(cnames) and coarse.dataset == "cifar100-coarse"
    assert len(load("cifar100", "test")) == 10


def test_malicious_pickle_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataFormatError, match=r"test_batch: unsafe pickle.*(posix|os)\.system"):
        load("cifar10", "test", root=tmp_path)
    assert not marker.exists()
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": eval}, f, protocol=4)
    with pytest.raises(DataFormatError, match="refusing global builtins.eval"):
        load("cifar10", "test", root=tmp_path)


def test_python2_array_pickle(tmp_path):
    """The official CIFAR files are python 2 pickles: numpy arrays with 8-bit strings."""
    from dvn.data.formats import safe_unpickle
    raw = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
           b"K\x00\x85U\x01b\x87R(K\x01K\x02K\x03\x86cnumpy\ndtype\n"
           b"U\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
           b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\x03\x04\x05tb.")
    (tmp_path / "a").write_bytes(raw)
    a = safe_unpickle(tmp_path / "a")
    assert a.dtype == np.uint8 and np.array_equal(a, np.arange(6).reshape(2, 3))


def test_cifar_corrupted(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "data_batch_3"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataFormatError, match="data_batch_3.*(corrupted|truncated)"):
        load("cifar10", root=tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, f)
    with pytest.raises(DataFormatError, match="test_batch: 'labels' must hold 2"):
        load("cifar10", "test", root=tmp_path)


def test_stl10_files(tmp_path, monkeypatch):
    want = write_stl10(tmp_path / "stl10_binary")
    monkeypatch.setenv("DVN_DATA", str(tmp_path))
    s = task("stl10", "test")
    x, y, names = want["test"]
    assert s.images.shape == (4, 3, 96, 96) and np.array_equal(s.images.numpy(), x)
    assert np.array_equal(s.labels.numpy(), y) and s.classes == tuple(names)
    xs, _ = next(iter(loader(s, batch_size=4, train=False, size=96, channels=3)))
    assert xs.shape == (4, 3, 96, 96)
    p = tmp_path / "stl10_binary" / "train_X.bin"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataFormatError, match="train_X.bin.*27648"):
        load("stl10")


def test_tiny_imagenet_files(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    want = write_tiny_imagenet(root)
    for split in ("train", "test"):
        s = load("tiny-imagenet", split, root=root)
        colours, y = want[split]
        assert s.images.shape == (len(y), 3, 64, 64) and np.array_equal(s.labels.numpy(), y)
        got = s.images.float().mean((2, 3)).numpy()
        assert np.abs(got - colours).max() <= 3                           # JPEG rounding
        assert s.classes == tuple(f"thing {w}" for w in want["wnids"])
    # the disk cache gives the same split back without decoding
    assert len(list((tmp_path / "cache").glob("tiny-imagenet-*.npy"))) == 4
    before = load("tiny-imagenet", root=root).images
    ds._CACHE.clear()
    first = root / "train" / want["wnids"][0] / "images" / f"{want['wnids'][0]}_0.JPEG"
    first.write_bytes(b"not a jpeg")
    assert torch.equal(load("tiny-imagenet", root=root).images, before)
    monkeypatch.setenv("DVN_CACHE", "off")
    ds._CACHE.clear()
    with pytest.raises(DataFormatError, match=f"{first.name}: cannot decode"):
        load("tiny-imagenet", root=root)


def test_tiny_imagenet_four_tasks(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    want = write_tiny_imagenet(root, n_classes=200, per_class=1, n_val=200)
    monkeypatch.setenv("DVN_DATA_TINY_IMAGENET", str(root))
    parts = [task(f"tiny-imagenet-{i}") for i in range(1, 5)]
    assert [p.num_classes for p in parts] == [50] * 4 and [len(p) for p in parts] == [50] * 4
    assert sum((p.classes for p in parts), ()) == task("tiny-imagenet").classes
    assert parts[2].classes[0] == f"thing {want['wnids'][100]}"
    assert sorted(torch.cat([p.labels for p in parts]).tolist()) == sorted(list(range(50)) * 4)
    assert len(task("tiny-imagenet-4", "test")) == 50


def test_not_found_messages(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError,
                       match=r"data_batch_1.*DVN_DATA_CIFAR10.*cifar-10-python\.tar\.gz"):
        load("cifar10")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*stl10_binary\.tar\.gz"):
        load("stl10", "test", root=tmp_path)
    with pytest.raises(DatasetNotFoundError,
                       match=r"DVN_DATA_TINY_IMAGENET.*tiny-imagenet-200\.zip"):
        task("tiny-imagenet-2", "test")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist", root=tmp_path)
    monkeypatch.setenv("DVN_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load("cifar100-coarse")


def test_bad_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*cifar10, cifar100"):
        load("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, test"):
        load("digits", "val")
    with pytest.raises(ValueError, match="unknown task 'fmnist-0-5'.*fmnist-0-4"):
        task("fmnist-0-5")
    with pytest.raises(ValueError, match="unknown split"):
        task("fmnist", "valid")


def test_registry():
    assert {s.dataset for s in TASKS.values()} <= set(DATASETS) <= set(MEAN_STD) | {"digits"}
    for name, spec in TASKS.items():
        assert spec.description and "\n" not in spec.description, name
    assert str(TASKS["cifar10-0-4"]).endswith("S1 task 1")
    assert [TASKS[t].size for t in ("tiny-imagenet", "cifar100", "stl10")] == [64, 32, 96]  # J3
    assert [TASKS[f"tiny-imagenet-{i}"].classes[0] for i in range(1, 5)] == [0, 50, 100, 150]
    assert sorted(i for _, ids in FASHION_MNIST_COARSE for i in ids) == list(range(10))


# ----------------------------------------------------------------------------------- Split
def test_split_checks_and_subset():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",), "x")
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ("a", "b"), "x")
    s = toy(200, classes=4)
    sub = s.subset(40, seed=1)
    assert len(sub) == 40 and torch.bincount(sub.labels).tolist() == [10] * 4
    assert sub.name == "toy/train[40]"
    assert torch.equal(sub.images, s.subset(40, seed=1).images)
    assert not torch.equal(sub.images, s.subset(40, seed=2).images)
    assert len(set(sub.images[:, 0, 0, 0].tolist())) == 40                 # no repeats
    with pytest.raises(ValueError, match="n must be an int in 1..200"):
        s.subset(201)


# ---------------------------------------------------------------------------------- Loader
def test_loader_shapes_and_determinism():
    s = toy(100, c=1, s=32)
    L = loader(s, batch_size=16, train=True, size=32, channels=3, seed=5)
    assert len(L) == 6 and L.num_samples == 96                             # drop_last
    a = [(x.clone(), y.clone()) for x, y in L]
    assert all(x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
               for x, y in a)
    b = list(loader(s, batch_size=16, train=True, size=32, channels=3, seed=5))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    L.set_epoch(1)
    c = list(L)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    L.set_epoch(0)
    assert torch.equal(torch.cat([x for x, _ in L]), torch.cat([x for x, _ in a]))
    ev = loader(s, batch_size=16, train=False, size=32, channels=1)
    assert len(ev) == 7 and sum(len(y) for _, y in ev) == 100 and not ev.augment


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("train", [False, True])
def test_sharding(world, train):
    n, bs = 50, 4
    s = toy(n, s=8)
    Ls = [loader(s, batch_size=bs, train=train, augment=False, size=8, channels=1, seed=3,
                 rank=r, world_size=world) for r in range(world)]
    assert len({len(L) for L in Ls}) == 1
    seen = []
    for L in Ls:
        L.set_epoch(2)
        shard = [int(v) for _, y in L for v in y]                         # labels = index % 4
        got = L.indices().tolist()
        xs = torch.cat([x for x, _ in L])
        # pixel value = image index: batches carry exactly the indexed images
        back = (xs[:, 0, 0, 0] * L.std[0] + L.mean[0]) * 255
        assert torch.allclose(back, torch.tensor(got, dtype=torch.float32), atol=1e-3)
        assert shard == [i % 4 for i in got]
        seen += got
    assert len(seen) == len(set(seen))                                    # no overlap
    if train:
        assert len(seen) == n // (bs * world) * bs * world
    else:
        assert sorted(seen) == list(range(n))                             # covers everything


def test_augmentation_values():
    torch.manual_seed(0)
    n = 64
    img = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    s = Split(img, torch.zeros(n, dtype=torch.int64), ("a",), "rgb/train", "cifar10")
    L = loader(s, batch_size=n, train=True, size=32, channels=3)
    x, _ = next(iter(L))
    m, sd = MEAN_STD["cifar10"]
    raw = (x * torch.tensor(sd).view(1, 3, 1, 1) + torch.tensor(m).view(1, 3, 1, 1)) * 255
    raw = raw.round().to(torch.int64)
    padded = torch.nn.functional.pad(img.long(), (4, 4, 4, 4), value=0)[L.indices()]
    flips = 0
    for i in range(n):                                 # every output is a (flipped) crop
        ok = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
              if torch.equal(raw[i], (padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1) if f
                                      else padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert ok, i
        flips += ok[0][2]
    assert 10 < flips < 54
    # digits are never flipped; crops at size 64 pad by 8
    d = Split(img[:, :1], torch.zeros(n, dtype=torch.int64), ("a",), "d", "digits")
    assert not loader(d, batch_size=8, train=True, size=32, channels=1)._flip
    assert loader(s, batch_size=8, train=True, size=64, channels=3)._aug_pad == 8


def test_fit_pad_resize_and_normalise():
    s = toy(8, c=1, s=28, dataset="fashion-mnist")
    x, _ = next(iter(loader(s, batch_size=8, train=False, size=32, channels=3)))
    (m,), (sd,) = MEAN_STD["fashion-mnist"]
    assert x.shape == (8, 3, 32, 32)
    assert torch.allclose(x[:, :, :2], torch.tensor(-m / sd))              # 2 px zero border
    assert torch.allclose(x[:, 0, 2:30, 2:30] * sd + m,
                          s.images[:, 0].float().div(255), atol=1e-6)      # exact values inside
    d = toy(8, c=1, s=8, dataset="digits")
    x, _ = next(iter(loader(d, batch_size=8, train=False, size=32, channels=1)))
    assert x.shape == (8, 1, 32, 32) and torch.allclose(x, x[:, :, :1, :1].expand_as(x))
    big = toy(4, c=3, s=96)                                                # unknown dataset
    x, _ = next(iter(loader(big, batch_size=4, train=False, size=64, channels=3)))
    assert x.shape == (4, 3, 64, 64)


def test_hierarchical_pairs_share_batches():
    s = toy(60, s=28, classes=4, dataset="fashion-mnist")
    fine = Split(s.images, torch.arange(60) % 12, tuple("abcdefghijkl"), "f", s.dataset)
    a = loader(s, batch_size=8, train=True, size=32, channels=3, seed=7)
    b = loader(fine, batch_size=8, train=True, size=32, channels=3, seed=7)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb % 4)


def test_loader_argument_errors():
    s = toy(20)
    kw = dict(batch_size=4, train=True, size=8, channels=1)
    for bad, msg in [(dict(batch_size=0), "batch_size must be an int >= 1"),
                     (dict(batch_size=2.0), "batch_size"),
                     (dict(rank=2, world_size=2), r"rank must be < world_size \(2\)"),
                     (dict(channels=2), "channels must be 1 or 3"),
                     (dict(batch_size=16, world_size=2), "batch_size \\* world_size = 32 exceeds")]:
        with pytest.raises(ValueError, match=msg):
            loader(s, **{**kw, **bad})
    with pytest.raises(ValueError, match="channels=1 but"):
        loader(toy(4, c=3), batch_size=2, train=False, size=8, channels=1)
    with pytest.raises(TypeError, match="Split"):
        loader(torch.zeros(3), **kw)
    assert len(loader(s, **{**kw, "batch_size": 16, "world_size": 2, "drop_last": False})) == 1
