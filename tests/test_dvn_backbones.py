"""Backbones: the paper's parameter counts; sliced == masked twin for every (task, level)."""

import pytest
import torch
import torch.nn.functional as F

import dvn
from dvn import MaskedTwin, count_parameters


def test_wrn_32_4_parameter_counts():
    model = dvn.wrn(32, 4, units=2, num_classes=10)
    full = count_parameters(model, 1, 2)
    assert abs(full - 7.35e6) / 7.35e6 < 0.005  # paper: 7.35M (DEN Table 2), 7.4M (DVN Table 1)
    assert abs(count_parameters(model, 1, 1) - 1.85e6) / 1.85e6 < 0.01  # one unit of k = 2


def test_resnet_42_level_parameter_counts_match_table_2():
    model = dvn.resnet(42, units=4, num_classes=50)
    counts = [count_parameters(model, 3, level) for level in range(1, 5)]
    for got, paper in zip(counts, [1.9e6, 7.5e6, 16.8e6, 29.8e6]):
        assert abs(got - paper) / paper < 0.02, (counts, paper)


def small_models():
    torch.manual_seed(0)
    return [("wrn-8-1", dvn.wrn(8, 1, units=2, num_classes=[3, 5]), 16),
            ("resnet-10", dvn.resnet(10, units=4, num_classes=4, input_sizes=[32, 64, 32, 64]),
             None)]


@pytest.mark.parametrize("name, model, size", small_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_config_equals_the_masked_twin(name, model, size):
    """In float64, so that a wrong block or a lost gradient cannot hide in rounding noise."""
    model = model.double()
    twin = MaskedTwin(model)
    params = list(model.parameters())
    for task, level in model.networks.configs():
        side = size or model.input_sizes[task - 1]
        x = torch.randn(2, 3, side, side, dtype=torch.float64, requires_grad=True)
        y = model(x, task=task, level=level)
        y_twin = twin(x, task=task, level=level)
        torch.testing.assert_close(y, y_twin, rtol=1e-9, atol=1e-9)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [x] + params, g, allow_unused=True)
        want = torch.autograd.grad(y_twin, [x] + params, g, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_full_level_uses_every_unit_and_a_private_head():
    model = dvn.wrn(8, 1, units=2, num_classes=[3, 5])
    x = torch.randn(2, 3, 16, 16)
    assert model(x, task=1, level=2).shape == (2, 3)
    assert model(x, task=2, level=1).shape == (2, 5)
    assert model.stems["t1"].stride == (1, 1)
    wide = dvn.resnet(10, units=2, num_classes=3, input_sizes=[32, 96])
    assert wide.stems["t1"].stride == (1, 1) and wide.stems["t2"].stride == (3, 3)
    # Both tasks reach the same feature-map size: 96x96 with stride 3 and 32x32 with stride 1.
    assert wide(torch.randn(1, 3, 96, 96), task=2, level=1).shape == (1, 3)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m(torch.randn(1, 3, 16, 16), task=3, level=1), ValueError, "task: 3 does not exist"),
    (lambda m: m(torch.randn(1, 3, 16, 16), task=1, level=0), ValueError, "level: 0 does not exist"),
    (lambda m: m(torch.randn(1, 1, 16, 16), task=1, level=1), ValueError,
     r"x: task 1 expects \(N, 3, H, W\) images, got \(1, 1, 16, 16\)"),
    (lambda m: m(torch.randn(3, 16, 16), task=1, level=1), ValueError, "x: task 1 expects"),
    (lambda m: m(torch.randn(1, 3, 16, 16), task=1, level=1, backend="tpu"), ValueError,
     "backend: unknown backend 'tpu'"),
])
def test_bad_calls(call, error, message):
    with pytest.raises(error, match=message):
        call(dvn.wrn(8, 1, units=2))


@pytest.mark.parametrize("builder, kwargs, message", [
    (dvn.wrn, dict(depth=30), "depth: WRN depth must be 6n\\+2"),
    (dvn.wrn, dict(units=17), "cannot split 16 channels into 17 units"),
    (dvn.wrn, dict(units=2, num_classes=[10, 10, 10]), "num_classes: expected a positive count"),
    (dvn.wrn, dict(units=2, input_sizes=[32]), "input_sizes: expected a positive int or one per task"),
    (dvn.resnet, dict(depth=40), "depth: ResNet depth must be 8n\\+2"),
    (dvn.resnet, dict(units=3, tasks=4), "the paper's rule gives 1..3 tasks"),
])
def test_bad_backbone_arguments(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


def test_single_channel_inputs_and_custom_orders():
    model = dvn.wrn(8, 1, units=2, orders=[(1, 2), (1, 2)], num_classes=[10, 10],
                    input_sizes=[28, 8], image_channels=[1, 1])
    assert model(torch.randn(2, 1, 28, 28), task=1, level=1).shape == (2, 10)
    assert model(torch.randn(2, 1, 8, 8), task=2, level=2).shape == (2, 10)
    loss = F.cross_entropy(model(torch.randn(2, 1, 8, 8), task=2, level=1), torch.tensor([1, 2]))
    loss.backward()
    assert model.stems["t2"].weight.grad is not None and model.stems["t1"].weight.grad is None
