"""Smoke test of python -m bench.gpu_host (the GPU check's host-time profile) on a CPU."""

import json


def test_gpu_host_times_and_profiles_each_backend(tmp_path, capsys):
    from bench.gpu_host import main
    out = tmp_path / "host.json"
    assert main(["--dry-run", "--top", "20", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["backend"], r["pass"]) for r in rows} == {
        (b, p) for b in ("compact", "reference", "masked") for p in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r["host_us"] > 0
        if r["backend"] != "compact":  # the profile holds the op's own entry point (in the
            # top 20: autograd's own frames can come first in a forward+backward)
            assert len(r["profile"]) == 20
            assert any("planned_conv2d" in f["function"] for f in r["profile"])
    assert "| reference | fwd |" in capsys.readouterr().out
