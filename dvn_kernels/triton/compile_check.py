"""Compile the kernels for an NVIDIA target without a GPU.

    python -m dvn_kernels.triton.compile_check [--arch 90] [--dtypes bf16 fp32] [--all-configs]

The interpreter runs the kernels' Python semantics but not the compiler, so type and constexpr
errors, register or shared-memory overflows only show on a GPU. This compiles the default tile
of each pass (every autotuned tile with --all-configs) and the split-K reductions for sm_90
with the specialisations of a channels_last bfloat16 and TF32 run, two ranges per side and
unit-aligned channels, and prints each kernel's shared memory (a pipelined K loop uses
num_stages tiles) and whether its PTX uses Hopper's wgmma (else mma.sync). Needs Triton's
bundled ptxas, no driver; run it without TRITON_INTERPRET.

``check()`` returns one ``TritonRecord`` per variant (also registers and spills, from the
log of Triton's own ptxas run, and the width of the global loads in the PTX):
bench.compile_report turns them into the committed table and tests/test_compile_report.py
fails on spills, on a GEMM pass without wgmma or on aligned loads narrower than 16 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from dataclasses import asdict, dataclass
from typing import Iterator, NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..ptx_stats import count_ptx_loads, mma_kind, parse_ptxas_log

_POINTERS = ("x", "w", "b", "y", "g", "gx", "gw", "ws")
# Strides that a channels_last run passes as 1 (Triton specialises them; MULT: the depth
# multiplier of a depthwise convolution, 1 in MobileNets) and those it sees divisible by 16.
_ONES = ("sxc", "syc", "sgc", "swi", "MULT")
_ALIGNED = ("sxn", "sxh", "sxw", "swo", "swh", "sww", "syn", "syh", "syw", "sgn", "sgh", "sgw",
            # Channel counts and range bounds that the reductions and depthwise kernels take in
            # channels (the GEMM passes take them in units of ALIGN): multiples of 16 there.
            "C_IN", "C_OUT", "in_s0", "in_l0", "in_s1", "out_s0", "out_l0", "out_s1")


def compile_kernel(kernel, dtype: str, constexprs: dict, config: triton.Config, arch: int):
    """Compiles one kernel variant; returns the compiled kernel (metadata.shared: bytes)."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    names = [p.name for p in fn.params]
    consts = {**constexprs, **config.kwargs, **{k: 1 for k in _ONES}}
    consts = {k: v for k, v in consts.items() if k in names}
    signature = {n: "constexpr" if n in consts else
                 ("*fp32" if n == "ws" else f"*{dtype}") if n in _POINTERS else "i32"
                 for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if (n in _POINTERS or n in _ALIGNED) and n not in consts}
    src = ASTSource(fn=fn, signature=signature, attrs=attrs,
                    constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=config.num_warps,
                                       num_stages=config.num_stages))


class Variant(NamedTuple):
    """One compiled specialisation. ``gemm``: a tensor-core pass (must use wgmma on sm_90);
    ``wide_loads``: its channel-contiguous tiles can be read with 16-byte loads (false where
    a thread holds a single element of every load)."""

    name: str
    kernel: object
    dtype: str
    constexprs: dict
    config: triton.Config
    gemm: bool = False
    wide_loads: bool = True


def variants(all_configs: bool = False) -> Iterator[Variant]:
    """Every variant checked: the default tile of each pass (every tile with all_configs)."""
    from . import configs, conv_bwd_input, conv_bwd_weight, conv_fwd, depthwise

    gemms = configs.gemm_configs() if all_configs else configs.gemm_configs()[:1]
    wgrads = configs.wgrad_configs() if all_configs else configs.wgrad_configs()[:1]
    reduce = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)
    fwd, dgrad, wgrad = conv_fwd._fwd_kernel, conv_bwd_input._dgrad_kernel, \
        conv_bwd_weight._wgrad_kernel
    for dtype, precision in (("bf16", "ieee"), ("fp32", "tf32")):
        common = dict(KH=3, KW=3, ALIGN=16, TWO_IN=True, TWO_OUT=True, CHANNELS_LAST=True,
                      PRECISION=precision, SWIZZLE_M=8, GROUPED=False)
        for gemm in gemms:
            yield Variant("fwd", fwd, dtype,
                          dict(common, HAS_BIAS=True, NO_PAD=False, DIRECT=True), gemm, True)
            yield Variant("dgrad", dgrad, dtype,
                          dict(common, UNIT_STRIDE=True, DIRECT=True), gemm, True)
            yield Variant("dgrad-strided", dgrad, dtype,
                          dict(common, UNIT_STRIDE=False, DIRECT=False), gemm, True)
        for tile in wgrads:
            yield Variant("wgrad", wgrad, dtype, dict(common, NO_PAD=False, DIRECT=False, H=16,
                                                      W=16, P=16, Q=16), tile, True)
    yield Variant("fwd-reduce", conv_fwd._fwd_reduce_kernel, "bf16",
                  dict(TWO_OUT=True, HAS_BIAS=True), reduce)
    yield Variant("dgrad-reduce", conv_bwd_input._dgrad_reduce_kernel, "bf16", {}, reduce)
    yield Variant("wgrad-reduce", conv_bwd_weight._wgrad_reduce_kernel, "bf16",
                  dict(KW=3, TWO_IN=True, TWO_OUT=True, GROUPED=False), reduce)
    # Grouped convolutions (ResNeXt-like groups of 16 channels), default tiles.
    grouped = dict(KH=3, KW=3, ALIGN=16, TWO_IN=False, TWO_OUT=False, CHANNELS_LAST=True,
                   PRECISION="ieee", SWIZZLE_M=8, GROUPED=True)
    yield Variant("fwd-grouped", fwd, "bf16",
                  dict(grouped, HAS_BIAS=False, NO_PAD=False, DIRECT=True), gemms[0], True)
    yield Variant("dgrad-grouped", dgrad, "bf16",
                  dict(grouped, UNIT_STRIDE=True, DIRECT=True), gemms[0], True)
    yield Variant("wgrad-grouped", wgrad, "bf16",
                  dict(grouped, NO_PAD=False, DIRECT=False, H=16, W=16, P=16, Q=16), wgrads[0],
                  True)
    # Depthwise: the direct kernels.
    tile = dict(KH=3, KW=3, TWO_OUT=True, BLOCK_P=depthwise.BLOCK_P, BLOCK_C=depthwise.BLOCK_C)
    plain = triton.Config({}, num_warps=4, num_stages=1)
    yield Variant("dw-fwd", depthwise._dw_fwd_kernel, "bf16", dict(tile, HAS_BIAS=True), plain)
    yield Variant("dw-dgrad", depthwise._dw_dgrad_kernel, "bf16", tile, plain)
    yield Variant("dw-wgrad", depthwise._dw_wgrad_kernel, "bf16",
                  {k: v for k, v in tile.items() if k != "TWO_OUT"}, plain)
    # BLOCK_C channels over 4 warps: one float32 per thread, nothing to vectorise.
    yield Variant("dw-wgrad-red", depthwise._dw_wgrad_reduce_kernel, "bf16",
                  dict(KW=3, TAPS=9, TWO_OUT=True, BLOCK_C=depthwise.BLOCK_C), plain,
                  wide_loads=False)


@dataclass
class TritonRecord:
    """What one compiled variant uses on the target. ``shared``: dynamic shared memory
    (Triton's metadata) plus ptxas's static; ``loads_16b`` / ``loads_narrow`` / ``tma``:
    static counts of global loads in the PTX by width (count_ptx_loads); ``error``: set when
    the variant failed to compile (the other figures are then -1)."""

    name: str
    dtype: str
    tile: str
    num_warps: int
    num_stages: int
    target: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack_frame: int = -1
    shared: int = -1
    mma: str = ""
    loads_16b: int = -1
    loads_narrow: int = -1
    tma: int = -1
    gemm: bool = False
    wide_loads_expected: bool = True
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def ptxas_log(compiled, config: triton.Config, arch: int) -> str:
    """ptxas's -v log of a compiled kernel's PTX, from Triton's own make_cubin (so with its
    ptxas, flags and target): Triton keeps no register count without a driver. Checks that
    the cubin made so is the compiled one, byte for byte."""
    from triton import knobs
    from triton.compiler.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", arch, 32))
    opt = backend.parse_options(dict(num_warps=config.num_warps,
                                     num_stages=config.num_stages))
    out = io.StringIO()
    old = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(out):
            cubin = backend.make_cubin(compiled.asm["ptx"], {}, opt, arch)
    finally:
        knobs.nvidia.dump_ptxas_log = old
    if cubin != compiled.asm.get("cubin"):
        raise RuntimeError("re-running ptxas on the PTX gave another cubin than Triton's: "
                           "its log would not describe the compiled kernel (a cubin cached "
                           "by another Triton or ptxas? set TRITON_CACHE_DIR to an empty "
                           "folder)")
    return out.getvalue()


def _tile(config: triton.Config) -> str:
    return "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")
                    if k in config.kwargs)


def check(arch: int = 90, all_configs: bool = False,
          dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[TritonRecord]:
    """Compiles every variant for ``arch`` and returns its record; a variant that fails to
    compile gets a record with ``error`` set (the others still run)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter does not compile")
    records = []
    for v in variants(all_configs):
        if v.dtype not in dtypes:
            continue
        rec = TritonRecord(v.name, v.dtype, _tile(v.config), v.config.num_warps,
                           v.config.num_stages, f"sm_{arch}", gemm=v.gemm,
                           wide_loads_expected=v.wide_loads)
        try:
            compiled = compile_kernel(v.kernel, v.dtype, v.constexprs, v.config, arch)
            ptx = compiled.asm["ptx"]
            resources = parse_ptxas_log(ptxas_log(compiled, v.config, arch))
            name = compiled.metadata.name
            if name not in resources:
                raise RuntimeError(f"ptxas reported nothing for {name}")
            res = resources[name]
            loads = count_ptx_loads(ptx)
            target = next((line.split()[1] for line in ptx.splitlines()
                           if line.startswith(".target")), rec.target)
            rec.target = target.rstrip(",")
            rec.registers, rec.spill_stores, rec.spill_loads = (res.registers, res.spill_stores,
                                                                res.spill_loads)
            rec.stack_frame = res.stack_frame
            rec.shared = compiled.metadata.shared + res.static_shared
            rec.mma = mma_kind(ptx)
            rec.loads_16b, rec.loads_narrow, rec.tma = loads.wide, loads.narrow, loads.tma
        except Exception as e:  # report every variant, then fail
            rec.error = f"{type(e).__name__}: {e}"
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--all-configs", action="store_true",
                   help="every autotuned tile, not only the default one")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter does not compile")
    records = check(args.arch, args.all_configs, tuple(args.dtypes))
    for r in records:
        head = f"{r.name:14s} {r.dtype:5s} {r.tile:11s} sm_{args.arch}"
        if r.error:
            print(f"{head} FAILED: {r.error}")
            continue
        print(f"{head} ok, shared {r.shared} B, {r.mma if r.mma != 'none' else 'no mma'}, "
              f"{r.registers} registers, spills {r.spill_stores}/{r.spill_loads} B, "
              f"16-byte loads {r.loads_16b + r.tma} (narrower {r.loads_narrow})")
    return 1 if any(r.error for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
