"""Units, the paper's configuration rule and the (task, level) selections."""

import pytest

from dvn import Active, UnitLayout, VirtualNetworks, paper_order


def test_equal_units_remainder_and_explicit_sizes():
    assert UnitLayout(64, 4).sizes == (16, 16, 16, 16)
    assert UnitLayout(10, 3).sizes == (4, 3, 3)
    assert UnitLayout(10, [6, 4]).sizes == (6, 4)
    assert UnitLayout(3, None).sizes is None and not UnitLayout(3).split


def test_segments_of_unit_sets_are_one_based():
    layout = UnitLayout(10, 3)  # units 1: 0-3, 2: 4-6, 3: 7-9
    assert layout.segments([1]).pairs == ((0, 4),)
    assert layout.segments([3, 1]).pairs == ((0, 4), (7, 3))
    assert layout.segments([2, 3]).pairs == ((4, 6),)
    assert layout.segments(None).pairs == ((0, 10),)
    assert UnitLayout(3).segments([2]).pairs == ((0, 3),)  # unsplit: always everything
    assert layout.width([1, 2]) == 7 and layout.unit_sizes([3, 1]) == [4, 3]


@pytest.mark.parametrize("channels, units, message", [
    (4, 5, "cannot split 4 channels into 5 units"),
    (4, 0, "cannot split 4 channels into 0 units"),
    (10, [6, 3], r"sum to 9, not to the 10 channels"),
    (10, [10, 0], "must be positive ints"),
    (0, 1, "channels: expected a positive int"),
])
def test_bad_layouts(channels, units, message):
    with pytest.raises(ValueError, match=message):
        UnitLayout(channels, units)


def test_unknown_unit():
    with pytest.raises(ValueError, match=r"unit 4 does not exist .* \(units are 1..3\)"):
        UnitLayout(9, 3).segments([4])
    with pytest.raises(ValueError, match="layout of 8 channels given for a layer of 9"):
        UnitLayout.of(9, UnitLayout(8, 2))


@pytest.mark.parametrize("k, table", [
    (2, [(1, 2), (2, 1)]),
    (3, [(1, 2, 3), (2, 1, 3), (3, 2, 1)]),
    (4, [(1, 2, 3, 4), (2, 1, 3, 4), (3, 2, 4, 1), (4, 3, 2, 1)]),
])
def test_paper_rule_matches_the_worked_table(k, table):
    assert [paper_order(j, k) for j in range(1, k + 1)] == table
    assert VirtualNetworks(k).orders == tuple(table)


def test_active_units_per_task_and_level():
    vn = VirtualNetworks(4)
    assert [vn.active(3, lv).unit_set for lv in range(1, 5)] == \
        [(3,), (2, 3), (2, 3, 4), (1, 2, 3, 4)]
    a = vn.active(4, 2, backend="masked")
    assert a == Active(4, 2, (4, 3), "masked") and a.key == "t4_l2"
    assert list(vn.configs())[:5] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1)]
    assert vn.tasks == 4 and vn.levels == 4


def test_fewer_tasks_and_custom_orders():
    assert VirtualNetworks(4, tasks=1).orders == ((1, 2, 3, 4),)
    vn = VirtualNetworks(3, orders=[(3, 1, 2), (1, 2, 3)])
    assert vn.active(1, 2).unit_set == (1, 3) and vn.tasks == 2
    assert VirtualNetworks(2, orders=[[2, 1]]) == VirtualNetworks(2, orders=[(2, 1)])


@pytest.mark.parametrize("kwargs, message", [
    (dict(units=0), "units: expected a positive int"),
    (dict(units=2, tasks=3), "the paper's rule gives 1..2 tasks"),
    (dict(units=3, orders=[(1, 2)]), "must be a permutation of units 1..3"),
    (dict(units=3, orders=[(1, 1, 2)]), "must be a permutation"),
    (dict(units=2, orders=[]), "at least one task"),
    (dict(units=2, tasks=1, orders=[(1, 2), (2, 1)]), "does not match the 2 orders"),
])
def test_bad_networks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VirtualNetworks(**kwargs)


@pytest.mark.parametrize("task, level, message", [
    (0, 1, r"task: 0 does not exist; tasks are 1..2 \(1-based\)"),
    (3, 1, "task: 3 does not exist"),
    (1, 0, r"level: 0 does not exist; levels are 1..2"),
    (1, 3, "level: 3 does not exist"),
    (1.0, 1, "task: 1.0 does not exist"),
    (True, 1, "task: True does not exist"),
])
def test_unknown_task_or_level(task, level, message):
    with pytest.raises(ValueError, match=message):
        VirtualNetworks(2).active(task, level)
