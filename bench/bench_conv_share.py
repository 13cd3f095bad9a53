"""Smoke test of python -m bench.conv_share: both runtimes' instruments read and split."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_conv_share_splits_the_compiled_call(tmp_path, capsys):
    from bench.conv_share import main
    out = tmp_path / "share.json"
    threads = torch.get_num_threads()
    try:
        assert main(["--net", "wrn14-2", "--level", "1", "--calls", "5", "--json",
                     str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    row = json.loads(out.read_text())["rows"][0]
    assert row["onnxruntime"]["convs"] >= 13 and row["onnxruntime"]["conv_us"] > 0
    assert row["compiled"]["onednn"]["primitives_per_call"] == 13
    assert row["compiled"]["onednn"]["kinds"] == ["convolution"]
    # two processes timed apart: each positive, their order is not a property of the code
    # on a busy machine
    assert row["compiled"]["onednn"]["exec_us"] > 0 and row["compiled"]["conv_us"] > 0
    assert "oneDNN executes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--level", "3"])
