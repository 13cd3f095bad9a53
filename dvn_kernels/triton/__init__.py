"""Triton kernels of the sliced convolution (backend ``"triton"``).

Three implicit-GEMM kernels read the full weight in place through at most two channel
ranges per side, passed as scalars (``ChannelSegments.kernel_scalars``): ``conv_fwd`` (y),
``conv_bwd_input`` (grad x) and ``conv_bwd_weight`` (grad weight, written only on the active
block); ``depthwise`` runs depthwise convolutions. ``op`` holds the launchers behind the ops
``dvn_kernels::triton_sliced_conv2d`` and ``triton_sliced_conv2d_backward``, which
``dvn_kernels.ops`` defines when this package is imported. Importing it imports Triton;
``dvn_kernels.ops`` imports it on the Triton ops' first call.
"""

from . import op  # noqa: F401  (defines the Triton ops)
