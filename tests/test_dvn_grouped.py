"""Grouped and depthwise convolutions in the model layer: SlicedConv2d with groups, units of
whole groups (UnitLayout's quantum), one split per channel count in converted models, MLP
heads (SlicedLinear with split outputs)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dvn
from dvn import (MaskedTwin, SlicedConv2d, SlicedLinear, UnitLayout, VirtualNetworks,
                 convert_to_sliced, to_static)


def test_unit_layout_in_whole_quanta():
    assert UnitLayout(104, 4, quantum=8).sizes == (32, 24, 24, 24)
    assert UnitLayout(64, 4, quantum=4).sizes == (16,) * 4
    assert UnitLayout(48, [16, 16, 8, 8], quantum=8).sizes == (16, 16, 8, 8)
    with pytest.raises(ValueError, match="quantum: expected a positive int dividing the 10"):
        UnitLayout(10, 2, quantum=4)
    with pytest.raises(ValueError, match="cannot split 16 channels into 4 units of whole "
                                         "quanta of 8 channels \\(there are 2 quanta\\)"):
        UnitLayout(16, 4, quantum=8)
    with pytest.raises(ValueError, match=r"unit sizes \[12, 4\] are not all multiples of the "
                                         "quantum 8"):
        UnitLayout(16, [12, 4], quantum=8)


def meaning(conv: nn.Conv2d, x: torch.Tensor, ins, outs) -> torch.Tensor:
    """The grouped conv of the full weight on x scattered into the full input channels, the
    active outputs kept."""
    full = x.new_zeros(x.shape[0], conv.in_channels, *x.shape[2:])
    full[:, ins.indices()] = x
    y = F.conv2d(full, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                 conv.groups)
    return y[:, outs.indices()]


# (in, out, groups, kernel arguments, units per side): depthwise, depthwise with a channel
# multiplier, grouped with units of several groups, grouped in quanta (13 groups of 8 in 4
# units of whole groups).
GROUPED = {
    "depthwise": (16, 16, 16, dict(kernel_size=3, padding=1), 4),
    "depthwise-x2": (8, 16, 8, dict(kernel_size=3, stride=2, padding=1), 4),
    "grouped": (32, 32, 8, dict(kernel_size=3, padding=1, dilation=1), 4),
    "grouped-quanta": (104, 104, 13, dict(kernel_size=3, padding=1),
                       UnitLayout(104, 4, quantum=8)),
    "grouped-5x5-same": (12, 24, 3, dict(kernel_size=5, padding="same"), 3),
}


@pytest.mark.parametrize("case", sorted(GROUPED))
def test_grouped_sliced_conv_every_unit_set(case):
    c_in, c_out, groups, kwargs, units = GROUPED[case]
    torch.manual_seed(0)
    plain = nn.Conv2d(c_in, c_out, groups=groups, **kwargs).double()
    in_units = units
    out_units = units if not isinstance(units, UnitLayout) else UnitLayout(
        c_out, units.count, quantum=c_out // groups)
    conv = SlicedConv2d(c_in, c_out, groups=groups, in_units=in_units, out_units=out_units,
                        **kwargs).double()
    conv.load_state_dict(plain.state_dict())
    x_full = torch.randn(2, c_in, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(conv(x_full), plain(x_full), rtol=1e-12, atol=1e-12)
    vn = VirtualNetworks(conv.in_layout.count)
    for task, level in vn.configs():
        active = vn.active(task, level)
        ins, outs = conv.segments(active)
        assert conv.plan(active).kernel_reason is None  # whole groups: the kernels run it
        x = torch.randn(2, ins.total, 9, 8, dtype=torch.float64, requires_grad=True)
        y = conv(x, active)
        want = meaning(conv, x, ins, outs)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        static = conv.export(active)
        assert type(static) is nn.Conv2d and static.in_channels == ins.total
        assert static.groups == outs.total // (c_out // groups)
        torch.testing.assert_close(static(x), y, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, conv.weight, conv.bias], g)
        exp = torch.autograd.grad(want, [x, conv.weight, conv.bias], g)
        for a, b in zip(got, exp):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_layouts_that_cut_groups_are_refused():
    with pytest.raises(ValueError, match=r"in_units: units \[26, 26, 26, 26\] cut the groups of "
                       r"a conv of 104 -> 104 channels in groups=13 \(8 -> 8 channels per "
                       r"group\), 4 units; units of whole groups, as equal as possible: "
                       r"dvn.UnitLayout\(104, 4, quantum=8\) = \[32, 24, 24, 24\]"):
        SlicedConv2d(104, 104, 3, groups=13, in_units=4, out_units=4)
    with pytest.raises(ValueError, match=r"in_units, out_units: .* must split both sides into "
                                         r"units or neither \(in_units makes 4 units, "
                                         r"out_units 1\)"):
        SlicedConv2d(16, 16, 3, groups=4, in_units=4)
    with pytest.raises(ValueError, match=r"input units \[8, 8\] and output units \[4, 12\] "
                                         "hold different groups"):
        SlicedConv2d(16, 16, 3, groups=4, in_units=[8, 8], out_units=[4, 12])
    with pytest.raises(ValueError, match="has 2 input units but 4 output units"):
        SlicedConv2d(16, 16, 3, groups=4, in_units=2, out_units=4)
    SlicedConv2d(16, 16, 3, groups=4)  # both sides whole: a plain grouped conv at every level


def test_sliced_linear_with_split_outputs():
    vn = VirtualNetworks(4)
    lin = SlicedLinear(8, 12, in_units=4, out_units=4)
    active = vn.active(3, 2)  # units {2, 3}: in features 2..5, out features 3..8
    x = torch.randn(3, 4)
    want = F.linear(x, lin.weight[3:9, 2:6], lin.bias[3:9])
    torch.testing.assert_close(lin(x, active), want)
    static = lin.export(active)
    assert (static.in_features, static.out_features) == (4, 6)
    torch.testing.assert_close(static(x), want)
    x_full = torch.randn(3, 8)  # no selection: every unit, as nn.Linear
    torch.testing.assert_close(lin(x_full), F.linear(x_full, lin.weight, lin.bias))
    with pytest.raises(ValueError, match="x: has 8 features but the active units select 4"):
        lin(torch.randn(3, 8), active)


class SEBlock(nn.Module):
    """A RegNet-like block: 1x1, grouped 3x3 (groups of 4 channels: 20 channels make 5, which
    4 equal units of 5 would cut), squeeze-excitation, 1x1 projection shortcut, then a
    depthwise conv with a channel multiplier and an MLP head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12),
                               nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 20, 1, bias=False), nn.BatchNorm2d(20), nn.ReLU(),
                               nn.Conv2d(20, 20, 3, padding=1, groups=5, bias=False),
                               nn.BatchNorm2d(20), nn.Hardswish())
        self.fc1, self.fc2 = nn.Conv2d(20, 8, 1), nn.Conv2d(8, 20, 1)
        self.proj = nn.Sequential(nn.Conv2d(12, 20, 1, bias=False), nn.BatchNorm2d(20))
        self.dw = nn.Conv2d(20, 40, 3, stride=2, padding=1, groups=20)
        self.head = nn.Sequential(nn.Linear(40, 16), nn.SiLU(), nn.Dropout(0.2),
                                  nn.Linear(16, 7))

    def forward(self, x):
        x = self.a(x)
        h = self.b(x)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        h = F.relu(h * scale + self.proj(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.dw(h), 1), 1))


def trained_block() -> SEBlock:
    torch.manual_seed(0)
    model = SEBlock().double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 10, 10, dtype=torch.float64) + 1)
    return model.eval()


def test_converted_block_splits_each_channel_count_once_in_whole_groups():
    model = trained_block()
    vm = convert_to_sliced(model, VirtualNetworks(4))
    m = vm.module
    twenty = {layout.sizes for mod in m.modules()
              for layout in (getattr(mod, "layout", None), getattr(mod, "in_layout", None),
                             getattr(mod, "out_layout", None))
              if layout is not None and layout.channels == 20}
    assert twenty == {(8, 4, 4, 4)}  # the grouped conv's quanta, in every layer of 20
    assert m.dw.out_layout.sizes == (16, 8, 8, 8)  # the multiplier keeps the groups aligned
    assert m.head[0].out_layout.split and not m.head[3].out_layout.split  # hidden / logits
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        for task in range(1, 5):
            torch.testing.assert_close(vm(x, task=task, level=4), model(x), rtol=1e-12,
                                       atol=1e-12)
    twin = MaskedTwin(vm)
    for mode in (False, True):
        vm.train(mode)
        for task, level in vm.networks.configs():
            static = to_static(vm, task, level)
            with torch.no_grad():
                torch.manual_seed(1)
                y = vm(x, task=task, level=level)
                torch.manual_seed(1)
                torch.testing.assert_close(twin(x, task=task, level=level), y, rtol=1e-10,
                                           atol=1e-12)
                torch.manual_seed(1)
                torch.testing.assert_close(static(x), y, rtol=1e-10, atol=1e-12)
            assert y.shape == (3, 7)


def test_outputs_name_the_layers_that_stay_whole():
    model = trained_block()
    vm = convert_to_sliced(model, VirtualNetworks(4), outputs=["head.0", "head.3"])
    assert not vm.module.head[0].out_layout.split
    with pytest.raises(ValueError, match="x: has 16 features but the active units select 4"):
        vm(torch.randn(1, 3, 10, 10, dtype=torch.float64), task=1, level=1)
    with pytest.raises(ValueError, match="outputs: 'b.2' is not a Conv2d or Linear layer"):
        convert_to_sliced(model, VirtualNetworks(4), outputs=["b.2"])
    with pytest.raises(TypeError, match="outputs: expected a collection of layer names"):
        convert_to_sliced(model, VirtualNetworks(4), outputs="head.3")


def test_grouped_convs_that_cannot_be_sliced_name_the_layer():
    # 20 channels in groups of 4 (5 groups) cannot make 8 units of whole groups.
    with pytest.raises(ValueError, match=r"units: layer 0.0 has 20 channels, which the grouped "
                       r"conv\(s\) 1.0 \(groups=5\) split into groups; .* multiples of 4 "
                       r"channels, and 20 channels make only 5 of those, fewer than the 8 units"):
        convert_to_sliced(nn.Sequential(nn.Sequential(nn.Conv2d(8, 20, 1)),
                                        nn.Sequential(nn.Conv2d(20, 20, 3, groups=5))),
                          VirtualNetworks(8))
    # A grouped conv on the image: its groups would be active on one side only.
    with pytest.raises(ValueError, match="model: layer 0: in_units, out_units: a conv of 3 -> 6 "
                                         "channels in groups=3 .* must split both sides"):
        convert_to_sliced(nn.Sequential(nn.Conv2d(3, 6, 3, groups=3)), VirtualNetworks(2))
    # Groups of different sizes on one channel count: lcm(2, 3) = 6-channel quanta.
    vm = convert_to_sliced(nn.Sequential(nn.Conv2d(24, 24, 1, groups=12),
                                         nn.Conv2d(24, 24, 1, groups=8)), VirtualNetworks(4))
    assert vm.module[0].in_layout.sizes == (6, 6, 6, 6)
    assert dvn.count_parameters(vm, 1, 1) == 6 * 2 + 6 + 6 * 3 + 6
