"""torchvision's grouped and depthwise networks converted into DVNs (k = 4), in float64 on
32x32 inputs: with every unit each equals the original model; at every (task, level) it equals
its static export and its masked twin, in eval and train mode (gradients too); every grouped
conv runs on the kernels (whole groups on both sides), never a fallback."""

import pytest
import torch
import torch.nn as nn

import dvn
from dvn import MaskedTwin, VirtualNetworks, convert_to_sliced, count_parameters, to_static

torchvision = pytest.importorskip("torchvision")

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
          "resnext50_32x4d", "regnet_y_400mf"]
K = 4


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float64 rounding, relative to the largest entry: the logits of a deep net
    span orders of magnitude, and small ones are differences of large terms."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10 * max(scale, 1.0))


def pretend_trained(model: nn.Module) -> nn.Module:
    """Random batch norm affine parameters, and running statistics of one batch: activations
    of order one (torchvision's initial statistics shrink MobileNetV2's logits to 1e-10)."""
    gen = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative: the statistics of the one batch below
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen, dtype=torch.float64) / 5)
        model.train()(torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


_CONVERTED: dict[str, tuple[nn.Module, dvn.VirtualModel]] = {}


def converted(name: str) -> tuple[nn.Module, dvn.VirtualModel]:
    """(the original in float64, its DVN), built once per test session."""
    if name not in _CONVERTED:
        torch.manual_seed(0)
        model = pretend_trained(getattr(torchvision.models, name)(num_classes=10).double())
        _CONVERTED[name] = model, convert_to_sliced(model, VirtualNetworks(K))
    return _CONVERTED[name]


def seeded(fn, seed: int = 7):
    """fn() with the generator reset first: dropout and stochastic depth draw alike."""
    torch.manual_seed(seed)
    return fn()


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64)


# Train mode normalises by batch statistics, which at 1x1 (the last stages of a 32x32 input)
# and batch 2 come from two values per channel: ill-conditioned enough to turn float64
# rounding into relative differences of 1e-7. Batch 4 keeps them near 1e-12.
EVAL, TRAIN = images(2), images(4)
# Train mode at every task and every level twice (the diagonal and the anti-diagonal).
TRAIN_CONFIGS = [(t, t) for t in range(1, K + 1)] + [(t, K + 1 - t) for t in range(1, K + 1)]


@pytest.mark.parametrize("name", MODELS)
def test_all_units_equal_the_original(name, one_thread):
    model, vm = converted(name)
    plain = [n for n, m in vm.named_modules() if type(m) in (nn.Conv2d, nn.Linear)
             or (type(m) is nn.BatchNorm2d and ".norms." not in n)]
    assert not plain, plain
    for mode, x in ((False, EVAL), (True, TRAIN)):
        model.train(mode), vm.train(mode)
        with torch.no_grad():
            want = seeded(lambda: model(x))
            for task in range(1, K + 1):
                assert_close(seeded(lambda: vm(x, task=task, level=K)), want)
    model.eval(), vm.eval()


@pytest.mark.parametrize("name", MODELS)
def test_every_level_equals_its_export_and_masked_twin(name, one_thread):
    """Every (task, level) in eval mode; in train mode (batch statistics, dropout, stochastic
    depth drawn alike) every task and every level twice."""
    _, vm = converted(name)
    twin = MaskedTwin(vm)
    for mode, x, configs in ((False, EVAL, list(vm.networks.configs())),
                             (True, TRAIN, TRAIN_CONFIGS)):
        vm.train(mode)
        for task, level in configs:
            static = to_static(vm, task, level)
            assert static.training == mode
            with torch.no_grad():
                y = seeded(lambda: vm(x, task=task, level=level))
                assert_close(seeded(lambda: twin(x, task=task, level=level)), y)
                assert_close(seeded(lambda: static(x)), y)
    vm.eval()


@pytest.mark.parametrize("name", MODELS)
def test_gradients_equal_the_masked_twin(name, one_thread):
    """Gradients of the input and of every parameter (full size, zero outside the active
    blocks), train mode, at two levels."""
    _, vm = converted(name)
    twin = MaskedTwin(vm)
    params = [p for p in vm.parameters()]
    vm.train()
    x = TRAIN.clone().requires_grad_()
    for task, level in [(2, 1), (3, 3)]:
        got = torch.autograd.grad(seeded(lambda: vm(x, task=task, level=level)).square().sum(),
                                  [x] + params, allow_unused=True)
        want = torch.autograd.grad(seeded(lambda: twin(x, task=task, level=level)).square()
                                   .sum(), [x] + params, allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if g is not None:
                assert_close(g, w)
    vm.eval()


@pytest.mark.parametrize("name", MODELS)
def test_grouped_convs_hold_whole_groups_and_run_on_the_kernels(name):
    _, vm = converted(name)
    grouped = {n: m for n, m in vm.module.named_modules()
               if isinstance(m, dvn.SlicedConv2d) and m.groups > 1}
    assert grouped
    for task, level in vm.networks.configs():
        active = vm.networks.active(task, level)
        for conv in grouped.values():
            assert conv.plan(active).kernel_reason is None
        static = dict(to_static(vm, task, level).named_modules())
        for name, conv in grouped.items():
            active_groups = conv.out_layout.width(active.unit_set) // (
                conv.out_channels // conv.groups)
            assert type(static[name]) is nn.Conv2d and static[name].groups == active_groups


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_per_level(name):
    model, vm = converted(name)
    total = sum(p.numel() for p in model.parameters())
    for task in range(1, K + 1):
        counts = [count_parameters(vm, task, level) for level in range(1, K + 1)]
        assert counts == sorted(counts) and len(set(counts)) == K
        assert counts[-1] == total
        assert counts[0] < total / 5  # about (1/k)^2 of the 1x1 convs, 1/k of the rest


def test_regnet_splits_whole_groups_the_same_in_every_layer_sharing_them():
    """RegNetY-400MF's 104-channel stage: groups of 8 channels, which 4 equal units of 26
    would cut: every layer with 104 channels (convs, batch norms, the squeeze-excitation
    scale) splits them [32, 24, 24, 24]."""
    _, vm = converted("regnet_y_400mf")
    layouts = set()
    for m in vm.modules():
        for layout in (getattr(m, "layout", None), getattr(m, "in_layout", None),
                       getattr(m, "out_layout", None)):
            if layout is not None and layout.channels == 104:
                layouts.add(layout.sizes)
    assert layouts == {(32, 24, 24, 24)}
    block = vm.module.trunk_output.block2[1].f
    assert block.b[0].groups == 13 and block.se.fc2.out_layout.sizes == (32, 24, 24, 24)


def test_mobilenet_v3_head_splits_its_hidden_layer():
    _, vm = converted("mobilenet_v3_small")
    hidden, logits = vm.module.classifier[0], vm.module.classifier[3]
    assert hidden.out_layout.sizes == (256,) * 4 and not logits.out_layout.split
    assert vm(torch.randn(1, 3, 32, 32, dtype=torch.float64), task=2, level=1).shape == (1, 10)
