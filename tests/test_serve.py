"""dvn serve over real HTTP on the loopback: every endpoint, answers equal to dvn infer's under
concurrency, the level policy, the bad-input matrix, overload (503 + Retry-After) and shutdown
(SIGTERM drains the queue). A tiny WRN-8-1 (k = 2) keeps it fast."""

import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import dvn.deploy as dd  # noqa: E402
from dvn.cli import main  # noqa: E402
from tests.serve_helpers import TASKS, ServerProcess, tiny_unit_file  # noqa: E402

TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    path = tiny_unit_file(str(folder / "model.safetensors"))
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    files = []
    for i, (size, mode) in enumerate([((16, 16), "L"), ((20, 13), "L"), ((8, 8), "RGB"),
                                      ((30, 30), "RGB")]):
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        f = str(folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}")
        Image.fromarray(pixels.numpy(), mode).save(f)
        files.append(f)
    return path, files


@pytest.fixture(scope="module")
def server(unit):
    s = ServerProcess([unit[0], "--max-batch", "8", "--max-queue", "64", "--threads", "1",
                       "--max-body-mb", "0.5"])
    yield s
    s.stop()


def b64(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def post(url, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + "/v1/predict", content=data, timeout=TIMEOUT, **kw)


def reference(path, files, task, level):
    """What dvn infer computes: the level loaded alone, images read from their files."""
    model = dd.load_level(path, task, level)
    with torch.no_grad():
        return model(dd.read_images(files, TASKS[task - 1])).softmax(1)


def test_healthz_models_and_metrics(server):
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).json()["status"] == "ok"
    models = httpx.get(server.url + "/v1/models", timeout=TIMEOUT).json()
    assert [t["name"] for t in models["tasks"]] == ["grey", "rgb"]
    assert models["tasks"][1]["labels"] == [f"r{i}" for i in range(6)]
    levels = models["tasks"][0]["levels"]
    assert [lv["level"] for lv in levels] == [1, 2]
    assert levels[0]["parameters"] < levels[1]["parameters"]
    assert all(lv["latency_ms_b1"] > 0 and lv["latency_ms_b8"] > 0 for lv in levels)
    assert all(len(lv["latency_scale"]) == 2 and min(lv["latency_scale"]) > 0 for lv in levels)
    # one copy of the weights: fewer parameters than the levels loaded separately
    separate = sum(lv["parameters"] for t in models["tasks"] for lv in t["levels"])
    assert models["held"]["parameters"] < separate / 2
    post(server.url, {"task": 2, "pixels": [[0, 255], [255, 0]], "deadline_ms": 1e4})
    r = httpx.get(server.url + "/metrics", timeout=TIMEOUT)
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("dvn_requests_total{", "dvn_deadlines_total{", "dvn_queue_depth ",
                 "dvn_batch_size_bucket{", "dvn_latency_ms_bucket{", "dvn_rejected_total "):
        assert name in text, name
    assert 'dvn_deadlines_total{task="2",level="2",result="met"}' in text


def test_concurrent_answers_equal_dvn_infer(server, unit):
    path, files = unit
    grey, rgb = [files[0], files[1]], [files[2], files[3]]
    jobs = [(task, level, i) for task in (1, 2) for level in (1, 2) for i in range(2)] * 4
    refs = {(t, lv): reference(path, grey if t == 1 else rgb, t, lv)
            for t in (1, 2) for lv in (1, 2)}

    def call(job):
        task, level, i = job
        f = (grey if task == 1 else rgb)[i]
        return job, post(server.url, {"task": task, "level": level, "image": b64(f)})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs, timeout=120))
    for (task, level, i), r in results:
        assert r.status_code == 200, r.text
        a = r.json()
        probs = refs[(task, level)][i]
        assert (a["task"], a["level"], a["class"]) == (task, level, int(probs.argmax()))
        assert a["label"] == TASKS[task - 1].classes[a["class"]]
        top = probs.topk(5)
        assert [p for _, p in a["top5"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert a["latency_ms"] >= a["queued_ms"] >= 0


def test_dvn_infer_command_gives_the_same_class(server, unit, capsys):
    path, files = unit
    assert main(["infer", path, "--task", "1", "--level", "1", "--json", files[1]]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"][0]
    a = post(server.url, {"task": 1, "level": 1, "image": b64(files[1])}).json()
    assert a["class"] == expected["class"] and a["label"] == expected["name"]
    assert a["top5"][0][1] == pytest.approx(expected["probability"], abs=1e-4)


def test_pixels_list_and_levels(server, unit):
    path, files = unit
    from PIL import Image
    import numpy as np
    pixels = np.asarray(Image.open(files[2])).tolist()
    by_image = post(server.url, {"task": 2, "level": 1, "image": b64(files[2])}).json()
    by_pixels = post(server.url, {"task": 2, "level": 1, "pixels": pixels}).json()
    assert by_pixels["top5"] == by_image["top5"]
    many = post(server.url, [{"task": 2, "pixels": pixels},            # no deadline: top
                             {"task": 2, "pixels": pixels, "level": 1},  # explicit
                             {"task": 2, "pixels": pixels, "deadline_ms": 1e-6}])   # none fits
    assert many.status_code == 200
    assert [a["level"] for a in many.json()] == [2, 1, 1]
    assert [a.get("deadline_met") for a in many.json()] == [None, None, False]
    light = post(server.url, {"task": 2, "pixels": pixels, "deadline_ms": 60000}).json()
    assert (light["level"], light["deadline_met"]) == (2, True)   # light load: the top level


LARGE = b'{"task": 1, "pixels": [' + b"0," * 300_000 + b"0]}"


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"[]", 400, "body"),
    (b'"text"', 400, "body"),
    (b'{"pixels": [[0]]}', 422, "task"),
    (b'{"task": 3, "pixels": [[0]]}', 404, "task"),
    (b'{"task": "1", "pixels": [[0]]}', 422, "task"),
    (b'{"task": 1, "level": 3, "pixels": [[0]]}', 404, "level"),
    (b'{"task": 1, "level": 1.5, "pixels": [[0]]}', 422, "level"),
    (b'{"task": 1, "deadline_ms": -5, "pixels": [[0]]}', 422, "deadline_ms"),
    (b'{"task": 1, "deadline_ms": "soon", "pixels": [[0]]}', 422, "deadline_ms"),
    (b'{"task": 1}', 422, "image"),
    (b'{"task": 1, "image": "@@@"}', 422, "image"),
    (b'{"task": 1, "image": "aGVsbG8gd29ybGQ="}', 422, "image"),   # base64 of "hello world"
    (b'{"task": 1, "pixels": [[0, 1], [2]]}', 422, "pixels"),
    (b'{"task": 1, "pixels": [[0, 300]]}', 422, "pixels"),
    (b'{"task": 1, "pixels": [[[0, 0]]]}', 422, "pixels"),
    (b'{"task": 1, "pixels": [[0]], "dealine_ms": 5}', 422, "dealine_ms"),
    (b'[{"task": 1, "pixels": [[0]]}, {"task": 9, "pixels": [[0]]}]', 404, "[1].task"),
    (LARGE, 413, "body"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "body"),
    (b'{"task": 1, "pixels": ' + b"[" * 500 + b"0" + b"]" * 500 + b"}", 422, "pixels"),
    (b'{"task": 1, "pixels": [[1e400]]}', 422, "pixels"),
    (b'{"task": 1, "pixels": [[true, null]]}', 422, "pixels"),
])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, field):
    r = post(server.url, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_overload_answers_503_with_retry_after(unit):
    path, _ = unit
    s = ServerProcess([path, "--max-batch", "1", "--max-queue", "4", "--threads", "1"])
    try:
        one = {"task": 1, "pixels": [[0] * 16] * 16}
        r = post(s.url, [one] * 5)          # more than the queue can ever hold
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"
        with ThreadPoolExecutor(8) as pool:   # a burst: every call answered, none hangs
            answers = list(pool.map(lambda _: post(s.url, [one] * 3), range(24), timeout=120))
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503}, codes
        for r in answers:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["field"] == "queue"
            else:
                assert len(r.json()) == 3
        text = httpx.get(s.url + "/metrics", timeout=TIMEOUT).text
        assert "dvn_rejected_total 0" not in text
    finally:
        assert s.stop() == 0


def test_sigterm_drains_the_queue_and_exits(unit):
    path, _ = unit
    s = ServerProcess([path, "--max-batch", "1", "--max-queue", "256", "--threads", "1"])
    out = {}
    body = [{"task": 1, "level": 2, "pixels": [[7] * 16] * 16}] * 200

    def call():
        out["r"] = post(s.url, body)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "r" not in out:
        if httpx.get(s.url + "/healthz", timeout=TIMEOUT).json()["queue_depth"] > 0:
            break
        time.sleep(0.005)
    assert s.stop() == 0
    t.join(60)
    assert out["r"].status_code == 200 and len(out["r"].json()) == 200
    assert any("stopped: the queue was drained" in line for line in s.log)
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/healthz", timeout=TIMEOUT)


def test_serve_errors_exit_2(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "missing")])
    assert e.value.code == 2 and "dvn serve: error: run: no run folder" in capsys.readouterr().err
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "serve: needs fastapi; install them: pip install" in err


def test_runtime_onnxruntime_serves_each_level_on_its_session(unit):
    """``--runtime onnxruntime``: every (task, level) on its own ONNX Runtime session, the same
    answers as the level loaded alone in PyTorch, the runtime in /v1/models."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path, files = unit
    s = ServerProcess([path, "--runtime", "onnxruntime", "--max-batch", "4", "--threads", "1"],
                      timeout=300)
    try:
        models = httpx.get(s.url + "/v1/models", timeout=TIMEOUT).json()
        assert models["runtime"] == "onnxruntime"
        assert all(lv["latency_ms_b1"] > 0 for t in models["tasks"] for lv in t["levels"])
        for task, level in ((1, 1), (1, 2), (2, 2)):
            f = files[0] if task == 1 else files[2]
            got = post(s.url, {"task": task, "level": level, "image": b64(f)}).json()
            want = reference(path, [f], task, level)[0]
            assert got["level"] == level and got["class"] == int(want.argmax())
            p = dict(got["top5"])
            labels = TASKS[task - 1].classes
            for c in want.topk(3).indices.tolist():
                assert abs(p[labels[c]] - float(want[c])) < 1e-4
    finally:
        assert s.stop() == 0
    assert any("separate copies on onnxruntime" in line for line in s.log)


def test_bench_client_posts_over_keep_alive_and_survives_a_closed_connection(server):
    """bench.serve's load generator: answers equal httpx's, a connection the server closed is
    replaced, a refused port is an error and not a hang."""
    import asyncio

    from bench.http_client import Client, HTTPError

    body = {"task": 2, "level": 1, "pixels": [[0, 255], [255, 0]]}

    async def run():
        c = Client(server.url, max_connections=2)
        try:
            answers = await asyncio.gather(*(c.post("/v1/predict", json.dumps(body).encode(), 30)
                                             for _ in range(5)))
            assert len(c._idle) == 2                       # at most two connections opened
            for _, writer in c._idle:                      # as the server's idle timeout would
                writer.transport.abort()
            again = await c.post("/v1/predict", json.dumps(body).encode(), 30)
            bad = await c.post("/v1/predict", b"{", 30)
        finally:
            await c.close()
        return answers, again, bad

    answers, again, bad = asyncio.run(run())
    expected = post(server.url, body).json()
    for status, raw in [*answers, again]:
        assert status == 200 and json.loads(raw)["class"] == expected["class"]
    assert bad[0] == 400 and json.loads(bad[1])["error"]["field"] == "body"
    with pytest.raises(ValueError, match="url"):
        Client("localhost:80")

    async def refused():
        import socket
        with socket.socket() as s:   # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await Client(f"http://127.0.0.1:{port}").post("/", b"{}", 5)

    with pytest.raises((HTTPError, OSError)):
        asyncio.run(refused())


def test_compiled_models_make_their_larger_batch_graphs_at_start_up(unit, monkeypatch):
    """``--runtime compiled``: every (task, level) is called at the warm-up batch sizes when
    loaded, so the first burst does not compile (the first batch of 3 took 3.4 s)."""
    from dvn.deploy.unitfile import UnitFile
    from dvn.serve import service
    path, _ = unit
    calls = []

    def fake_load(p, task, level, runtime, device="cpu"):
        assert runtime == "compiled"
        return lambda x: calls.append((task, level, tuple(x.shape))) or torch.zeros(len(x), 2)
    monkeypatch.setattr(service, "load_runtime", fake_load)
    file = UnitFile(path)
    try:
        configs = [(1, 1), (2, 2)]
        service.SeparateModels(file, configs, runtime="compiled")
        model = file.skeleton
        want = [(t, lv, (b, model.image_channels[t - 1], model.input_sizes[t - 1],
                         model.input_sizes[t - 1]))
                for t, lv in configs for b in service.SeparateModels.WARM_BATCHES]
        assert calls == want
    finally:
        file.close()
