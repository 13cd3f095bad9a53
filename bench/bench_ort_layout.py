"""Smoke test of python -m bench.ort_layout: ONNX Runtime at its three optimization levels
and the compiled runtime timed side by side, the convolutions in three layouts."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_ort_layout_times_every_optimization_level(tmp_path, capsys):
    from bench.ort_layout import main
    out = tmp_path / "layout.json"
    threads = torch.get_num_threads()
    assert main(["--net", "wrn14-2", "--levels", "1", "--repeats", "3", "--conv-layouts",
                 "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    data = json.loads(out.read_text())
    assert data["meta"]["command"].startswith("python -m bench.ort_layout")
    row, = data["rows"]
    assert set(row["ms"]) == {"ort_all", "ort_extended", "ort_basic", "compiled"}
    assert all(v > 0 for v in row["ms"].values()) and row["over_ort_all"]["ort_all"] == 1
    assert row["conv_ms"]["convs"] == 13 and row["conv_ms"]["onednn_blocked"] > 0
    assert "| wrn14-2 | 1 | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--net", "wrn14-2", "--levels", "3"])
