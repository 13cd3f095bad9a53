"""SlicedConv2d as a drop-in Conv2d; private batch norm; heads."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dvn import LevelHeads, SlicedBatchNorm2d, SlicedConv2d, SlicedLinear, VirtualNetworks


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=2, padding_mode="circular", dilation=2),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=1, stride=2),
])
def test_drop_in_for_conv2d_with_all_units(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 8, **kwargs)
    sliced = SlicedConv2d(12, 8, **kwargs, in_units=3, out_units=4)
    assert list(sliced.state_dict()) == list(conv.state_dict())
    sliced.load_state_dict(conv.state_dict())
    x = torch.randn(2, 12, 9, 10)
    torch.testing.assert_close(sliced(x), conv(x), rtol=1e-5, atol=1e-5)
    assert isinstance(sliced, nn.Conv2d)


def test_sliced_conv_selection_and_export():
    vn = VirtualNetworks(4)
    conv = SlicedConv2d(8, 12, 3, padding=1, in_units=4, out_units=4)
    active = vn.active(3, 2)  # units {2, 3}: in channels 2..5, out channels 3..8
    x = torch.randn(2, 4, 6, 6)
    expected = F.conv2d(x, conv.weight[3:9, 2:6], conv.bias[3:9], padding=1)
    torch.testing.assert_close(conv(x, active), expected, rtol=1e-5, atol=1e-5)
    static = conv.export(active)
    assert type(static) is nn.Conv2d and static.weight.shape == (6, 4, 3, 3)
    torch.testing.assert_close(static(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="x: has 8 channels but in_segments select 4"):
        conv(torch.randn(2, 8, 6, 6), active)


def test_sliced_conv_bad_arguments():
    with pytest.raises(ValueError, match=r"in_units: units \[2, 2, 2, 2\] cut the groups of a "
                       r"conv of 8 -> 8 channels in groups=2 .*, 4 units; its 2 groups cannot"):
        SlicedConv2d(8, 8, 3, groups=2, in_units=4, out_units=4)
    with pytest.raises(ValueError, match="cannot split 8 channels into 9 units"):
        SlicedConv2d(8, 8, 3, in_units=9)
    with pytest.raises(ValueError, match="backend: unknown backend 'gpu'"):
        SlicedConv2d(8, 8, 3, backend="gpu")


def test_batch_norm_is_private_per_task_and_level():
    vn = VirtualNetworks(2)
    bn = SlicedBatchNorm2d(8, 2, vn)
    assert sorted(bn.norms) == ["t1_l1", "t1_l2", "t2_l1", "t2_l2"]
    assert bn.norms["t1_l1"].num_features == 4 and bn.norms["t2_l2"].num_features == 8
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    bn.train()
    bn(torch.randn(4, 4, 5, 5) + 3, vn.active(2, 1))
    after = bn.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"t2_l1"}
    with pytest.raises(ValueError, match=r"x: expected \(N, 8, H, W\) for task 1 at level 2"):
        bn(torch.randn(2, 4, 5, 5), vn.active(1, 2))
    with pytest.raises(ValueError, match="needs a \\(task, level\\)"):
        bn(torch.randn(2, 8, 5, 5))


def test_batch_norm_in_eval_computes_what_its_module_does_and_runs_every_hook():
    """The eval path calls ``torch.batch_norm`` directly (no second module call); the answer
    and its gradient are the module's, and hooks of the inner norm or global ones still run."""
    torch.manual_seed(0)
    vn = VirtualNetworks(2)
    bn = SlicedBatchNorm2d(8, 2, vn)
    for inner in bn.norms.values():
        inner.running_mean.uniform_(-1, 1)
        inner.running_var.uniform_(0.5, 2)
        nn.init.uniform_(inner.weight, 0.5, 1.5)
        nn.init.uniform_(inner.bias, -1, 1)
    bn.eval()
    active, inner = vn.active(2, 1), bn.norms["t2_l1"]
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    got = bn(x, active)
    want = inner(x)
    assert torch.equal(got, want)
    g = torch.randn_like(got)
    assert torch.equal(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
    seen = []
    handle = inner.register_forward_hook(lambda m, i, o: seen.append("own"))
    assert torch.equal(bn(x, active), want) and seen == ["own"]
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__))
    try:
        bn(x, active)
    finally:
        handle.remove()
    assert seen == ["own", "BatchNorm2d", "SlicedBatchNorm2d"]
    # without running statistics, eval normalises by the batch, as the module does
    free = SlicedBatchNorm2d(8, 2, vn, track_running_stats=False).eval()
    torch.testing.assert_close(free(x, active), free.norms["t2_l1"](x))


def test_level_heads_and_sliced_linear():
    vn = VirtualNetworks(2)
    heads = LevelHeads(8, [10, 100], 2, vn)
    assert heads.heads["t2_l1"].out_features == 100 and heads.heads["t1_l1"].in_features == 4
    assert heads(torch.randn(3, 8), vn.active(1, 2)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"features: expected \(N, 4\) for task 1 at level 1"):
        heads(torch.randn(3, 8), vn.active(1, 1))
    with pytest.raises(ValueError, match="num_classes: expected a positive count or one per task"):
        LevelHeads(8, [10], 2, vn)
    lin = SlicedLinear(8, 5, in_units=2)
    x = torch.randn(3, 4)
    torch.testing.assert_close(lin(x, vn.active(2, 1)), F.linear(x, lin.weight[:, 4:], lin.bias))
    torch.testing.assert_close(lin.export(vn.active(2, 1))(x), lin(x, vn.active(2, 1)))
