"""pytest-benchmark view of bench.conv (run: python -m pytest bench --benchmark-only).

Under --benchmark-disable (as CI runs it) each case runs once, as a smoke test of the
benchmark itself. The side-by-side table with ratios comes from `python -m bench.conv`.
"""

import pytest
import torch

import dvn_kernels
from bench.conv import ConvCase, candidates, main, wrn_cases

IMPLS = ["compact"] + [b for b in ("masked", "reference", "cpu")
                       if b in dvn_kernels.available_backends()]
CASES = wrn_cases(batch=32, units=4, levels=[1, 4], shortcuts=False)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-L{c.level}")
def test_conv(benchmark, case: ConvCase, impl: str, mode: str):
    fn = candidates(case, [b for b in IMPLS if b != "compact"], mode, torch.float32, False)[impl]
    benchmark.group = f"{case.name} L{case.level} {mode}"
    benchmark(fn)


def test_runner_writes_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--batch", "2", "--levels", "1", "--repeats", "1", "--warmup", "0",
                 "--shortcuts", "--json", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    assert data["meta"]["batch"] == 2 and len(data["rows"]) == 2 * 5
    assert all(r["ms"]["compact"] > 0 for r in data["rows"])
    assert "| wrn-s1 64->64 @32 k3 | 1/4 | fwd |" in capsys.readouterr().out


def test_grouped_and_depthwise_rows(tmp_path, capsys):
    out = tmp_path / "grouped.json"
    assert main(["--shapes", "depthwise", "grouped", "--batch", "1", "--levels", "1",
                 "--modes", "fwd+bwd", "--repeats", "1", "--warmup", "0", "--json",
                 str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert {(r["name"], r["groups"]) for r in rows} >= {("mbv2-dw-s2", 144), ("rnx-g1", 32)}
    text = capsys.readouterr().out
    assert "| mbv2-dw-s2 144->144 @56 k3 g144 s2 | 1/4 | fwd+bwd |" in text
    assert "# depthwise: level 1 fwd+bwd >= 3x faster than masked:" in text
    assert "# grouped: cpu <= 1.2x compact at every level:" in text
