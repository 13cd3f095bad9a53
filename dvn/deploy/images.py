"""Images for inference: a task's input description, and image files prepared as its data.

A task's network was trained on its dataset's images as ``dvn.data.loader`` prepares them:
native size, fitted to the input size (a small even margin is zero-padded, e.g. Fashion-MNIST
28 -> 32; otherwise a bilinear resize), normalised with the dataset's mean and std. An image
file goes through the same steps after it is converted to the dataset's channels and resized
to its native size (pillow), so a photo of any size reaches the network as the data did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Optional

import torch

from ..data.loading import fit

#: image files a folder contributes (PNG and JPEG, through pillow)
SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class TaskInput:
    """How a task's images reach its network: ``native_channels`` (1 or 3) x ``native_size``
    (h, w) as the dataset stores them, fitted to ``input_size`` with ``channels`` channels
    (grey repeated to 3 when the network takes 3), normalised by ``mean``/``std`` (per
    channel, 0..1 scale). ``classes``: class names, when known."""

    name: str
    native_channels: int
    native_size: tuple[int, int]
    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "native_size", tuple(int(s) for s in self.native_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.native_channels not in (1, 3) or self.channels not in (1, 3) \
                or self.channels < self.native_channels:
            raise ValueError(f"task {self.name}: channels must be 1 or 3 (native "
                             f"{self.native_channels}, network {self.channels})")
        if len(self.native_size) != 2 or min(self.native_size) < 1 or self.input_size < 1:
            raise ValueError(f"task {self.name}: sizes must be positive, got native "
                             f"{self.native_size}, input {self.input_size}")
        if len(self.mean) != self.native_channels or len(self.std) != self.native_channels \
                or min(self.std) <= 0:
            raise ValueError(f"task {self.name}: mean and std need one value per native "
                             f"channel ({self.native_channels}), std > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskInput:
        if not isinstance(d, dict):
            raise TypeError(f"a task description must be a dict, got {type(d).__name__}")
        return cls(**d)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, native_channels, h, w) -> normalised float32 (N, channels, input_size,
        input_size), as ``dvn.data.loader`` prepares evaluation batches."""
        x = fit(images.to(torch.float32), self.input_size)
        shift, scale = self._affine
        # the loader's arithmetic, so that the same image gives the same floats
        return torch.addcmul(shift, x, scale).contiguous()

    @cached_property
    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(-mean / std, 1 / (255 std)) per network channel, made once per task: a server
        prepares every request with them."""
        mean = torch.tensor(self.mean).expand(self.channels).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std).expand(self.channels).reshape(1, -1, 1, 1)
        return -mean / std, 1.0 / (255.0 * std)


def image_files(paths: Sequence[str]) -> list[str]:
    """The image files named, folders expanded to their PNG/JPEG files (sorted)."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(SUFFIXES) and os.path.isfile(os.path.join(p, f)))
            if not found:
                raise ValueError(f"images: folder {p} holds no {'/'.join(SUFFIXES)} files")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"images: no such file or folder {p}")
    if not files:
        raise ValueError("images: no image given")
    return files


def image_tensor(img, task: TaskInput) -> torch.Tensor:
    """An open PIL image as uint8 (native_channels, h, w) at the task's native size: the one
    decoding step of ``dvn infer`` and ``dvn serve``."""
    from PIL import Image
    h, w = task.native_size
    img = img.convert("L" if task.native_channels == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(h, w, -1).permute(2, 0, 1)


def read_image(file: str, task: TaskInput) -> torch.Tensor:
    """One image file as uint8 (native_channels, h, w) at the task's native size; a file that
    is not a readable image raises ValueError naming it."""
    from PIL import Image
    try:
        with Image.open(file) as img:
            return image_tensor(img, task)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable files
        raise ValueError(f"images: cannot read {file} as an image ({e})") from None


def read_images(files: Sequence[str], task: TaskInput) -> torch.Tensor:
    """Image files as the task's network takes them: (N, channels, input_size, input_size);
    the first unreadable file raises ValueError."""
    return task.prepare(torch.stack([read_image(f, task) for f in files]))


def read_readable(files: Sequence[str], task: TaskInput
                  ) -> tuple[Optional[torch.Tensor], list[str], list[tuple[str, str]]]:
    """The readable ones of ``files`` as ``read_images`` prepares them (None if none is),
    the files they are, and (file, message) for each unreadable one."""
    images, good, bad = [], [], []
    for f in files:
        try:
            images.append(read_image(f, task))
            good.append(f)
        except ValueError as e:
            bad.append((f, str(e)))
    return (task.prepare(torch.stack(images)) if images else None), good, bad
