"""Validation and normalisation of sliced_conv2d's arguments, with errors that name them."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .segments import ChannelSegments, SegmentsLike, as_segments

IntPair = Union[int, tuple[int, int], list[int]]


@dataclass(frozen=True)
class ConvArgs:
    """Checked arguments of one sliced convolution, in the form the backends take."""

    in_flat: tuple[int, ...]
    out_flat: tuple[int, ...]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        if isinstance(items, (str, bytes, bool)):
            raise TypeError
        a, b = (operator.index(v) for v in items)  # type: ignore[union-attr]
        if any(isinstance(v, bool) for v in items):  # type: ignore[union-attr]
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name}: values must be >= {minimum}, got {value!r}")
    return a, b


def _padding(value: Union[IntPair, str], kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[int, int]:
    if value == "valid":
        return 0, 0
    if value == "same":
        if stride != (1, 1):
            raise ValueError(f"padding: 'same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total):
            raise ValueError(f"padding: 'same' needs an even dilation*(kernel-1) per dimension "
                             f"to pad symmetrically, got {tuple(total)}; pass explicit padding")
        return total[0] // 2, total[1] // 2
    if isinstance(value, str):
        raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {value!r}")
    return _pair(value, "padding", 0)


_CACHE: dict[tuple, ConvArgs] = {}
_CACHE_LIMIT = 4096


def check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    in_segments: SegmentsLike, out_segments: SegmentsLike, stride: IntPair,
                    padding: Union[IntPair, str], dilation: IntPair, groups: int) -> ConvArgs:
    """Checks every argument of sliced_conv2d; raises TypeError/ValueError naming the bad one.

    Results are memoised on the arguments' metadata (shapes, dtypes, devices, segments,
    geometry), which is all the checks read: a layer called again with the same shapes pays
    a dict lookup (~2 us) instead of the checks (~40 us).
    """
    key = _memo_key(x, weight, bias, in_segments, out_segments, stride, padding, dilation,
                    groups)
    if key is None:
        return _check_conv_args(x, weight, bias, in_segments, out_segments, stride, padding,
                                dilation, groups)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _check_conv_args(x, weight, bias, in_segments, out_segments, stride, padding,
                                  dilation, groups)
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = cached
    return cached


def _plain(value: object) -> bool:
    """An int, a str or a tuple of ints, excluding bools (True == 1 would alias in a key)."""
    t = type(value)
    return t is int or t is str or (t is tuple and all(type(v) is int for v in value))


def _memo_key(x, weight, bias, in_segments, out_segments, stride, padding, dilation,
              groups) -> Optional[tuple]:
    """The metadata the checks read, or None when the arguments cannot be memoised."""
    if torch.compiler.is_compiling():
        return None
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))
            and isinstance(in_segments, ChannelSegments)
            and isinstance(out_segments, ChannelSegments)
            and _plain(stride) and _plain(padding) and _plain(dilation) and type(groups) is int):
        return None
    return (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
            None if bias is None else (bias.shape, bias.dtype, bias.device),
            in_segments, out_segments, stride, padding, dilation, groups)


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     in_segments: SegmentsLike, out_segments: SegmentsLike, stride: IntPair,
                     padding: Union[IntPair, str], dilation: IntPair, groups: int) -> ConvArgs:
    if groups != 1:
        raise NotImplementedError(f"groups: only groups=1 is supported by sliced_conv2d, "
                                  f"got groups={groups!r}")
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (C_out, C_in, kh, kw) tensor, "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating point dtype, got {weight.dtype}")
    others = [("x", x)] + ([("bias", bias)] if bias is not None else [])
    for name, t in others:
        if t.dtype != weight.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match weight's dtype {weight.dtype}")
        if t.device != weight.device:
            raise ValueError(f"{name}: device {t.device} does not match weight's device "
                             f"{weight.device}")
    c_out, c_in, kh, kw = weight.shape
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias: expected shape ({c_out},) matching weight's C_out, "
                         f"got {tuple(bias.shape)}")
    ins = as_segments(in_segments, "in_segments")
    outs = as_segments(out_segments, "out_segments")
    ins.check_within(c_in, "in_segments", f"weight (C_in={c_in})")
    outs.check_within(c_out, "out_segments", f"weight (C_out={c_out})")
    if x.shape[1] != ins.total:
        raise ValueError(f"x: has {x.shape[1]} channels but in_segments select {ins.total} "
                         f"({ins!r})")
    stride_ = _pair(stride, "stride", 1)
    dilation_ = _pair(dilation, "dilation", 1)
    padding_ = _padding(padding, (kh, kw), stride_, dilation_)
    for dim, size, k, s, p, d in zip("HW", x.shape[2:], (kh, kw), stride_, padding_, dilation_):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(f"x: padded {dim} size {size + 2 * p} is smaller than the dilated "
                             f"kernel size {span}")
    return ConvArgs(ins.flat(), outs.flat(), stride_, padding_, dilation_)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one dimension."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(x_shape, weight_shape, out_segments, stride, padding, dilation) -> list[int]:
    """The compact output's shape (N, sum of out lengths, P, Q); segments flat, geometry pairs."""
    n, _, h, w = x_shape
    kh, kw = weight_shape[2], weight_shape[3]
    return [n, sum(out_segments[1::2]),
            output_size(h, kh, stride[0], padding[0], dilation[0]),
            output_size(w, kw, stride[1], padding[1], dilation[1])]
