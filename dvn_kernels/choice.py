"""``auto``'s choice on a GPU: measured once per convolution and pass, remembered.

As ``torch.backends.cudnn.benchmark`` does, the first call of a convolution (its plan, input
shape, dtype, memory format, device, and whether it has a bias) times the candidate backends
(``reference``, i.e. slice + cuDNN, ``triton`` and ``cuda``, those that can run it) and keeps
the fastest; the first backward of it times their backward ops with the real ``grad_out`` and
gradient mask. Forward and backward choose separately: when they differ, a small
autograd.Function runs the one's forward and the other's backward. So ``auto`` is never slower
than slicing the weight and calling cuDNN, which is what a user would do without this project.

Each candidate is timed twice over: its host time (launching it, Python included) and its
kernel time (CUDA events while the GPU is held by a spin until every launch is queued, so host
time cannot leak in). Two choices follow, because what a call costs depends on how it runs:

- eager calls cost ``max(host, kernel)`` each (launches overlap the GPU's work; the slower
  side sets the pace), so eager mode runs the backend with the least of that;
- a CUDA-graph replay or a torch.compile'd graph costs the kernel time alone (no Python at
  replay), so inside a capture and under torch.compile the backend with the least kernel time
  runs. (The first H200 run showed why: at level 1 the ``cuda`` kernel launches in 45 us
  against Triton's 337 us but its kernels take 2-10x longer; one choice fitted neither mode.)

Choices are kept in memory and in a JSON file (``$DVN_CACHE_DIR``, else ``~/.cache/dvn/``,
file ``auto-choices.json``), under an environment key of GPU name, torch, triton and dvn
versions, so another GPU or version measures again. The file is only parsed as JSON, written
atomically (temp file + os.replace); a corrupt file or one of another format is ignored with
one warning.

No measuring when ``DVN_AUTO_MEASURE=0`` (read at import; ``set_auto_measure`` in code),
inside CUDA-graph capture or under torch.compile tracing: then the choice already made for
the convolution, else the fixed order the candidate list gives (full width: ``reference``,
a free view of the weight; else ``triton``, ``cuda``, ``reference``). A candidate that raises
while measured (Triton out of resources, a failed compile, ...) is dropped for that
convolution with one warning, and the next one runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional

import torch

from .channels import follow_format
from .plan import ConvPlan
from .reference import Grads, Mask, autograd_backward
from .spec import ranges_text
from .weight_cache import weight_cache_bypassed

Implementation = Callable[[ConvPlan, torch.Tensor, torch.Tensor, Optional[torch.Tensor]],
                          torch.Tensor]
Backward = Callable[[ConvPlan, torch.Tensor, torch.Tensor, torch.Tensor, Mask], Grads]
Candidates = Callable[[ConvPlan, torch.Tensor], Sequence[str]]


class Timing(NamedTuple):
    """One candidate's measured cost per call, in milliseconds."""
    host: float    # launching the call (Python, dispatch, launch), not waiting for the GPU
    kernel: float  # the GPU's time for the call's kernels

    @property
    def eager(self) -> float:
        """An eager call's cost: launches overlap kernels, so the slower side sets the pace."""
        return max(self.host, self.kernel)


class Choice(NamedTuple):
    """The backend for eager calls and the one for captured or compiled graphs."""
    eager: str
    graph: str

    def pick(self, graph: bool) -> str:
        return self.graph if graph else self.eager


#: timer(backend, pass, run) -> Timing, or one number (any unit, the same for every candidate)
#: that stands for both host and kernel time.
Timer = Callable[[str, str, Callable[[], object]], "Timing | float"]

MEASURE_ENV = "DVN_AUTO_MEASURE"
CACHE_DIR_ENV = "DVN_CACHE_DIR"
CACHE_FILE = "auto-choices.json"
CACHE_FORMAT = 1
MEASURE = os.environ.get(MEASURE_ENV, "1") != "0"


def cuda_timer(backend: str, pass_: str, run: Callable[[], object], *, warmup: int = 2,
               repeats: int = 5) -> Timing:
    """``run``'s median host and kernel milliseconds on the current stream, after ``warmup``
    calls (the first compiles Triton kernels and autotunes cuDNN).

    Host: the wall time of each call, launches only. Kernel: CUDA events around each call
    while the GPU spins (``torch.cuda._sleep``) long enough for every call to be queued
    first, so the events time the kernels back to back, not the host's launches; and with
    no cached weight copies, as a CUDA-graph replay runs them (the Triton op's channels_last
    weight: without this, on an H200 ``auto`` put Triton in graphs where the replay, which
    converts the weight, took up to 1.4x slice + cuDNN's time)."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    host = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        host.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    # Hold the GPU for twice the launches' time (and at least 0.1 ms).
    torch.cuda._sleep(int(_cycles_per_ms() * max(0.1, 2 * sum(host))))
    with weight_cache_bypassed():  # the kernels a graph replays: weights converted afresh
        for start, end in events:
            start.record()
            run()
            end.record()
    events[-1][1].synchronize()
    return Timing(host=statistics.median(host),
                  kernel=statistics.median(start.elapsed_time(end) for start, end in events))


_CYCLES_PER_MS: dict[int, float] = {}


def _cycles_per_ms() -> float:
    """The current GPU's ``torch.cuda._sleep`` cycles per millisecond, measured once."""
    device = torch.cuda.current_device()
    rate = _CYCLES_PER_MS.get(device)
    if rate is None:
        cycles = 1_000_000
        torch.cuda._sleep(cycles)  # wakes the clocks up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        rate = _CYCLES_PER_MS[device] = cycles / max(start.elapsed_time(end), 1e-3)
    return rate


def _timing(value: "Timing | float") -> Timing:
    return value if isinstance(value, Timing) else Timing(float(value), float(value))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def environment(device: torch.device) -> str:
    """The cache's environment key: what a measurement depends on besides the convolution."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (f"{name} | torch {torch.__version__} | triton {_version('triton')} | "
            f"dvn {_version('dvn')}")


def default_cache_dir() -> str:
    """``$DVN_CACHE_DIR``, else ``~/.cache/dvn``."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "dvn")


def _capturing() -> bool:
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


class ChoiceFile:
    """The on-disk cache: ``{"format": 1, "choices": {environment: {key: backend}}}``.

    Read once, lazily, with ``json.load`` only; every new choice rewrites the file atomically,
    merged with what other processes wrote meanwhile. Unreadable or unwritable: one warning,
    then memory only.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        self._path = path
        self._choices: Optional[dict[str, dict[str, str]]] = None
        self._warned = False

    @property
    def path(self) -> str:
        """The file: the one given, else ``default_cache_dir()``'s, read when first used (so
        a chooser made at import follows a DVN_CACHE_DIR set later)."""
        if self._path is None:
            self._path = os.path.join(default_cache_dir(), CACHE_FILE)
        return self._path

    def get(self, env: str, key: str) -> Optional[str]:
        if self._choices is None:
            self._choices = self._read(warn=True)
        return self._choices.get(env, {}).get(key)

    def put(self, env: str, choices: Mapping[str, str]) -> None:
        """Adds ``choices`` (key -> backend) under ``env``, in one atomic write."""
        if self._choices is None:
            self._choices = self._read(warn=True)
        self._choices.setdefault(env, {}).update(choices)
        merged = self._read(warn=False)
        merged.setdefault(env, {}).update(self._choices[env])
        try:
            from .files import write_json
            write_json(self.path, {"format": CACHE_FORMAT, "choices": merged}, indent=0,
                       sort_keys=True)
        except OSError as exc:
            self._warn(f"cannot write {self.path} ({exc}); choices stay in memory")

    def _read(self, warn: bool) -> dict[str, dict[str, str]]:
        try:
            with open(self.path) as f:
                data: Any = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            if warn:
                self._warn(f"ignoring {self.path}: not a readable JSON file ({exc})")
            return {}
        why = _invalid(data)
        if why is not None:
            if warn:
                self._warn(f"ignoring {self.path}: {why}")
            return {}
        return data["choices"]

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"dvn_kernels auto: {message}", RuntimeWarning, stacklevel=3)


def _invalid(data: Any) -> Optional[str]:
    """Why ``data`` is not a cache file this version writes, or None."""
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        return f"expected format {CACHE_FORMAT}, found {found!r}"
    choices = data.get("choices")
    if not isinstance(choices, dict) or not all(
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                          for k, v in env.items())
            for env in choices.values()):
        return "'choices' is not a mapping of environments to {key: backend}"
    return None


def _plan_text(plan: ConvPlan) -> str:
    """The caller's convolution, ranges written as the spec string writes them."""
    return (f"w={'x'.join(map(str, plan.weight_shape))} in={ranges_text(plan.in_segments)} "
            f"out={ranges_text(plan.out_segments)} stride={plan.stride[0]},{plan.stride[1]} "
            f"padding={plan.padding[0]},{plan.padding[1]} "
            f"dilation={plan.dilation[0]},{plan.dilation[1]} groups={plan.groups}")


class Chooser:
    """``auto`` for one set of candidates: ``conv2d(plan, x, weight, bias)`` runs the chosen
    backend, choosing (measuring) on the first call of each convolution and pass.

    ``forwards`` / ``backwards`` map backend names to their forward implementation and their
    backward (gradients asked for by a mask; a backend without one gets gradients by autograd
    through its forward, run again). ``candidates(plan, x)`` lists the backends that may run
    ``plan`` in the fixed order (its first is the choice when nothing is measured). Each
    measurement keeps a ``Choice``: the eager backend and the graph backend (see the module's
    docstring); ``capturing()`` says which one a call runs. ``timer`` (returns a ``Timing``,
    or one number for both), ``measure`` (None: the module's switch), ``cache_dir`` (None:
    ``default_cache_dir()``; ``persist=False``: memory only), ``environment`` and
    ``capturing`` are injectable for tests.
    """

    def __init__(self, forwards: Mapping[str, Implementation], backwards: Mapping[str, Backward],
                 candidates: Candidates, *, timer: Timer = cuda_timer,
                 measure: Optional[bool] = None, cache_dir: Optional[str] = None,
                 persist: bool = True,
                 environment: Callable[[torch.device], str] = environment,
                 capturing: Callable[[], bool] = _capturing) -> None:
        self.forwards = dict(forwards)
        self.backwards = dict(backwards)
        self.candidates = candidates
        self.timer = timer
        self.measure = MEASURE if measure is None else bool(measure)
        self.file = ChoiceFile(os.path.join(cache_dir, CACHE_FILE) if cache_dir else None) \
            if persist else None
        self.environment = environment
        self.capturing = capturing
        self._forward: dict[tuple, Choice] = {}  # key -> backends
        self._backward: dict[tuple, Choice] = {}  # (key, mask) -> backends
        self._dropped: dict[tuple, set[str]] = {}  # key -> backends that failed on it
        self._warned: set[tuple[ConvPlan, str]] = set()
        self._envs: dict[torch.device, str] = {}
        self._texts: dict[ConvPlan, str] = {}
        self._plans: dict[int, ConvPlan] = {}  # id -> plan, of the plans in self._forward
        _CHOOSERS[id(self)] = self

    # The hot path.

    def conv2d(self, plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The sliced convolution on the chosen backends."""
        if torch.compiler.is_compiling():
            return self._traced(plan, x, weight, bias)
        key = (plan, x.shape, x.dtype, follow_format(x), x.device, bias is not None)
        choice = self._forward.get(key)
        if choice is None:
            choice = self._choose_forward(key, plan, x, weight, bias)
        graph = self.capturing()
        forward = choice.pick(graph)
        if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (
                bias is not None and bias.requires_grad))):
            return self.forwards[forward](plan, x, weight, bias)
        mask = (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        backward = self._backward.get((key, mask))
        same = backward is not None and backward.pick(graph) == forward
        if same or plan.in_gather is not None or plan.out_gather is not None:
            return self.forwards[forward](plan, x, weight, bias)  # its own autograd
        return _Paired.apply(self, key, mask, plan, forward, None, x, weight, bias)

    def _traced(self, plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Under torch.compile: the graph choice (least kernel time) measured in eager mode
        for this convolution, else the fixed order; that backend's op with its own autograd.
        The choice is read by a function Dynamo treats as constant, given ids and constants
        only, so no guard on the chooser's mutable state (and no hash() of tuples, which
        Dynamo on torch 2.11 cannot trace)."""
        facts = (id(self), id(plan), tuple(x.shape), x.dtype, follow_format(x), x.device,
                 bias is not None)
        forward = _cached_choice(*facts)
        if forward is None:
            forward = self.fixed(plan, x)
        if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (
                bias is not None and bias.requires_grad))):
            return self.forwards[forward](plan, x, weight, bias)
        # The backward's own graph choice: the forward's backend's backward can be far slower
        # (on an H200, Triton's grad-weight pass took 2-6x cuDNN's: a captured training step
        # that ran it at level 1 was slower than level 2's).
        mask = (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        backward = _cached_choice(*facts, mask)
        if backward is None:
            backward = self.fixed(plan, x)
        if backward == forward or plan.in_gather is not None or plan.out_gather is not None:
            return self.forwards[forward](plan, x, weight, bias)  # its own autograd
        return _Paired.apply(self, None, mask, plan, forward, backward, x, weight, bias)

    # Choosing.

    def fixed(self, plan: ConvPlan, x: torch.Tensor, key: Optional[tuple] = None) -> str:
        """The choice without measuring: the first candidate not dropped."""
        dropped = self._dropped.get(key, ()) if key is not None else ()
        names = [n for n in self.candidates(plan, x) if n not in dropped]
        return names[0] if names else "reference"

    def _may_measure(self) -> bool:
        return self.measure and not self.capturing()

    def _choose_forward(self, key: tuple, plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> Choice:
        if not self._may_measure():
            name = self.fixed(plan, x, key)
            choice = Choice(name, name)
            if not self.measure:  # a fixed choice for good; in capture, measure later
                self._remember(key, choice)
            return choice

        def run(name: str) -> Callable[[], object]:
            impl = self.forwards[name]
            return lambda: impl(plan, x, weight, bias)

        with torch.no_grad():
            choice = self._choose(key, "forward", self._disk_key(key, "forward"), plan, x, run)
        self._remember(key, choice)
        return choice

    def _remember(self, key: tuple, choice: Choice) -> None:
        self._forward[key] = choice
        self._plans[id(key[0])] = key[0]  # alive while it is a key: its id stays its own

    def choose_backward(self, key: tuple, mask: Mask, plan: ConvPlan, grad_out: torch.Tensor,
                        x: torch.Tensor, weight: torch.Tensor) -> str:
        """The backward's backend for this convolution and gradient mask (measured the first
        time, with the real ``grad_out``): the eager choice, or inside a CUDA-graph capture
        the graph choice."""
        choice = self._backward.get((key, mask))
        if choice is not None:
            return choice.pick(self.capturing())
        if not self._may_measure():
            name = self.fixed(plan, x, key)
            if not self.measure:
                self._backward[(key, mask)] = Choice(name, name)
            return name

        def run(name: str) -> Callable[[], object]:
            backward = self.backward_of(name)
            return lambda: backward(plan, grad_out, x, weight, mask)

        disk_key = self._disk_key(key, "backward", mask)
        with torch.no_grad():
            choice = self._choose(key, "backward", disk_key, plan, x, run)
        self._backward[(key, mask)] = choice
        return choice.eager

    def choices(self, plan: ConvPlan) -> dict[str, str]:
        """What this chooser runs for ``plan`` so far, for reports: ``"forward"`` and
        ``"backward <mask>"`` (mask as three digits: x, weight, bias) -> the eager backend,
        and the same names with `` graph`` -> the graph backend. Where ``plan`` was seen with
        several input shapes, the last one's."""
        out: dict[str, str] = {}
        found = [("forward", key, choice) for key, choice in self._forward.items()]
        found += [(f"backward {''.join(str(int(m)) for m in mask)}", key, choice)
                  for (key, mask), choice in self._backward.items()]
        for name, key, choice in found:
            if key[0] == plan:
                out[name], out[f"{name} graph"] = choice
        return out

    def counts(self, batch: Optional[int] = None) -> dict[str, dict[str, int]]:
        """How many convolutions run each backend, per pass and mode, as ``choices`` names
        them (``"forward graph"`` -> {"reference": 12, "triton": 4}); with ``batch``, only
        the convolutions seen with inputs of that batch size. For reports."""
        out: dict[str, dict[str, int]] = {}
        found = [("forward", key, choice) for key, choice in self._forward.items()]
        found += [(f"backward {''.join(str(int(m)) for m in mask)}", key, choice)
                  for (key, mask), choice in self._backward.items()]
        for name, key, choice in found:
            if batch is None or key[1][0] == batch:
                for mode, backend in ((name, choice.eager), (f"{name} graph", choice.graph)):
                    per = out.setdefault(mode, {})
                    per[backend] = per.get(backend, 0) + 1
        return out

    def backward_of(self, name: str) -> Backward:
        """Backend ``name``'s backward (by autograd through its forward when it has none)."""
        backward = self.backwards.get(name)
        return backward if backward is not None else autograd_backward(self.forwards[name])

    def _choose(self, key: tuple, pass_: str, disk_key: str, plan: ConvPlan, x: torch.Tensor,
                run: Callable[[str], Callable[[], object]]) -> Choice:
        dropped = self._dropped.setdefault(key, set())
        names = [n for n in self.candidates(plan, x) if n not in dropped]
        if len(names) <= 1:
            name = names[0] if names else "reference"
            return Choice(name, name)
        env = self._env(x.device)
        graph_key = f"{disk_key} graph"
        if self.file is not None:
            stored = Choice(self.file.get(env, disk_key), self.file.get(env, graph_key))
            if stored.eager in names and stored.graph in names:
                return stored
        times: dict[str, Timing] = {}
        for name in names:
            try:
                times[name] = _timing(self.timer(name, pass_, run(name)))
            except Exception as exc:  # a failed compile, out of resources, unsupported, ...
                dropped.add(name)
                if (plan, name) not in self._warned:
                    self._warned.add((plan, name))
                    warnings.warn(f"dvn_kernels auto: backend {name!r} failed on "
                                  f"{self._text(plan)} ({type(exc).__name__}: {exc}); "
                                  f"dropped for this convolution", RuntimeWarning,
                                  stacklevel=4)
        if not times:  # every candidate failed: reference runs and raises its own error
            return Choice("reference", "reference")
        # ties: the earlier in the fixed order
        choice = Choice(min(times, key=lambda n: times[n].eager),
                        min(times, key=lambda n: times[n].kernel))
        if self.file is not None:
            self.file.put(env, {disk_key: choice.eager, graph_key: choice.graph})
        return choice

    def _env(self, device: torch.device) -> str:
        env = self._envs.get(device)
        if env is None:
            env = self._envs[device] = self.environment(device)
        return env

    def _text(self, plan: ConvPlan) -> str:
        text = self._texts.get(plan)
        if text is None:
            text = self._texts[plan] = _plan_text(plan)
        return text

    def _disk_key(self, key: tuple, pass_: str, mask: Optional[Mask] = None) -> str:
        plan, shape, dtype, fmt, _, has_bias = key
        tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
        text = (f"{pass_} {self._text(plan)} x={'x'.join(map(str, shape))} "
                f"{str(dtype).removeprefix('torch.')} {str(fmt).removeprefix('torch.')} "
                f"bias={int(has_bias)} tf32={int(tf32)}")
        return text if mask is None else f"{text} mask={''.join(str(int(m)) for m in mask)}"


_CHOOSERS: weakref.WeakValueDictionary[int, Chooser] = weakref.WeakValueDictionary()


@torch.compiler.assume_constant_result
def _cached_choice(chooser_id: int, plan_id: int, shape: tuple, dtype: torch.dtype,
                   fmt: torch.memory_format, device: torch.device, has_bias: bool,
                   mask: Optional[Mask] = None) -> Optional[str]:
    """The graph choice already made for a convolution's forward, or with ``mask`` for its
    backward computing those gradients; None where none was made (for ``_traced``)."""
    chooser = _CHOOSERS.get(chooser_id)
    plan = chooser._plans.get(plan_id) if chooser is not None else None
    if plan is None:
        return None
    key = (plan, torch.Size(shape), dtype, fmt, device, has_bias)
    choice = chooser._forward.get(key) if mask is None else chooser._backward.get((key, mask))
    return None if choice is None else choice.graph


class _Paired(torch.autograd.Function):
    """One backend's forward with another's backward: ``backward`` names it (chosen when a
    graph is traced, ``Chooser._traced``), or None to choose it, measuring, when the backward
    first runs (eager calls, which pass ``key``)."""

    @staticmethod
    def forward(ctx, chooser: Chooser, key: Optional[tuple], mask: Mask, plan: ConvPlan,
                forward: str, backward: Optional[str], x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.chooser, ctx.key, ctx.mask, ctx.plan, ctx.backward = chooser, key, mask, plan, backward
        return chooser.forwards[forward](plan, x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        chooser, plan, name = ctx.chooser, ctx.plan, ctx.backward
        if name is None:
            name = chooser.choose_backward(ctx.key, ctx.mask, plan, grad_out, x, weight)
        gx, gw, gb = chooser.backward_of(name)(plan, grad_out, x, weight, ctx.mask)
        return None, None, None, None, None, None, gx, gw, gb
