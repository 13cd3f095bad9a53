"""Readers of the datasets' own file formats, returning numpy arrays.

Every reader checks sizes and headers and raises :class:`DataFormatError` naming the file
when a file is corrupted or truncated. Nothing here runs code from a file: CIFAR's python
pickles go through :class:`SafeUnpickler`, which only builds plain containers and numpy
arrays.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .splits import DataFormatError

__all__ = ["SafeUnpickler", "read_cifar_batch", "read_idx", "read_stl_images", "read_stl_labels",
           "read_tiny_imagenet", "safe_unpickle"]


# ---------------------------------------------------------------------------------------- idx
def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """An idx file (MNIST / Fashion-MNIST format; gzipped when the name ends in .gz) as uint8.

    Header: two zero bytes, type 0x08 (unsigned byte), ``ndim``, then ``ndim`` big-endian
    uint32 sizes; the data follows.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:       # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFormatError(f"{path}: cannot read ({e}); the file is corrupted or "
                              "truncated") from e
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataFormatError(f"{path}: not an idx file of {ndim}-d unsigned bytes "
                              f"(header {raw[:4].hex() or 'empty'}, expected 000008{ndim:02x})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataFormatError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) "
                              f"but {data.size} data bytes follow; the file is truncated or "
                              "corrupted")
    return data.reshape(shape)


# --------------------------------------------------------------------------------- CIFAR pickle
def _numpy_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]      # numpy's _reconstruct, any version
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
    try:
        frombuffer = np.zeros(1).__reduce_ex__(5)[0]          # protocol-5 pickles of arrays
        if getattr(frombuffer, "__name__", "") == "_frombuffer":
            for mod in ("numpy.core.numeric", "numpy._core.numeric"):
                allowed[(mod, "_frombuffer")] = frombuffer
    except Exception:  # pragma: no cover - older numpy
        pass
    for mod in ("builtins", "__builtin__"):
        for name, obj in (("dict", dict), ("list", list), ("bytes", bytes), ("str", str),
                          ("int", int)):
            allowed[(mod, name)] = obj
    allowed[("_codecs", "encode")] = _latin1_encode     # how py3 protocol-2 pickles store bytes
    return allowed


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to strings (what protocol-2 pickles of bytes call)."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode is only allowed on strings")
    return obj.encode(encoding, errors)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only build dict/list/bytes/str/int and numpy arrays.

    Any other global a pickle names (``os.system``, ``builtins.eval``, a class, ...) is refused
    with :class:`pickle.UnpicklingError` before it is looked up, so loading a file never runs
    code from it. ``persistent_load`` is refused too.
    """

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: only dict, list, bytes, str, int and numpy "
                "arrays may be unpickled") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refusing persistent id: not allowed in data files")


def safe_unpickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` with :class:`SafeUnpickler` (bytes decoded as in python 2 files)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        msg = str(e)
        if msg.startswith("refusing"):
            raise DataFormatError(f"{path}: unsafe pickle, not loaded ({msg})") from None
        raise DataFormatError(f"{path}: not a valid pickle ({msg}); corrupted or truncated") from e
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            struct.error, MemoryError) as e:
        raise DataFormatError(f"{path}: not a valid pickle ({type(e).__name__}: {e}); "
                              "corrupted or truncated") from e


def _key(d: dict, name: str, path: Path) -> object:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise DataFormatError(f"{path}: no {name!r} entry (has {sorted(map(str, d))[:8]})")


def read_cifar_batch(path: str | os.PathLike, label_keys: tuple[str, ...] = ("labels",),
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
    """A CIFAR python batch: images uint8 (N, 3, 32, 32) and one int64 array per label key.

    CIFAR-10 batches have ``labels``; CIFAR-100's ``train``/``test`` have ``fine_labels`` and
    ``coarse_labels``. Rows of ``data`` are 3072 bytes: the red, green, blue 32x32 planes.
    """
    path = Path(path)
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = _key(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: 'data' must be a uint8 array (N, 3072), got "
                              f"{getattr(data, 'dtype', type(data).__name__)} "
                              f"{getattr(data, 'shape', '')}")
    labels = []
    for k in label_keys:
        y = np.asarray(_key(d, k, path))
        if y.shape != (data.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DataFormatError(f"{path}: {k!r} must hold {data.shape[0]} integers, got "
                                  f"{y.dtype} {y.shape}")
        labels.append(y.astype(np.int64))
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_meta(path: str | os.PathLike, key: str) -> list[str]:
    """Class names from a CIFAR meta file (``batches.meta`` / ``meta``)."""
    path = Path(path)
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    names = _key(d, key, path)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataFormatError(f"{path}: {key!r} must be a list of names")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


# ---------------------------------------------------------------------------------- STL binary
def read_stl_images(path: str | os.PathLike) -> np.ndarray:
    """STL-10 ``*_X.bin``: uint8 (N, 3, 96, 96); each image is stored channel by channel, in
    column-major order (hence the transpose)."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % (3 * 96 * 96):
        raise DataFormatError(f"{path}: size {data.size} bytes is not a positive multiple of "
                              f"3*96*96 = 27648; the file is truncated or corrupted")
    return np.ascontiguousarray(data.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))


def read_stl_labels(path: str | os.PathLike, n: int) -> np.ndarray:
    """STL-10 ``*_y.bin``: one byte per image, labels 1..10 -> int64 0..9."""
    path = Path(path)
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if y.size != n:
        raise DataFormatError(f"{path}: {y.size} labels for {n} images; truncated or corrupted")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataFormatError(f"{path}: labels must be 1..10, got {y.min()}..{y.max()}")
    return y - 1


# ------------------------------------------------------------------------- Tiny-ImageNet folder
def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))          # a few Tiny-ImageNet images are greyscale
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataFormatError(f"{path}: cannot decode image ({e})") from e
    if a.shape != (64, 64, 3):
        raise DataFormatError(f"{path}: expected a 64x64 image, got {a.shape[1]}x{a.shape[0]}")
    return a


def read_tiny_imagenet(root: str | os.PathLike, split: str, wnids: list[str],
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Tiny-ImageNet images uint8 (N, 3, 64, 64) and labels (index into ``wnids``).

    ``train``: ``train/<wnid>/images/*.JPEG``; ``val``: ``val/images/*`` labelled by
    ``val/val_annotations.txt`` (file, wnid, box). Files are read in sorted order and decoded
    on a few threads (PIL releases the GIL).
    """
    root = Path(root)
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            folder = root / "train" / w / "images"
            found = sorted(p for p in folder.glob("*")
                           if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
            if not found:
                raise DataFormatError(f"{folder}: no images for class {w} (expected "
                                      f"{folder}/{w}_0.JPEG ...)")
            files += found
            labels += [index[w]] * len(found)
    else:
        ann = root / "val" / "val_annotations.txt"
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise DataFormatError(f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...' with a "
                                      f"wnid from wnids.txt, got {line[:80]!r}")
            files.append(root / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
        order = sorted(range(len(files)), key=lambda i: files[i].name)
        files, labels = [files[i] for i in order], [labels[i] for i in order]
        if not files:
            raise DataFormatError(f"{ann}: no annotations")
    for p in (files[0], files[-1]):
        if not p.is_file():
            raise DataFormatError(f"{p}: listed but missing")
    images = np.empty((len(files), 64, 64, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, a in enumerate(pool.map(_decode, files, chunksize=256)):
            images[i] = a
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), np.asarray(labels, np.int64)
