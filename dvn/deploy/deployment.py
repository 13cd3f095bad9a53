"""Deployments: (task, level)s of a unit file held in memory, grown and shrunk in place.

    dep = dvn.deploy.Deployment("model.units", {1: 1, 2: 1})   # task -> level
    logits = dep(x, task=2)                                      # at its deployed level
    dep.set_level(2, 2)        # reads only the blocks unit 1 adds to task 2; keeps the rest
    static = dvn.deploy.load_level("model.units", task=1, level=2)  # one level, plain layers

The backbone is rebuilt on the meta device (no memory), then its sliced convolutions become
``SharedConv2d`` layers holding only the blocks the deployed configurations use, once each,
and its per-(task, level) batch norms and heads keep only the deployed configurations' entries.
The backbone's own forward runs on that, so every configuration computes what the trained
model computes.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn as nn

import dvn_kernels

from ..model.export import to_static
from .profiles import Profile, choose_level
from .shared import LAYOUTS, SharedConv2d
from .unitfile import PathLike, UnitFile, private_prefixes, sliced_convs, stem_tasks

Configs = Union[Mapping[int, int], Iterable[tuple[int, int]]]


class _ReadWriteLock:
    """Many calls at once, or one change of levels alone (a waiting change goes first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the memory the tensors occupy: each distinct storage counted once, whole (a
    view of a larger tensor counts that tensor)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


class Deployment:
    """A set of (task, level)s of one unit file, served from one copy of their blocks.

    ``configs``: a mapping task -> level, or (task, level) pairs (several levels of a task are
    allowed). Calls ``dep(x, task, level=None)`` run without gradients; the level defaults to
    the task's only deployed level. Any number of threads may call at once;
    ``deploy``/``set_level``/``set_budget`` wait for running calls and hold new ones back
    while they change what is held. ``layout``: ``"blocks"`` holds exactly the blocks in use
    (a configuration that shares some of its rows with others runs one convolution per row
    group); ``"union"`` holds one tensor per layer over the units in use (one convolution per
    layer, plus the blocks that no configuration uses). See ``dvn.deploy.shared``.
    """

    def __init__(self, path: Union[PathLike, UnitFile], configs: Configs, *,
                 device: Union[str, torch.device] = "cpu", backend: str = "auto",
                 layout: str = "blocks") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        if backend not in dvn_kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(dvn_kernels.BACKENDS)}")
        self.layout = layout
        self.file = path if isinstance(path, UnitFile) else UnitFile(path)
        self.device = torch.device(device)
        self.backend = backend
        model = copy.deepcopy(self.file.skeleton)  # on the meta device: no memory; ours to edit
        self.networks = model.networks
        self._stems = stem_tasks(model)
        self._convs: dict[str, SharedConv2d] = {}
        for name, conv in sliced_convs(model).items():
            shared = SharedConv2d(name, conv, self.device)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, shared)
            self._convs[name] = shared
        # per-(task, level) batch norms and heads: meta templates, materialised when deployed
        self._private: dict[str, tuple[nn.ModuleDict, dict[str, nn.Module]]] = {}
        for prefix, modules in private_prefixes(model).items():
            self._private[prefix] = (modules, dict(modules.items()))
            modules.clear()
        self.model = model.eval()
        self._configs: frozenset[tuple[int, int]] = frozenset()
        self._lock = _ReadWriteLock()
        self.deploy(configs)

    # ------------------------------------------------------------------------ what it holds
    @property
    def configs(self) -> frozenset[tuple[int, int]]:
        """The deployed (task, level)s."""
        return self._configs

    @property
    def bytes_read(self) -> int:
        """Bytes read from the unit file so far (its header, then each block once)."""
        return self.file.bytes_read

    def level(self, task: int) -> int:
        """The deployed level of ``task`` (which must have exactly one)."""
        levels = sorted(lv for t, lv in self._configs if t == task)
        if len(levels) != 1:
            deployed = "not deployed" if not levels else f"deployed at levels {levels}"
            raise ValueError(f"task: task {task} is {deployed}; pass level= (deployed: "
                             f"{sorted(self._configs)})")
        return levels[0]

    def tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(parameters, buffers) this deployment holds: conv blocks, batch norms, heads."""
        params = [t for layer in self._convs.values() for t in layer.tensors()]
        buffers = []
        for modules, _ in self._private.values():
            for m in modules.values():
                params += list(m.parameters())
                buffers += list(m.buffers())
        return params, buffers

    def parameters_held(self) -> int:
        """Number of parameters held (each shared block counted once)."""
        return sum(t.numel() for t in self.tensors()[0])

    def bytes_held(self) -> int:
        """Bytes of memory held by parameters and buffers (measured on their storages)."""
        params, buffers = self.tensors()
        return storage_bytes(params + buffers)

    # ------------------------------------------------------------------------ changing it
    def _parse(self, configs: Configs) -> frozenset[tuple[int, int]]:
        pairs = configs.items() if isinstance(configs, Mapping) else configs
        out = set()
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"configs: expected (task, level) pairs or a task -> level "
                                 f"mapping, got {pair!r}")
            self.networks.check(*pair)
            out.add(pair)
        if not out:
            raise ValueError("configs: deploy at least one (task, level)")
        return frozenset(out)

    def deploy(self, configs: Configs) -> None:
        """Holds exactly ``configs``: blocks already held stay (copied into a new layout where
        the row groups change), missing blocks, batch norms and heads are read, and what no
        deployed configuration uses any more is freed."""
        configs = self._parse(configs)
        with self._lock.writing():
            self._configs = frozenset()  # unusable until the change is complete
            fetch = lambda keys: self.file.read(keys, self.device)  # noqa: E731
            for name, layer in self._convs.items():
                task = self._stems.get(name)
                layer.update({self.networks.active(t, lv).unit_set for t, lv in configs
                              if task is None or t == task}, fetch, self.layout)
            keys = {self.networks.active(t, lv).key for t, lv in configs}
            for prefix, (modules, templates) in self._private.items():
                for key in [k for k in modules if k not in keys]:
                    del modules[key]
                for key in sorted(keys - set(modules)):
                    module = copy.deepcopy(templates[key])
                    names = [n for n, _ in module.state_dict().items()]
                    state = fetch([f"{prefix}.{key}.{n}" for n in names])
                    module.load_state_dict({n: state[f"{prefix}.{key}.{n}"] for n in names},
                                           assign=True)
                    modules[key] = module.requires_grad_(False).eval()
            self._configs = configs

    def set_level(self, task: int, level: int) -> None:
        """Moves ``task`` to ``level`` (replacing its deployed levels): growing reads only the
        blocks the new units add; shrinking frees the blocks the lower level does not use."""
        self.networks.check(task, level)
        self.deploy({(t, lv) for t, lv in self._configs if t != task} | {(task, level)})

    def set_budget(self, profile: Profile, *, ms: Optional[float] = None,
                   mb: Optional[float] = None) -> dict[int, int]:
        """Runs every deployed task at the highest level whose profiled batch-1 latency and
        memory fit ``ms`` / ``mb`` (see ``dvn.deploy.choose_level``); returns task -> level."""
        tasks = sorted({t for t, _ in self._configs})
        levels = {t: choose_level(profile, t, ms=ms, mb=mb) for t in tasks}
        self.deploy(levels)
        return levels

    # --------------------------------------------------------------------------- running
    def __call__(self, x: torch.Tensor, task: int, level: Optional[int] = None) -> torch.Tensor:
        with self._lock.reading():
            level = self.level(task) if level is None else level
            if (task, level) not in self._configs:
                raise ValueError(f"level: task {task} at level {level} is not deployed "
                                 f"(deployed: {sorted(self._configs)})")
            with torch.no_grad():
                return self.model(x, task=task, level=level, backend=self.backend)

    def export(self, task: int, level: Optional[int] = None, *,
               fold_bn: bool = False) -> nn.Module:
        """A deployed (task, level) as plain Conv2d / BatchNorm2d / Linear layers (as
        ``dvn.to_static`` makes it), sharing the blocks it uses whole with this deployment."""
        with self._lock.reading():
            level = self.level(task) if level is None else level
            if (task, level) not in self._configs:
                raise ValueError(f"level: task {task} at level {level} is not deployed")
            return to_static(self.model, task, level, fold_bn=fold_bn).requires_grad_(False)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Deployment({self.file.path!r}, configs={sorted(self._configs)}, "
                f"parameters={self.parameters_held():,}, device={self.device})")


def load_level(path: PathLike, task: int, level: int, *,
               device: Union[str, torch.device] = "cpu", fold_bn: bool = False) -> nn.Module:
    """Task ``task`` at level ``level`` of a unit file as a static network (plain layers,
    equal to ``dvn.to_static`` of the trained model, in eval mode, gradients off), reading
    only that level's blocks, batch norms and head."""
    with Deployment(path, [(task, level)], device=device) as dep:
        return dep.export(task, level, fold_bn=fold_bn)
