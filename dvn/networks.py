"""Virtual networks: each task's order of units, and the (task, level) configurations.

Tasks, levels and units are 1-based, as in the paper. Task j's virtual network is an order of
the k units; its level l uses the first l units of that order. The paper's rule orders the
units of task j by (|i - j|, i): its own unit first, then the nearest task IDs, ties to the
lower ID (k = 4: task 1 -> 1,2,3,4; task 2 -> 2,1,3,4; task 3 -> 3,2,4,1; task 4 -> 4,3,2,1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Optional

import torch


def paper_order(task: int, units: int) -> tuple[int, ...]:
    """The paper's unit order for ``task`` among ``units`` units (both 1-based)."""
    return tuple(sorted(range(1, units + 1), key=lambda i: (abs(i - task), i)))


@dataclass(frozen=True)
class Active:
    """One (task, level) selection as the layers see it: its units and the conv backend.

    Layers look their per-configuration state up by ``unit_set`` (plans) or ``key`` (batch
    norm, heads) on every call, so both are computed once here, as is the hash.
    """

    task: int
    level: int
    units: tuple[int, ...]  # in the task's order: units[:l] is level l
    backend: str = "auto"
    key: str = field(init=False, repr=False, compare=False)
    unit_set: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hash: Optional[int] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # key: name of this configuration's private modules (batch norm, heads).
        object.__setattr__(self, "key", f"t{self.task}_l{self.level}")
        object.__setattr__(self, "unit_set", tuple(sorted(self.units)))

    def __hash__(self) -> int:
        # Computed on first use, not on construction: torch.compile makes selections while
        # tracing, and Dynamo (torch 2.11) cannot trace the builtin hash of a tuple.
        if self._hash is None:
            object.__setattr__(self, "_hash", hash((self.task, self.level, self.units,
                                                    self.backend)))
        return self._hash


_SELECTED: ContextVar[Optional[Active]] = ContextVar("dvn_selected", default=None)


@contextmanager
def selected(active: Optional[Active]) -> Iterator[None]:
    """Makes ``active`` the selection of layers called without one, for this thread (or
    asyncio task) only, until the block ends: concurrent calls with different selections on
    one model object do not see each other's."""
    token = _SELECTED.set(active)
    try:
        yield
    finally:
        _SELECTED.reset(token)


def current_selection() -> Optional[Active]:
    """The selection set by the innermost ``selected`` block of this context, or None.

    Under ``torch.compile`` it is read once, when the graph is traced, and fixed in that graph
    (Dynamo of torch 2.11 cannot trace ``ContextVar.get``): compile one function per
    configuration, as ``dvn.compile_configs`` does.
    """
    if torch.compiler.is_compiling():
        return _selection_when_traced()
    return _SELECTED.get()


@torch.compiler.assume_constant_result
def _selection_when_traced() -> Optional[Active]:
    return _SELECTED.get()


class VirtualNetworks:
    """The virtual networks of one model: ``units`` units, one unit order per task.

    ``VirtualNetworks(4)`` gives 4 tasks ordered by the paper's rule; ``tasks=2`` keeps the
    first two of them; ``orders=[(1, 2), (2, 1)]`` gives custom orders (each a permutation of
    1..units). Levels run 1..units.
    """

    def __init__(self, units: int, tasks: Optional[int] = None,
                 orders: Optional[Sequence[Sequence[int]]] = None) -> None:
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units: expected a positive int, got {units!r}")
        self.units = units
        if orders is None:
            tasks = units if tasks is None else tasks
            if isinstance(tasks, bool) or not isinstance(tasks, int) or not 1 <= tasks <= units:
                raise ValueError(f"tasks: the paper's rule gives 1..{units} tasks for {units} "
                                 f"units, got {tasks!r}; pass orders= for other layouts")
            self.orders = tuple(paper_order(j, units) for j in range(1, tasks + 1))
        else:
            parsed = []
            for j, order in enumerate(orders, start=1):
                order = tuple(order)
                if sorted(order) != list(range(1, units + 1)):
                    raise ValueError(f"orders: the order of task {j} must be a permutation of "
                                     f"units 1..{units}, got {list(order)}")
                parsed.append(order)
            if not parsed:
                raise ValueError("orders: at least one task is required")
            if tasks is not None and tasks != len(parsed):
                raise ValueError(f"tasks: {tasks} does not match the {len(parsed)} orders given")
            self.orders = tuple(parsed)
        self._active: dict[tuple[int, int, str], Active] = {}

    @property
    def tasks(self) -> int:
        return len(self.orders)

    @property
    def levels(self) -> int:
        return self.units

    def check(self, task: int, level: int) -> None:
        """Raises ValueError unless (task, level) exists."""
        if isinstance(task, bool) or not isinstance(task, int) or not 1 <= task <= self.tasks:
            raise ValueError(f"task: {task!r} does not exist; tasks are 1..{self.tasks} (1-based)")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= self.levels:
            raise ValueError(f"level: {level!r} does not exist; levels are 1..{self.levels} "
                             "(level l uses l units)")

    def order(self, task: int) -> tuple[int, ...]:
        self.check(task, 1)
        return self.orders[task - 1]

    def active(self, task: int, level: int, backend: str = "auto") -> Active:
        """The selection of task ``task`` at level ``level`` (both 1-based); made once per
        (task, level, backend) and reused (a dict lookup on the hot path)."""
        compiling = torch.compiler.is_compiling()  # traced once: no cache to guard on
        try:
            selection = None if compiling else self._active.get((task, level, backend))
        except TypeError:  # unhashable arguments: check() names them
            selection = None
        if selection is None:
            self.check(task, level)
            if not isinstance(backend, str):
                raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
            selection = Active(task, level, self.orders[task - 1][:level], backend)
            if not compiling and type(task) is int and type(level) is int:  # True == 1 aliases
                self._active[(task, level, backend)] = selection
        return selection

    def configs(self) -> Iterator[tuple[int, int]]:
        """Every (task, level), task-major."""
        for task in range(1, self.tasks + 1):
            for level in range(1, self.levels + 1):
                yield task, level

    def spec(self) -> dict:
        """Plain-data description (for checkpoints)."""
        return {"units": self.units, "orders": [list(o) for o in self.orders]}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VirtualNetworks):
            return NotImplemented
        return self.orders == other.orders

    def __repr__(self) -> str:
        return f"VirtualNetworks(units={self.units}, orders={[list(o) for o in self.orders]})"
