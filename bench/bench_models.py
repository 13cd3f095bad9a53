"""Smoke test of the whole-model benchmark (python -m bench.models makes the table)."""

import json

from bench.models import main


def test_models_runner_writes_json(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["--models", "wrn-32-4", "--levels", "1", "--batch", "2", "--repeats", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["params"] > 1.8e6
    assert set(rows[0]["ms"]) == {"sliced", "static", "masked"}
    assert "| wrn-32-4 (32x32, batch 2) | 1/2 |" in capsys.readouterr().out


def test_mobilenet_v2_rows(tmp_path, capsys):
    out = tmp_path / "mobilenet.json"
    assert main(["--models", "mobilenet-v2", "--levels", "1", "--batch", "2", "--repeats", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and 1e5 < rows[0]["params"] < 2.2e6  # about 1/16 of the 1x1 convs
    text = capsys.readouterr().out
    assert "| mobilenet-v2 (64x64, batch 2) | 1/4 |" in text
    assert "# mobilenet-v2 level 1 vs the masked twin:" in text


def test_a_capture_without_cuda_graphs_says_so(tmp_path, capsys):
    # On a CPU torch's cudagraphs backend skips its graphs: the captured row must say so, not
    # pass for a CUDA-graph replay.
    out = tmp_path / "captured.json"
    assert main(["--models", "wrn-32-4", "--levels", "1", "--batch", "2", "--repeats", "1",
                 "--warmup", "0", "--captured", "--capture-backend", "cudagraphs",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert "captured" in row["ms"]
    assert row["cudagraph_skips"] and "cpu device" in row["cudagraph_skips"][0]
    assert "# captured level 1 ran without CUDA graphs:" in capsys.readouterr().out


def test_cudagraph_skips_collects_only_inside_the_block():
    import logging

    from bench.timing import cudagraph_skips

    log = logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs")
    with cudagraph_skips() as seen:
        log.warning("skipping cudagraphs due to a test\nstack")
    log.warning("outside")
    assert seen == ["skipping cudagraphs due to a test"]
