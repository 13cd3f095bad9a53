"""Smoke test of python -m bench.serve_idle: a served level after idle gaps, decomposed, and
the forward alone after the same gaps."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_serve_idle_decomposes_each_gap(tmp_path, capsys):
    from bench.serve_idle import main
    out = tmp_path / "idle.json"
    assert main(["--gaps-ms", "0", "5", "--requests", "3", "--calls", "3", "--json",
                 str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["command"].startswith("python -m bench.serve_idle")
    assert data["meta"]["profiled_b1_ms"] > 0 and len(data["rows"]) == 2
    for row in data["rows"]:
        s = row["server"]
        assert s["requests"] == 3 and s["server_ms"]["p50"] >= s["queued_ms"]["p50"] >= 0
        assert s["run_ms"]["p50"] > 0
        assert {"sleep", "spin_sleep0", "spin_hot"} <= set(row["alone"])
    assert "| 5 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--gaps-ms", "-1"])
