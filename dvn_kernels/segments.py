"""Channel segments: which channels of a layer are active.

A :class:`ChannelSegments` is a sorted tuple of disjoint, non-empty ``(start, length)``
channel ranges. Compact activations hold the active channels in that (ascending) order.
Unit indices in this package are 0-based.

It is the one type of the active ranges in Python, the twin of C++'s ``ChannelRanges``
(csrc/channel_ranges.h), which holds the one or two merged ``ranges`` a kernel takes; the kernel
spec string writes each range as ``start+length`` (``dvn_kernels.spec``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

SegmentsLike = Union["ChannelSegments", Sequence[Sequence[int]]]


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


class ChannelSegments:
    """Sorted, disjoint, non-empty ``(start, length)`` channel ranges; immutable.

    ``name`` only labels error messages (e.g. ``"in_segments"``).
    """

    __slots__ = ("_pairs", "_ranges", "_flat", "_hash", "_total")

    def __init__(self, pairs: Iterable[Sequence[int]], *, name: str = "segments") -> None:
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
            raise TypeError(f"{name}: expected a sequence of (start, length) pairs, "
                            f"got {type(pairs).__name__}")
        parsed: list[tuple[int, int]] = []
        end = 0
        for k, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"{name}: segment {k} must be a (start, length) pair, got {pair!r}")
            start = _as_int(pair[0], f"{name}: segment {k} start")
            length = _as_int(pair[1], f"{name}: segment {k} length")
            if length <= 0:
                raise ValueError(f"{name}: segment {k} (start={start}, length={length}) "
                                 "must have a positive length")
            if start < 0:
                raise ValueError(f"{name}: segment {k} has a negative start {start}")
            if parsed and start < end:
                raise ValueError(f"{name}: segment {k} (start={start}) overlaps or precedes the "
                                 f"previous segment, which ends at {end}; segments must be "
                                 "sorted and disjoint")
            parsed.append((start, length))
            end = start + length
        if not parsed:
            raise ValueError(f"{name}: at least one segment is required, got none")
        object.__setattr__(self, "_pairs", tuple(parsed))
        # Adjacent ranges merged, flattened: the form the kernels take.
        merged: list[list[int]] = []
        for start, length in parsed:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += length
            else:
                merged.append([start, length])
        object.__setattr__(self, "_ranges", tuple((start, length) for start, length in merged))
        object.__setattr__(self, "_flat", tuple(v for pair in merged for v in pair))
        # Hashed on first use (plans are looked up by segments), not here: torch.compile
        # makes segments while tracing, and Dynamo (torch 2.11) cannot trace hash of a tuple.
        object.__setattr__(self, "_hash", None)
        object.__setattr__(self, "_total", sum(length for _, length in parsed))

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("ChannelSegments is immutable")

    @classmethod
    def full(cls, channels: int) -> ChannelSegments:
        """All of ``channels`` channels as one segment."""
        return cls([(0, channels)], name="channels")

    @classmethod
    def from_units(cls, unit_sizes: Sequence[int], active: Iterable[int]) -> ChannelSegments:
        """Segments covering the active units (0-based indices into ``unit_sizes``)."""
        return segments_from_units(unit_sizes, active)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        return self._pairs

    @property
    def total(self) -> int:
        """Number of active channels (the compact channel count)."""
        return self._total

    @property
    def end(self) -> int:
        """One past the last active channel."""
        start, length = self._pairs[-1]
        return start + length

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ``(start, length)`` pairs with adjacent ones merged: what the kernels address
        (C++'s ChannelRanges holds one or two of them)."""
        return self._ranges

    def flat(self) -> tuple[int, ...]:
        """``ranges`` flattened, ``(s0, l0, s1, l1, ...)`` (the form dvn and bench pass to
        ``dvn_kernels.channels``)."""
        return self._flat

    @property
    def num_ranges(self) -> int:
        """Number of ranges after merging adjacent ones (1 is the kernels' fast path)."""
        return len(self._ranges)

    def kernel_scalars(self) -> tuple[int, int, int, bool]:
        """``(s0, l0, s1, two)``: one or two ranges as the Triton kernels take them, the fields
        of C++'s ChannelRanges; compact channel v lives at v + s0 when v < l0, else at
        v - l0 + s1 (dvn_kernels/triton/common.py, ``channel``)."""
        ranges = self._ranges
        if len(ranges) == 1:
            return ranges[0][0], ranges[0][1], 0, False
        if len(ranges) == 2:
            return ranges[0][0], ranges[0][1], ranges[1][0], True
        raise ValueError(f"segments: the kernels take one or two ranges, got {self!r}")

    def indices(self) -> list[int]:
        """The active channel indices in compact order."""
        return [c for start, length in self._pairs for c in range(start, start + length)]

    def check_within(self, channels: int, name: str, what: str) -> None:
        """Raises ValueError naming ``name`` unless every segment lies in ``[0, channels)``."""
        for k, (start, length) in enumerate(self._pairs):
            if start + length > channels:
                raise ValueError(f"{name}: segment {k} (start={start}, length={length}) lies "
                                 f"outside the {channels} channels of {what}")

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._pairs)

    def __getitem__(self, k: int) -> tuple[int, int]:
        return self._pairs[k]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChannelSegments):
            return self is other or self._pairs == other._pairs
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._pairs))
        return self._hash

    def __repr__(self) -> str:
        return f"ChannelSegments({list(self._pairs)})"

    def __reduce__(self):
        return (ChannelSegments, (self._pairs,))


def as_segments(segments: SegmentsLike, name: str = "segments") -> ChannelSegments:
    """``segments`` as a ChannelSegments (returned as is when it already is one)."""
    if isinstance(segments, ChannelSegments):
        return segments
    return ChannelSegments(segments, name=name)


def split_channels(channels: int, units: int) -> list[int]:
    """Sizes of ``units`` near-equal units of ``channels`` channels; the first units take the
    remainder (10 channels in 3 units: [4, 3, 3])."""
    channels = _as_int(channels, "channels")
    units = _as_int(units, "units")
    if units < 1:
        raise ValueError(f"units: must be at least 1, got {units}")
    if channels < units:
        raise ValueError(f"units: cannot split {channels} channels into {units} non-empty units")
    base, extra = divmod(channels, units)
    return [base + (1 if i < extra else 0) for i in range(units)]


def segments_from_units(unit_sizes: Sequence[int], active: Iterable[int]) -> ChannelSegments:
    """Channel segments of the ``active`` units (0-based), adjacent units merged.

    The order of ``active`` does not matter: compact tensors always hold channels in
    ascending order.
    """
    sizes = [_as_int(s, f"unit_sizes[{i}]") for i, s in enumerate(unit_sizes)]
    if not sizes:
        raise ValueError("unit_sizes: at least one unit is required")
    for i, s in enumerate(sizes):
        if s <= 0:
            raise ValueError(f"unit_sizes[{i}]: must be positive, got {s}")
    units = [_as_int(u, "active unit") for u in active]
    if not units:
        raise ValueError("active: at least one unit must be active")
    if len(set(units)) != len(units):
        raise ValueError(f"active: units must not repeat, got {units}")
    for u in units:
        if not 0 <= u < len(sizes):
            raise ValueError(f"active: unit {u} does not exist; units are 0..{len(sizes) - 1}")
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    pairs: list[list[int]] = []
    for u in sorted(units):
        if pairs and pairs[-1][0] + pairs[-1][1] == offsets[u]:
            pairs[-1][1] += sizes[u]
        else:
            pairs.append([offsets[u], sizes[u]])
    return ChannelSegments(pairs, name="active")
