"""Compile the kernels for an NVIDIA target without a GPU.

    python -m dvn_kernels.triton.compile_check [--arch 90] [--dtypes bf16 fp32] [--all-configs]

The interpreter runs the kernels' Python semantics but not the compiler, so type and constexpr
errors, register or shared-memory overflows only show on a GPU. This compiles the default tile
of each pass (every autotuned tile with --all-configs) and the split-K reductions for sm_90
with the specialisations of a channels_last bfloat16 and TF32 run, two ranges per side and
unit-aligned channels, and prints each kernel's shared memory (a pipelined K loop uses
num_stages tiles) and whether its PTX uses Hopper's wgmma (else mma.sync). Needs Triton's
bundled ptxas, no driver; run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_POINTERS = ("x", "w", "b", "y", "g", "gx", "gw", "ws")
# Strides that a channels_last run passes as 1 (Triton specialises them) and those it sees
# divisible by 16.
_ONES = ("sxc", "syc", "sgc", "swi")
_ALIGNED = ("sxn", "sxh", "sxw", "swo", "swh", "sww", "syn", "syh", "syw", "sgn", "sgh", "sgw")


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


def variants(all_configs: bool = False):
    """(name, kernel, dtype, constexprs, config) of every variant checked."""
    from . import configs, conv_bwd_input, conv_bwd_weight, conv_fwd, depthwise

    gemms = configs.gemm_configs() if all_configs else configs.gemm_configs()[:1]
    wgrads = configs.wgrad_configs() if all_configs else configs.wgrad_configs()[:1]
    reduce = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)
    for dtype, precision in (("bf16", "ieee"), ("fp32", "tf32")):
        common = dict(KH=3, KW=3, ALIGN=16, TWO_IN=True, TWO_OUT=True, CHANNELS_LAST=True,
                      PRECISION=precision, GROUP_M=8, GROUPED=False)
        for gemm in gemms:
            yield ("fwd", conv_fwd._fwd_kernel, dtype,
                   dict(common, HAS_BIAS=True, NO_PAD=False, DIRECT=True), gemm)
            yield ("dgrad", conv_bwd_input._dgrad_kernel, dtype,
                   dict(common, UNIT_STRIDE=True, DIRECT=True), gemm)
            yield ("dgrad-strided", conv_bwd_input._dgrad_kernel, dtype,
                   dict(common, UNIT_STRIDE=False, DIRECT=False), gemm)
        for wgrad in wgrads:
            yield ("wgrad", conv_bwd_weight._wgrad_kernel, dtype,
                   dict(common, NO_PAD=False, DIRECT=False, H=16, W=16, P=16, Q=16), wgrad)
    yield ("fwd-reduce", conv_fwd._fwd_reduce_kernel, "bf16",
           dict(TWO_OUT=True, HAS_BIAS=True), reduce)
    yield ("dgrad-reduce", conv_bwd_input._dgrad_reduce_kernel, "bf16", {}, reduce)
    yield ("wgrad-reduce", conv_bwd_weight._wgrad_reduce_kernel, "bf16",
           dict(KW=3, TWO_IN=True, TWO_OUT=True, GROUPED=False), reduce)
    # Grouped convolutions (ResNeXt-like groups of 16 channels), default tiles.
    grouped = dict(KH=3, KW=3, ALIGN=16, TWO_IN=False, TWO_OUT=False, CHANNELS_LAST=True,
                   PRECISION="ieee", GROUP_M=8, GROUPED=True)
    yield ("fwd-grouped", conv_fwd._fwd_kernel, "bf16",
           dict(grouped, HAS_BIAS=False, NO_PAD=False, DIRECT=True), gemms[0])
    yield ("dgrad-grouped", conv_bwd_input._dgrad_kernel, "bf16",
           dict(grouped, UNIT_STRIDE=True, DIRECT=True), gemms[0])
    yield ("wgrad-grouped", conv_bwd_weight._wgrad_kernel, "bf16",
           dict(grouped, NO_PAD=False, DIRECT=False, H=16, W=16, P=16, Q=16), wgrads[0])
    # Depthwise: the direct kernels.
    tile = dict(KH=3, KW=3, TWO_OUT=True, BLOCK_P=depthwise.BLOCK_P, BLOCK_C=depthwise.BLOCK_C)
    plain = triton.Config({}, num_warps=4, num_stages=1)
    yield ("dw-fwd", depthwise._dw_fwd_kernel, "bf16", dict(tile, HAS_BIAS=True), plain)
    yield ("dw-dgrad", depthwise._dw_dgrad_kernel, "bf16", tile, plain)
    yield ("dw-wgrad", depthwise._dw_wgrad_kernel, "bf16",
           {k: v for k, v in tile.items() if k != "TWO_OUT"}, plain)
    yield ("dw-wgrad-red", depthwise._dw_wgrad_reduce_kernel, "bf16",
           dict(KW=3, TAPS=9, TWO_OUT=True, BLOCK_C=depthwise.BLOCK_C), plain)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--all-configs", action="store_true",
                   help="every autotuned tile, not only the default one")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter does not compile")
    failed = 0
    for name, kernel, dtype, constexprs, config in variants(args.all_configs):
        if dtype not in args.dtypes:
            continue
        tile = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")
                        if k in config.kwargs)
        try:
            compiled = compile_kernel(kernel, dtype, constexprs, config, args.arch)
            ptx = compiled.asm.get("ptx", "")
            mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "no mma"
            print(f"{name:14s} {dtype:5s} {tile:11s} sm_{args.arch} ok, shared "
                  f"{compiled.metadata.shared} B, {mma}")
        except Exception as e:  # report every variant, then fail
            failed += 1
            print(f"{name:14s} {dtype:5s} {tile:11s} sm_{args.arch} FAILED: "
                  f"{type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
