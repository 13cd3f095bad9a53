"""The in-memory split type and the data errors shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DataFormatError", "DatasetNotFoundError", "Split"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for.

    The message says which files were expected where and how to get them (the package to
    install, the environment variable to set, the official archive to unpack).
    """


class DataFormatError(ValueError):
    """A data file exists but is corrupted, truncated, unsafe or not in the expected format.

    The message names the file.
    """


@dataclass(frozen=True)
class Split:
    """One split of one task, all in memory.

    ``images`` is uint8 (N, C, H, W) with C = 1 or 3; ``labels`` is int64 (N,) in
    0..num_classes-1; ``classes`` are the class names; ``name`` is e.g. ``"fmnist-0-4/train"``.
    ``dataset`` names the source dataset (``"fashion-mnist"``, ``"cifar10"``, ...): the loader
    picks its normalisation and augmentation from it ("" = unknown: statistics from the data).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    dataset: str = ""

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 \
                or x.shape[1] not in (1, 3):
            raise ValueError(f"Split {self.name!r}: images must be a uint8 tensor (N, C, H, W) "
                             f"with C = 1 or 3, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"Split {self.name!r}: labels must be an int64 tensor of shape "
                             f"({x.shape[0]},), got {getattr(y, 'dtype', type(y))} "
                             f"{tuple(getattr(y, 'shape', ()))}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes:
            raise ValueError(f"Split {self.name!r}: classes must not be empty")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise ValueError(f"Split {self.name!r}: labels must lie in 0..{len(self.classes) - 1}, "
                             f"got {int(y.min())}..{int(y.max())}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (f"Split({self.name!r}, n={n}, images={c}x{h}x{w}, "
                f"classes={self.num_classes}, dataset={self.dataset!r})")

    def take(self, index: torch.Tensor, name: str | None = None) -> Split:
        """The images at ``index`` (same classes), as a new split."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return Split(self.images[index], self.labels[index], self.classes,
                     self.name if name is None else name, self.dataset)

    def subset(self, n: int, seed: int = 0) -> Split:
        """A seeded random subset of ``n`` images, stratified by class.

        Each class contributes in proportion to its share of the split (up to rounding), so a
        balanced split stays balanced. The chosen images keep their original order. Same
        ``(n, seed)`` -> same subset.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(self):
            raise ValueError(f"subset: n must be an int in 1..{len(self)} for {self.name!r}, "
                             f"got {n!r}")
        if n == len(self):
            return self
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(len(self), generator=g)
        lab = self.labels[perm]
        # Rank of each permuted image within its class, then interleave the classes by
        # fractional rank (rank + 1/2) / class count: any prefix is proportionally stratified.
        order = torch.sort(lab, stable=True).indices
        counts = torch.bincount(lab, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - starts[lab[order]]
        key = (rank.double() + 0.5) / counts[lab].double()
        chosen = perm[torch.sort(key, stable=True).indices[:n]]
        return self.take(torch.sort(chosen).values, f"{self.name}[{n}]")
