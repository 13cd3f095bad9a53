"""The dvn command: train -> stop -> resume (equal to an uninterrupted run) -> eval -> export,
and clear errors (tiny model, synthetic data)."""

import json
import re
import subprocess
import sys

import pytest
import torch

from dvn.cli import main
from dvn.data.synthetic import ENV

pytestmark = pytest.mark.usefixtures("synthetic", "one_thread")

TINY = ["--preset", "tiny", "--backend", "cpu", "--quiet", "--epochs", "2"]


def state(path):
    return torch.load(path, weights_only=True)


def test_resumed_run_equals_uninterrupted_then_eval_and_export(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", "fmnist-joint", *TINY, "--out", a]) == 0
    assert main(["train", "fmnist-joint", *TINY, "--out", b, "--stop-after", "1"]) == 0
    half = state(f"{b}/checkpoint.pt")["extra"]["train"]
    assert half["epoch"] == 1 and not half["complete"]
    assert set(half) >= {"optimizer", "rng", "step", "history", "config"}
    with pytest.raises(SystemExit):  # an existing run is never overwritten silently
        main(["train", "fmnist-joint", *TINY, "--out", b])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # nor continued as another run
        main(["train", "fmnist-joint", *TINY, "--out", b, "--resume", "--lr", "0.5"])
    assert "scenario.lr 0.1 there, 0.5 here" in capsys.readouterr().err
    assert main(["train", "fmnist-joint", *TINY, "--out", b, "--resume"]) == 0
    pa, pb = state(f"{a}/checkpoint.pt"), state(f"{b}/checkpoint.pt")
    assert pb["extra"]["train"]["complete"]
    for k, v in pa["state_dict"].items():
        assert torch.equal(v, pb["state_dict"][k]), k
    ha, hb = pa["extra"]["train"]["history"], pb["extra"]["train"]["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]

    base = str(tmp_path / "base")
    assert main(["train", "fmnist-joint", *TINY, "--out", base, "--only", "1:2"]) == 0
    capsys.readouterr()
    assert main(["eval", a, "--baseline", base, "--repeats", "2", "--latency-batch", "8",
                 "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| 1 (fmnist) | 2 |" in table and "WRN-8-1, k=2" in table  # what the preset built
    # latency cells give the median and its 25th-75th percentile range
    assert re.search(r"\| \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\) \| \d+\.\d \(", table), table
    result = json.load(open(f"{a}/results.json"))
    assert [(r["task"], r["level"]) for r in result["rows"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    row = result["rows"][1]
    assert row["indep_full"] is not None and row["density"] == 1.0
    assert row["speedup_vs_masked_b1"] > 0 and result["checks"]
    for name in ("results.md", "accuracy_vs_parameters.png", "speedup.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0

    out = str(tmp_path / "t2l1.pt2")
    assert main(["export", a, "--task", "2", "--level", "1", "--out", out]) == 0
    program = torch.export.load(out)
    x = torch.randn(3, 1, 16, 16)  # the digits task runs at 16x16
    import dvn
    model = dvn.load(f"{a}/checkpoint.pt").eval()
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x, task=2, level=1), atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "scenario: unknown scenario 'nope'"),
    (["train", "fmnist-joint", "--preset", "huge"], "preset: unknown preset"),
    (["train", "fmnist-joint", "--backend", "gpu"], "unknown backend 'gpu'"),
    (["train", "fmnist-joint", *TINY, "--only", "3:1", "--out", "{tmp}/x"], "only: (3, 1)"),
    (["train", "fmnist-joint", *TINY, "--only", "1-2"], "expected TASK:LEVEL"),
    (["train", "fmnist-seq", *TINY, "--out", "{tmp}/y"], "teacher"),
    (["train", "fmnist-joint", *TINY, "--set", "nope=1"], "set: expected FIELD=VALUE"),
    (["train", "fmnist-joint", *TINY, "--set", "augment=maybe"], "set: augment expects bool"),
    (["train", "fmnist-joint", *TINY, "--set", "schedule=cosine"], "schedule: expected one of"),
    (["eval", "{tmp}/missing"], "no checkpoint at"),
    (["export", "{tmp}/missing", "--task", "1", "--level", "1", "--out", "{tmp}/m.pt2"],
     "no checkpoint at"),
])
def test_errors_name_the_argument(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_set_changes_scenario_fields_and_resume_keeps_them(tmp_path):
    run = str(tmp_path / "r")
    sets = ["--set", "input_sizes=20,12", "--set", "augment=true", "--set", "finetune_lr=none"]
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "1", "--out", run, *sets]) == 0
    s = state(f"{run}/checkpoint.pt")["extra"]["train"]["config"]["scenario"]
    assert (s["input_sizes"], s["augment"], s["finetune_lr"]) == ([20, 12], True, None)
    with pytest.raises(SystemExit):  # without the same settings it is another run
        main(["train", "fmnist-joint", *TINY, "--epochs", "1", "--out", run, "--resume"])
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "1", "--out", run, "--resume",
                 *sets]) == 0


def test_export_rejects_a_level_out_of_range(tmp_path, capsys):
    run = str(tmp_path / "r")
    assert main(["train", "fmnist-hier", *TINY, "--epochs", "1", "--out", run]) == 0
    with pytest.raises(SystemExit):
        main(["export", run, "--task", "1", "--level", "3", "--out", str(tmp_path / "e.pt2")])
    assert "level: 3 does not exist" in capsys.readouterr().err


def test_eval_and_export_do_not_import_the_training_loop():
    code = ("import sys, dvn.cli, dvn.results; from dvn.results.evaluate import load_run; "
            "dvn.cli.parser(); print('dvn.training.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_bench_and_module_entry_point(tmp_path, capsys):
    assert main(["bench", "--units", "2", "--depth", "8", "--width", "1", "--batch", "2",
                 "--steps", "1", "--warmup", "1", "--out", str(tmp_path)]) == 0
    assert "FLOP ideal" in capsys.readouterr().out
    assert json.load(open(tmp_path / "bench_train.json"))["rows"][0]["speedup"] > 0
    help_text = subprocess.run([sys.executable, "-m", "dvn", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert all(c in help_text for c in ("train", "eval", "export", "bench"))


def test_tiny_preset_on_real_fashion_mnist(tmp_path, monkeypatch, capsys):
    """The preset pipeline on a subset of the real data, where it is installed."""
    monkeypatch.delenv(ENV)
    from dvn.data import DatasetNotFoundError, task
    try:
        task("fmnist-coarse", "test")
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    run = str(tmp_path / "hier")
    assert main(["train", "fmnist-hier", *TINY, "--epochs", "1", "--out", run]) == 0
    assert main(["eval", run, "--no-latency", "--quiet"]) == 0
    rows = json.load(open(f"{run}/results.json"))["rows"]
    assert [r["task_name"] for r in rows] == ["fmnist-coarse"] * 2 + ["fmnist-fine"] * 2
    assert all(r["test_images"] == 256 and 0 <= r["accuracy"] <= 100 for r in rows)
