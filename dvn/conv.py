"""SlicedConv2d: a drop-in nn.Conv2d whose channels are split into units."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

import dvn_kernels
from dvn_kernels.channels import take_channels

from .networks import Active, current_selection
from .units import UnitLayout, UnitSpec


class SlicedConv2d(nn.Conv2d):
    """``nn.Conv2d`` over the active units of its input and output channels.

    Same constructor arguments, parameters and state_dict keys as ``nn.Conv2d``, plus the unit
    layouts (``in_units``/``out_units``: a count of equal units, explicit sizes, a UnitLayout,
    or None for an unsplit side such as RGB input) and the default ``backend``. ``forward(x)``
    uses every unit and equals ``nn.Conv2d``; ``forward(x, active)`` takes compact ``x`` (the
    active input units' channels) and returns the active output units' channels. Without
    ``active``, the selection of an enclosing ``dvn.networks.selected`` block applies.

    Each unit set's convolution is checked once and kept as a plan (``plan``): a call looks
    the plan up and runs the op, with no per-call argument checks in Python.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, in_units: UnitSpec = None,
                 out_units: UnitSpec = None, backend: str = "auto") -> None:
        if groups != 1:
            raise ValueError(f"groups: SlicedConv2d supports groups=1 only, got {groups}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.in_layout = UnitLayout.of(in_channels, in_units)
        self.out_layout = UnitLayout.of(out_channels, out_units)
        if backend not in dvn_kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(dvn_kernels.BACKENDS)}")
        self.backend = backend
        # What the op is given: explicit padding unless nn.Conv2d pads the input itself
        # (padding modes other than zeros, or an asymmetric 'same').
        self._pre_pad = padding_mode != "zeros" or (
            padding == "same" and any(p % 2 for p in self._padding_total()))
        self._op_padding: Union[str, tuple[int, ...]] = 0 if self._pre_pad else self.padding
        self._plans: dict[Optional[tuple[int, ...]], dvn_kernels.ConvPlan] = {}

    def _padding_total(self) -> list[int]:
        return [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]

    def segments(self, active: Optional[Active]):
        """(in_segments, out_segments) of a selection (every unit for None)."""
        units = None if active is None else active.unit_set
        return self.in_layout.segments(units), self.out_layout.segments(units)

    def plan(self, active: Optional[Active]) -> dvn_kernels.ConvPlan:
        """The checked convolution of a selection's units (every unit for None), made on first
        use and kept."""
        units = None if active is None else active.unit_set
        plan = None if torch.compiler.is_compiling() else self._plans.get(units)
        if plan is None:
            ins, outs = self.segments(active)
            plan = dvn_kernels.conv_plan(self.weight.shape, ins, outs, stride=self.stride,
                                         padding=self._op_padding, dilation=self.dilation)
            if not torch.compiler.is_compiling():
                self._plans[units] = plan
        return plan

    def forward(self, x: torch.Tensor, active: Optional[Active] = None) -> torch.Tensor:
        if active is None:
            active = current_selection()
        plan = self._plans.get(None if active is None else active.unit_set)
        if plan is None or torch.compiler.is_compiling():
            plan = self.plan(active)
        if self._pre_pad:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
        backend = self.backend if active is None or active.backend == "auto" else active.backend
        return dvn_kernels.planned_conv2d(plan, x, self.weight, self.bias, backend)

    def export(self, active: Optional[Active]) -> nn.Conv2d:
        """A plain nn.Conv2d holding a copy of this selection's weight block."""
        ins, outs = self.segments(active)
        with torch.no_grad():
            w = take_channels(take_channels(self.weight, 0, outs.flat()), 1, ins.flat())
            conv = nn.Conv2d(ins.total, outs.total, self.kernel_size, self.stride, self.padding,
                             self.dilation, 1, self.bias is not None, self.padding_mode,
                             device=w.device, dtype=w.dtype)
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(take_channels(self.bias, 0, outs.flat()))
        return conv

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_units={self.in_layout.count}, "
                f"out_units={self.out_layout.count}, backend={self.backend!r}")
