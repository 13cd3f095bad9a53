"""Virtual networks: each task's order of units, and the (task, level) configurations.

Tasks, levels and units are 1-based, as in the paper. Task j's virtual network is an order of
the k units; its level l uses the first l units of that order. The paper's rule orders the
units of task j by (|i - j|, i): its own unit first, then the nearest task IDs, ties to the
lower ID (k = 4: task 1 -> 1,2,3,4; task 2 -> 2,1,3,4; task 3 -> 3,2,4,1; task 4 -> 4,3,2,1).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, Optional, TypeVar

import torch

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def paper_order(task: int, units: int) -> tuple[int, ...]:
    """The paper's unit order for ``task`` among ``units`` units (both 1-based)."""
    return tuple(sorted(range(1, units + 1), key=lambda i: (abs(i - task), i)))


@dataclass(frozen=True)
class Active:
    """One (task, level) selection as the layers see it: its units and the conv backend.

    Layers look their per-configuration state up by ``unit_set`` (plans) or ``key`` (batch
    norm, heads) on every call, so both are computed once here, as is the hash.

    ``backend``: None (the default) runs each convolution on the backend its module was built
    with; any backend name, ``"auto"`` included, overrides the modules' for this selection's
    calls (``model(x, task=, level=, backend="auto")`` lets a model built with
    ``backend="cpu"`` choose again). See ``conv_backend``.
    """

    task: int
    level: int
    units: tuple[int, ...]  # in the task's order: units[:l] is level l
    backend: Optional[str] = None
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


def conv_backend(module_backend: str, active: Optional[Active]) -> str:
    """The backend a convolution runs on: the selection's when it names one (an explicit
    ``"auto"`` included), else the module's own."""
    if active is None or active.backend is None:
        return module_backend
    return active.backend


_SELECTED: ContextVar[Optional[Active]] = ContextVar("dvn_selected", default=None)


@contextmanager
def selected(active: Optional[Active]) -> Iterator[None]:
    """Makes ``active`` the selection of layers called without one, for this thread (or
    asyncio task) only, until the block ends: concurrent calls with different selections on
    one model object do not see each other's.

    Inside ``torch.compile`` the selection cannot change (Dynamo cannot trace
    ``ContextVar.set``): the block checks that ``active`` is the one set around the compiled
    call, as ``dvn.compile_configs`` sets it, and raises RuntimeError otherwise.
    """
    if torch.compiler.is_compiling():
        traced = _selection_when_traced()
        if not _same_selection(traced, active):
            raise RuntimeError(
                f"selected: cannot select {_describe(active)} inside torch.compile, where "
                f"{_describe(traced)} is selected (Dynamo cannot set a ContextVar): enter "
                "dvn.selected(...) around the compiled call, as dvn.compile_configs does")
        yield
        return
    token = _SELECTED.set(active)
    try:
        yield
    finally:
        _SELECTED.reset(token)


def _same_selection(a: Optional[Active], b: Optional[Active]) -> bool:
    if a is None or b is None:
        return a is b
    # Field by field: Dynamo of torch 2.11 fails comparing tuples that hold None.
    return (a.task == b.task and a.level == b.level and a.units == b.units
            and a.backend == b.backend)


def _describe(active: Optional[Active]) -> str:
    return "no selection" if active is None else f"task {active.task} at level {active.level}"


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


def resolve(active: Optional[Active]) -> Optional[Active]:
    """The selection a layer runs: ``active`` when given, else the enclosing ``selected``
    block's (None: every unit). Every selection-dependent layer resolves through this one
    function, so each accepts both forms alike."""
    return current_selection() if active is None else active


class SelectionCache(dict, Generic[K, V]):
    """Values made once per key (a unit set, a (task, level)) and kept: the per-call cost is
    one dict lookup.

    While ``torch.compile`` traces, the cache is neither read nor written: a graph is traced
    once per configuration, so there is nothing to reuse, and a read would make Dynamo guard
    on the dict's contents (recompiling whenever another configuration adds an entry).
    """

    __slots__ = ()

    def get_or_make(self, key: K, make: Callable[[K], V]) -> V:
        """The value kept for ``key``, or ``make(key)``, kept (not while compiling)."""
        if torch.compiler.is_compiling():
            return make(key)
        value = self.get(key)
        if value is None:
            value = make(key)
            self[key] = value
        return value


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
        self._active: SelectionCache[tuple[int, int, Optional[str]], Active] = SelectionCache()

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

    def active(self, task: int, level: int, backend: Optional[str] = None) -> Active:
        """The selection of task ``task`` at level ``level`` (both 1-based); made once per
        (task, level, backend) and reused (a dict lookup on the hot path). ``backend`` None
        keeps each module's own backend; a name overrides them (see ``Active``)."""
        if type(task) is int and type(level) is int:  # not bools, which equal 1 and 0
            try:
                return self._active.get_or_make((task, level, backend), self._make_active)
            except TypeError:  # an unhashable or bad backend: _make_active names it
                pass
        return self._make_active((task, level, backend))

    def _make_active(self, key: tuple[int, int, Optional[str]]) -> Active:
        task, level, backend = key
        self.check(task, level)
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend: expected a string or None, got {type(backend).__name__}")
        return Active(task, level, self.orders[task - 1][:level], backend)

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
