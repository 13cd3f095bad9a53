"""Smoke test of python -m bench.conv_share: both runtimes' instruments read and split, the
ahead-of-time ``compiled`` call timed beside them."""

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
    assert row["torch_compile"]["onednn"]["primitives_per_call"] == 13
    assert row["torch_compile"]["onednn"]["kinds"] == ["convolution"]
    # two processes timed apart: each positive, their order is not a property of the code
    # on a busy machine
    assert row["torch_compile"]["onednn"]["exec_us"] > 0 and row["torch_compile"]["conv_us"] > 0
    assert row["wall_us"]["compiled"] > 0 and row["compiled_over_onnxruntime"] > 0
    out = capsys.readouterr().out
    assert "oneDNN executes" in out and "x ONNX Runtime" in out
    with pytest.raises(SystemExit):
        main(["--level", "3"])
