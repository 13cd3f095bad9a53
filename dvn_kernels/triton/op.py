"""The Triton sliced convolution as torch.library ops with autograd.

Two ops with the native ops' arguments and results (csrc/sliced_conv2d.cpp); grouped
convolutions run the implicit GEMMs with the active groups as a grid axis, depthwise ones
(one input channel per group) the direct kernels of ``depthwise``.
``triton_sliced_conv2d(x, weight, bias, spec)`` and ``triton_sliced_conv2d_backward(grad_out,
x, weight, spec, output_mask)``, which computes only the gradients the mask asks for. Outputs
are allocated by ``dvn_kernels.fake``, the same functions the fake implementations use.

On GPUs they are ``triton_op``s that launch their kernels through ``wrap_triton``, so
``torch.compile`` traces into them. Under ``TRITON_INTERPRET=1`` wrap_triton cannot capture the
interpreted kernels, so there the same functions are opaque ``custom_op``s with the fake pair
of ``dvn_kernels.fake``: ``torch.compile`` and ``opcheck`` still see one op without graph
breaks. Float32 uses TF32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is set (read
when the op runs, as the CUDA kernels do; under torch.compile, when it traces).

Layout: the kernels always see unit-stride channels (``layout``): NCHW activations and
gradients are copied to channels_last, KCRS weights replaced by a cached channels_last copy,
and results written channels_last, then copied into the caller's layout. So an NCHW float32
call runs the same compiled variants (coalesced 16-byte loads and stores) as a channels_last
one, and callers see the results' layouts of ``dvn_kernels.fake``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op

from ..channels import scatter_channels
from ..fake import empty_grads, empty_output, fake_backward, fake_forward
from ..plan import ConvPlan, parse_spec
from . import configs, layout
from .conv_bwd_input import conv_grad_input
from .conv_bwd_weight import conv_grad_weight
from .conv_fwd import conv_forward
from .depthwise import depthwise_forward, depthwise_grad_input, depthwise_grad_weight

_NS = "dvn_kernels"


def _define(name: str, fake):
    """``triton_op`` on GPUs; an opaque ``custom_op`` with ``fake`` under the interpreter."""
    def register(fn):
        if not configs.INTERPRET:
            return triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return register


def _depthwise(weight: torch.Tensor, groups: int) -> bool:
    """One input channel per group: the direct kernels (dvn_kernels.triton.depthwise)."""
    return groups > 1 and weight.shape[1] == 1


def _precision(dtype: torch.dtype) -> str:
    return configs.dot_precision(dtype, torch.backends.cudnn.allow_tf32)


@_define(f"{_NS}::triton_sliced_conv2d", fake_forward)
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             spec: str) -> torch.Tensor:
    s = parse_spec(spec)
    y = empty_output(x, weight, spec)
    xk, yk = layout.channels_last(x), layout.kernel_output(y)
    wk = layout.weight_channels_last(weight)
    if _depthwise(weight, s.groups):
        depthwise_forward(xk, wk, bias, s.out_segments, yk, s.stride, s.padding, s.dilation,
                          s.groups)
    else:
        conv_forward(xk, wk, bias, s.in_segments, s.out_segments, yk, s.stride, s.padding,
                     s.dilation, _precision(x.dtype), groups=s.groups)
    return layout.finish(y, yk)


@_define(f"{_NS}::triton_sliced_conv2d_backward", fake_backward)
def _backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: str,
              output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = parse_spec(spec)
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
        gb.copy_(scatter_channels(sums, 0, s.out_segments.flat(), weight.shape[0]))
    return gx, gw, gb


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, spec = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.spec = spec


def _autograd_backward(ctx, grad_y: torch.Tensor):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    if not any(mask):
        return None, None, None, None
    gx, gw, gb = getattr(torch.ops, _NS).triton_sliced_conv2d_backward(
        grad_y, x, weight, ctx.spec, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def triton_conv2d(plan: ConvPlan, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The ``"triton"`` backend of sliced_conv2d (16-bit dtypes accumulate in float32)."""
    if plan.in_gather is not None or plan.out_gather is not None:
        weight, bias = plan.kernel_operands(weight, bias)
    return getattr(torch.ops, _NS).triton_sliced_conv2d(x, weight, bias, plan.spec)
