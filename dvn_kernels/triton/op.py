"""The work of the Triton ops ``triton_sliced_conv2d`` and ``triton_sliced_conv2d_backward``.

The ops themselves (their schemas, the native ops' ones; the check of their arguments; fakes;
autograd) are defined by ``dvn_kernels.ops.define_triton_ops`` around the two functions here,
which take the checked :class:`~dvn_kernels.spec.KernelSpec`. Grouped convolutions run the
implicit GEMMs with the active groups as a grid axis, depthwise ones (one input channel per
group) the direct kernels of ``depthwise``. The backward computes only the gradients the mask
asks for. Outputs are allocated by ``dvn_kernels.ops`` (``empty_output``, ``empty_grads``),
the same functions the fake implementations use. Float32 uses TF32 tensor cores when
``torch.backends.cudnn.allow_tf32`` is set (read when the op runs, as the CUDA kernels do;
under torch.compile, when it traces).

Layout: the kernels always see unit-stride channels (``layout``): NCHW activations and
gradients are copied to channels_last, KCRS weights replaced by a cached channels_last copy,
and results written channels_last, then copied into the caller's layout. So an NCHW float32
call runs the same compiled variants (coalesced 16-byte loads and stores) as a channels_last
one, and callers see the results' layouts of ``dvn_kernels.ops.empty_output``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..channels import scatter_channels
from ..ops import define_triton_ops, empty_grads, empty_output
from ..spec import KernelSpec
from . import configs, layout
from .conv_bwd_input import conv_grad_input
from .conv_bwd_weight import conv_grad_weight
from .conv_fwd import conv_forward
from .depthwise import depthwise_forward, depthwise_grad_input, depthwise_grad_weight


def _depthwise(weight: torch.Tensor, groups: int) -> bool:
    """One input channel per group: the direct kernels (dvn_kernels.triton.depthwise)."""
    return groups > 1 and weight.shape[1] == 1


def _precision(dtype: torch.dtype) -> str:
    return configs.dot_precision(dtype, torch.backends.cudnn.allow_tf32)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            s: KernelSpec) -> torch.Tensor:
    """The forward op's work: y for the checked spec ``s``."""
    y = empty_output(x, weight, s)
    xk, yk = layout.channels_last(x), layout.kernel_output(y)
    wk = layout.weight_channels_last(weight)
    if _depthwise(weight, s.groups):
        depthwise_forward(xk, wk, bias, s.out_segments, yk, s.stride, s.padding, s.dilation,
                          s.groups)
    else:
        conv_forward(xk, wk, bias, s.in_segments, s.out_segments, yk, s.stride, s.padding,
                     s.dilation, _precision(x.dtype), groups=s.groups)
    return layout.finish(y, yk)


def backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, s: KernelSpec,
             output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward op's work: the gradients ``output_mask`` asks for, for the checked spec."""
    gx, gw, gb = empty_grads(x, weight, output_mask)
    precision = _precision(x.dtype)
    depthwise = _depthwise(weight, s.groups)
    g = layout.channels_last(grad_out)
    if output_mask[0]:
        gxk, wk = layout.kernel_output(gx), layout.weight_channels_last(weight)
        if depthwise:
            depthwise_grad_input(g, wk, s.out_segments, gxk, s.stride, s.padding, s.dilation,
                                 s.groups)
        else:
            conv_grad_input(g, wk, s.in_segments, s.out_segments, gxk, s.stride, s.padding,
                            s.dilation, precision, groups=s.groups)
        layout.finish(gx, gxk)
    if output_mask[1]:
        # A KCRS gradient is written on a KRSC scratch (coalesced stores), then copied.
        gwk, xk = layout.kernel_output(gw), layout.channels_last(x)
        gwk.zero_()  # the kernels write only the active block
        if depthwise:
            depthwise_grad_weight(g, xk, s.out_segments, gwk, s.stride, s.padding, s.dilation,
                                  s.groups)
        else:
            conv_grad_weight(g, xk, s.in_segments, s.out_segments, gwk, s.stride, s.padding,
                             s.dilation, precision, groups=s.groups)
        layout.finish(gw, gwk)
    if output_mask[2]:
        sums = g.sum((0, 2, 3), dtype=torch.float32).to(g.dtype)
        gb.copy_(scatter_channels(sums, 0, s.out_segments, weight.shape[0]))
    return gx, gw, gb


define_triton_ops(forward, backward, interpret=configs.INTERPRET)
