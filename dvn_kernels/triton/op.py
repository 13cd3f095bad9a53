"""The Triton sliced convolution as torch.library ops with autograd.

Three ``triton_op`` custom ops (forward, grad input, grad weight) launch their kernels through
``wrap_triton``, so ``torch.compile`` traces into them and the fake (meta) implementation is
the same Python function run on fake tensors. Under ``TRITON_INTERPRET=1`` wrap_triton cannot
capture the interpreted kernels, so there the same functions are registered as opaque
``custom_op``s with themselves as fake implementations (launches skipped on fake tensors):
``torch.compile`` and ``opcheck`` still see one op without graph breaks.
``register_autograd`` wires the backward ops; the bias gradient is a plain channel sum.
Segments are flat ``[s0, l0, s1, l1, ...]`` lists; one or two ranges per side are addressed in
place, more take the copying path of ``segments``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch.library import triton_op

from ..channels import follow_format, scatter_channels, take_channels
from ..conv_args import ConvArgs, output_shape
from . import configs
from .conv_bwd_input import conv_grad_input
from .conv_bwd_weight import conv_grad_weight
from .conv_fwd import conv_forward
from .segments import Segs, compact, native

_NS = "dvn_kernels"


def _define(name: str):
    """``triton_op`` on GPUs; an opaque ``custom_op`` under the interpreter (see above)."""
    def register(fn):
        if not configs.INTERPRET:
            return triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op
    return register


def _geometry(stride, padding, dilation) -> tuple[tuple[int, int], ...]:
    return tuple(stride), tuple(padding), tuple(dilation)  # type: ignore[return-value]


def _kernel_weight(weight: torch.Tensor, ins: Sequence[int],
                   outs: Sequence[int]) -> tuple[torch.Tensor, Segs, Segs]:
    """The weight as the kernels address it: in place for one or two ranges per side; for
    more, that side gathered into a compact copy (then addressed as one range)."""
    if not native(outs):
        weight = take_channels(weight, 0, outs)
        outs = compact(weight.shape[0])
    if not native(ins):
        weight = take_channels(weight, 1, ins)
        ins = compact(weight.shape[1])
    return weight, Segs.of(ins), Segs.of(outs)


@_define(f"{_NS}::triton_sliced_conv2d")
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             in_segments: list[int], out_segments: list[int], stride: list[int],
             padding: list[int], dilation: list[int], allow_tf32: bool) -> torch.Tensor:
    stride_, padding_, dilation_ = _geometry(stride, padding, dilation)
    shape = output_shape(x.shape, weight.shape, out_segments, stride_, padding_, dilation_)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=follow_format(x))
    if not native(out_segments) and bias is not None:
        bias = take_channels(bias, 0, out_segments)
    w_k, ins, outs = _kernel_weight(weight, in_segments, out_segments)
    conv_forward(x, w_k, bias, ins, outs, y, stride_, padding_, dilation_,
                 configs.dot_precision(x.dtype, allow_tf32))
    return y


@_define(f"{_NS}::triton_sliced_conv2d_grad_input")
def _grad_input(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                in_segments: list[int], out_segments: list[int], stride: list[int],
                padding: list[int], dilation: list[int], allow_tf32: bool) -> torch.Tensor:
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=follow_format(x))
    w_k, ins, outs = _kernel_weight(weight, in_segments, out_segments)
    conv_grad_input(grad_y, w_k, ins, outs, gx, *_geometry(stride, padding, dilation),
                    configs.dot_precision(x.dtype, allow_tf32))
    return gx


@_define(f"{_NS}::triton_sliced_conv2d_grad_weight")
def _grad_weight(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 in_segments: list[int], out_segments: list[int], stride: list[int],
                 padding: list[int], dilation: list[int], allow_tf32: bool) -> torch.Tensor:
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                     memory_format=follow_format(weight)).zero_()
    geometry = _geometry(stride, padding, dilation)
    precision = configs.dot_precision(x.dtype, allow_tf32)
    if native(in_segments) and native(out_segments):
        conv_grad_weight(grad_y, x, Segs.of(in_segments), Segs.of(out_segments), gw, *geometry,
                         precision)
        return gw
    # More than two ranges on a side: that side of the block is computed compactly, then
    # scattered into the full gradient.
    gather_out, gather_in = not native(out_segments), not native(in_segments)
    rows = sum(out_segments[1::2]) if gather_out else weight.shape[0]
    cols = sum(in_segments[1::2]) if gather_in else weight.shape[1]
    block = torch.zeros((rows, cols, *weight.shape[2:]), dtype=weight.dtype,
                        device=weight.device)
    outs = Segs.of(compact(rows) if gather_out else out_segments)
    ins = Segs.of(compact(cols) if gather_in else in_segments)
    conv_grad_weight(grad_y, x, ins, outs, block, *geometry, precision)
    if gather_out:
        block = scatter_channels(block, 0, out_segments, weight.shape[0])
    if gather_in:
        block = scatter_channels(block, 1, in_segments, weight.shape[1])
    return gw.copy_(block)


def _grad_bias(grad_y: torch.Tensor, out_segments: Sequence[int], c_out: int) -> torch.Tensor:
    sums = grad_y.sum((0, 2, 3), dtype=torch.float32).to(grad_y.dtype)
    return scatter_channels(sums, 0, out_segments, c_out)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, *conf = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.conf = conf


def _backward(ctx, grad_y: torch.Tensor):
    x, weight = ctx.saved_tensors
    ops = getattr(torch.ops, _NS)
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = ops.triton_sliced_conv2d_grad_input(grad_y, x, weight, *ctx.conf)
    if ctx.needs_input_grad[1]:
        gw = ops.triton_sliced_conv2d_grad_weight(grad_y, x, weight, *ctx.conf)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _grad_bias(grad_y, ctx.conf[1], weight.shape[0])
    return gx, gw, gb, None, None, None, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def triton_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  args: ConvArgs, allow_tf32: Optional[bool] = None) -> torch.Tensor:
    """The ``"triton"`` backend of sliced_conv2d.

    Float32 uses TF32 tensor cores when ``allow_tf32`` is True; None follows
    ``torch.backends.cudnn.allow_tf32`` (what F.conv2d does). 16-bit dtypes accumulate in
    float32.
    """
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    return getattr(torch.ops, _NS).triton_sliced_conv2d(
        x, weight, bias, list(args.in_flat), list(args.out_flat), list(args.stride),
        list(args.padding), list(args.dilation), bool(allow_tf32))
