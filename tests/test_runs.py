"""What dvn infer, profile and serve take: a run folder, a model saved with dvn.save, or a unit
file; both file formats carry digests that a damaged byte fails; the one fit rule, the one
timer and the one atomic write."""

import json
import os

import pytest
import torch

import dvn
import dvn.deploy as dd
from dvn.cli import main
from dvn.data.loading import fit, fit_margin
from dvn.timing import medians, side_by_side, time_calls
from dvn_kernels.files import atomic_write, previous_path, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, tasks=2, num_classes=10, input_sizes=16, image_channels=1,
                    backend="cpu")
    with torch.no_grad():   # batch norm statistics that make levels differ
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def png(folder, name: str, size=(16, 16)) -> str:
    from PIL import Image
    g = torch.Generator().manual_seed(len(name))
    pixels = torch.randint(0, 256, size, dtype=torch.uint8, generator=g)
    path = os.path.join(folder, name)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def test_infer_takes_a_model_saved_with_dvn_save(tmp_path, capsys):
    model = small_model()
    path = tmp_path / "model.pt"
    dvn.save(model, path)
    image = png(tmp_path, "a.png")
    assert main(["infer", str(path), "--task", "2", "--level", "1", "--json", "--device", "cpu",
                 image]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["predictions"]
    # the plain input description: the image at the input size, scaled to 0..1
    from PIL import Image
    x = torch.frombuffer(bytearray(Image.open(image).tobytes()), dtype=torch.uint8)
    x = x.view(1, 1, 16, 16).float() / 255
    with torch.no_grad():
        probs = model(x, task=2, level=1).softmax(1)[0]
    assert row["class"] == int(probs.argmax()) and row["probability"] == pytest.approx(
        float(probs.max()), abs=1e-4)
    assert os.path.isfile(tmp_path / "model.safetensors")
    # a unit file made from it is taken as is, and a profile reads it too
    assert dd.runs.unit_file(str(tmp_path / "model.safetensors")) == str(
        tmp_path / "model.safetensors")
    assert main(["profile", str(path), "--batch", "2", "--repeats", "1", "--quiet",
                 "--runtime", "torch", "--device", "cpu"]) == 0
    assert os.path.isfile(tmp_path / "profile.json")


def test_dvn_save_extra_tasks_describe_the_inputs(tmp_path, capsys):
    model = small_model()
    tasks = [dd.TaskInput(f"t{j}", 1, (12, 12), 16, 1, (0.5,), (0.25,), ("no", "yes") * 5)
             for j in (1, 2)]
    dvn.save(model, tmp_path / "m.pt", extra={"tasks": [t.to_dict() for t in tasks]})
    image = png(tmp_path, "b.png", (30, 20))
    assert main(["infer", str(tmp_path / "m.pt"), "--task", "1", "--level", "2", "--json",
                 "--device", "cpu", image]) == 0
    (row,) = json.loads(capsys.readouterr().out)["predictions"]
    x = dd.read_images([image], tasks[0])
    with torch.no_grad():
        expected = int(model(x, task=1, level=2).argmax(1))
    assert row["class"] == expected and row["name"] == tasks[0].classes[expected]
    with dd.UnitFile(tmp_path / "m.safetensors") as f:
        assert f.tasks == tasks


def flip(path, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_a_damaged_tensor_byte_of_a_unit_file_is_reported(tmp_path, capsys):
    model = small_model()
    path = tmp_path / "m.safetensors"
    dd.save(model, path, tasks=dd.runs.plain_inputs(model))
    flip(path, os.path.getsize(path) - 3)   # inside the last tensor's bytes
    with dd.UnitFile(path) as f:             # the header is intact
        keys = list(f.entries)
        with pytest.raises(ValueError, match=r"m.safetensors is damaged \(tensor '.*' does "
                                             "not match the digest written with it"):
            f.read(keys)
    image = png(tmp_path, "c.png")
    with pytest.raises(SystemExit) as e:
        for task in (1, 2):
            for level in (1, 2):
                main(["infer", str(path), "--task", str(task), "--level", str(level),
                      "--device", "cpu", image])
    assert e.value.code == 2 and "is damaged" in capsys.readouterr().err


def test_a_damaged_header_byte_of_a_unit_file_is_reported(tmp_path):
    model = small_model()
    path = tmp_path / "m.safetensors"
    dd.save(model, path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n)
    # the spec's orders, task 1's swapped: still JSON, still a backbone with the same tensors,
    # but not what was written
    old = b'\\"orders\\": [[1, 2]'
    at = header.index(old)
    data = bytearray(open(path, "rb").read())
    data[8 + at:8 + at + len(old)] = old.replace(b"[[1, 2]", b"[[2, 1]")
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="m.safetensors is damaged .its header does not match "
                                         "the digest written with it"):
        dd.UnitFile(path)


def test_a_damaged_byte_of_a_dvn_save_file_is_reported(tmp_path):
    model = small_model()
    path = tmp_path / "m.pt"
    dvn.save(model, path)
    data = open(path, "rb").read()
    # a byte of a weight's data: its raw bytes are stored as they are in the zip
    w = model.state_dict()["blocks.0.conv1.weight"].numpy().tobytes()
    at = data.index(w[:64])
    flip(path, at + 10)
    with pytest.raises(dvn.checkpoint.CheckpointError, match="is damaged"):
        dvn.load(path)


def test_the_one_fit_rule():
    assert fit_margin(28, 28, 32) == 2 and fit_margin(32, 32, 32) == 0
    assert fit_margin(8, 8, 16) is None and fit_margin(96, 96, 64) is None
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert fit(x, 32).dtype == torch.uint8 and fit(x, 32, pad=4).shape[-1] == 40
    assert fit(x, 16).dtype == torch.float32 and fit(x, 16).shape[-2:] == (16, 16)


def test_the_one_timer_interleaves_and_counts():
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    samples = time_calls(fns, repeats=4, warmup=1, order="rotate")
    assert [len(s) for s in samples] == [4, 4, 4] and len(calls) == 3 * 5
    assert calls[3:6] == [0, 1, 2] and calls[6:9] == [1, 2, 0]   # round 1 starts at 1
    assert all(t >= 0 for t in medians(samples))
    calls.clear()
    time_calls(fns, repeats=2, warmup=0, settle=1, calls=3, order="fixed")
    assert len(calls) == 2 * 3 * (1 + 3)
    assert set(side_by_side({"a": fns[0], "b": fns[1]}, repeats=2, warmup=0)) == {"a", "b"}
    with pytest.raises(ValueError, match="order"):
        time_calls(fns, repeats=1, order="random")


def test_the_one_atomic_write(tmp_path):
    path = tmp_path / "sub" / "f.json"
    write_json(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1}

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path / "sub") == ["f.json"]
    atomic_write(path, lambda f: f.write(b"{}"), keep_previous=True)
    assert json.load(open(previous_path(path))) == {"a": 1}
