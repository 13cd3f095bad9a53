"""``direct_conv3x3_nhwc``: a 3x3 stride-1 convolution of a padded NHWC input as one direct CPU
kernel (``csrc/cpu/direct_conv.cpp``), without the im2col matrix of a GEMM convolution.

    y = direct_conv3x3_nhwc(xp, w, b)   # xp: (N, H + 2, W + 2, C); w: (3, 3, C, K); y: (N, H, W, K)

For the ``compiled`` runtime's small levels (``dvn.deploy.aot``): there the im2col was 16-26%
of a call whose GEMMs already ran near the core's peak; this kernel does the GEMM's work in
0.98-1.09x MKL's time (``bench/direct_conv.py``). K must be a multiple of 16; ``available()``
says whether it runs as the AVX-512 kernel here (else it is correct, through ATen, not fast).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import extension


#: whether the loaded extension has the op (a build older than the op does not)
BUILT = extension.has_kernel("direct_conv3x3_nhwc", "CPU")


def available() -> bool:
    """Whether the op is built and this CPU runs it as its AVX-512 kernel (torch reports
    AVX-512 only where the CPU has it)."""
    return BUILT and torch.backends.cpu.get_cpu_capability() == "AVX512"


def direct_conv3x3_nhwc(x: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The op (``torch.ops.dvn_kernels.direct_conv3x3_nhwc``): ``x`` (N, H + 2, W + 2, C)
    padded, ``weight`` (3, 3, C, K), ``bias`` (K,) or None -> (N, H, W, K), float32 CPU."""
    return torch.ops.dvn_kernels.direct_conv3x3_nhwc(x, weight, bias)


def _fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    torch._check(x.dim() == 4 and weight.dim() == 4,
                 lambda: f"x, weight: expected 4-d tensors, got {x.dim()} and {weight.dim()}")
    torch._check(weight.shape[2] == x.shape[3],
                 lambda: f"weight: expected (3, 3, {x.shape[3]}, K), got {tuple(weight.shape)}")
    return x.new_empty((x.shape[0], x.shape[1] - 2, x.shape[2] - 2, weight.shape[3]))


if BUILT:  # the schema is registered by importing the extension
    torch.library.register_fake("dvn_kernels::direct_conv3x3_nhwc")(_fake)
