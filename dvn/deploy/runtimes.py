"""Runtimes for one loaded level: eager PyTorch, a ``torch.compile`` capture, ONNX Runtime.

    run = dvn.deploy.runtimes.load("deploy.safetensors", task=1, level=2, runtime="onnxruntime")
    logits = run(x)          # a float32 batch as the task's network takes it

* ``torch``: the level as ``load_level`` makes it (plain layers), eager, on the sliced-free
  static network.
* ``compiled``: the same level, batch norms folded, captured with ``torch.compile``
  (Inductor): PyTorch end to end, no export. The first call of each batch size compiles.
* ``onnxruntime``: a session on the level's ONNX export, made from the unit file on first use
  and cached beside it (``dvn.deploy.onnx.cached_session``; made again when the unit file
  changes), with torch's thread count and no spinning threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Union

import torch

from .unitfile import PathLike

RUNTIMES = ("torch", "compiled", "onnxruntime")


def check_runtime(runtime: str) -> str:
    """``runtime`` when it is one of ``RUNTIMES``, else a ValueError naming the choices."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def installed(runtime: str) -> bool:
    """Whether ``runtime`` can run here (onnxruntime needs the ``deploy`` extra)."""
    check_runtime(runtime)
    if runtime == "onnxruntime":
        from .onnx import available
        return available()
    return True


class Runner:
    """One (task, level) on one runtime: ``runner(x)`` -> logits, without gradients."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], runtime: str, task: int,
                 level: int, note: str = "") -> None:
        self._fn = fn
        self.runtime = runtime
        self.task = task
        self.level = level
        #: how it was made (e.g. "exported now" for a fresh ONNX session)
        self.note = note

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime == "onnxruntime":  # no autograd to turn off: skip its ~9 us
            return self._fn(x)
        with torch.no_grad():
            return self._fn(x)

    def __repr__(self) -> str:
        return f"Runner(task={self.task}, level={self.level}, runtime={self.runtime!r})"


def load(path: PathLike, task: int, level: int, runtime: str = "torch", *,
         device: Union[str, torch.device] = "cpu", threads: Optional[int] = None) -> Runner:
    """Task ``task`` at level ``level`` of a unit file, ready to run on ``runtime``.
    ``threads``: ONNX Runtime's intra-op threads (default: torch's current count)."""
    from .deployment import load_level
    check_runtime(runtime)
    device = torch.device(device)
    if runtime == "torch":
        static = load_level(path, task, level, device=device)
        return Runner(static, runtime, task, level)
    if runtime == "compiled":
        static = load_level(path, task, level, device=device, fold_bn=True)
        # dynamic=False: a static graph per batch size. With automatic dynamic shapes
        # (dynamic=None), which levels share through their common forward code, a second
        # level's batch-1 median was 176 ms against 0.3 ms for the first (tiny WRN-8-1).
        return Runner(torch.compile(static, dynamic=False), runtime, task, level)
    from .onnx import cached_session, run_session
    sess, fresh = cached_session(path, task, level, threads=threads, device=device)
    name = sess.get_inputs()[0].name
    return Runner(lambda x: run_session(sess, x, name), runtime, task, level,
                  "exported now" if fresh else "cached export")
