"""The paper's scenarios run from the CLI on files in the datasets' real formats, and say what
they build.

CIFAR-10/100, STL-10 and Tiny-ImageNet cannot be installed here, so tiny archives in their
official layouts (tests/data_files.py) stand in; every scenario trains one short epoch through
`dvn train --data-root` and is evaluated by `dvn eval`.
"""

import json
import re

import pytest
import torch

from data_files import write_cifar10, write_cifar100, write_stl10, write_tiny_imagenet
from dvn.model import backbones
from dvn.cli import main
from dvn.training import PRESETS, SCENARIOS, get_scenario

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--preset", "tiny", "--backend", "cpu", "--quiet", "--epochs", "1", "--batch-size", "8",
         "--train-subset", "16", "--test-subset", "16"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_cifar10(root / "cifar-10-batches-py", per_batch=8, n_test=16)
    write_cifar100(root / "cifar-100-python", n_train=40, n_test=16)
    write_stl10(root / "stl10_binary", n_train=16, n_test=8)
    write_tiny_imagenet(root / "tiny-imagenet-200", n_classes=200, per_class=1, n_val=200)
    return str(root)


def evaluated_rows(run: str) -> list[dict]:
    assert main(["eval", run, "--no-latency", "--quiet", "--out", run]) == 0
    with open(f"{run}/results.json") as f:
        return json.load(f)["rows"]


@pytest.mark.parametrize("name", ["J1", "H1", "J3", "J2"])
def test_joint_and_hierarchical_scenarios_run(name, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DVN_CACHE", "off")
    run = str(tmp_path / name)
    assert main(["train", name, *QUICK, "--data-root", data_root, "--out", run]) == 0
    s = get_scenario(name, "tiny")
    rows = evaluated_rows(run)
    assert len(rows) == len(s.tasks) * s.units
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in rows)


@pytest.mark.parametrize("name", ["S1", "S2"])
def test_sequential_scenarios_run(name, data_root, tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    args = [*QUICK, "--data-root", data_root]
    assert main(["train", name, *args, "--only", "1:2", "--out", old]) == 0
    assert main(["train", name, *args, "--teacher", old, "--out", new]) == 0
    rows = evaluated_rows(new)
    assert len(rows) == 4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_descriptions_name_the_backbone_each_preset_builds(preset):
    """Every scenario's title names the backbone and k of the model its preset builds (the
    small preset used to build WRN-14-2 while saying WRN-14-4)."""
    for name in SCENARIOS:
        s = get_scenario(name, preset)
        with torch.device("meta"):  # the spec is what matters, not the weights
            spec = backbones.build(s.backbone_spec([10] * len(s.tasks), "reference")).spec
        built = (f"WRN-{spec['depth']}-{spec['width']}" if spec["arch"] == "wrn"
                 else f"ResNet-{spec['depth']}")
        assert re.findall(r"WRN-\d+-\d+|ResNet-\d+", s.title) == [built], (name, s.title)
        assert re.findall(r"k=(\d+)", s.title) == [str(spec["units"])], (name, s.title)
        sizes = spec["input_sizes"]
        sizes = [sizes] * len(s.tasks) if isinstance(sizes, int) else sizes
        assert s.title.endswith(f"{'/'.join(map(str, sizes))} px"), (name, s.title)
