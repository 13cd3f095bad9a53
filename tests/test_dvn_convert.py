"""Converting an existing model into a DVN: equal to the original with all units, equal to its
masked twin at every level, exportable."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dvn
from dvn import MaskedTwin, VirtualNetworks, convert_to_sliced, to_static


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                  nn.BatchNorm2d(c_out)) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """A torchvision-style ResNet: stem, residual blocks with a 1x1 downsample, pool, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(h))), 1))


def trained_tiny():
    torch.manual_seed(0)
    model = TinyResNet()
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 12, 12) + 1)
    return model.eval()


def test_all_units_equal_the_original_model():
    model = trained_tiny()
    vm = convert_to_sliced(model, VirtualNetworks(2)).eval()
    assert isinstance(vm.module.conv1, dvn.SlicedConv2d) and not vm.module.conv1.in_layout.split
    assert isinstance(vm.module.layer2.down[1], dvn.SlicedBatchNorm2d)
    assert isinstance(vm.module.fc, dvn.SlicedLinear)
    x = torch.randn(4, 3, 12, 12)
    for task in (1, 2):
        torch.testing.assert_close(vm(x, task=task, level=2), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model.conv1, nn.Conv2d) and type(model.conv1) is nn.Conv2d  # copied


def test_every_level_equals_its_masked_twin_and_its_export():
    vm = convert_to_sliced(trained_tiny(), VirtualNetworks(4)).double()
    twin = MaskedTwin(vm)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    for task, level in vm.networks.configs():
        for mode in (True, False):
            vm.train(mode)
            y = vm(x, task=task, level=level)
            torch.testing.assert_close(y, twin(x, task=task, level=level), rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(to_static(vm, task, level)(x), y, rtol=1e-9, atol=1e-9)
        (gx,) = torch.autograd.grad(y.sum(), [x])
        (gx_twin,) = torch.autograd.grad(twin(x, task=task, level=level).sum(), [x])
        torch.testing.assert_close(gx, gx_twin, rtol=1e-8, atol=1e-9)
    # After a call no selection is left behind: a direct call uses every unit again.
    assert dvn.model.networks.current_selection() is None
    conv = vm.module.layer1.conv1
    assert conv(torch.randn(1, 8, 5, 5, dtype=torch.float64)).shape == (1, 8, 5, 5)


def test_concurrent_calls_with_different_selections():
    """One model object called from several threads, each with its own (task, level): every
    output equals the single-threaded one (the selection travels per call, not per layer)."""
    import threading

    vm = convert_to_sliced(trained_tiny(), VirtualNetworks(4)).eval()
    x = torch.randn(2, 3, 12, 12)
    configs = list(vm.networks.configs())
    with torch.no_grad():
        want = {c: vm(x, task=c[0], level=c[1]) for c in configs}
    failures: list[str] = []
    barrier = threading.Barrier(len(configs))

    def worker(task: int, level: int) -> None:
        barrier.wait()
        with torch.no_grad():
            for _ in range(20):
                try:
                    y = vm(x, task=task, level=level)
                except Exception as e:  # an error in a thread is a failure, not a crash
                    failures.append(f"task {task} level {level}: {type(e).__name__}: {e}")
                    return
                if not torch.equal(y, want[(task, level)]):
                    failures.append(f"task {task} level {level}: output differs")
                    return

    threads = [threading.Thread(target=worker, args=c) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_level_one_export_is_small_and_plain():
    vm = convert_to_sliced(trained_tiny(), VirtualNetworks(4))
    static = to_static(vm, 3, 1)
    assert type(static.conv1) is nn.Conv2d and static.conv1.weight.shape == (2, 3, 3, 3)
    assert type(static.layer2.bn1) is nn.BatchNorm2d and static.layer2.bn1.num_features == 4
    assert type(static.fc) is nn.Linear and static.fc.in_features == 4
    with pytest.raises(NotImplementedError, match="fold_bn"):
        to_static(vm, 1, 1, fold_bn=True)


@pytest.mark.parametrize("layer, message", [
    (nn.Conv2d(8, 8, 3, groups=2), r"layer 0 has 8 channels, which the grouped conv\(s\) 0 "
                                   r"\(groups=2\) split into groups; .* multiples of 4 channels, "
                                   r"and 8 channels make only 2 of those, fewer than the 4 units"),
    (nn.LayerNorm(8), r"layer 0 \(LayerNorm\) cannot be sliced"),
    (nn.Conv2d(8, 2, 1), "layer 0 has 2 channels, fewer than the 4 units"),
])
def test_layers_that_cannot_be_sliced(layer, message):
    with pytest.raises(ValueError, match=message):
        convert_to_sliced(nn.Sequential(layer), VirtualNetworks(4))
    with pytest.raises(ValueError, match="already sliced"):
        convert_to_sliced(nn.Sequential(dvn.SlicedConv2d(8, 8, 1)), VirtualNetworks(4))
