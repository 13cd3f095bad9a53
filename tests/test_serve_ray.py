"""dvn serve --replicas 2: the same app as a Ray Serve deployment (local Ray, no dashboard), over
HTTP on the loopback: answers equal the deployment's, bad input stays a 4xx, SIGTERM stops it."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

import dvn.deploy as dd  # noqa: E402
from tests.serve_helpers import ServerProcess, tiny_unit_file  # noqa: E402


@pytest.mark.slow
def test_two_replicas_answer_as_one_process(tmp_path):
    path = tiny_unit_file(str(tmp_path / "model.safetensors"))
    s = ServerProcess([path, "--replicas", "2", "--threads", "1"], timeout=240)
    try:
        pixels = torch.arange(64).view(8, 8).tolist()
        jobs = [(task, level) for task in (1, 2) for level in (1, 2)] * 4

        def call(job):
            body = {"task": job[0], "level": job[1], "pixels": pixels}
            return job, httpx.post(s.url + "/v1/predict", content=json.dumps(body), timeout=60)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, jobs, timeout=180))
        from dvn.serve.inputs import decode_pixels
        from tests.serve_helpers import TASKS
        for (task, level), r in results:
            assert r.status_code == 200, r.text
            x = decode_pixels(pixels, TASKS[task - 1], "pixels")[None]
            with torch.no_grad():
                probs = dd.load_level(path, task, level)(x).softmax(1)[0]
            a = r.json()
            assert (a["task"], a["level"], a["class"]) == (task, level, int(probs.argmax()))
            assert a["top5"][0][1] == pytest.approx(float(probs.max()), abs=1e-5)
        bad = httpx.post(s.url + "/v1/predict", content=b'{"task": 7, "pixels": [[0]]}',
                         timeout=60)
        assert bad.status_code == 404 and bad.json()["error"]["field"] == "task"
        assert httpx.get(s.url + "/v1/models", timeout=60).json()["tasks"][0]["name"] == "grey"
    finally:
        assert s.stop(timeout=120) == 0
    assert any(line.endswith("dvn serve: stopped") for line in s.log), s.log[-5:]
