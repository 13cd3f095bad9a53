"""Smoke test of the deployment benchmark (python -m bench.deploy makes its tables)."""

import json

import torch

from bench.deploy import main


def test_deploy_runner_writes_json(tmp_path, capsys):
    out = tmp_path / "deploy.json"
    threads = torch.get_num_threads()
    try:  # the runner uses one thread
        assert main(["--depth", "10", "--repeats", "1", "--dir", str(tmp_path), "--json",
                     str(out), "--sections", "load", "grow", "shared", "threads"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert all(r["parameter_bytes_held"] == 4 * r["count_parameters"] for r in rows["load"])
    assert all(r["equal_to_direct_load"] for r in rows["grow"])
    level1, level4 = rows["shared"][0], rows["shared"][-1]
    assert level1["held_blocks"] == level1["sum_of_exports"] < level1["held_union"]
    assert level4["held_blocks"] == level4["held_union"] < level4["sum_of_exports"]
    assert rows["threads"]["unequal"] == 0
    assert "| 1 | 2 | 1 |" in capsys.readouterr().out
