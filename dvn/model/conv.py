"""SlicedConv2d: a drop-in nn.Conv2d whose channels are split into units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

import dvn_kernels
from dvn_kernels.channels import take_channels

from .networks import Active, SelectionCache, conv_backend, resolve
from .units import UnitLayout, UnitsLike

Padding = Union[str, tuple[int, ...]]


class SlicedConvForward:
    """The forward path shared by ``SlicedConv2d`` and ``dvn.deploy.shared.SharedConv2d``: resolve
    the selection (``dvn.model.networks.resolve``), pad the input when the padding mode is not
    zeros, and run the selection's units with its backend (``dvn.model.networks.conv_backend``).

    A subclass calls ``set_padding`` and defines ``run_units(x, active, backend)``: the
    lookup of what the unit set runs and the op call. Zero padding, 'same' included (its
    asymmetric extra row and column too), is the op's (``op_padding``); other modes are
    applied here first, as ``nn.Conv2d`` applies them, and the op pads nothing.
    """

    backend: str
    padding_mode: str
    op_padding: Padding
    input_pad: Optional[tuple[int, ...]]

    def set_padding(self, padding: Padding, padding_mode: str,
                    reversed_padding: Sequence[int]) -> None:
        """``padding`` and ``padding_mode`` as nn.Conv2d holds them; ``reversed_padding``
        is nn.Conv2d's ``F.pad`` amounts (``_reversed_padding_repeated_twice``)."""
        zeros = padding_mode == "zeros"
        self.op_padding = padding if zeros else 0
        self.input_pad = None if zeros else tuple(reversed_padding)

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        active = resolve(active)
        if self.input_pad is not None:
            x = F.pad(x, self.input_pad, mode=self.padding_mode)
        return self.run_units(x, active, conv_backend(self.backend, active))

    def run_units(self, x: torch.Tensor, active: Optional[Active],
                  backend: str) -> torch.Tensor:
        raise NotImplementedError


class SlicedConv2d(SlicedConvForward, nn.Conv2d):
    """``nn.Conv2d`` over the active units of its input and output channels.

    Same constructor arguments, parameters and state_dict keys as ``nn.Conv2d``, plus the unit
    layouts (``in_units``/``out_units``: a count of equal units, explicit sizes, a UnitLayout,
    or None for an unsplit side such as RGB input) and the default ``backend``. ``forward(x)``
    uses every unit and equals ``nn.Conv2d``; ``forward(x, active)`` takes compact ``x`` (the
    active input units' channels) and returns the active output units' channels. Without
    ``active``, the selection of an enclosing ``dvn.model.networks.selected`` block applies. The
    selection's backend, when it names one, overrides ``backend`` (``Active``).

    Each unit set's convolution is checked once and kept as a plan (``plan``): a call looks
    the plan up and runs the op, with no per-call argument checks in Python.

    Grouped and depthwise convolutions (``groups`` > 1): each input unit and the output unit
    of the same number must hold the same whole groups, so that a unit set runs a grouped
    conv of its active groups only. A layout that cuts a group raises ValueError; where k equal
    units would, ``UnitLayout(C, k, quantum=C // groups)`` gives units of whole groups, as
    equal as possible (every layer sharing those channels must use the same split).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, in_units: UnitsLike = None,
                 out_units: UnitsLike = None, backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.in_layout = UnitLayout.of(in_channels, in_units)
        self.out_layout = UnitLayout.of(out_channels, out_units)
        if groups > 1:
            check_whole_groups(in_channels, out_channels, groups, self.in_layout,
                               self.out_layout)
        if backend not in dvn_kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(dvn_kernels.BACKENDS)}")
        self.backend = backend
        self.set_padding(self.padding, padding_mode, self._reversed_padding_repeated_twice)
        self._plans: SelectionCache[Optional[tuple[int, ...]], dvn_kernels.ConvPlan] = \
            SelectionCache()

    def segments(self, active: Optional[Active]):
        """(in_segments, out_segments) of a selection (every unit for None)."""
        return self._segments(None if active is None else active.unit_set)

    def _segments(self, units: Optional[tuple[int, ...]]):
        return self.in_layout.segments(units), self.out_layout.segments(units)

    def plan(self, active: Optional[Active]) -> dvn_kernels.ConvPlan:
        """The checked convolution of a selection's units (every unit for None), made on first
        use and kept."""
        return self._plans.get_or_make(None if active is None else active.unit_set,
                                       self._make_plan)

    def _make_plan(self, units: Optional[tuple[int, ...]]) -> dvn_kernels.ConvPlan:
        ins, outs = self._segments(units)
        return dvn_kernels.conv_plan(self.weight.shape, ins, outs, stride=self.stride,
                                     padding=self.op_padding, dilation=self.dilation,
                                     groups=self.groups)

    def run_units(self, x: torch.Tensor, active: Optional[Active],
                  backend: str) -> torch.Tensor:
        # The hot path: one lookup of the unit set's plan, one op call.
        plan = self._plans.get_or_make(None if active is None else active.unit_set,
                                       self._make_plan)
        return dvn_kernels.planned_conv2d(plan, x, self.weight, self.bias, backend)

    def export(self, active: Optional[Active]) -> nn.Conv2d:
        """A plain nn.Conv2d holding a copy of this selection's weight block (grouped: the
        active groups' rows, as a conv of that many groups)."""
        ins, outs = self.segments(active)
        with torch.no_grad():
            w = take_channels(self.weight, 0, outs.flat())
            if self.groups == 1:
                w, groups = take_channels(w, 1, ins.flat()), 1
            else:  # the active groups' rows; their input channels are x's, in order
                groups = outs.total // (self.out_channels // self.groups)
            conv = skip_init(nn.Conv2d, ins.total, outs.total, self.kernel_size, self.stride,
                             self.padding, self.dilation, groups, self.bias is not None,
                             self.padding_mode, device=w.device, dtype=w.dtype)
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(take_channels(self.bias, 0, outs.flat()))
        return conv

    def extra_repr(self) -> str:  # nn.Conv2d's names groups when there are several
        return (f"{super().extra_repr()}, in_units={self.in_layout.count}, "
                f"out_units={self.out_layout.count}, backend={self.backend!r}")


def check_whole_groups(in_channels: int, out_channels: int, groups: int, in_layout: UnitLayout,
                       out_layout: UnitLayout) -> None:
    """Raises ValueError unless input unit u and output unit u hold the same whole groups, for
    every u (or both sides are unsplit: a plain grouped conv at every level)."""
    c_in_g, c_out_g = in_channels // groups, out_channels // groups
    what = (f"a conv of {in_channels} -> {out_channels} channels in groups={groups} "
            f"({c_in_g} -> {c_out_g} channels per group)")
    if not in_layout.split and not out_layout.split:
        return
    if in_layout.split != out_layout.split:
        raise ValueError(f"in_units, out_units: {what} must split both sides into units or "
                         f"neither (in_units makes {in_layout.count or 1} units, out_units "
                         f"{out_layout.count or 1}): its groups would be active on one side and "
                         "not the other")
    if in_layout.count != out_layout.count:
        raise ValueError(f"units: {what} has {in_layout.count} input units but "
                         f"{out_layout.count} output units; each unit must hold the same "
                         "groups on both sides")
    k = in_layout.count
    for side, layout, per_group in (("in_units", in_layout, c_in_g),
                                    ("out_units", out_layout, c_out_g)):
        if any(s % per_group for s in layout.sizes):
            if layout.channels // per_group >= k:
                whole = UnitLayout(layout.channels, k, quantum=per_group).sizes
                hint = (f"units of whole groups, as equal as possible: dvn.UnitLayout("
                        f"{layout.channels}, {k}, quantum={per_group}) = {list(whole)}, the "
                        "same split in every layer that shares these channels")
            else:
                hint = f"its {groups} groups cannot make {k} units"
            raise ValueError(f"{side}: units {list(layout.sizes)} cut the groups of {what}, "
                             f"{k} units; {hint}")
    if [s // c_in_g for s in in_layout.sizes] != [s // c_out_g for s in out_layout.sizes]:
        raise ValueError(f"units: {what}: input units {list(in_layout.sizes)} and output units "
                         f"{list(out_layout.sizes)} hold different groups; unit u must hold "
                         "the same groups on both sides")
