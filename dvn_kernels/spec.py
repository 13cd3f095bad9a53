"""The kernel spec: what one call of a kernel op computes, as a value and as a string.

A :class:`KernelSpec` holds the active channel ranges of both sides (at most two each; more are
gathered by the plan first, see ``dvn_kernels.plan``) and the geometry. The kernel ops take it as
one string, made once per plan by ``KernelSpec.text`` and parsed by ``parse_spec`` here and in
constant time by csrc/conv_problem.cpp (whose ``ConvProblem`` is KernelSpec's C++ twin)::

    "in=0+16,32+16 out=0+16 stride=1,1 padding=1,1 dilation=1,1 groups=1"

``in`` and ``out`` list channel ranges of the weight as ``start+length`` (the (start, length)
pairs of ChannelSegments), sorted and disjoint; stride, padding and dilation are (height, width)
pairs; ``groups`` is the grouped convolution's groups as the kernels run it. One string instead
of several int lists: torch.ops converts every list element by element (see conv_problem.h).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

from .segments import ChannelSegments

KERNEL_RANGES = 2  # ranges per side the kernels address in place
INT32_MAX = 2 ** 31 - 1  # the C++ ChannelRanges hold int32


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one dimension."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class KernelSpec(NamedTuple):
    """What a kernel op is asked to compute: the Python twin of C++'s ConvProblem."""

    in_segments: ChannelSegments
    out_segments: ChannelSegments
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def text(self) -> str:
        """The spec string the kernel ops take (at most two ranges per side)."""
        return (f"in={ranges_text(self.in_segments)} out={ranges_text(self.out_segments)} "
                f"stride={self.stride[0]},{self.stride[1]} "
                f"padding={self.padding[0]},{self.padding[1]} "
                f"dilation={self.dilation[0]},{self.dilation[1]} groups={self.groups}")

    def output_shape(self, x_shape: Sequence[int], weight_shape: Sequence[int]) -> list[int]:
        """The compact output's shape (N, out channels, P, Q) for input and weight shapes."""
        n, _, h, w = x_shape
        kh, kw = weight_shape[2], weight_shape[3]
        return [n, self.out_segments.total,
                output_size(h, kh, self.stride[0], self.padding[0], self.dilation[0]),
                output_size(w, kw, self.stride[1], self.padding[1], self.dilation[1])]


def ranges_text(segments: ChannelSegments) -> str:
    """The ranges of a side as the spec string writes them: ``start+length``, comma-separated."""
    return ",".join(f"{start}+{length}" for start, length in segments.ranges)


_FORMAT = ("expected 'in=S+L[,S+L] out=S+L[,S+L] stride=H,W padding=H,W dilation=H,W "
           "groups=G' (channel ranges as start+length)")
_RANGES = r"(\d+\+\d+(?:,\d+\+\d+)*)"
_PAIR = r"(\d+),(\d+)"
_SPEC = re.compile(rf"in={_RANGES} out={_RANGES} stride={_PAIR} padding={_PAIR} "
                   rf"dilation={_PAIR} groups=(\d+)")


def _number(text: str, spec: str) -> int:
    if len(text) > 10 or int(text) > INT32_MAX:
        raise ValueError(f"spec: expected a number below 2^31, got {text} in {spec!r}")
    return int(text)


def _parse_ranges(text: str, label: str, spec: str) -> ChannelSegments:
    """The ranges of one side, checked as csrc/conv_problem.cpp checks them."""
    parts = text.split(",")
    if len(parts) > KERNEL_RANGES:
        raise ValueError(f"spec: expected at most two ranges in {label}, got {len(parts)} in "
                         f"{spec!r}")
    pairs = []
    for i, part in enumerate(parts):
        start, length = (_number(v, spec) for v in part.split("+"))
        if length == 0:
            raise ValueError(f"spec: {label} range {i} ({start}+{length}) is empty in {spec!r}")
        if start + length > INT32_MAX:
            raise ValueError(f"spec: {label} range {i} ({start}+{length}) ends at or beyond 2^31 "
                             f"in {spec!r}")
        pairs.append((start, length))
    if len(pairs) == 2 and pairs[1][0] < pairs[0][0] + pairs[0][1]:
        raise ValueError(f"spec: {label} ranges must be sorted and disjoint, got "
                         f"{text.replace(',', ' then ')} in {spec!r}")
    return ChannelSegments(pairs, name=label)


@functools.lru_cache(maxsize=4096)
def parse_spec(spec: str) -> KernelSpec:
    """The KernelSpec of a spec string; ValueError starting 'spec:' when it is malformed.

    Checks only the string (the format, at most two sorted disjoint non-empty ranges per side,
    stride and dilation >= 1); ``dvn_kernels.ops.check_call`` checks it against the tensors.
    """
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"spec: {_FORMAT}, got {spec!r}")
    g = match.groups()
    stride, padding, dilation = ((_number(g[i], spec), _number(g[i + 1], spec))
                                 for i in (2, 4, 6))
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"spec: stride and dilation must be >= 1 in {spec!r}")
    return KernelSpec(_parse_ranges(g[0], "in_segments", spec),
                      _parse_ranges(g[1], "out_segments", spec), stride, padding, dilation,
                      _number(g[8], spec))

