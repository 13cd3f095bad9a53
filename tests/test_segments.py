import pickle

import pytest

from dvn_kernels import ChannelSegments, as_segments, segments_from_units, split_channels


def test_pairs_total_end_and_indices():
    s = ChannelSegments([(2, 3), (7, 2)])
    assert s.pairs == ((2, 3), (7, 2))
    assert s.total == 5 and s.end == 9 and len(s) == 2
    assert s.indices() == [2, 3, 4, 7, 8]
    assert list(s) == [(2, 3), (7, 2)] and s[1] == (7, 2)


def test_adjacent_ranges_are_merged_for_the_kernels_only():
    s = ChannelSegments([(0, 4), (4, 4), (10, 1)])
    assert s.pairs == ((0, 4), (4, 4), (10, 1))
    assert s.flat() == (0, 8, 10, 1) and s.num_ranges == 2


def test_value_semantics():
    a, b = ChannelSegments([(1, 2)]), ChannelSegments(((1, 2),))
    assert a == b and hash(a) == hash(b) and a != ChannelSegments([(1, 3)])
    assert pickle.loads(pickle.dumps(a)) == a
    assert repr(a) == "ChannelSegments([(1, 2)])"
    with pytest.raises(AttributeError, match="immutable"):
        a._pairs = ()
    assert as_segments(a) is a and as_segments([(1, 2)]) == a
    assert ChannelSegments.full(5).pairs == ((0, 5),)


@pytest.mark.parametrize("pairs, error, message", [
    ([], ValueError, "at least one segment"),
    ([(0, 0)], ValueError, "positive length"),
    ([(0, -2)], ValueError, "positive length"),
    ([(-1, 2)], ValueError, "negative start"),
    ([(4, 2), (0, 2)], ValueError, "sorted and disjoint"),
    ([(0, 4), (2, 4)], ValueError, "overlaps"),
    ([(0, 1.5)], TypeError, "must be an int"),
    ([(True, 2)], TypeError, "must be an int, got bool"),
    ([(0, 1, 2)], TypeError, r"\(start, length\) pair"),
    ([3], TypeError, r"\(start, length\) pair"),
    ("ab", TypeError, "sequence of"),
    (5, TypeError, "sequence of"),
])
def test_bad_segments_name_the_argument(pairs, error, message):
    with pytest.raises(error, match=message) as info:
        ChannelSegments(pairs, name="in_segments")
    assert "in_segments" in str(info.value)


def test_check_within_names_argument_and_limit():
    ChannelSegments([(0, 4)]).check_within(4, "out_segments", "weight")
    with pytest.raises(ValueError, match="out_segments: segment 0 .* outside the 3 channels"):
        ChannelSegments([(0, 4)]).check_within(3, "out_segments", "weight")


def test_split_channels_spreads_the_remainder():
    assert split_channels(64, 4) == [16] * 4
    assert split_channels(10, 3) == [4, 3, 3]
    assert split_channels(5, 5) == [1] * 5
    with pytest.raises(ValueError, match="cannot split 3 channels into 4"):
        split_channels(3, 4)
    with pytest.raises(ValueError, match="at least 1"):
        split_channels(3, 0)


def test_segments_from_units_merges_adjacent_and_ignores_order():
    sizes = [4, 3, 3, 2]
    assert segments_from_units(sizes, [0]).pairs == ((0, 4),)
    assert segments_from_units(sizes, [1, 0]).pairs == ((0, 7),)
    assert segments_from_units(sizes, [3, 0]).pairs == ((0, 4), (10, 2))
    assert segments_from_units(sizes, [2, 3, 0]).pairs == ((0, 4), (7, 5))
    assert ChannelSegments.from_units(sizes, range(4)).pairs == ((0, 12),)


@pytest.mark.parametrize("sizes, active, message", [
    ([4, 4], [], "at least one unit"),
    ([4, 4], [2], "unit 2 does not exist"),
    ([4, 4], [-1], "unit -1 does not exist"),
    ([4, 4], [0, 0], "must not repeat"),
    ([], [0], "at least one unit is required"),
    ([4, 0], [0], r"unit_sizes\[1\]: must be positive"),
])
def test_segments_from_units_bad_input(sizes, active, message):
    with pytest.raises(ValueError, match=message):
        segments_from_units(sizes, active)
