"""Checkpoints that survive damage: real damaged files give one-line errors naming the file
(exit 2 from the CLI), and --resume falls back to the previous epoch's checkpoint."""

import os
import pickle
import struct
import zipfile

import pytest
import torch

import dvn
from dvn.checkpoint import CheckpointError, digest, previous_path
from dvn.cli import main
from dvn.runs import read

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--backend", "cpu", "--quiet"]


def saved_model(path):
    model = dvn.wrn(8, 1, units=2, num_classes=3, input_sizes=8, image_channels=1,
                    backend="reference")
    dvn.save(model, path, extra={"epoch": 1})
    return model


def entry_offset(path, largest_tensor: bool) -> int:
    """Offset of a byte inside an entry of a torch zip file: the middle of the largest
    tensor's data, or the first byte of the pickle."""
    with zipfile.ZipFile(path) as z:
        if largest_tensor:
            info = max((i for i in z.infolist() if "/data/" in i.filename),
                       key=lambda i: i.file_size)
        else:
            info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    return start + info.file_size // 2 if largest_tensor else start


def flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate(path, keep: float):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


def damage(kind, path):
    if kind == "truncated":
        truncate(path, 0.5)
    elif kind == "truncated-end":
        truncate(path, 0.999)
    elif kind == "empty":
        truncate(path, 0)
    elif kind == "flipped tensor byte":
        flip_byte(path, entry_offset(path, largest_tensor=True))
    elif kind == "flipped pickle byte":
        flip_byte(path, entry_offset(path, largest_tensor=False))
    elif kind == "flipped directory byte":
        flip_byte(path, os.path.getsize(path) - 22)  # the zip's end-of-directory record
    elif kind == "text":
        open(path, "w").write("not a checkpoint\n")
    elif kind == "code":  # a pickle that would call os.system if it were unpickled freely
        open(path, "wb").write(pickle.dumps({"format": os.system}, protocol=2))
    elif kind == "other torch file":
        torch.save({"weights": torch.zeros(3)}, path)


KINDS = {"truncated": "damaged or truncated", "truncated-end": "damaged or truncated",
         "empty": "is empty", "flipped tensor byte": "do not match the digest",
         "flipped pickle byte": "damaged", "flipped directory byte": "damaged", "text": "damaged", "code": "refuses",
         "other torch file": "is not a dvn checkpoint"}


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_gives_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "dvn.pt"
    saved_model(path)
    damage(kind, path)
    with pytest.raises(CheckpointError) as e:
        dvn.load(path)
    message = str(e.value)
    assert str(path) in message and KINDS[kind] in message and "\n" not in message


def test_digest_is_stable_across_a_save_and_a_load(tmp_path):
    model = saved_model(tmp_path / "dvn.pt")
    payload = read(tmp_path / "dvn.pt")
    assert payload["sha256"] == digest({"spec": model.spec, "state_dict": model.state_dict(),
                                        "extra": {"epoch": 1}})
    assert digest({"a": (1, 2.5)}) != digest({"a": (1, 2.6)})


def test_a_checkpoint_without_a_training_state_is_named(tmp_path):
    saved_model(tmp_path / "dvn.pt")
    with pytest.raises(CheckpointError, match="not a dvn training checkpoint"):
        read(tmp_path / "dvn.pt", training=True)


def test_keep_previous_moves_the_replaced_file_aside(tmp_path):
    path = tmp_path / "run.pt"
    dvn.atomic_save({"v": 1}, path, keep_previous=True)
    dvn.atomic_save({"v": 2}, path, keep_previous=True)
    dvn.atomic_save({"v": 3}, path, keep_previous=True)
    assert sorted(os.listdir(tmp_path)) == ["run.prev.pt", "run.pt"]
    assert torch.load(path, weights_only=True) == {"v": 3}
    assert torch.load(previous_path(path), weights_only=True) == {"v": 2}


def state_dict(run):
    return torch.load(f"{run}/checkpoint.pt", weights_only=True)["state_dict"]


@pytest.mark.usefixtures("synthetic")
def test_resume_falls_back_to_the_previous_epoch_and_matches(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "3", "--out", a]) == 0
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "3", "--out", b,
                 "--stop-after", "2"]) == 0
    prev = read(f"{b}/checkpoint.prev.pt", training=True)["extra"]["train"]
    assert prev["epoch"] == 1  # the previous epoch's checkpoint is kept beside the current
    truncate(f"{b}/checkpoint.pt", 0.6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # eval names the file and the previous checkpoint
        main(["eval", b, "--no-latency", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"{b}/checkpoint.pt is damaged or truncated" in err and "checkpoint.prev.pt" in err

    assert main(["train", "fmnist-joint", *TINY, "--epochs", "3", "--out", b, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming from the previous epoch's" in err and os.path.isfile(
        f"{b}/checkpoint.pt.damaged")
    for k, v in state_dict(a).items():  # epoch 2 again, then 3: the same run bit for bit
        assert torch.equal(v, state_dict(b)[k]), k

    os.remove(f"{b}/checkpoint.pt")  # a crash between the two renames of a save
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "3", "--out", b, "--resume"]) == 0
    assert "no " in capsys.readouterr().err


@pytest.mark.usefixtures("synthetic")
def test_resume_with_every_checkpoint_damaged_exits_2(tmp_path, capsys):
    run = str(tmp_path / "r")
    assert main(["train", "fmnist-joint", *TINY, "--epochs", "2", "--out", run]) == 0
    damage("flipped tensor byte", f"{run}/checkpoint.pt")
    damage("truncated", f"{run}/checkpoint.prev.pt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "fmnist-joint", *TINY, "--epochs", "3", "--out", run, "--resume"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "checkpoint.pt is damaged" in err and "checkpoint.prev.pt is damaged" in err
