"""Smoke test of the host-overhead benchmark (python -m bench.overhead makes the tables)."""

import json

from bench.overhead import main


def test_overhead_runner_writes_json(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert main(["--models", "wrn-32-4", "--levels", "1", "--repeats", "1", "--calls", "5",
                 "--rounds", "1", "--no-capture", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["what"] for r in rows["calls"]} == {"op forward", "planned op forward",
                                                  "op forward+backward", "module forward"}
    (latency,) = rows["latency"]
    assert latency["level"] == 1 and set(latency["ms"]) == {"sliced", "static", "masked"}
    text = capsys.readouterr().out
    assert "| wrn-32-4 (32x32, batch 1) | 1/2 |" in text and "op per call <= 2.0x" in text
