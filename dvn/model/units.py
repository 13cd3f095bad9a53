"""Unit layouts: how one layer's channels split into units, and the segments of a unit set.

Units, tasks and levels in ``dvn`` are **1-based**, as in the paper: unit 1 is the first channel
group, task 1 the first task, level l uses l units. (``dvn_kernels`` below speaks channels.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

from dvn_kernels import ChannelSegments, segments_from_units, split_channels

from .networks import SelectionCache

UnitsLike = Union[None, int, Sequence[int], "UnitLayout"]


class UnitLayout:
    """The channels of one layer split into units (or not split: one range for every set).

    ``UnitLayout(64, 4)`` gives 4 units of 16; ``UnitLayout(10, 3)`` spreads the remainder
    over the first units ([4, 3, 3]); ``UnitLayout(10, [6, 4])`` takes explicit sizes;
    ``UnitLayout(3, None)`` is unsplit (an RGB input: every unit set sees all 3 channels).
    ``UnitLayout(104, 4, quantum=8)`` splits in whole quanta of 8 channels, as equally as
    possible ([32, 24, 24, 24]): units of whole groups for a grouped convolution whose groups
    have 8 channels, where 4 equal units of 26 would cut them.
    """

    __slots__ = ("channels", "sizes", "_cache")

    def __init__(self, channels: int, units: Union[None, int, Sequence[int]] = None, *,
                 quantum: int = 1) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: expected a positive int, got {channels!r}")
        if isinstance(quantum, bool) or not isinstance(quantum, int) or quantum < 1 \
                or channels % quantum:
            raise ValueError(f"quantum: expected a positive int dividing the {channels} "
                             f"channels, got {quantum!r}")
        self.channels = channels
        if units is None:
            self.sizes: Optional[tuple[int, ...]] = None
        elif isinstance(units, int) and not isinstance(units, bool):
            if units < 1 or units * quantum > channels:
                raise ValueError(f"units: cannot split {channels} channels into {units} units "
                                 + ("(need 1 <= units <= channels)" if quantum == 1 else
                                    f"of whole quanta of {quantum} channels (there are "
                                    f"{channels // quantum} quanta)"))
            self.sizes = tuple(quantum * s for s in split_channels(channels // quantum, units))
        else:
            sizes = tuple(units)
            if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                for s in sizes):
                raise ValueError(f"units: explicit unit sizes must be positive ints, "
                                 f"got {list(sizes)}")
            if sum(sizes) != channels:
                raise ValueError(f"units: unit sizes {list(sizes)} sum to {sum(sizes)}, "
                                 f"not to the {channels} channels")
            if any(s % quantum for s in sizes):
                raise ValueError(f"units: unit sizes {list(sizes)} are not all multiples of "
                                 f"the quantum {quantum}")
            self.sizes = sizes
        self._cache: SelectionCache[tuple[int, ...], ChannelSegments] = SelectionCache()

    @classmethod
    def of(cls, channels: int, units: UnitsLike) -> UnitLayout:
        """``units`` as a layout of ``channels`` channels (a layout is checked and returned)."""
        if isinstance(units, UnitLayout):
            if units.channels != channels:
                raise ValueError(f"units: layout of {units.channels} channels given for a "
                                 f"layer of {channels}")
            return units
        return cls(channels, units)

    @property
    def split(self) -> bool:
        return self.sizes is not None

    @property
    def count(self) -> Optional[int]:
        """Number of units, or None when unsplit."""
        return None if self.sizes is None else len(self.sizes)

    def segments(self, units: Optional[Iterable[int]]) -> ChannelSegments:
        """Channel segments of a set of 1-based units (all channels for None or unsplit)."""
        if self.sizes is None or units is None:
            return ChannelSegments.full(self.channels)
        return self._cache.get_or_make(tuple(sorted(units)), self._make_segments)

    def _make_segments(self, units: tuple[int, ...]) -> ChannelSegments:
        for u in units:
            if not 1 <= u <= len(self.sizes):
                raise ValueError(f"units: unit {u} does not exist in a layer of "
                                 f"{len(self.sizes)} units (units are 1..{len(self.sizes)})")
        return segments_from_units(self.sizes, [u - 1 for u in units])

    def width(self, units: Optional[Iterable[int]]) -> int:
        """Number of active channels for a set of units."""
        return self.segments(units).total

    def unit_sizes(self, units: Iterable[int]) -> list[int]:
        """Sizes of the given units in ascending unit order (one size for unsplit layouts)."""
        if self.sizes is None:
            return [self.channels]
        return [self.sizes[u - 1] for u in sorted(units)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnitLayout):
            return NotImplemented
        return (self.channels, self.sizes) == (other.channels, other.sizes)

    def __hash__(self) -> int:
        return hash((self.channels, self.sizes))

    def __repr__(self) -> str:
        return f"UnitLayout({self.channels}, {list(self.sizes) if self.sizes else None})"
