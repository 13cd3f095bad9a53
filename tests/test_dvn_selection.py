"""One way to select (task, level): every selection-dependent layer takes an explicit ``active``
or the enclosing ``dvn.selected`` block's alike; per-selection caches; backend precedence."""

import pytest
import torch
import torch.nn as nn

import dvn
import dvn_kernels
from dvn import (LevelHeads, SlicedBatchNorm2d, SlicedConv2d, SlicedLinear, UnitLayout, UnitPad,
                 VirtualNetworks, convert_to_sliced, selected)
from dvn.model.backbones import PreActBlock
from dvn.model.conv import SlicedConvForward
from dvn.deploy.shared import SharedConv2d
from dvn.deploy.unitfile import unit_tensors
from dvn.model.networks import SelectionCache, conv_backend, current_selection, resolve


def shared_conv(conv: SlicedConv2d, unit_sets) -> SharedConv2d:
    """A SharedConv2d holding ``conv``'s blocks for ``unit_sets``."""
    blocks = unit_tensors(nn.ModuleDict({"c": conv}))
    shared = SharedConv2d("c", conv, torch.device("cpu"))
    shared.update(unit_sets, lambda keys: {k: blocks[k] for k in keys})
    return shared


def layers_and_inputs(vn: VirtualNetworks):
    """(name, layer, input of selection (task 2, level 1)) for every selection-dependent layer."""
    active = vn.active(2, 1)  # units {2}
    conv = SlicedConv2d(8, 12, 3, padding=1, padding_mode="reflect", in_units=4, out_units=4)
    same = SlicedConv2d(8, 8, 4, padding="same", in_units=4, out_units=4)
    return active, [
        ("SlicedConv2d", conv, torch.randn(2, 2, 6, 6)),
        ("SlicedConv2d same", same, torch.randn(2, 2, 6, 7)),
        ("SharedConv2d", shared_conv(conv, [active.unit_set]), torch.randn(2, 2, 6, 6)),
        ("SharedConv2d same", shared_conv(same, [active.unit_set, (1, 2)]),
         torch.randn(2, 2, 6, 7)),
        ("SlicedBatchNorm2d", SlicedBatchNorm2d(8, 4, vn).eval(), torch.randn(2, 2, 5, 5)),
        ("SlicedLinear", SlicedLinear(8, 3, in_units=4), torch.randn(2, 2)),
        ("LevelHeads", LevelHeads(8, 5, 4, vn), torch.randn(2, 2)),
        ("UnitPad", UnitPad(UnitLayout(8, 4), UnitLayout(16, 4), 2), torch.randn(2, 2, 6, 6)),
        ("PreActBlock", PreActBlock(8, 8, 1, 4, vn, "auto").eval(), torch.randn(2, 2, 6, 6)),
    ]


def test_every_layer_takes_an_explicit_selection_or_the_selected_block():
    vn = VirtualNetworks(4)
    active, layers = layers_and_inputs(vn)
    with torch.no_grad():
        for name, layer, x in layers:
            explicit = layer(x, active)
            with selected(active):
                from_block = layer(x)
            torch.testing.assert_close(from_block, explicit, rtol=0, atol=0,
                                       msg=lambda m: f"{name}: {m}")
    assert current_selection() is None


def test_an_explicit_selection_wins_over_the_block():
    vn = VirtualNetworks(4)
    conv = SlicedConv2d(8, 8, 3, padding=1, in_units=4, out_units=4)
    x = torch.randn(1, 4, 5, 5)
    with selected(vn.active(1, 1)):  # one unit: a 2-channel input would be expected
        assert resolve(vn.active(3, 2)) is vn.active(3, 2)
        y = conv(x, vn.active(3, 2))  # units {2, 3}
    torch.testing.assert_close(y, conv(x, vn.active(3, 2)), rtol=0, atol=0)
    assert resolve(None) is None


def test_layers_without_a_selection():
    """None anywhere: the conv, linear and shortcut use every unit; private layers raise."""
    vn = VirtualNetworks(2)
    conv = SlicedConv2d(4, 6, 3, padding=1, in_units=2, out_units=2)
    assert conv(torch.randn(1, 4, 5, 5)).shape == (1, 6, 5, 5)
    assert UnitPad(UnitLayout(4, 2), UnitLayout(6, 2), 1)(torch.randn(1, 4, 3, 3)).shape == \
        (1, 6, 3, 3)
    with pytest.raises(ValueError, match="active: SlicedBatchNorm2d needs a"):
        SlicedBatchNorm2d(4, 2, vn)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"active: LevelHeads needs a \(task, level\)"):
        LevelHeads(4, 3, 2, vn)(torch.randn(1, 4))
    shared = shared_conv(conv, [(1,)])
    assert isinstance(shared, SlicedConvForward) and isinstance(conv, SlicedConvForward)
    with pytest.raises(ValueError, match="active: layer c holds no weights for units None"):
        shared(torch.randn(1, 4, 5, 5))


def recorded_backends(monkeypatch) -> list:
    calls = []
    planned = dvn_kernels.planned_conv2d

    def record(plan, x, weight, bias=None, backend="auto"):
        calls.append(backend)
        return planned(plan, x, weight, bias, backend)

    monkeypatch.setattr(dvn_kernels, "planned_conv2d", record)
    return calls


def test_a_per_call_auto_overrides_a_module_built_for_cpu(monkeypatch):
    """Backend precedence: the call's backend when one is given ("auto" included), else the
    module's own."""
    calls = recorded_backends(monkeypatch)
    model = dvn.wrn(8, 1, units=2, num_classes=3, input_sizes=8, backend="cpu").eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x, task=1, level=1)
        assert calls and set(calls) == {"cpu"}
        calls.clear()
        model(x, task=1, level=1, backend="auto")
        assert calls and set(calls) == {"auto"}
        calls.clear()
        model(x, task=1, level=1, backend="reference")
        assert calls and set(calls) == {"reference"}

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    vm = convert_to_sliced(net, VirtualNetworks(2), backend="cpu")
    calls.clear()
    vm(x, task=2, level=1)
    assert calls and set(calls) == {"cpu"}
    calls.clear()
    vm(x, task=2, level=1, backend="auto")
    assert calls and set(calls) == {"auto"}

    vn = VirtualNetworks(2)
    assert vn.active(1, 1).backend is None and vn.active(1, 1, "auto").backend == "auto"
    assert vn.active(1, 1, "auto") is not vn.active(1, 1) and vn.active(1, 1) is vn.active(1, 1)
    assert conv_backend("cpu", None) == "cpu" and conv_backend("cpu", vn.active(1, 1)) == "cpu"
    assert conv_backend("cpu", vn.active(1, 1, "auto")) == "auto"
    with pytest.raises(TypeError, match="backend: expected a string or None, got list"):
        vn.active(1, 1, ["cpu"])


def test_selection_cache_makes_once_and_stays_out_of_compiled_graphs(monkeypatch):
    cache = SelectionCache()
    made = []

    def make(key):
        made.append(key)
        return ("value", key)

    assert cache.get_or_make((1, 2), make) == ("value", (1, 2))
    assert cache.get_or_make((1, 2), make) is cache[(1, 2)] and made == [(1, 2)]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert cache.get_or_make((1, 2), make) == ("value", (1, 2)) and len(made) == 2
    assert cache.get_or_make((3,), make) and (3,) not in cache


def test_a_compiled_converted_model_without_the_runner():
    """torch.compile of a VirtualModel itself: Dynamo cannot set the selection, so the block
    breaks the graph (or, in a full graph, raises); the output stays right either way, and
    through dvn.compile_configs there is one graph per configuration."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    vm = convert_to_sliced(net, VirtualNetworks(2)).eval()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        want = vm(x, task=2, level=1)
        with pytest.raises(Exception, match="selected: cannot select task 2 at level 1 inside "
                                            "torch.compile"):
            torch.compile(vm, backend="eager", fullgraph=True)(x, task=2, level=1)
        torch._dynamo.reset()
        got = torch.compile(vm, backend=CompileCounter())(x, task=2, level=1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch._dynamo.reset()


def test_same_padding_is_the_ops_and_other_modes_the_layers():
    """Zero padding, an asymmetric 'same' included, goes to the op's plan (its pre_pad); the
    layer pads the input itself only for other padding modes, as nn.Conv2d does."""
    same = SlicedConv2d(8, 8, (4, 2), padding="same", dilation=(1, 3), in_units=2, out_units=2)
    assert same.input_pad is None and same.op_padding == "same"
    plan = same.plan(None)
    assert plan.padding == (1, 1) and plan.pre_pad == (0, 1, 0, 1)
    reflect = SlicedConv2d(8, 8, 3, padding=1, padding_mode="reflect", in_units=2, out_units=2)
    assert reflect.input_pad == (1, 1, 1, 1) and reflect.plan(None).padding == (0, 0)
    for conv in (same, reflect):
        dense = nn.Conv2d(8, 8, conv.kernel_size, padding=conv.padding, dilation=conv.dilation,
                          padding_mode=conv.padding_mode)
        dense.load_state_dict(conv.state_dict())
        x = torch.randn(1, 8, 7, 9)
        torch.testing.assert_close(conv(x), dense(x), rtol=1e-5, atol=1e-5)
