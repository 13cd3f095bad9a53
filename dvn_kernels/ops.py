"""The op contract: the schemas, checks, fake implementations and autograd of the kernel ops.

Four ops, two per kernel family, with one pair of schemas (``FORWARD_SCHEMA``, ``BACKWARD_SCHEMA``):

- ``dvn_kernels::sliced_conv2d`` / ``sliced_conv2d_backward``: the native ops. The schemas are
  defined in C++ (csrc/sliced_conv2d.cpp, the same strings as here), so are the device kernels
  and the autograd formula (csrc/sliced_conv2d_autograd.cpp: in C++ because the Python formula
  cost ~150 us per forward+backward, as much as a small layer's own backward); the C++ checks
  are ``make_problem`` in csrc/conv_problem.cpp. This module registers their fakes.
- ``dvn_kernels::triton_sliced_conv2d`` / ``triton_sliced_conv2d_backward``: the Triton ops,
  defined here by ``define_triton_ops`` (called by dvn_kernels/triton/op.py with the launchers)
  with the same schemas, their fakes and their autograd (``grad_mask``: the same formula as the
  C++ autograd).

``spec`` is a kernel spec string (``dvn_kernels.spec``). Every Python entry point of these ops
(the four fakes and the two Triton ops) checks its arguments with ``check_call``, which raises
the errors of the C++ checks, naming the same argument. ``dvn_kernels.backends`` calls the ops
(``kernel_conv2d``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch

from . import extension
from .channels import follow_format
from .spec import KernelSpec, parse_spec

FORWARD_SCHEMA = "(Tensor x, Tensor weight, Tensor? bias, str spec) -> Tensor"
# Gradients of x (compact, x's layout), weight and bias (full size, zero outside the active
# block) in one call; an output not asked for by output_mask is an empty (0,) tensor.
BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor x, Tensor weight, str spec, bool[3] output_mask) "
                   "-> (Tensor, Tensor, Tensor)")
NATIVE_OPS = ("sliced_conv2d", "sliced_conv2d_backward")
TRITON_OPS = ("triton_sliced_conv2d", "triton_sliced_conv2d_backward")


def _same_type(t: torch.Tensor, name: str, weight: torch.Tensor) -> None:
    if t.dtype != weight.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} does not match weight's dtype {weight.dtype}")
    if t.device != weight.device:
        raise ValueError(f"{name}: device {t.device} does not match weight's device "
                         f"{weight.device}")


def _whole_groups(s: KernelSpec, c_in_g: int, c_out_g: int) -> None:
    ins, outs = s.in_segments.pairs, s.out_segments.pairs
    ok = len(ins) == len(outs) and all(
        i0 % c_in_g == 0 and il % c_in_g == 0 and o0 % c_out_g == 0 and ol % c_out_g == 0
        and i0 // c_in_g == o0 // c_out_g and il // c_in_g == ol // c_out_g
        for (i0, il), (o0, ol) in zip(ins, outs))
    if not ok:
        raise ValueError(f"groups: the kernels compute whole groups, the same on both sides "
                         f"({c_in_g} input and {c_out_g} output channels each); in_segments "
                         f"and out_segments cut through a group or differ; backends "
                         f"'reference' and 'masked' compute any segments")


def check_call(spec: str, x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor] = None,
               grad_out: Optional[torch.Tensor] = None) -> KernelSpec:
    """The parsed ``spec`` when it fits the tensors of an op call; else the TypeError or
    ValueError of the C++ checks (csrc/conv_problem.cpp ``make_problem``, the ops' bias check,
    ``make_backward_problem``), in their order, naming the same argument.

    ``bias`` for the forward op, ``grad_out`` for the backward op.
    """
    if grad_out is not None:
        _same_type(grad_out, "grad_out", weight)
    _same_type(x, "x", weight)
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (C_out, C_in, kh, kw) tensor, got "
                         f"{weight.dim()}-D")
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating point dtype, got {weight.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got {x.dim()}-D")
    s = parse_spec(spec)
    c_out, c_in_g, kh, kw = weight.shape
    if s.groups < 1:
        raise ValueError(f"groups: must be >= 1, got {s.groups}")
    if c_out % s.groups:
        raise ValueError(f"groups: weight's C_out={c_out} is not divisible by "
                         f"groups={s.groups}")
    for name, segments, channels, what in (("in_segments", s.in_segments, c_in_g * s.groups,
                                            "input"),
                                           ("out_segments", s.out_segments, c_out, "output")):
        if segments.end > channels:
            raise ValueError(f"{name}: channel range ends at {segments.end}, outside the "
                             f"{channels} {what} channels of the weight")
    if s.groups > 1:
        _whole_groups(s, c_in_g, c_out // s.groups)
    if x.shape[1] != s.in_segments.total:
        raise ValueError(f"x: has {x.shape[1]} channels but in_segments select "
                         f"{s.in_segments.total}")
    padded = [size + 2 * pad for size, pad in zip(x.shape[2:], s.padding)]
    span = [d * (k - 1) + 1 for d, k in zip(s.dilation, (kh, kw))]
    if padded[0] < span[0] or padded[1] < span[1]:
        raise ValueError(f"x: padded input size ({padded[0]}, {padded[1]}) is smaller than the "
                         f"dilated kernel ({span[0]}, {span[1]})")
    if bias is not None:
        _same_type(bias, "bias", weight)
        if bias.dim() != 1 or bias.shape[0] != c_out:
            raise ValueError(f"bias: expected shape ({c_out},) matching weight's C_out, got "
                             f"{tuple(bias.shape)}")
    if grad_out is not None:
        want = s.output_shape(x.shape, weight.shape)
        if list(grad_out.shape) != want:
            raise ValueError(f"grad_out: expected shape {tuple(want)}, got "
                             f"{tuple(grad_out.shape)}")
    return s


def grad_mask(needs_input_grad: Sequence[bool], has_bias: bool) -> list[bool]:
    """The gradients the backward op computes for (x, weight, bias): those autograd needs; an
    absent bias has none. The C++ autograd (csrc/sliced_conv2d_autograd.cpp) uses this formula."""
    return [bool(needs_input_grad[0]), bool(needs_input_grad[1]),
            has_bias and bool(needs_input_grad[2])]


def empty_output(x: torch.Tensor, weight: torch.Tensor, s: KernelSpec) -> torch.Tensor:
    """The uninitialised compact result of the forward op, in x's layout."""
    return torch.empty(s.output_shape(x.shape, weight.shape), dtype=x.dtype, device=x.device,
                       memory_format=follow_format(x))


def empty_grads(x: torch.Tensor, weight: torch.Tensor, output_mask: Sequence[bool]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised gradients of x (compact, x's layout), weight and bias (full size); a
    gradient not asked for is an empty (0,) tensor."""

    def like(t: torch.Tensor, needed: bool, shape, fmt=torch.contiguous_format) -> torch.Tensor:
        return torch.empty(shape if needed else (0,), dtype=t.dtype, device=t.device,
                           memory_format=fmt if needed else torch.contiguous_format)

    return (like(x, output_mask[0], x.shape, follow_format(x)),
            like(weight, output_mask[1], weight.shape, follow_format(weight)),
            like(weight, output_mask[2], weight.shape[:1]))


def fake_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 spec: str) -> torch.Tensor:
    """The fake (meta) implementation of both forward ops."""
    return empty_output(x, weight, check_call(spec, x, weight, bias))


def fake_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: str,
                  output_mask: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fake (meta) implementation of both backward ops."""
    check_call(spec, x, weight, grad_out=grad_out)
    return empty_grads(x, weight, output_mask)


if extension.LOADED:  # the native ops' schemas are registered by importing the extension
    torch.library.register_fake(f"dvn_kernels::{NATIVE_OPS[0]}")(fake_forward)
    torch.library.register_fake(f"dvn_kernels::{NATIVE_OPS[1]}")(fake_backward)

ForwardKernel = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], KernelSpec],
                         torch.Tensor]
BackwardKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, KernelSpec, Sequence[bool]],
                          tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def define_triton_ops(forward: ForwardKernel, backward: BackwardKernel, interpret: bool) -> None:
    """Defines the Triton ops with the native ops' schemas around the launchers ``forward`` and
    ``backward`` (which take the checked KernelSpec), with their fakes and autograd.

    On GPUs they are ``triton_op``s (their launches go through ``wrap_triton``, so
    torch.compile traces into them, and their fakes are the functions themselves run on fake
    tensors); under ``TRITON_INTERPRET=1`` (``interpret``) wrap_triton cannot capture the
    interpreted kernels, so there they are opaque ``custom_op``s with ``fake_forward`` and
    ``fake_backward``.
    """

    def triton_sliced_conv2d(x, weight, bias, spec):
        return forward(x, weight, bias, check_call(spec, x, weight, bias))

    def triton_sliced_conv2d_backward(grad_out, x, weight, spec, output_mask):
        return backward(grad_out, x, weight, check_call(spec, x, weight, grad_out=grad_out),
                        output_mask)

    defined = []
    for name, fn, schema, fake in ((TRITON_OPS[0], triton_sliced_conv2d, FORWARD_SCHEMA,
                                    fake_forward),
                                   (TRITON_OPS[1], triton_sliced_conv2d_backward,
                                    BACKWARD_SCHEMA, fake_backward)):
        qualname = f"dvn_kernels::{name}"
        if interpret:
            op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
            op.register_fake(fake)
        else:
            op = _triton_op(qualname, fn, schema)
        defined.append(op)

    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, spec = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.spec = spec

    def autograd_backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        mask = grad_mask(ctx.needs_input_grad, ctx.has_bias)
        if not any(mask):
            return None, None, None, None
        gx, gw, gb = torch.ops.dvn_kernels.triton_sliced_conv2d_backward(
            grad_y, x, weight, ctx.spec, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None)

    defined[0].register_autograd(autograd_backward, setup_context=setup_context)


def _triton_op(qualname: str, fn: Callable, schema: str):
    """``torch.library.triton_op(qualname, fn, schema=schema)``, the schema honoured on every
    supported torch: torch 2.11's triton_op takes ``schema=`` but infers the schema from
    ``fn``'s annotations instead, and no annotation infers ``bool[3]``. So its inference is
    replaced by ``schema`` for this one call (torch 2.14 does not call it when given one)."""
    from torch._library import triton as triton_library

    infer = triton_library.infer_schema
    triton_library.infer_schema = lambda *args, **kwargs: schema
    try:
        return torch.library.triton_op(qualname, fn, mutates_args=(), schema=schema)
    finally:
        triton_library.infer_schema = infer
