"""Triton kernels of the sliced convolution (backend ``"triton"``).

Three implicit-GEMM kernels read the full weight in place through at most two channel
ranges per side, passed as scalars: ``conv_fwd`` (y), ``conv_bwd_input`` (grad x) and
``conv_bwd_weight`` (grad weight, written only on the active block). ``op`` registers them
as ``torch.library.triton_op`` custom ops with autograd. Importing this package imports
Triton; ``dvn_kernels.backends`` imports it lazily.
"""

from .op import triton_conv2d

__all__ = ["triton_conv2d"]
