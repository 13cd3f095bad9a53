"""Export of one level, whole-model checkpoints, batch norm calibration."""

import os

import pytest
import torch
import torch.nn as nn

import dvn
from dvn import count_parameters, to_static


def model():
    torch.manual_seed(0)
    m = dvn.wrn(8, 2, units=2, num_classes=[3, 5])
    m.train()
    for _ in range(2):  # make running statistics non-trivial
        for task, level in m.networks.configs():
            m(torch.randn(4, 3, 16, 16) * 2 + 1, task=task, level=level)
    return m


PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Identity, nn.Sequential, nn.ModuleList)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_static_export_equals_the_dynamic_model(mode):
    m = model()
    m.train(mode == "train")
    x = torch.randn(3, 3, 16, 16)
    for task, level in m.networks.configs():
        static = to_static(m, task, level)
        assert static.training == m.training
        torch.testing.assert_close(static(x), m(x, task=task, level=level), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in static.parameters()) == count_parameters(m, task, level)
        for sub in static.modules():
            assert not isinstance(sub, (dvn.SlicedConv2d, dvn.SlicedBatchNorm2d))


def test_static_export_holds_only_its_level():
    m = model()
    small, full = to_static(m, 2, 1), to_static(m, 2, 2)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    assert small.blocks[0].conv1.weight.shape == (16, 8, 3, 3)  # unit 2 of 32 -> 16, of 16 -> 8


def test_fold_bn_equals_eval_mode():
    m = model().eval()
    x = torch.randn(3, 3, 16, 16)
    folded = to_static(m, 1, 1, fold_bn=True).eval()
    assert isinstance(folded.blocks[0].bn2, nn.Identity)
    torch.testing.assert_close(folded(x), m(x, task=1, level=1), rtol=1e-4, atol=1e-5)


def test_torch_export_and_save_alone(tmp_path):
    m = model().eval()
    static = to_static(m, 2, 1).eval()
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(static, (x,))
    torch.testing.assert_close(program.module()(x), static(x))
    path = tmp_path / "level.pt2"
    torch.export.save(program, path)
    torch.testing.assert_close(torch.export.load(path).module()(x), static(x))
    dvn.atomic_save(static.state_dict(), tmp_path / "level.pt")
    again = to_static(dvn.wrn(8, 2, units=2, num_classes=[3, 5]), 2, 1).eval()
    again.load_state_dict(torch.load(tmp_path / "level.pt", weights_only=True))
    torch.testing.assert_close(again(x), static(x))


def test_checkpoint_round_trips_exactly(tmp_path):
    m = model().eval()
    path = tmp_path / "dvn.pt"
    dvn.save(m, path, extra={"epoch": 3})
    assert os.listdir(tmp_path) == ["dvn.pt"]  # no temporary file left behind
    loaded = dvn.load(path).eval()
    assert loaded.spec == m.spec and loaded.networks == m.networks
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 3, 16, 16)
    for task, level in m.networks.configs():
        assert torch.equal(loaded(x, task=task, level=level), m(x, task=task, level=level))
    assert torch.load(path, weights_only=True)["extra"] == {"epoch": 3}


def test_checkpoint_errors(tmp_path):
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a dvn checkpoint"):
        dvn.load(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="has no spec"):
        dvn.save(nn.Linear(2, 2), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="spec: expected a dict with arch"):
        dvn.build({"arch": "vgg"})


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "dvn.pt"
    dvn.atomic_save({"v": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        dvn.atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["dvn.pt"]


def test_calibrate_bn_recomputes_only_the_given_configs():
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    batches = [torch.randn(8, 3, 16, 16) * 3 - 2 for _ in range(3)]
    m.eval()
    dvn.calibrate_bn(m, [(b, None) for b in batches], configs=[(2, 1)])
    assert not m.training
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".t2_l1." in k for k in changed)
    # The first layer's statistics are the plain average over the calibration batches.
    bn = m.blocks[0].bn1.norms["t2_l1"]
    stem = m.stems["t1"].weight  # stems are per task: task 2 uses its own
    with torch.no_grad():
        active = m.networks.active(2, 1)
        feats = [m.stems["t2"](b, active) for b in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0),
                               rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and stem is m.stems["t1"].weight
    with pytest.raises(ValueError, match="level: 3 does not exist"):
        dvn.calibrate_bn(m, batches, configs=[(1, 3)])
    with pytest.raises(ValueError, match="loader: gave no batches for task 1"):
        dvn.calibrate_bn(m, [], configs=[(1, 1)])
