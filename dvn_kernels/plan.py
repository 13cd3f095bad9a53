"""Plans: everything about one sliced convolution that does not depend on the data, checked once.

A :class:`ConvPlan` holds the weight's shape, the caller's active channel segments and groups,
and the :class:`~dvn_kernels.spec.KernelSpec` the kernel ops run (with its string, ``spec``).
``conv_plan`` builds and validates it and memoises it on its arguments; a model layer keeps one
plan per configuration, so its hot path is a lookup and one op call (see
``sliced_conv.planned_conv2d``).

The kernel ops take at most two ranges per side. A side with more ranges (possible with five or
more units) is gathered before dispatch: the plan lists its channels, the weight side is copied
compact (``index_select``, whose gradient scatters back) and the kernels see one range there.

Grouped convolutions (``groups`` as in ``F.conv2d``: weight ``(C_out, C_in / groups, kh, kw)``)
mean, for any segments: scatter x into the full input channels with zeros, the grouped conv of
the full weight, the active outputs kept. The kernels compute only the active groups, which
they can when every group with an active channel is wholly active on both sides
(``kernel_reason`` is None); otherwise it says why, ``auto`` falls back to ``reference`` and a
kernel backend asked for by name raises.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from .segments import ChannelSegments, SegmentsLike, as_segments
from .spec import KERNEL_RANGES, KernelSpec

IntPair = Union[int, tuple[int, int], list[int]]


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        if isinstance(items, (str, bytes, bool)):
            raise TypeError
        a, b = (operator.index(v) for v in items)  # type: ignore[union-attr]
        if any(isinstance(v, bool) for v in items):  # type: ignore[union-attr]
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name}: values must be >= {minimum}, got {value!r}")
    return a, b


def _padding(value: Union[IntPair, str], kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]
             ) -> tuple[tuple[int, int], Optional[tuple[int, int, int, int]]]:
    """(the symmetric padding the kernels take, the extra ``F.pad`` of x or None).

    'same' with an odd total padding in a dimension pads one more on the right (bottom), as
    ``F.conv2d`` does: that one goes into the extra ``F.pad``.
    """
    if value == "valid":
        return (0, 0), None
    if value == "same":
        if stride != (1, 1):
            raise ValueError(f"padding: 'same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        extra = [t % 2 for t in total]
        pre_pad = (0, extra[1], 0, extra[0]) if any(extra) else None
        return (total[0] // 2, total[1] // 2), pre_pad
    if isinstance(value, str):
        raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {value!r}")
    return _pair(value, "padding", 0), None


@dataclass(frozen=True, eq=False)
class ConvPlan:
    """A checked sliced convolution for one weight shape: made by ``conv_plan``, run by
    ``planned_conv2d``.

    ``in_segments``, ``out_segments`` and ``groups`` are the caller's; ``kernel`` is what the
    kernel ops compute (the same unless a side is gathered: then that side is one full range of
    the gathered weight, and a grouped plan's groups are its active groups), ``spec`` its
    string; stride, padding and dilation are the kernel's. ``in_gather`` / ``out_gather`` list
    the weight channels of a gathered side (None otherwise); ``pre_pad`` is the ``F.pad`` of x
    that an asymmetric 'same' padding needs first (None otherwise); ``kernel_reason`` says why
    the kernels cannot run the plan (None when they can).
    """

    weight_shape: tuple[int, int, int, int]
    in_segments: ChannelSegments
    out_segments: ChannelSegments
    groups: int
    kernel: KernelSpec
    spec: str  # kernel.text(), made once
    in_gather: Optional[tuple[int, ...]]
    out_gather: Optional[tuple[int, ...]]
    min_size: tuple[int, int]  # smallest input height and width the geometry admits
    in_total: int  # active input channels: x's channel count
    out_total: int  # active output channels
    pre_pad: Optional[tuple[int, int, int, int]] = None
    kernel_reason: Optional[str] = None
    _indices: dict = field(default_factory=dict, repr=False)  # (side, device) -> index tensor

    @property
    def stride(self) -> tuple[int, int]:
        return self.kernel.stride

    @property
    def padding(self) -> tuple[int, int]:
        return self.kernel.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return self.kernel.dilation

    def output_shape(self, x_shape: Sequence[int]) -> list[int]:
        return self.kernel.output_shape(x_shape, self.weight_shape)

    def _index(self, side: int, device: torch.device) -> torch.Tensor:
        key = (side, device)
        index = self._indices.get(key)
        if index is None:
            channels = self.out_gather if side == 0 else self.in_gather
            index = torch.tensor(channels, dtype=torch.long, device=device)
            self._indices[key] = index
        return index

    def kernel_operands(self, weight: torch.Tensor, bias: Optional[torch.Tensor]
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight and bias as the kernel ops take them: as given, or with each side of more
        than two ranges gathered compact (differentiably; the gradient scatters back)."""
        if self.out_gather is not None:
            index = self._index(0, weight.device)
            weight = weight.index_select(0, index)
            bias = bias.index_select(0, index) if bias is not None else None
        if self.in_gather is not None:
            weight = weight.index_select(1, self._index(1, weight.device))
        return weight, bias

    def check_inputs(self, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> None:
        """Raises TypeError/ValueError naming the argument unless the tensors fit this plan.

        Straight-line attribute checks (about a microsecond); the messages are built only
        when a check fails.
        """
        if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
                and (bias is None or isinstance(bias, torch.Tensor))):
            self._type_error(x, weight, bias)
        dtype, device = weight.dtype, weight.device
        x_shape = x.shape
        if (weight.shape != self.weight_shape or len(x_shape) != 4
                or x_shape[1] != self.in_total or x.dtype != dtype or x.device != device
                or x_shape[2] < self.min_size[0] or x_shape[3] < self.min_size[1]
                or not weight.is_floating_point()
                or (bias is not None and (bias.shape != self.weight_shape[:1]
                                          or bias.dtype != dtype or bias.device != device))):
            self._value_error(x, weight, bias)

    @staticmethod
    def _type_error(x: object, weight: object, bias: object) -> None:
        for name, t in (("x", x), ("weight", weight)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")

    def _value_error(self, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> None:
        if not weight.is_floating_point():
            raise TypeError(f"weight: expected a floating point dtype, got {weight.dtype}")
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight: expected shape {self.weight_shape} (the plan's), got "
                             f"{tuple(weight.shape)}")
        if x.dim() != 4:
            raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        others = [("x", x)] + ([("bias", bias)] if bias is not None else [])
        for name, t in others:
            if t.dtype != weight.dtype:
                raise TypeError(f"{name}: dtype {t.dtype} does not match weight's dtype "
                                f"{weight.dtype}")
            if t.device != weight.device:
                raise ValueError(f"{name}: device {t.device} does not match weight's device "
                                 f"{weight.device}")
        if bias is not None and tuple(bias.shape) != self.weight_shape[:1]:
            raise ValueError(f"bias: expected shape ({self.weight_shape[0]},) matching weight's "
                             f"C_out, got {tuple(bias.shape)}")
        if x.shape[1] != self.in_total:
            raise ValueError(f"x: has {x.shape[1]} channels but in_segments select "
                             f"{self.in_total} ({self.in_segments!r})")
        for dim, size, smallest, pad in zip("HW", x.shape[2:], self.min_size, self.padding):
            if size < smallest:
                raise ValueError(f"x: padded {dim} size {size + 2 * pad} is smaller than the "
                                 f"dilated kernel size {smallest + 2 * pad}")
        raise AssertionError("check_inputs found a problem that _value_error did not name")


def _kernel_side(segments: ChannelSegments) -> tuple[ChannelSegments, Optional[tuple[int, ...]]]:
    if segments.num_ranges <= KERNEL_RANGES:
        return segments, None
    return ChannelSegments.full(segments.total), tuple(segments.indices())


def _group_blocks(segments: ChannelSegments, size: int) -> Optional[list[tuple[int, int]]]:
    """(first group, groups) of each range when every range holds whole groups of ``size``
    channels, else None."""
    blocks = []
    for start, length in segments.ranges:
        if start % size or length % size:
            return None
        blocks.append((start // size, length // size))
    return blocks


def _kernel_groups(ins: ChannelSegments, outs: ChannelSegments, groups: int, c_in_group: int,
                   c_out_group: int) -> tuple[Optional[str], ChannelSegments, ChannelSegments,
                                              Optional[tuple[int, ...]], int]:
    """How the kernels run a grouped plan: (reason they cannot or None, kernel in and out
    segments, the output channels to gather first or None, the kernels' groups)."""
    in_blocks = _group_blocks(ins, c_in_group)
    out_blocks = _group_blocks(outs, c_out_group)
    if in_blocks is None or out_blocks is None or in_blocks != out_blocks:
        return (f"groups: the segments must hold whole groups ({c_in_group} input and "
                f"{c_out_group} output channels each) and the same groups on both sides for "
                f"the kernels to run them; in_segments {ins!r} and out_segments {outs!r} do "
                f"not; backends 'reference' and 'masked' compute any segments"), ins, outs, \
            None, groups
    if len(in_blocks) <= KERNEL_RANGES:
        return None, ins, outs, None, groups
    # More than two ranges: the active groups' rows gathered, then a compact grouped conv.
    active = sum(n for _, n in in_blocks)
    return (None, ChannelSegments.full(ins.total), ChannelSegments.full(outs.total),
            tuple(outs.indices()), active)


def _make_plan(weight_shape: Sequence[int], in_segments: SegmentsLike,
               out_segments: SegmentsLike, stride: IntPair, padding: Union[IntPair, str],
               dilation: IntPair, groups: int) -> ConvPlan:
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups: expected an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups: must be >= 1, got {groups}")
    shape = tuple(int(v) for v in weight_shape)
    if len(shape) != 4:
        raise ValueError(f"weight: expected a 4-D (C_out, C_in / groups, kh, kw) tensor, got "
                         f"shape {shape}")
    c_out, c_in_group, kh, kw = shape
    if c_out % groups:
        raise ValueError(f"groups: weight's C_out={c_out} is not divisible by groups={groups}")
    c_in = c_in_group * groups
    ins = as_segments(in_segments, "in_segments")
    outs = as_segments(out_segments, "out_segments")
    ins.check_within(c_in, "in_segments", f"weight (C_in={c_in})")
    outs.check_within(c_out, "out_segments", f"weight (C_out={c_out})")
    stride_ = _pair(stride, "stride", 1)
    dilation_ = _pair(dilation, "dilation", 1)
    padding_, pre_pad = _padding(padding, (kh, kw), stride_, dilation_)
    extra = (pre_pad[3], pre_pad[1]) if pre_pad else (0, 0)
    min_size = tuple(d * (k - 1) + 1 - 2 * p - e
                     for k, p, d, e in zip((kh, kw), padding_, dilation_, extra))
    reason, in_gather = None, None
    if groups == 1:
        kernel_ins, in_gather = _kernel_side(ins)
        kernel_outs, out_gather = _kernel_side(outs)
        kernel_groups = 1
    else:
        reason, kernel_ins, kernel_outs, out_gather, kernel_groups = _kernel_groups(
            ins, outs, groups, c_in_group, c_out // groups)
    kernel = KernelSpec(kernel_ins, kernel_outs, stride_, padding_, dilation_, kernel_groups)
    return ConvPlan(shape, ins, outs, groups, kernel, kernel.text(),  # type: ignore[arg-type]
                    in_gather, out_gather, min_size,  # type: ignore[arg-type]
                    ins.total, outs.total, pre_pad, reason)


_PLANS: dict[tuple, ConvPlan] = {}
_PLANS_LIMIT = 4096


def _plain(value: object) -> bool:
    """An int, a str or a tuple of ints, excluding bools (True == 1 would alias in a key)."""
    t = type(value)
    return t is int or t is str or (t is tuple and all(type(v) is int for v in value))


def _key(weight_shape: Sequence[int], in_segments: object, out_segments: object,
         stride: object, padding: object, dilation: object, groups: object) -> Optional[tuple]:
    """The memo key of conv_plan's arguments, or None when they cannot be one."""
    if (type(in_segments) is ChannelSegments and type(out_segments) is ChannelSegments
            and type(groups) is int and (type(stride) is int or _plain(stride))
            and (type(padding) is int or _plain(padding))
            and (type(dilation) is int or _plain(dilation))):
        return (tuple(weight_shape), in_segments, out_segments, stride, padding, dilation,
                groups)
    return None


def conv_plan(weight_shape: Sequence[int], in_segments: SegmentsLike,
              out_segments: SegmentsLike, *, stride: IntPair = 1,
              padding: Union[IntPair, str] = 0, dilation: IntPair = 1,
              groups: int = 1) -> ConvPlan:
    """The checked plan of a sliced convolution of a ``weight_shape`` weight; raises
    TypeError/ValueError naming the bad argument.

    Memoised on its arguments when they are hashable (ChannelSegments, ints, tuples, str):
    a repeated call costs a dict lookup.
    """
    if torch.compiler.is_compiling():  # traced once into the graph; no cache to guard on
        return _make_plan(weight_shape, in_segments, out_segments, stride, padding, dilation,
                          groups)
    key = _key(weight_shape, in_segments, out_segments, stride, padding, dilation, groups)
    if key is not None:
        plan = _PLANS.get(key)
        if plan is not None:
            return plan
    plan = _make_plan(weight_shape, in_segments, out_segments, stride, padding, dilation, groups)
    if key is not None:
        if len(_PLANS) >= _PLANS_LIMIT:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan
