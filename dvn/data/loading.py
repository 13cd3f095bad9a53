"""Batches for training and evaluation: :func:`loader` -> :class:`Loader`.

Everything runs with torch ops on whole uint8 batches in the calling process (no worker
processes, no PIL): gather the batch, fit it to ``size``, augment, normalise.

* Fit: pad with zeros when ``size`` exceeds the image by a small even margin (at most a quarter
  of the image, e.g. Fashion-MNIST 28 -> 32: 2 px per side), otherwise bilinear resize
  (antialiased when shrinking; digits 8 -> 32, STL-10 96 -> 64). Grey images are repeated to
  3 channels when ``channels=3``.
* Augment (default: when ``train``): random crop after zero padding of ``round(size / 8)`` px
  (4 px at 32, 8 at 64, 12 at 96), and a random horizontal flip for every dataset except the
  digits (a mirrored digit is not a digit). Fashion-MNIST is flipped: its classes are
  left/right symmetric garments, and a mirrored shoe or bag is still the same class.
* Normalise with the dataset's per-channel mean/std (:data:`MEAN_STD`, computed on its train
  split), or the split's own statistics when the dataset is unknown.
* Order: training loaders reshuffle every epoch from ``(seed, epoch)`` (call
  :meth:`Loader.set_epoch`, like ``DistributedSampler``); evaluation loaders keep the split's
  order. Augmentation draws come from ``(seed, epoch, rank)`` only, so two loaders over the
  same images (e.g. the coarse and fine tasks of a hierarchical scenario) yield identical
  image batches.
* Sharding: rank ``r`` of ``world_size`` takes every ``world_size``-th image of the epoch's
  order; all ranks get the same number of batches. With ``drop_last`` (default: ``train``) the
  epoch is cut to a multiple of ``batch_size * world_size``; without it nothing is dropped or
  repeated, so a rank's last batch may be shorter (empty only when fewer than
  ``world_size`` images are left for the last step).
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from .splits import Split

__all__ = ["FLIP", "Loader", "MEAN_STD", "loader"]

#: dataset -> (mean, std) per channel on the 0..1 scale (train split statistics)
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3060,), (0.3764,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar100-coarse": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
#: dataset -> whether random horizontal flips are used (missing: True)
FLIP: dict[str, bool] = {"digits": False}


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (distinct tuples give unrelated streams)."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def _int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"loader: {name} must be an int >= {lo}, got {v!r}")
    return v


class Loader:
    """Iterable of ``(images, labels)``: float32 (B, channels, size, size) normalised, int64 (B,).

    Build it with :func:`loader`. ``len()`` is the number of batches per epoch on this rank.
    """

    def __init__(self, split: Split, *, batch_size: int, train: bool, size: int, channels: int,
                 augment: bool | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None) -> None:
        if not isinstance(split, Split):
            raise TypeError(f"loader: split must be a dvn.data.Split, got {type(split).__name__}")
        self.split = split
        self.batch_size = _int("batch_size", batch_size, 1)
        self.size = _int("size", size, 1)
        self.world_size = _int("world_size", world_size, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"loader: rank must be < world_size ({world_size}), got {rank}")
        self.seed = _int("seed", seed, 0)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"loader: channels must be 1 or 3, got {channels!r}")
        c, h, w = split.images.shape[1:]
        if channels < c:
            raise ValueError(f"loader: channels=1 but {split.name} has 3-channel images")
        if len(split) == 0:
            raise ValueError(f"loader: split {split.name} is empty")
        self.channels = channels
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        if self.drop_last and len(split) < self.batch_size * self.world_size:
            raise ValueError(
                f"loader: batch_size * world_size = {self.batch_size * self.world_size} exceeds "
                f"the {len(split)} images of {split.name} with drop_last=True; lower batch_size "
                "or pass drop_last=False")
        self.epoch = 0

        self._aug_pad = max(1, round(size / 8)) if self.augment else 0
        self._flip = self.augment and FLIP.get(split.dataset, True)

        if split.dataset in MEAN_STD:
            mean, std = (torch.tensor(v, dtype=torch.float32) for v in MEAN_STD[split.dataset])
        else:
            x = split.images[:: max(1, len(split) // 10000)].to(torch.float32) / 255
            mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp_min(1e-3)
        if mean.numel() != c:
            raise ValueError(f"loader: statistics of {split.dataset!r} have {mean.numel()} "
                             f"channels, images have {c}")
        mean, std = mean.expand(channels), std.expand(channels)
        self.mean, self.std = mean.clone(), std.clone()
        # out = x * scale + shift with x in 0..255
        self._scale = (1.0 / (255.0 * std)).view(1, channels, 1, 1)
        self._shift = (-mean / std).view(1, channels, 1, 1)

    # ------------------------------------------------------------------------------- order
    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        n, step = len(self.split), self.batch_size * self.world_size
        if self.drop_last:
            return n // step * self.batch_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n, step = len(self.split), self.batch_size * self.world_size
        return n // step if self.drop_last else math.ceil(n / step)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = _int("epoch", epoch, 0)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in iteration order."""
        n = len(self.split)
        if self.train:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: len(self) * self.batch_size * self.world_size]
        return order[self.rank:: self.world_size]

    # ----------------------------------------------------------------------------- batches
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, 1))
        bs = self.batch_size
        for b in range(len(self)):
            sel = idx[b * bs:(b + 1) * bs]
            yield self.transform(self.split.images[sel], g), self.split.labels[sel]

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32 (B, channels, size, size), augmented when
        this loader augments (draws from ``generator``)."""
        x = fit(x, self.size, pad=self._aug_pad)
        if self.augment and len(x):
            x = self._crop_flip(x, generator)
        out = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
        return out.contiguous()

    def _crop_flip(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Random size x size crops of the padded batch, mirrored per image when flipping:
        one gather over the flattened pixels."""
        b, c, hp, wp = x.shape
        s, p = self.size, self._aug_pad
        off = torch.randint(0, 2 * p + 1, (b, 2), generator=g)
        flip = torch.rand(b, generator=g) < 0.5
        ar = torch.arange(s)
        rows = off[:, :1] + ar
        cols = off[:, 1:] + ar
        if self._flip:
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, s * s).expand(b, c, s * s)
        return x.reshape(b, c, hp * wp).gather(2, index).view(b, c, s, s)

    def __repr__(self) -> str:
        return (f"Loader({self.split.name}, batches={len(self)}, batch_size={self.batch_size}, "
                f"size={self.size}, channels={self.channels}, augment={self.augment}, "
                f"rank={self.rank}/{self.world_size})")


def fit_margin(h: int, w: int, size: int) -> Optional[int]:
    """How an h x w image fits ``size`` x ``size``: the zero padding per side when ``size``
    exceeds it by the same small even margin both ways (at most a quarter of the image, e.g.
    Fashion-MNIST 28 -> 32: 2; 0 when it already fits), else None (a bilinear resize). The one
    fit rule of the loader and of ``dvn infer`` / ``dvn serve`` (``TaskInput.prepare``)."""
    mh, mw = size - h, size - w
    if mh == mw and mh >= 0 and mh % 2 == 0 and mh <= h // 4:
        return mh // 2
    return None


def fit(x: torch.Tensor, size: int, *, pad: int = 0) -> torch.Tensor:
    """Images (N, C, h, w), 0..255, fitted to ``size`` x ``size`` by :func:`fit_margin`'s
    rule: zero-padded (dtype kept), or resized bilinearly (antialiased when shrinking; float32,
    clamped to 0..255). ``pad``: more zero padding on every side (the loader's augmentation)."""
    h, w = x.shape[-2:]
    margin = fit_margin(h, w, size)
    if margin is None:
        x = F.interpolate(x.to(torch.float32), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=size < max(h, w)).clamp_(0, 255)
        margin = 0
    if margin + pad:
        x = F.pad(x, (margin + pad,) * 4)
    return x


def loader(split: Split, *, batch_size: int, train: bool, size: int, channels: int,
           augment: bool | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
           drop_last: bool | None = None) -> Loader:
    """A :class:`Loader` over ``split`` (see the module docstring for what it does)."""
    return Loader(split, batch_size=batch_size, train=train, size=size, channels=channels,
                  augment=augment, seed=seed, rank=rank, world_size=world_size,
                  drop_last=drop_last)
