"""ONNX export of levels (single and --all with a manifest), the runtimes behind dvn infer and
dvn profile (torch, compiled, onnxruntime), the cached ONNX Runtime session, a folder with
one unreadable image, and the message without the deploy extra. A tiny WRN (k = 2) at 16x16
written as a unit file directly (no training), so the suite stays quick."""

import importlib.util
import json
import os

import pytest
import torch

import dvn
import dvn.deploy as dd
from dvn.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from dvn.deploy import onnx as donnx  # noqa: E402
from dvn.deploy import runtimes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """A WRN-8-1, k = 2 (two tasks of 3-channel 16x16 images, 5 classes) as a unit file with
    its tasks' input descriptions, batch norm statistics made non-trivial."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, num_classes=5, input_sizes=16)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    model.eval()
    tasks = [dd.TaskInput(f"t{j}", 3, (16, 16), 16, 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3),
                          tuple(f"c{i}" for i in range(5))) for j in (1, 2)]
    path = str(folder / "deploy.safetensors")
    dd.save(model, path, tasks=tasks)
    from PIL import Image
    images = folder / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8, generator=g)
        Image.fromarray(pixels.numpy()).save(images / f"img{i}.png")
    return model, path, str(images)


def fails(capsys, argv, code=2):
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and lines[-1].startswith(f"dvn {argv[0]}: error: "), lines
    return lines[-1]


def test_export_one_level_is_checked_folded_and_has_a_dynamic_batch(unit, tmp_path, capsys):
    model, path, _ = unit
    out = str(tmp_path / "t2l1.onnx")
    assert main(["export", path, "--task", "2", "--level", "1", "--out", out]) == 0
    assert "max |onnxruntime - model|" in capsys.readouterr().out
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["dvn.task"] == "2" and props["dvn.level"] == "1"
    assert int(props["dvn.opset"]) == donnx.opset_of(proto) >= 17
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value          # the batch axis is symbolic
    # batch norms after convolutions are folded: fewer than the level's BatchNorm2d layers
    static = dd.load_level(path, 2, 1)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in static.modules())
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) < bns
    sess = donnx.session(out, threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            want = model(x, task=2, level=1)
        torch.testing.assert_close(donnx.run_session(sess, x), want, atol=1e-4, rtol=1e-4)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_export_all_writes_every_level_and_a_manifest(unit, tmp_path, capsys):
    _, path, _ = unit
    out = tmp_path / "all"
    assert main(["export", path, "--all", "--out", str(out), "--quiet"]) == 0
    manifest = json.load(open(out / donnx.MANIFEST))
    assert manifest["format"] == donnx.MANIFEST_FORMAT and manifest["opset"] >= 17
    got = [(m["task"], m["level"]) for m in manifest["models"]]
    assert got == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for m in manifest["models"]:
        assert (out / m["file"]).is_file() and m["input"]["shape"] == ["batch", 3, 16, 16]
        assert m["parameters"] == sum(p.numel() for p in
                                      dd.load_level(path, m["task"], m["level"]).parameters())
        assert m["labels"] == [f"c{i}" for i in range(5)] and m["task_name"] == f"t{m['task']}"
        assert m["normalisation"]["mean"] == pytest.approx([0.5, 0.4, 0.3])
        assert m["max_abs_error"] < 1e-4


def test_an_export_that_differs_is_not_written(unit, tmp_path, monkeypatch):
    _, path, _ = unit
    wrong = lambda sess, x: torch.zeros(x.shape[0], 5)  # noqa: E731
    monkeypatch.setattr(donnx, "run_session", wrong)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="differs from the model's"):
        donnx.export_level(path, 1, 1, str(out))
    assert not out.exists() and not os.listdir(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["export", "{path}", "--out", "{tmp}/x.onnx"], "give --task T --level L"),
    (["export", "{path}", "--all", "--task", "1", "--out", "{tmp}/d"], "not both"),
    (["export", "{path}", "--task", "3", "--level", "1", "--out", "{tmp}/x.onnx"],
     "task: 3 does not exist"),
    (["export", "{path}", "--task", "1", "--level", "1", "--format", "pt2", "--all",
      "--out", "{tmp}/x"], "not both"),
    (["infer", "{path}", "--task", "1", "--level", "1", "--runtime", "tensorrt", "{tmp}"],
     "argument --runtime: expected one of torch, compiled, onnxruntime"),
])
def test_export_and_runtime_errors_are_one_line(unit, tmp_path, capsys, argv, message):
    _, path, _ = unit
    err = fails(capsys, [a.format(path=path, tmp=tmp_path) for a in argv])
    assert message in err


def test_without_the_extra_the_onnx_commands_say_what_to_install(unit, tmp_path, capsys,
                                                                 monkeypatch):
    _, path, images = unit
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    for argv in (["export", path, "--task", "1", "--level", "1", "--out",
                  str(tmp_path / "x.onnx")],
                 ["infer", path, "--task", "1", "--level", "1", "--runtime", "onnxruntime",
                  images],
                 ["profile", path, "--runtime", "onnxruntime", "--quiet"]):
        err = fails(capsys, argv)
        assert "pip install -e '.[deploy]'" in err and "onnxruntime" in err
    assert runtimes.installed("onnxruntime") is False
    from dvn.deploy.commands import default_runtimes
    assert default_runtimes() == ["torch"]


def test_the_session_is_cached_beside_the_unit_file_and_follows_it(unit, tmp_path):
    model, path, _ = unit
    copy = str(tmp_path / "m.safetensors")
    dd.save(model, copy)
    run = runtimes.load(copy, 1, 2, "onnxruntime")
    assert run.note == "exported now" and os.path.isfile(donnx.cache_path(copy, 1, 2))
    assert donnx.cache_path(copy, 1, 2) == str(tmp_path / "m.onnx" / "t1_l2.onnx")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x, task=1, level=2), atol=1e-4, rtol=1e-4)
    assert runtimes.load(copy, 1, 2, "onnxruntime").note == "cached export"
    os.utime(copy, ns=(1, 1))                     # another version of the unit file
    assert runtimes.load(copy, 1, 2, "onnxruntime").note == "exported now"
    with open(donnx.cache_path(copy, 1, 2), "wb") as f:
        f.write(b"damaged")                        # a damaged cache entry is made again
    assert runtimes.load(copy, 1, 2, "onnxruntime").note == "exported now"


def test_sessions_use_torchs_threads_and_do_not_spin():
    torch.set_num_threads(2)
    so = donnx.session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert donnx.session_options(1).intra_op_num_threads == 1


@pytest.fixture(scope="module")
def compiled_runs(unit):
    """Level 1 of both tasks on the ``compiled`` runtime (one compilation each, shared)."""
    _, path, _ = unit
    return {task: runtimes.load(path, task, 1, "compiled") for task in (1, 2)}


def test_compiled_runtime_equals_the_level(unit, compiled_runs):
    model, path, _ = unit
    for task, run in compiled_runs.items():
        assert run.note == "AOTInductor at batch 1", run.note
        for b in (1, 2):
            x = torch.randn(b, 3, 16, 16)
            with torch.no_grad():
                torch.testing.assert_close(run(x), model(x, task=task, level=1), atol=1e-4,
                                           rtol=1e-4)
    with pytest.raises(ValueError, match="runtime: expected one of torch, compiled"):
        runtimes.load(path, 2, 2, "tvm")


def test_compiled_levels_of_one_shape_keep_their_own_frozen_weights(unit, compiled_runs):
    """Two tasks at one level have the same shapes and different weights: each compiled
    runner answers with its own (frozen graphs never shared); batch 1 runs the ahead-of-time
    graph (no PyTorch convolution op at all), larger batches not on PyTorch's im2col path."""
    model, path, _ = unit
    x = torch.randn(1, 3, 16, 16)
    runs = compiled_runs
    with torch.no_grad():
        assert not torch.equal(runs[1](x), runs[2](x))
        # A batch that is not contiguous goes the torch.compile way, with the same answer.
        xt = torch.randn(1, 16, 16, 3).permute(0, 3, 1, 2)
        torch.testing.assert_close(runs[2](xt), model(xt, task=2, level=1), atol=1e-4,
                                   rtol=1e-4)
        # Larger batches share one graph: a server's varying batch sizes do not recompile.
        torch.testing.assert_close(runs[2](torch.cat([x, x])), model(torch.cat([x, x]), task=2,
                                                                     level=1), atol=1e-4,
                                   rtol=1e-4)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for b in (3, 5, 7):
                xb = torch.randn(b, 3, 16, 16)
                torch.testing.assert_close(runs[2](xb), model(xb, task=2, level=1), atol=1e-4,
                                           rtol=1e-4)
        with torch.profiler.profile() as prof:
            runs[2](x)
        names = {e.key for e in prof.key_averages()}
        # (dvn_kernels::direct_conv3x3_nhwc, the direct kernel of a GEMM level, may appear)
        assert not any("conv" in n for n in names if n.startswith("aten::")), sorted(names)
        with torch.profiler.profile() as prof:
            runs[2](torch.cat([x, x]))
        names = {e.key for e in prof.key_averages()}
        assert "aten::_slow_conv2d_forward" not in names, sorted(names)


def test_compiled_runtime_says_when_batch_1_falls_back(unit, monkeypatch):
    """An ahead-of-time compilation that fails is a warning naming the level and the cause;
    batch 1 still runs (on torch.compile) and the runner's note says so."""
    model, path, _ = unit

    def broken(module, example):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(runtimes, "aot_capture", broken)
    with pytest.warns(RuntimeWarning, match=r"task 2 level 2: .*RuntimeError: no compiler "
                                            r"here\); batch 1 runs on torch.compile"):
        run = runtimes.load(path, 2, 2, "compiled")
    assert run.note == "torch.compile (AOT failed)"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x, task=2, level=2), atol=1e-4, rtol=1e-4)


def test_profile_rows_carry_their_runtime_and_spread(unit, tmp_path, capsys):
    _, path, _ = unit
    out = tmp_path / "prof"
    assert main(["profile", path, "--batch", "2", "--repeats", "3", "--quiet", "--out",
                 str(out)]) == 0            # default: torch and onnxruntime
    table = json.load(open(out / "profile.json"))
    assert [(r["task"], r["level"], r["runtime"]) for r in table["rows"]] == [
        (t, lv, rt) for t in (1, 2) for lv in (1, 2) for rt in ("torch", "onnxruntime")]
    for r in table["rows"]:
        low, high = r["latency_ms_b1_iqr"]
        assert low <= r["latency_ms_b1"] <= high and len(r["latency_ms_b2_iqr"]) == 2
    assert table["meta"]["runtimes"] == ["torch", "onnxruntime"]
    assert "| 1 (t1) | 1 | onnxruntime |" in capsys.readouterr().out


def _hand_profile(path, rows):
    table = dd.Profile.from_rows(rows, file_id=dd.budget.file_id(path))
    table.save(os.path.dirname(path))


def test_infer_runs_the_fastest_profiled_runtime_and_budgets_per_runtime(unit, tmp_path,
                                                                         capsys):
    model, path, images = unit
    copy = str(tmp_path / "deploy.safetensors")
    dd.save(model, copy, tasks=dd.UnitFile(path).tasks)
    _hand_profile(copy, [
        {"task": 1, "level": 1, "runtime": "torch", "latency_ms_b1": 4.0, "memory_mb": 1},
        {"task": 1, "level": 1, "runtime": "onnxruntime", "latency_ms_b1": 1.0,
         "memory_mb": 1},
        {"task": 1, "level": 2, "runtime": "torch", "latency_ms_b1": 9.0, "memory_mb": 2},
        {"task": 1, "level": 2, "runtime": "onnxruntime", "latency_ms_b1": 3.0,
         "memory_mb": 2}])
    assert main(["infer", copy, "--task", "1", "--level", "1", "--json", images]) == 0
    got = capsys.readouterr()
    assert "runtime onnxruntime (the fastest in the profile)" in got.err
    result = json.loads(got.out)
    assert result["runtime"] == "onnxruntime" and result["errors"] == []
    files = dd.image_files([images])
    with torch.no_grad():
        want = model(dd.read_images(files, dd.UnitFile(path).tasks[0]), task=1, level=1)
    assert [p["class"] for p in result["predictions"]] == want.argmax(1).tolist()
    # the budget is compared with the rows of the runtime in use
    assert main(["infer", copy, "--task", "1", "--budget-ms", "5", images]) == 0
    assert "at level 2, the highest level within 5 ms" in capsys.readouterr().err
    assert main(["infer", copy, "--task", "1", "--budget-ms", "5", "--runtime", "torch",
                 images]) == 0
    err = capsys.readouterr().err
    assert "at level 1, the highest level within 5 ms" in err and "runtime torch" in err
    err = fails(capsys, ["infer", copy, "--task", "1", "--budget-ms", "5", "--runtime",
                         "compiled", images])
    assert "no compiled rows for task 1" in err


def test_a_folder_with_one_unreadable_image(unit, tmp_path, capsys):
    _, path, images = unit
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted(os.listdir(images)):
        (folder / f).write_bytes(open(os.path.join(images, f), "rb").read())
    (folder / "img1.png").write_bytes(b"\x89PNG but not really")
    assert main(["infer", path, "--task", "1", "--level", "1", "--runtime", "torch",
                 str(folder)]) == 1
    got = capsys.readouterr()
    assert [line.split(":")[0] for line in got.out.splitlines()] == [
        str(folder / "img0.png"), str(folder / "img2.png")]
    errors = [line for line in got.err.splitlines() if line.startswith("dvn infer: error:")]
    assert errors == [f"dvn infer: error: images: cannot read {folder / 'img1.png'} as an "
                      f"image (cannot identify image file '{folder / 'img1.png'}')"]
    assert "1 of 3 images could not be read" in got.err


def test_runtimes_table_reads_a_dash_for_what_was_not_timed():
    """``bench.runtimes --runtimes compiled``: rows with only compiled and plain ORT."""
    from bench.runtimes import markdown
    rows = [{"net": "n", "level": lv, "threads": 1, "batch": 1, "rounds": 3,
             "ms": {"compiled": 2.0 * lv, "plain_ort": 1.6 * lv}, "dvn_fastest": "compiled",
             "fastest_over_plain_ort": 1.25} for lv in (1, 2)]
    rows[0]["level1_speedup"] = {"compiled": 2.0, "plain_ort": 2.0}
    table = markdown(rows)
    assert "| n | 1 | 1 | 1 | - | - | 2.00 | - | 1.60 | 1.25 (compiled) | 1.25 | - |" in table
    assert "| n | 1 | 1 | - / - / 2.0x / - / 2.0x |" in table


def test_runtimes_over_several_runs_report_each_ratio_median_and_range():
    """``bench.runtimes --runs 3``: ratios taken per run, then their median and min-max."""
    from bench.runtimes import markdown, summarise

    def run(compiled_ms, ort_ms, fastest):
        rows = []
        for lv in (1, 2):
            ms = {"compiled": compiled_ms * lv, "plain_ort": ort_ms * lv, "torch": 9.0 * lv}
            rows.append({"net": "n", "level": lv, "threads": 1, "batch": 1, "rounds": 5,
                         "ms": ms, "dvn_fastest": fastest,
                         "fastest_over_plain_ort": ms[fastest] / ms["plain_ort"],
                         "compiled_over_plain_ort": ms["compiled"] / ms["plain_ort"]})
        rows[0]["level1_speedup"] = {k: rows[1]["ms"][k] / rows[0]["ms"][k] for k in ms}
        return rows
    rows = summarise([run(1.2, 1.0, "compiled"), run(1.5, 1.0, "compiled"),
                      run(1.3, 1.1, "compiled")])
    assert [(r["level"], r["runs"]) for r in rows] == [(1, 3), (2, 3)]
    top = rows[0]
    assert top["ms"] == {"compiled": 1.3, "plain_ort": 1.0, "torch": 9.0}
    assert top["compiled_over_plain_ort"] == pytest.approx(1.2)  # median of 1.2, 1.5, 1.18
    assert top["spread"]["compiled_over_plain_ort"] == pytest.approx([1.3 / 1.1, 1.5])
    assert top["dvn_fastest"] == "compiled"
    assert top["level1_speedup"]["compiled"] == pytest.approx(2.0)
    assert len(top["per_run_ms"]) == 3
    table = markdown(rows)
    assert "| n | 1 | 1 | 1 | - | 9.00 | 1.30 | - | 1.00 | 1.20 (1.18-1.50) (compiled) | " \
           "1.20 (1.18-1.50) | - |" in table
