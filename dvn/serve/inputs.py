"""Request bodies of ``POST /v1/predict`` checked and turned into network inputs.

A request is ``{"task": J, "image": "<base64 PNG or JPEG>" | "pixels": [[...]], "level": L,
"deadline_ms": T}`` (level and deadline optional), or a list of them. An image goes through
the steps ``dvn infer`` applies to a file (``dvn.deploy.images``: the dataset's channels, its
native size, fitted and normalised), so the same image gives the same answer. Every refusal
is an ``InputError`` naming the field (``[2].task`` in a list).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..deploy.images import TaskInput, image_tensor
from .scheduler import Request

#: fields a request may have
FIELDS = ("task", "image", "pixels", "level", "deadline_ms")
#: largest image side accepted (pixels), against decompression bombs
MAX_SIDE = 4096


class InputError(ValueError):
    """A request the server refuses: ``field`` names what is wrong, ``status`` is the HTTP
    status (400 malformed, 404 unknown task or level, 413 too large, 422 invalid value)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message}}


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(body: Any, tasks: Mapping[int, TaskInput], levels: Mapping[int, Sequence[int]], *,
          max_items: int = 256, now: Optional[float] = None) -> tuple[list[Request], bool]:
    """(requests, whether the body was a list) from a decoded JSON body; ``now``: when it
    arrived (``time.perf_counter()``; deadlines count from it)."""
    now = time.perf_counter() if now is None else now
    if isinstance(body, list):
        if not body:
            raise InputError("body", "an empty list; send one request or a list of them", 400)
        if len(body) > max_items:
            raise InputError("body", f"{len(body)} requests in one call; at most {max_items}", 413)
        return [one(b, tasks, levels, f"[{i}].", now) for i, b in enumerate(body)], True
    return [one(body, tasks, levels, "", now)], False


def one(body: Any, tasks: Mapping[int, TaskInput], levels: Mapping[int, Sequence[int]],
        where: str = "", now: Optional[float] = None) -> Request:
    """One request object checked and prepared (``where``: its field prefix in a list)."""
    now = time.perf_counter() if now is None else now
    if not isinstance(body, dict):
        raise InputError(where.rstrip(".") or "body",
                         f"expected a JSON object, got {type(body).__name__}", 400)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InputError(where + unknown[0], f"unknown field; expected {', '.join(FIELDS)}")
    task = _int(body.get("task"))
    if "task" not in body:
        raise InputError(where + "task", "missing; give the task's number")
    if task is None or task not in tasks:
        raise InputError(where + "task", f"unknown task {body['task']!r}; tasks are "
                         f"{sorted(tasks)}", 404 if task is not None else 422)
    level = body.get("level")
    if level is not None:
        if _int(level) is None:
            raise InputError(where + "level", f"expected an integer, got {level!r}")
        if level not in levels[task]:
            raise InputError(where + "level", f"task {task} has no level {level}; its levels "
                             f"are {list(levels[task])}", 404)
    deadline = body.get("deadline_ms")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) \
                or not math.isfinite(deadline):
            raise InputError(where + "deadline_ms", f"expected a number, got {deadline!r}")
        if deadline <= 0:
            raise InputError(where + "deadline_ms", f"must be positive, got {deadline!r}")
    has_image, has_pixels = body.get("image") is not None, body.get("pixels") is not None
    if has_image == has_pixels:
        raise InputError(where + "image", "give exactly one of image (base64 PNG or JPEG) "
                         "and pixels (a nested list)")
    task_input = tasks[task]
    if has_image:
        x = decode_image(body["image"], task_input, where + "image")
    else:
        x = decode_pixels(body["pixels"], task_input, where + "pixels")
    return Request(task, x, level, None if deadline is None else now + deadline / 1e3, now)


def _prepare(img, task_input: TaskInput) -> torch.Tensor:
    """A PIL image as the task's network takes it: ``dvn.deploy.read_images``'s steps."""
    return task_input.prepare(image_tensor(img, task_input)[None])[0]


def decode_image(value: Any, task_input: TaskInput, field: str) -> torch.Tensor:
    """A base64 PNG or JPEG as the task's input (C x H x W)."""
    from PIL import Image
    if not isinstance(value, str):
        raise InputError(field, f"expected a base64 string, got {type(value).__name__}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise InputError(field, f"expected a PNG or JPEG image, got {img.format}")
            if max(img.size) > MAX_SIDE:
                raise InputError(field, f"image of {img.size[0]}x{img.size[1]} pixels; at most "
                                 f"{MAX_SIDE} a side", 413)
            return _prepare(img, task_input)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(field, f"does not decode as a PNG or JPEG image ({e})") from None


def decode_pixels(value: Any, task_input: TaskInput, field: str) -> torch.Tensor:
    """A nested list of 0..255 values, H x W (grey) or H x W x C (C = 1 or 3), as the task's
    input; any size (resized to the task's native size as an image file is)."""
    from PIL import Image
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # RecursionError too
        raise InputError(field, f"expected a nested list of numbers H x W or H x W x C "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    if t.dim() == 3 and t.shape[2] == 1:
        t = t[..., 0]
    if t.dim() not in (2, 3) or (t.dim() == 3 and t.shape[2] != 3) or min(t.shape) < 1:
        raise InputError(field, f"expected H x W or H x W x C with C = 1 or 3, got shape "
                         f"{list(t.shape)}")
    if max(t.shape[:2]) > MAX_SIDE:
        raise InputError(field, f"at most {MAX_SIDE} pixels a side", 413)
    if not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 255:
        raise InputError(field, "values must be numbers from 0 to 255")
    array = t.round().to(torch.uint8).contiguous().numpy()
    return _prepare(Image.fromarray(array, "L" if t.dim() == 2 else "RGB"), task_input)
