"""Runtimes for one loaded level: eager PyTorch, a ``torch.compile`` capture, ONNX Runtime.

    run = dvn.deploy.runtimes.load("deploy.safetensors", task=1, level=2, runtime="onnxruntime")
    logits = run(x)          # a float32 batch as the task's network takes it

* ``torch``: the level as ``load_level`` makes it (plain layers), eager, on the sliced-free
  static network.
* ``compiled``: the same level, batch norms folded, compiled by Inductor with its weights frozen
  in: PyTorch end to end, no ONNX. On a CPU, batch 1 is compiled ahead of time when the level
  is loaded (``dvn.deploy.aot``: small convolutions as GEMMs, AOTInductor); other batches, and
  every batch on a GPU, are captured with ``torch.compile`` on their first call, larger batches
  with a dynamic batch dimension (``frozen_capture``).
* ``onnxruntime``: a session on the level's ONNX export, made from the unit file on first use
  and cached beside it (``dvn.deploy.onnx.cached_session``; made again when the unit file
  changes), with torch's thread count and no spinning threads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.nn as nn

from ..model.capture import own_function

from .aot import COMPILING, aot_capture

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
        if self.runtime != "torch":  # no autograd to turn off (``compiled`` does it inside)
            return self._fn(x)
        with torch.no_grad():
            return self._fn(x)

    def __repr__(self) -> str:
        return f"Runner(task={self.task}, level={self.level}, runtime={self.runtime!r})"


def frozen_capture(module: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` (an inference network that is never changed) captured with ``torch.compile``
    for calls without gradients, its weights frozen in: one graph for batch 1 and, for larger
    batches, their batch dimension dynamic (on torch 2.14, one graph for 2-15 and one for 16 or
    more, where PyTorch's convolution changes its layout choice), so a server's varying batch
    sizes do not recompile each time and never meet torch's recompile limit (8 graphs, past
    which it runs eagerly).

    * Freezing makes the weights constants of the graph: on a CPU, for a static shape
      compiled without gradients, Inductor then runs the convolutions on oneDNN with
      prepacked weights and the following ReLU or residual add fused in (with a dynamic batch,
      ATen's convolution). Without it, PyTorch runs a small batch-1 convolution (< 20,480
      input elements) on its im2col path: WRN-14-2 level 2 took 2.25 ms against 1.72 ms
      frozen (1 thread). Inductor reads ``freezing`` when the graph compiles, not from
      ``torch.compile``'s options, so the setting is held (under ``aot.COMPILING``, one
      process-wide lock) around each call that may compile.
    * A code object of its own: torch.compile keeps its graphs per code object and does not
      tell two instances of one class apart by their weights; a frozen graph of one level
      must never answer for another.
    * ``dynamic=False`` but for the batch: with automatic dynamic shapes, which levels shared
      through their common forward code, a second level's batch-1 median was 176 ms against
      0.3 ms. WRN-14-2 level 2 at batch 8: 7.3 ms frozen with a dynamic batch, 10.7 eager.
    * No guards on the module's attributes, parameters and buffers (it is never changed)."""
    def run(x):
        return module(x)
    fn = torch.compile(own_function(run, name), dynamic=False, options={
        "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
    compiled: set = set()

    def call(x: torch.Tensor) -> torch.Tensor:
        if (x.shape, x.dtype, x.device) in compiled:
            return fn(x)
        with COMPILING, torch._inductor.config.patch(freezing=True):
            if x.dim() and x.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(x, 0)
            out = fn(x)
            compiled.add((x.shape, x.dtype, x.device))
        return out
    return call


def compiled_runner(path: PathLike, static: nn.Module, task: int, level: int,
                    device: torch.device) -> Runner:
    """The ``compiled`` runtime of a loaded level (``static``, batch norms folded): batch 1 of
    the task's input shape on a CPU through ``aot_capture``, made now; any other input through
    ``frozen_capture``, made on its first call. Where the ahead-of-time compilation fails, a
    warning says why and batch 1 goes through ``frozen_capture`` too (``Runner.note``)."""
    from .unitfile import UnitFile
    capture = frozen_capture(static, f"dvn_deploy_task{task}_level{level}")

    def captured(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return capture(x)
    if device.type != "cpu":
        return Runner(captured, "compiled", task, level, "torch.compile")
    with UnitFile(path) as file:
        model = file.skeleton
        size, channels = model.input_sizes[task - 1], model.image_channels[task - 1]
    example = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        fast = aot_capture(static, example)
    except Exception as e:  # noqa: BLE001 - any export or compile failure: the slower capture
        warnings.warn(f"task {task} level {level}: compiling batch 1 ahead of time failed "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      f"batch 1 runs on torch.compile instead", RuntimeWarning, stacklevel=3)
        return Runner(captured, "compiled", task, level, "torch.compile (AOT failed)")
    shape = example.shape

    def call(x: torch.Tensor) -> torch.Tensor:
        if x.shape == shape and x.dtype == torch.float32 and x.device.type == "cpu" \
                and x.is_contiguous():
            return fast(x)
        return captured(x)
    return Runner(call, "compiled", task, level, "AOTInductor at batch 1")


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
        return compiled_runner(path, static, task, level, device)
    from .onnx import cached_session, run_session
    sess, fresh = cached_session(path, task, level, threads=threads, device=device)
    name = sess.get_inputs()[0].name
    return Runner(lambda x: run_session(sess, x, name), runtime, task, level,
                  "exported now" if fresh else "cached export")
