"""The level policy and the batcher without HTTP: SlackFit on a profile given by hand, batches
per (task, level), explicit levels honoured, bounded queue, drain on close."""

import threading
import time

import pytest
import torch

from dvn.deploy import Profile
from dvn.serve.metrics import Metrics
from dvn.serve.policy import Calibrated, LatencyModel, slack_fit
from dvn.serve.scheduler import Closing, QueueFull, Request, Scheduler

PROFILE = Profile.from_rows([
    {"task": 1, "level": 1, "latency_ms_b1": 2.0, "latency_ms_b8": 9.0},
    {"task": 1, "level": 2, "latency_ms_b1": 5.0, "latency_ms_b8": 33.0},
    {"task": 1, "level": 3, "latency_ms_b1": 10.0, "latency_ms_b8": 80.0}], batch=8)
MODEL = LatencyModel.from_profile(PROFILE, [(1, 1), (1, 2), (1, 3)])


def test_latency_model_interpolates_the_batch():
    assert MODEL.ms(1, 2, 1) == 5.0 and MODEL.ms(1, 2, 8) == 33.0
    assert MODEL.ms(1, 2, 4) == pytest.approx(5.0 + 3 * 4.0)
    assert MODEL.ms(1, 1, 16) == pytest.approx(2.0 + 15 * 1.0)   # extrapolated


@pytest.mark.parametrize("slack, count, expected", [
    (100.0, 1, (3, 1)),     # light load: the top level
    (7.0, 1, (2, 1)),
    (40.0, 8, (2, 8)),      # a burst: a lower level in a larger batch
    (10.0, 8, (1, 8)),
    (0.5, 3, (1, 3)),       # none fits: the lowest, soonest
    (1000.0, 50, (3, 8)),   # at most max_batch
])
def test_slack_fit(slack, count, expected):
    assert slack_fit(MODEL, 1, [1, 2, 3], slack, count, max_batch=8) == expected


def test_calibrated_follows_slow_batches_fast_and_fast_ones_slowly():
    c = Calibrated(MODEL, rise=0.5, fall=0.1, bounds=(0.25, 4.0))
    assert c.ms(1, 2, 4) == MODEL.ms(1, 2, 4) and c.batch == MODEL.batch
    c.observe(1, 2, 4, 2 * MODEL.ms(1, 2, 4))          # twice as slow as profiled
    assert c.scale(1, 2, 4) == pytest.approx(1.5)      # half way there at once
    assert c.ms(1, 2, 8) == pytest.approx(1.5 * 33.0)  # every batch of more than one
    assert c.scale(1, 2, 1) == 1.0 and c.scale(1, 3, 4) == 1.0  # batches of one, other levels
    c.observe(1, 2, 2, 0.5 * MODEL.ms(1, 2, 2))        # a fast batch: a tenth of the way
    assert c.scale(1, 2, 2) == pytest.approx(1.5 + 0.1 * (0.5 - 1.5))
    c.observe(1, 1, 1, 1000.0)                          # one outlier moves it at most to 4x
    assert c.scale(1, 1, 1) == pytest.approx(1 + 0.5 * 3)
    c.observe(1, 1, 1, float("nan"))
    assert c.scale(1, 1, 1) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="calibration"):
        Calibrated(MODEL, rise=0.0)


def test_slow_batches_move_the_policy_to_a_lower_level():
    c = Calibrated(MODEL)
    assert slack_fit(c, 1, [1, 2, 3], 12.0, 1, 8) == (3, 1)
    for _ in range(10):
        c.observe(1, 3, 1, 20.0)                        # the top level takes 2x its profile
    assert slack_fit(c, 1, [1, 2, 3], 12.0, 1, 8) == (2, 1)


def fake(calls, ms_per_item=0.0):
    def run(x, task, level):
        calls.append((task, level, len(x)))
        time.sleep(ms_per_item * len(x) / 1e3)
        return torch.zeros(len(x), 4)
    return run


def answer(r, level, probs, started, finished, batch):
    return (r.task, level, batch)


def test_batches_per_task_and_level_with_explicit_levels():
    calls = []
    gate = threading.Event()
    run = fake(calls)

    def blocked(x, task, level):
        gate.wait(10)
        return run(x, task, level)

    both = LatencyModel({**MODEL.b1, (2, 1): 1.0}, {**MODEL.bn, (2, 1): 2.0}, 8)
    s = Scheduler(blocked, {1: [1, 2, 3], 2: [1]}, both, answer, Metrics(), max_batch=4)
    x = torch.zeros(1)
    first = Request(2, x, level=1)
    s.submit([first])
    time.sleep(0.05)   # the worker holds `first`; the rest queue behind it
    rs = [Request(1, x, level=1) for _ in range(3)] + [Request(1, x) for _ in range(5)]
    s.submit(rs)
    gate.set()
    results = [r.future.result(10) for r in [first] + rs]
    assert results[0] == (2, 1, 1)
    assert results[1:4] == [(1, 1, 3)] * 3        # explicit level 1, one batch
    assert [r[1] for r in results[4:]] == [3] * 5  # no deadline, no level: the top level
    assert sorted(r[2] for r in results[4:]) == [1, 4, 4, 4, 4]
    assert s.close()


def test_burst_of_deadlines_runs_lower_levels_in_larger_batches():
    calls = []
    s = Scheduler(fake(calls, ms_per_item=1.0), {1: [1, 2, 3]}, MODEL, answer, Metrics(),
                  max_batch=8, margin_ms=0)
    x = torch.zeros(1)
    lone = Request(1, x, deadline=time.perf_counter() + 0.5)
    s.submit([lone])
    assert lone.future.result(10) == (1, 3, 1)     # light load: top level
    now = time.perf_counter()
    burst = [Request(1, x, deadline=now + 0.040) for _ in range(8)]
    s.submit(burst)
    levels = [r.future.result(10)[1] for r in burst]
    assert max(levels) < 3
    assert s.close()
    # the batches it ran (about 1 ms per item, far below the profile) scaled the model down
    assert s.latency.scale(1, 3, 1) < 1.0
    plain = Scheduler(fake([]), {1: [1]}, MODEL, answer, Metrics(), calibrate=False)
    assert plain.latency is MODEL and plain.close()


def test_bounded_queue_and_close():
    gate = threading.Event()
    s = Scheduler(lambda x, t, lv: (gate.wait(10), torch.zeros(len(x), 2))[1], {1: [1]},
                  LatencyModel({(1, 1): 1.0}, {(1, 1): 1.0}, 1), answer, Metrics(),
                  max_batch=1, max_queue=2)
    x = torch.zeros(1)
    held = Request(1, x)
    s.submit([held])
    time.sleep(0.05)
    queued = [Request(1, x), Request(1, x)]
    s.submit(queued)
    with pytest.raises(QueueFull) as e:
        s.submit([Request(1, x)])
    assert e.value.retry_after_s >= 1
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Closing):
        s.submit([Request(1, x)])
    gate.set()
    closer.join(10)
    assert all(r.future.result(5) == (1, 1, 1) for r in [held] + queued)   # drained


def test_a_failing_batch_fails_its_requests_only():
    def run(x, task, level):
        if level == 1:
            raise RuntimeError("boom")
        return torch.zeros(len(x), 2)
    s = Scheduler(run, {1: [1, 2]}, LatencyModel({(1, 1): 1, (1, 2): 1}, {(1, 1): 1, (1, 2): 1},
                                                 1), answer, Metrics())
    bad, good = Request(1, torch.zeros(1), level=1), Request(1, torch.zeros(1), level=2)
    s.submit([bad])
    with pytest.raises(RuntimeError, match="boom"):
        bad.future.result(10)
    s.submit([good])
    assert good.future.result(10) == (1, 2, 1)
    assert s.close()


def test_tune_process_sets_the_switch_interval_and_freezes_startup_objects():
    import gc
    import sys

    from dvn.serve.service import SWITCH_INTERVAL_S, tune_process
    before = sys.getswitchinterval()
    try:
        tune_process()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert gc.get_freeze_count() > 0
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
