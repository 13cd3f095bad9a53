"""Tile configurations, autotune keys and the split-K heuristic shared by the three passes.

Autotuning is keyed on power-of-two buckets of the GEMM sizes (plus kernel size, split and
layout), so all levels of a network share a handful of keys instead of one per width. Under
``TRITON_INTERPRET=1`` (CPU tests) each pass has one large-block configuration: the
interpreter's cost grows with programs x loop iterations, and one config means no
benchmarking.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# DVN_TRITON_AUTOTUNE=0: only the first configuration of each pass (no tuning, few compiles;
# scripts/gpu-check runs the test suite so).
AUTOTUNE_ENABLED = os.environ.get("DVN_TRITON_AUTOTUNE", "1") != "0"

# Autotune key: bucketed GEMM sizes and the few constexprs that change the best tile.
KEY = ["M_BUCKET", "N_BUCKET", "K_BUCKET", "KH", "KW", "SPLIT_K", "CHANNELS_LAST"]


# Tile rows per band of the L2 swizzle. A config value, not a default in the kernels'
# signatures: torch 2.11's wrap_triton counts a defaulted parameter as missing.
SWIZZLE_M = 8


def _cfg(bm: int, bn: int, bk: int, stages: int, warps: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SWIZZLE_M": SWIZZLE_M},
                         num_stages=stages, num_warps=warps)


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps). M = pixels, N = output (or input) channels.
# K tiles of 16 serve reductions over at most 16 channels (the units of k = 4 at 64
# channels), where a 32-wide K tile would be half padding; prune keeps them for those alone.
_GEMM_GPU = [(128, 64, 32, 4, 4), (128, 128, 32, 3, 8), (64, 128, 32, 4, 4), (128, 32, 32, 4, 4),
             (64, 64, 32, 4, 4), (256, 64, 32, 3, 8), (128, 64, 64, 3, 4), (64, 32, 64, 4, 4),
             (128, 64, 16, 4, 4), (64, 64, 16, 4, 4), (128, 128, 16, 3, 8), (64, 32, 16, 4, 4)]
# Weight gradient: M = output channels, N = input channels of one tap, K = pixels. BLOCK_M is
# at least 64 so that the product can use Hopper's wgmma (one warpgroup computes 64 rows).
_WGRAD_GPU = [(64, 64, 64, 3, 4), (128, 64, 64, 3, 8), (64, 128, 64, 3, 8), (128, 128, 32, 3, 8),
              (64, 32, 128, 3, 4), (64, 64, 128, 3, 4), (128, 32, 64, 3, 4)]
_GEMM_INTERPRET = [(128, 32, 16, 1, 4)]
_WGRAD_INTERPRET = [(32, 32, 128, 1, 4)]


def _configs(gpu: list[tuple], interpret: list[tuple]) -> list[triton.Config]:
    chosen = interpret if INTERPRET else gpu
    return [_cfg(*c) for c in (chosen if AUTOTUNE_ENABLED else chosen[:1])]


def gemm_configs() -> list[triton.Config]:
    """Configurations of the forward and grad-input kernels (the first is the default)."""
    return _configs(_GEMM_GPU, _GEMM_INTERPRET)


def wgrad_configs() -> list[triton.Config]:
    """Configurations of the grad-weight kernel (the first is the default)."""
    return _configs(_WGRAD_GPU, _WGRAD_INTERPRET)


def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drops tiles far larger than the problem (a 128-wide N tile for 16 channels), and keeps
    16-wide K tiles for reductions over at most 16 channels only (and only those there)."""
    m_cap = max(min(c.kwargs["BLOCK_M"] for c in configs), named_args["M_BUCKET"])
    n_cap = max(min(c.kwargs["BLOCK_N"] for c in configs), named_args["N_BUCKET"])
    k_small = named_args["K_BUCKET"] <= 16
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap
            and (c.kwargs["BLOCK_K"] == 16) == k_small]
    return kept or configs[:1]


def bench(fn, quantiles):
    """Short autotune timing (the default 25+100 ms per config is too slow for many keys)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


AUTOTUNE = dict(key=KEY, prune_configs_by={"early_config_prune": prune}, do_bench=bench)


def bucket(n: int) -> int:
    """Power-of-two bucket of a size (at least 16, the smallest K tile): the autotune key of
    that size. Channel counts enter the keys as channels, not channels x taps (the kernel
    size is a key of its own), so the four levels of k = 4 equal units share at most three
    keys per layer shape and pass."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 1 for CPU tensors (the interpreter), so the
    heuristic never splits there (tests ask for a split explicitly)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def choose_split_k(tiles: int, k_chunks: int, sms: int, *, max_split: int = 32,
                   min_chunks: int = 8) -> int:
    """Number of K splits for ``tiles`` output tiles on ``sms`` multiprocessors.

    Splits only when the tiles fill less than half of the GPU, to about two waves;
    ``k_chunks`` is the reduction length in 64-element chunks and each split keeps at least
    ``min_chunks`` of them, so the float32 partials stay small next to the work they save.
    """
    if 2 * tiles > sms or k_chunks < 2 * min_chunks:
        return 1
    want = triton.cdiv(2 * sms, max(tiles, 1))
    return max(1, min(want, max_split, k_chunks // min_chunks))


class _Skip:
    """Stands in for a launch that must not run: ``_Skip()[grid](*args)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


class _Compile:
    """Stands in for a launch that compiles instead: every configuration the autotuner would
    try for these arguments (after pruning), or the kernel's one variant; nothing runs."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel.warmup(*args, grid=grid, **kwargs)


_PRECOMPILING = False


@contextlib.contextmanager
def precompile_only():
    """Within the block the kernels' launches compile their variants and run nothing (their
    outputs stay unwritten): bench.gpu compiles every variant in parallel processes sharing
    TRITON_CACHE_DIR before the benchmark, whose autotuner then only loads them."""
    global _PRECOMPILING
    old, _PRECOMPILING = _PRECOMPILING, True
    try:
        yield
    finally:
        _PRECOMPILING = old


@dataclass(frozen=True)
class Launch:
    """One kernel launch, described by what selects its compiled variant.

    ``constexprs``: the constexpr arguments the launch passes (layout, ALIGN, kernel size...;
    not the autotuned tile). ``specialization``: per runtime argument, the class Triton
    compiles it as: ``"1"`` (an integer equal to 1, a constant: a unit channel stride),
    ``"%16"`` (an integer divisible by 16), ``"int"``, ``"<dtype>%16"`` / ``"<dtype>"`` (a
    tensor with a 16-byte aligned data pointer or not; the dtype alone when it has none, as
    while tracing), or the type of anything else. Arguments named in the kernel's
    ``do_not_specialize`` are ``"int"`` on a compiled kernel; the interpreter does not keep
    that list, so there they show the class of their value.
    """
    kernel: str
    constexprs: dict[str, Any]
    specialization: dict[str, str]


_RECORDING: Optional[list[Launch]] = None


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Within the block every launch through ``launcher`` (run, or compiled under
    ``precompile_only``; not the skipped ones on fake tensors) is appended to the yielded
    list, in order, as a ``Launch``. Tests check which variants a call runs with it (an NCHW
    call runs the channels_last ones); a compile report can list them. Nothing stays on after
    the block; an inner block records into its own list only."""
    global _RECORDING
    old, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = old


@functools.lru_cache(maxsize=None)
def _parameters(kernel) -> tuple[str, tuple[tuple[str, bool, bool], ...]]:
    """(name, ((argument, is constexpr, not specialised), ...)) of a kernel or autotuner."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    params = getattr(fn, "params", None)
    if params is not None:  # a JITFunction
        args = tuple((p.name, p.is_constexpr, p.do_not_specialize) for p in params)
    else:  # the interpreter's InterpretedFunction keeps only the Python function
        sig = inspect.signature(fn.fn).parameters.values()
        args = tuple((p.name, "constexpr" in str(p.annotation), False) for p in sig)
    return fn.__name__, args


def _specialization(value, no_specialize: bool) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        try:
            return dtype + ("%16" if value.data_ptr() % 16 == 0 else "")
        except RuntimeError:  # fake or functional tensors while tracing
            return dtype
    if isinstance(value, bool) or not isinstance(value, int):
        return type(value).__name__
    if no_specialize:
        return "int"
    return "1" if value == 1 else "%16" if value % 16 == 0 else "int"


def _record(kernel, args: tuple, kwargs: dict) -> None:
    name, params = _parameters(kernel)
    constexprs, specialization = {}, {}
    for (arg, is_constexpr, no_specialize), value in zip(params, args):
        if is_constexpr:
            constexprs[arg] = value
        else:
            specialization[arg] = _specialization(value, no_specialize)
    constexprs.update(kwargs)  # constexprs are passed by keyword
    _RECORDING.append(Launch(name, constexprs, specialization))


class _Recorded:
    """A launch that records itself (``record_launches``), then runs ``inner``'s."""

    def __init__(self, inner, kernel) -> None:
        self.inner, self.kernel = inner, kernel

    def __getitem__(self, grid):
        launch = self.inner[grid]

        def run(*args, **kwargs):
            _record(self.kernel, args, kwargs)
            return launch(*args, **kwargs)
        return run


class _Tuned:
    """An autotuned kernel launched without Triton's per-call autotune key.

    Triton's ``Autotuner.run`` (3.6 and 3.8) builds its cache key on every call by testing each
    argument name against a list: about 2,500 comparisons for the forward kernel's ~50
    arguments, 44 us a call on this project's 2-core Xeon. Here the first launch of each key
    (the autotuned sizes and constexprs, and the tensors' dtypes: the autotuner's own key)
    goes through the autotuner, which tunes or reads its cache; later ones replay the
    configuration it chose, by the same call the autotuner makes (``fn.run`` with the
    configuration's keywords). Configurations with a pre-hook always go through it."""

    _lock = threading.Lock()  # a first launch reads the autotuner's best_config after it

    def __init__(self, tuner: triton.runtime.Autotuner) -> None:
        self.tuner = tuner
        self.keys = tuple((tuner.arg_names.index(k), k) for k in tuner.keys)
        self.chosen: dict[tuple, triton.Config] = {}

    def key(self, args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        sizes = tuple(args[i] if i < n else kwargs.get(name) for i, name in self.keys)
        dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
        return sizes, dtypes, tuple(v.dtype for v in kwargs.values()
                                    if isinstance(v, torch.Tensor))

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            key = self.key(args, kwargs)
            config = self.chosen.get(key)
            if config is None:
                with self._lock:
                    out = self.tuner[grid](*args, **kwargs)
                    config = self.tuner.best_config
                if config.pre_hook is None:
                    self.chosen[key] = config
                return out
            return self.tuner.fn.run(*args, grid=grid, warmup=False, **kwargs,
                                     **config.all_kwargs())
        return run


_TUNED: dict[int, _Tuned] = {}  # id(autotuner) -> its _Tuned (the kernels live for good)


def _tuned(kernel):
    """``kernel``'s ``_Tuned`` launcher when it is an autotuner, else ``kernel``."""
    if not isinstance(kernel, triton.runtime.Autotuner):
        return kernel
    tuned = _TUNED.get(id(kernel))
    if tuned is None:
        tuned = _TUNED[id(kernel)] = _Tuned(kernel)
    return tuned


def launcher(kernel, sample: torch.Tensor):
    """``wrap_triton(kernel)``: the launch torch.compile and fake tensors can trace.

    Run eagerly (inside the ``triton_op``, where torch turns wrap_triton's tracing off), an
    autotuned kernel launches through ``_Tuned``, without Triton's per-call key. Under the
    interpreter the ops are opaque custom ops (``op``), so the kernel is launched directly
    (through ``_Tuned`` too): torch 2.11's wrap_triton rejects interpreted kernels, newer ones
    hand them back unwrapped. The op's fake implementation is the same function, so a launch
    on fake or meta tensors is skipped, as the real wrapper does under fake tensors. Within
    ``record_launches`` the launch records itself.
    """
    if INTERPRET:
        if sample.device.type == "meta" or torch._subclasses.fake_tensor.is_fake(sample):
            return _Skip()
        launch = _tuned(kernel)
    elif _PRECOMPILING:
        launch = _Compile(kernel)
    elif not torch._library.triton.is_wrap_triton_enabled():
        launch = _tuned(kernel)
    else:
        launch = torch.library.wrap_triton(kernel)
    return launch if _RECORDING is None else _Recorded(launch, kernel)


def channel_align(*values: int) -> int:
    """Largest power of two <= 16 dividing the active widths and every segment scalar given:
    the kernels receive those in units of it (a constexpr), so unit sizes that are multiples
    of 16 all share one compiled kernel and still get aligned, vectorised loads."""
    align = 16
    for v in values:
        while int(v) % align:
            align //= 2
    return align


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot`` input precision: TF32 only for float32 when allowed, else IEEE."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"
