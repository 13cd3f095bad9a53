"""Triton helpers shared by the kernels: segment mapping and the tile swizzle."""

import triton
import triton.language as tl


@triton.jit
def channel(v, s0, l0, s1, TWO: tl.constexpr):
    """Physical channel of compact channel ``v`` for ranges (s0, l0), (s1, ...).

    One range: ``v + s0``. Two ranges: the first ``l0`` compact channels live at ``s0``,
    the rest at ``s1``. Two integer ops per element; no index tensor.
    """
    if TWO:
        return tl.where(v < l0, v + s0, v - l0 + s1)
    else:
        return v + s0


@triton.jit
def swizzle(pid, num_m, num_n, SWIZZLE_M: tl.constexpr):
    """Tile order in bands of SWIZZLE_M tile rows (the Triton matmul tutorial's L2 swizzle):
    (pid_m, pid_n)."""
    width = SWIZZLE_M * num_n
    band = pid // width
    first_m = band * SWIZZLE_M
    size_m = tl.minimum(num_m - first_m, SWIZZLE_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n
