"""Running a (task, level) without per-call Python overhead: one compiled graph per configuration.

    runner = dvn.compile_configs(model)          # model(x, task=..., level=...) or a VirtualModel
    logits = runner(x, task=2, level=1)          # compiled on first use, replayed after

``torch.compile`` keeps its compiled graphs per Python code object and recompiles a code object
at most ``torch._dynamo.config.recompile_limit`` times (8) before it falls back to running it
eagerly, with nothing but a warning. Compiling ``model.forward`` and calling it with 16
(task, level) pairs (k = 4) would meet that limit and silently lose the speed. Here every
configuration gets a function of its own (its own code object, task and level fixed inside), so
each configuration compiles once, switching among them never recompiles, and the limit is never
approached (a configuration may add an entry for train/eval or a new batch size).

Inference calls (gradients off) skip torch.compile's guards on the model's modules: checking
the attributes, parameters and buffers of every layer of every configuration took ~0.6 ms per
call on WRN-32-4 (measured on a 2-core CPU), more than the Python overhead the graph removes.
Those graphs assume the model's structure, its parameters' devices, dtypes and ``requires_grad``
flags stay as they were compiled (values may change in place, as training and
``load_state_dict`` do); the train/eval flag is part of the runner's key. After other changes
call ``reset()``, or pass ``guard_modules=True`` to keep every guard. Calls with gradients on
(training steps) keep every guard.

On CUDA the default mode is ``"reduce-overhead"``: each call replays a CUDA graph, so a level's
cost is its kernels' time alone. A CUDA-graph output is overwritten by the next call of the
same configuration: clone it to keep it (see torch.compile's documentation of cudagraphs).
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
import torch.nn as nn

from dvn_kernels import exclude_from_weight_cache

from .networks import selected


def own_function(fn: Callable, name: str) -> Callable:
    """A copy of the closure ``fn`` with a code object of its own (torch.compile's cache key)."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _config_function(model: nn.Module, task: int, level: int, tag: str) -> Callable:
    """The function of one configuration, ``x -> logits``."""
    def run(x):
        return model(x, task=task, level=level)
    return own_function(run, f"dvn_task{task}_level{level}_{tag}")


def opaque_triton_ops(backend: str) -> Callable:
    """torch.compile backend ``backend`` with the Triton ops kept whole in its graph.

    AOTAutograd decomposes a ``torch.library.triton_op`` into Triton kernel-wrapper nodes,
    which only Inductor compiles; other backends run them through functional wrappers (copies
    of the outputs) or fail on them: torch 2.11's "cudagraphs" backend raised "cannot extract
    sympy expressions from {'y': FakeTensor(...)}" on the node's dict of outputs (the first H200
    run). With decomposition off (functorch's ``decompose_custom_triton_ops``, the switch
    torch.export uses) the op stays one node that runs its own launcher."""
    compile_fn = torch._dynamo.lookup_backend(backend)

    def compile_graph(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        with torch._functorch.config.patch(decompose_custom_triton_ops=False):
            return compile_fn(gm, example_inputs)
    compile_graph.__name__ = f"{backend}_opaque_triton_ops"
    return compile_graph


def _backend(backend: Any) -> Any:
    """Non-Inductor backends named by string get the Triton ops whole (``opaque_triton_ops``)."""
    if isinstance(backend, str) and backend != "inductor" and hasattr(
            torch._functorch.config, "decompose_custom_triton_ops"):
        return opaque_triton_ops(backend)
    return backend


def _default_mode(model: nn.Module, backend: Any) -> Optional[str]:
    """Inductor's CUDA graphs for a model on a GPU; no mode for other backends (the
    "cudagraphs" backend graphs by itself)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None


class CompiledConfigs:
    """``model(x, task=..., level=...)`` through one compiled graph per (task, level).

    ``model`` is a dvn backbone (``dvn.wrn``, ``dvn.resnet``), a ``VirtualModel`` or any module
    with ``networks`` called as ``model(x, task=, level=)``. ``mode``, ``backend``, ``dynamic``
    and ``options`` go to ``torch.compile``; ``mode=None`` means "reduce-overhead" (CUDA graphs)
    for a model on a GPU and torch's default elsewhere. Works in train mode too (the backward is
    compiled by AOTAutograd). A configuration compiles on its first call (or ``warmup``);
    concurrent inference calls are safe. On a GPU an inference configuration first runs once
    eagerly, so that ``auto`` measures its convolutions before the graph is traced.
    """

    def __init__(self, model: nn.Module, *, mode: Optional[str] = None,
                 backend: Any = "inductor", dynamic: Optional[bool] = None,
                 options: Optional[dict] = None, guard_modules: bool = False) -> None:
        networks = getattr(model, "networks", None)
        if networks is None or not hasattr(networks, "active"):
            raise TypeError(f"model: expected a dvn model with virtual networks (dvn.wrn, "
                            f"dvn.resnet, dvn.convert_to_sliced), got {type(model).__name__}")
        self.model = model
        self.networks = networks
        self._compile_args = dict(mode=_default_mode(model, backend) if mode is None else mode,
                                  backend=_backend(backend), dynamic=dynamic, fullgraph=True)
        self._options = dict(options or {})
        self.guard_modules = guard_modules
        self._compiled: dict[tuple[int, int, bool, bool], Callable] = {}
        self._lock = threading.Lock()
        self._exclude_weights()

    def _exclude_weights(self) -> None:
        """No cached weight copies for this model's weights: a compiled CUDA graph's warm-up
        (forward or backward) would keep them in the graph's memory pool
        (``dvn_kernels.weight_cache`` says why)."""
        exclude_from_weight_cache(self.model.parameters())

    def reset(self) -> None:
        """Forgets every compiled graph (after changing the model beyond its values)."""
        with self._lock:
            self._compiled.clear()
        self._exclude_weights()

    def _compile(self, task: int, level: int, grad: bool, training: bool) -> Callable:
        args, options = dict(self._compile_args), dict(self._options)
        if not grad and not self.guard_modules:
            options.setdefault("guard_filter_fn",
                               torch.compiler.skip_guard_on_all_nn_modules_unsafe)
            # torch.compile takes a mode or options, not both: pass the mode as its options.
            mode = args.pop("mode")
            if mode not in (None, "default") and args["backend"] == "inductor":
                options = {**torch._inductor.list_mode_options(mode), **options}
        tag = f"{'grad' if grad else 'nograd'}_{'train' if training else 'eval'}"
        fn = _config_function(self.model, task, level, tag)
        return torch.compile(fn, options=options or None, **args)

    def compiled(self, task: int, level: int) -> Callable:
        """The compiled function ``x -> logits`` of one configuration in the current grad mode
        and train/eval state (it compiles on its first call)."""
        key = (task, level, torch.is_grad_enabled(), self.model.training)
        fn = self._compiled.get(key)
        if fn is None:
            self.networks.check(task, level)
            with self._lock:
                fn = self._compiled.get(key)
                if fn is None:
                    fn = self._compile(*key)
                    self._compiled[key] = fn
                    self._exclude_weights()  # the weights' storage as compiled
        return fn

    def __call__(self, x: torch.Tensor, task: int, level: int) -> torch.Tensor:
        fn = self._compiled.get((task, level, torch.is_grad_enabled(), self.model.training))
        if fn is None:
            if x.is_cuda and not torch.is_grad_enabled():
                self.networks.check(task, level)  # its error, not the model's
                self._measure(x, task, level)
            fn = self.compiled(task, level)
        # Layers that read the selection from the context (a converted model's) read it once,
        # while tracing, and Dynamo cannot set it: it is set here, around the compiled call.
        with selected(self.networks.active(task, level)):
            return fn(x)

    def _measure(self, x: torch.Tensor, task: int, level: int) -> None:
        """One eager inference call before a configuration compiles on a GPU: ``auto`` then
        measures each convolution's backends, and the trace runs their graph choices rather
        than the fixed order (a trace cannot measure). Inference only: an eager training
        step would move batch-norm statistics."""
        with selected(self.networks.active(task, level)):
            self.model(x, task=task, level=level)

    def warmup(self, example: torch.Tensor,
               configs: Optional[Iterable[tuple[int, int]]] = None) -> None:
        """Compiles every configuration (or those given) by running it once on ``example``."""
        with torch.no_grad():
            for task, level in configs if configs is not None else self.networks.configs():
                self(example, task, level)


def compile_configs(model: nn.Module, **kwargs: Any) -> CompiledConfigs:
    """``CompiledConfigs(model, **kwargs)``: see there."""
    return CompiledConfigs(model, **kwargs)
