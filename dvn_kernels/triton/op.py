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
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op

from ..channels import scatter_channels
from ..fake import empty_grads, empty_output, fake_backward, fake_forward
from ..plan import ConvPlan, parse_spec
from . import configs
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
    if _depthwise(weight, s.groups):
        depthwise_forward(x, weight, bias, s.out_segments, y, s.stride, s.padding, s.dilation,
                          s.groups)
    else:
        conv_forward(x, weight, bias, s.in_segments, s.out_segments, y, s.stride, s.padding,
                     s.dilation, _precision(x.dtype), groups=s.groups)
    return y


@_define(f"{_NS}::triton_sliced_conv2d_backward", fake_backward)
def _backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: str,
              output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = parse_spec(spec)
    gx, gw, gb = empty_grads(x, weight, output_mask)
    precision = _precision(x.dtype)
    depthwise = _depthwise(weight, s.groups)
    if output_mask[0]:
        if depthwise:
            depthwise_grad_input(grad_out, weight, s.out_segments, gx, s.stride, s.padding,
                                 s.dilation, s.groups)
        else:
            conv_grad_input(grad_out, weight, s.in_segments, s.out_segments, gx, s.stride,
                            s.padding, s.dilation, precision, groups=s.groups)
    if output_mask[1]:
        gw.zero_()  # the kernels write only the active block
        if depthwise:
            depthwise_grad_weight(grad_out, x, s.out_segments, gw, s.stride, s.padding,
                                  s.dilation, s.groups)
        else:
            conv_grad_weight(grad_out, x, s.in_segments, s.out_segments, gw, s.stride,
                             s.padding, s.dilation, precision, groups=s.groups)
    if output_mask[2]:
        sums = grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
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
