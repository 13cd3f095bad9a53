"""dvn profile and dvn infer on a tiny trained run (synthetic data): tables, predictions equal
to the trained model's, budgets from the measured profile, the header or a given table, and
one-line errors with exit status 2."""

import json
import os
import shutil

import pytest
import torch

import dvn
import dvn.deploy as dd
from dvn.cli import main
from dvn.data.synthetic import ENV

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny fmnist-joint run (WRN-8-1, k = 2: fmnist and digits), one epoch."""
    folder = tmp_path_factory.mktemp("deploy-cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, "1")
        assert main(["train", "fmnist-joint", "--preset", "tiny", "--epochs", "1", "--quiet",
                     "--backend", "cpu", "--out", str(folder / "run")]) == 0
        from PIL import Image
        images = folder / "images"
        images.mkdir()
        g = torch.Generator().manual_seed(0)
        for i, size in enumerate([(28, 28), (40, 30), (8, 8)]):
            pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy()).save(images / f"img{i}.png")
        yield str(folder / "run"), str(images)
    torch.set_num_threads(threads)


def fails(capsys, argv):
    """The command's exit status 2 and its one-line message (argparse's own errors print
    the usage above it)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith(f"warning: {ENV}")]   # the synthetic data says so
    assert e.value.code == 2 and lines[-1].startswith(f"dvn {argv[0]}: error: "), lines
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines
    return lines[-1]


def test_profile_writes_the_table_of_every_config(run, capsys):
    folder, _ = run
    assert main(["profile", folder, "--batch", "4", "--repeats", "2", "--quiet",
                 "--runtime", "torch"]) == 0
    out = capsys.readouterr().out
    assert "| 2 (digits) | 2 |" in out and "batch 4 ms" in out
    table = json.load(open(os.path.join(folder, "profile.json")))
    assert [(r["task"], r["level"]) for r in table["rows"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert table["meta"]["batch"] == 4 and "threads" in table["meta"]["machine"]
    assert os.path.isfile(os.path.join(folder, dd.runs.UNIT_FILE))
    assert open(os.path.join(folder, "profile.md")).read().startswith("Profile of")


def test_infer_predicts_what_the_trained_model_predicts(run, capsys):
    folder, images = run
    assert main(["infer", folder, "--task", "2", "--level", "1", "--json", images]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "task 2 (digits) at level 1" in captured.err
    model = dvn.load(os.path.join(folder, "checkpoint.pt")).eval()
    with dd.UnitFile(os.path.join(folder, dd.runs.UNIT_FILE)) as f:
        task = f.tasks[1]
    assert task.native_size == (28, 28) and task.classes == tuple(f"c{i}" for i in range(10))
    files = dd.image_files([images])
    with torch.no_grad():
        probs = model(dd.read_images(files, task), task=2, level=1).softmax(1)
    assert [p["file"] for p in result["predictions"]] == files
    assert [p["class"] for p in result["predictions"]] == probs.argmax(1).tolist()
    assert [p["name"] for p in result["predictions"]] == [f"c{i}" for i in probs.argmax(1)]


def test_infer_picks_the_level_within_a_budget(run, capsys, tmp_path):
    folder, images = run
    main(["profile", folder, "--batch", "2", "--repeats", "2", "--quiet", "--runtime", "torch"])
    capsys.readouterr()
    image = os.path.join(images, "img0.png")
    assert main(["infer", folder, "--task", "1", "--budget-ms", "1e6", image]) == 0
    assert "at level 2, the highest level within 1e+06 ms" in capsys.readouterr().err
    err = fails(capsys, ["infer", folder, "--task", "1", "--budget-ms", "1e-6", image])
    assert "no level of task 1 fits 1e-06 ms; the smallest, level 1, needs" in err
    # megabytes need no profile: the header says what each level holds
    rows = dd.memory_rows(dd.UnitFile(os.path.join(folder, dd.runs.UNIT_FILE)))
    level1 = rows[0]["memory_mb"]
    assert main(["infer", folder, "--task", "1", "--budget-mb", f"{level1 * 1.5}", image]) == 0
    assert f"at level 1, the highest level within {level1 * 1.5:g} MB: " \
           f"{rows[0]['parameters']:,} parameters, {level1:.2f} MB" in capsys.readouterr().err
    err = fails(capsys, ["infer", folder, "--task", "1", "--budget-mb", "0.001", image])
    assert f"the smallest, level 1, needs {level1:.3g} MB" in err
    # a table given by hand
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"rows": [{"task": 1, "level": 1, "latency_ms_b1": 1.0},
                                          {"task": 1, "level": 2, "latency_ms_b1": 9.0}]}))
    assert main(["infer", folder, "--task", "1", "--budget-ms", "5", "--profile", str(given),
                 image]) == 0
    assert "at level 1, the highest level within 5 ms" in capsys.readouterr().err


def test_unit_file_follows_the_checkpoint(run, tmp_path):
    folder, _ = run
    copy = str(tmp_path / "copy")
    shutil.copytree(folder, copy)
    units = os.path.join(copy, dd.runs.UNIT_FILE)
    assert dd.runs.unit_file(copy) == units
    os.utime(units, (1, 1))  # older than the checkpoint: written again
    assert dd.runs.unit_file(copy) == units and os.path.getmtime(units) > 1
    assert dd.runs.unit_file(units) == units


@pytest.mark.parametrize("argv, message", [
    (["infer", "{tmp}/missing", "--task", "1", "--level", "1", "{images}"],
     "run: no run folder or unit file at"),
    (["profile", "{tmp}/missing"], "run: no run folder or unit file at"),
    (["infer", "{run}", "--task", "3", "--level", "1", "{images}"], "task: 3 does not exist"),
    (["infer", "{run}", "--task", "1", "--level", "5", "{images}"], "level: 5 does not exist"),
    (["infer", "{run}", "--task", "1", "--level", "1", "{tmp}/bad.png"],
     "images: cannot read"),
    (["infer", "{run}", "--task", "1", "--level", "1", "{tmp}/nothing.png"],
     "images: no such file or folder"),
    (["infer", "{run}", "--task", "1", "{images}"], "give --level L, --budget-ms T"),
    (["infer", "{run}", "--task", "1", "--level", "1", "--budget-mb", "3", "{images}"],
     "not both"),
    (["infer", "{run}", "--task", "1", "--budget-ms", "-2", "{images}"],
     "expected a positive number"),
    (["infer", "{run}", "--task", "1", "--budget-ms", "5", "--profile", "{tmp}/no.json",
      "{images}"], "profile: no profile at"),
])
def test_errors_are_one_line_with_status_2(run, tmp_path, capsys, argv, message):
    folder, images = run
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    err = fails(capsys, [a.format(tmp=tmp_path, run=folder, images=images) for a in argv])
    assert message in err


def test_budget_ms_without_a_profile_says_how_to_make_one(run, tmp_path, capsys):
    folder, images = run
    copy = str(tmp_path / "fresh")
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("profile.*"))
    err = fails(capsys, ["infer", copy, "--task", "1", "--budget-ms", "5", images])
    assert f"run `dvn profile {copy}` first" in err


def test_a_run_folder_that_cannot_be_written_is_a_one_line_error(run, tmp_path, capsys):
    if os.geteuid() == 0:   # root writes anyway: make the unit file's path a folder instead
        copy = tmp_path / "blocked"
        shutil.copytree(run[0], copy, ignore=shutil.ignore_patterns("deploy.*", "profile.*"))
        (copy / dd.runs.UNIT_FILE).mkdir()
        (copy / dd.runs.UNIT_FILE / "x").write_text("")
    else:
        copy = tmp_path / "readonly"
        shutil.copytree(run[0], copy, ignore=shutil.ignore_patterns("deploy.*", "profile.*"))
        copy.chmod(0o555)
    err = fails(capsys, ["profile", str(copy), "--quiet"])
    assert os.path.join(str(copy), dd.runs.UNIT_FILE) in err
