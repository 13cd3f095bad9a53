"""auto's measured choice (dvn_kernels.choice) on CPU tensors, with injected timings and
failures: per pass, in memory, on disk, versions, corrupt files, failing candidates, the
switch, capture and torch.compile."""

import json
import warnings

import pytest
import torch

import dvn_kernels
from dvn_kernels import backends
from dvn_kernels.backends import IMPLEMENTATIONS, _gpu_candidates
from dvn_kernels.choice import CACHE_FILE, Chooser
from dvn_kernels.backends import native_conv2d_backward
from dvn_kernels.reference import (masked_conv2d, reference_conv2d,
                                   reference_conv2d_backward)

from helpers import SEGMENT_LAYOUTS, grads, make_problem, oracle

HAS_CPU = "cpu" in dvn_kernels.available_backends("cpu", torch.float64)
NAMES = ["reference", "masked"] + (["cpu"] if HAS_CPU else [])


class FakeTimer:
    """Says how long each (backend, pass) takes; runs the candidate (so failures raise)."""

    def __init__(self, times=None):
        self.times = times or {}
        self.calls = []

    def __call__(self, backend, pass_, run):
        self.calls.append((backend, pass_))
        run()
        return self.times.get((backend, pass_), 1.0)


def failing(exc):
    def run(*args):
        raise exc
    return run


def make_chooser(tmp_path, timer, *, forwards=None, names=NAMES, env="gpu | torch A", **kw):
    ran = []

    def record(name, fn):
        def run(*args):
            ran.append((name, "forward" if len(args) == 4 else "backward"))
            return fn(*args)
        return run

    fwd = {"reference": reference_conv2d, "masked": masked_conv2d, "cpu": IMPLEMENTATIONS["cpu"]}
    fwd.update(forwards or {})
    bwd = {"reference": reference_conv2d_backward, "cpu": native_conv2d_backward}
    chooser = Chooser({n: record(n, f) for n, f in fwd.items()},
                      {n: record(n, f) for n, f in bwd.items()},
                      lambda plan, x: names, timer=timer, measure=kw.pop("measure", True),
                      cache_dir=str(tmp_path), environment=lambda device: env, **kw)
    return chooser, ran


def problem(layout="two", **kw):
    p = make_problem(*SEGMENT_LAYOUTS[layout], dtype=torch.float64, **kw)
    plan = dvn_kernels.conv_plan(p.weight.shape, p.ins, p.outs, **p.conv)
    return p, plan


def check_against_oracle(p, y):
    want = oracle(p)
    torch.testing.assert_close(y, want)
    for got, expected in zip(grads(y, p.leaves()), grads(want, p.leaves())):
        torch.testing.assert_close(got, expected)


def test_forward_and_backward_choose_separately(tmp_path):
    backward_winner = "cpu" if HAS_CPU else "reference"
    timer = FakeTimer({("masked", "forward"): 0.1, (backward_winner, "backward"): 0.1})
    chooser, ran = make_chooser(tmp_path, timer)
    p, plan = problem()
    check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    assert sorted(timer.calls) == sorted([(n, s) for n in NAMES for s in ("forward", "backward")])
    timer.calls.clear()
    ran.clear()
    check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    assert timer.calls == []  # remembered in memory
    assert ran == [("masked", "forward"), (backward_winner, "backward")]


def test_one_backend_for_both_passes_runs_its_own_autograd(tmp_path):
    chooser, ran = make_chooser(tmp_path, FakeTimer({("reference", "forward"): 0.1,
                                                     ("reference", "backward"): 0.1}))
    p, plan = problem()
    check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    assert "Paired" not in type(y.grad_fn).__name__
    check_against_oracle(p, y)


def test_inference_measures_the_forward_only(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1})
    chooser, ran = make_chooser(tmp_path, timer)
    p, plan = problem(requires_grad=False)
    torch.testing.assert_close(chooser.conv2d(plan, p.x, p.weight, p.bias), oracle(p))
    assert {s for _, s in timer.calls} == {"forward"} and ran[-1] == ("masked", "forward")


def test_choices_persist_on_disk_per_environment(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1, ("reference", "backward"): 0.1})
    first, _ = make_chooser(tmp_path, timer)
    p, plan = problem()
    grads(first.conv2d(plan, p.x, p.weight, p.bias), p.leaves())
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert set(data["choices"]["gpu | torch A"].values()) == {"masked", "reference"}

    again = FakeTimer()
    second, ran = make_chooser(tmp_path, again)  # a new process: reads the file, no timing
    check_against_oracle(p, second.conv2d(plan, p.x, p.weight, p.bias))
    assert again.calls == [] and ("masked", "forward") in ran

    other = FakeTimer()
    third, _ = make_chooser(tmp_path, other, env="gpu | torch B")  # another torch: measure
    grads(third.conv2d(plan, p.x, p.weight, p.bias), p.leaves())
    assert {s for _, s in other.calls} == {"forward", "backward"}
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert set(data["choices"]) == {"gpu | torch A", "gpu | torch B"}  # both kept


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "choices": {}}', "[1, 2]",
                                     '{"format": 1, "choices": {"e": {"k": 3}}}'])
def test_a_corrupt_or_foreign_file_is_ignored_with_one_warning(tmp_path, content):
    (tmp_path / CACHE_FILE).write_text(content)
    timer = FakeTimer({("masked", "forward"): 0.1})
    chooser, _ = make_chooser(tmp_path, timer)
    p, plan = problem()
    with pytest.warns(RuntimeWarning, match="ignoring") as record:
        grads(chooser.conv2d(plan, p.x, p.weight, p.bias), p.leaves())
    assert len([w for w in record if "ignoring" in str(w.message)]) == 1
    assert {s for _, s in timer.calls} == {"forward", "backward"}  # measured again
    assert json.loads((tmp_path / CACHE_FILE).read_text())["format"] == 1  # rewritten


def test_a_failing_candidate_is_dropped_with_one_warning(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1, ("masked", "backward"): 0.1,
                       ("reference", "forward"): 0.5})
    chooser, ran = make_chooser(tmp_path, timer, forwards={
        "masked": failing(RuntimeError("out of resources: shared memory"))})
    p, plan = problem()
    with pytest.warns(RuntimeWarning, match=r"'masked' failed.*out of resources") as record:
        check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    assert len(record) == 1
    assert ("masked", "backward") not in timer.calls  # dropped for the backward too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))


def test_every_candidate_but_reference_fails(tmp_path):
    boom = {n: failing(NotImplementedError(f"{n} cannot")) for n in NAMES if n != "reference"}
    timer = FakeTimer({(n, "forward"): 0.1 for n in boom})
    chooser, ran = make_chooser(tmp_path, timer, forwards=boom)
    p, plan = problem()
    with pytest.warns(RuntimeWarning) as record:
        check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    assert len(record) == len(boom)
    assert ran[-1] == ("reference", "backward") or ("reference", "forward") in ran


def test_measuring_off_follows_the_fixed_order(tmp_path):
    timer = FakeTimer()
    chooser, ran = make_chooser(tmp_path, timer, names=["masked", "reference"], measure=False)
    p, plan = problem()
    check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))
    assert timer.calls == [] and ran[0] == ("masked", "forward")
    assert not (tmp_path / CACHE_FILE).exists()


def test_no_measuring_during_capture(tmp_path):
    capturing = [True]
    timer = FakeTimer({("masked", "forward"): 0.1})
    chooser, ran = make_chooser(tmp_path, timer, capturing=lambda: capturing[0])
    p, plan = problem(requires_grad=False)
    chooser.conv2d(plan, p.x, p.weight, p.bias)
    assert timer.calls == [] and ran == [("reference", "forward")]
    capturing[0] = False  # after capture: measured at the next call
    chooser.conv2d(plan, p.x, p.weight, p.bias)
    assert timer.calls and ran[-1] == ("masked", "forward")


@pytest.mark.slow
def test_torch_compile_uses_the_cached_choice_without_measuring(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1})
    chooser, ran = make_chooser(tmp_path, timer, names=["reference", "masked"], persist=False)
    p, plan = problem(requires_grad=False)
    chooser.conv2d(plan, p.x, p.weight, p.bias)  # eager: measures, masked wins
    other, _ = problem("one", requires_grad=False)  # never seen: the fixed order
    other_plan = dvn_kernels.conv_plan(other.weight.shape, other.ins, other.outs, **other.conv)
    timer.calls.clear()
    ran.clear()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b, x2, w2, b2):
        return chooser.conv2d(plan, x, w, b), chooser.conv2d(other_plan, x2, w2, b2)

    y, y2 = f(p.x, p.weight, p.bias, other.x, other.weight, other.bias)
    torch.testing.assert_close(y, oracle(p))
    torch.testing.assert_close(y2, oracle(other))
    assert timer.calls == []
    assert ("masked", "forward") in ran and ("reference", "forward") in ran


def test_traced_calls_pair_the_graph_choices_of_both_passes(tmp_path):
    """Under torch.compile a convolution that needs gradients runs the forward's graph choice
    and the backward's own (not the forward backend's backward); ``_traced`` called eagerly
    here, so that the recorded runs show which backend ran each pass."""
    timer = FakeTimer({("masked", "forward"): 0.1, ("reference", "backward"): 0.1})
    chooser, ran = make_chooser(tmp_path, timer, names=["masked", "reference"], persist=False)
    p, plan = problem()
    torch.autograd.grad(chooser.conv2d(plan, p.x, p.weight, p.bias).sum(), p.leaves())
    ran.clear()
    y = chooser._traced(plan, p.x, p.weight, p.bias)
    check_against_oracle(p, y)
    assert "Paired" in type(y.grad_fn).__name__
    assert ("masked", "forward") in ran and ("reference", "backward") in ran
    p2, plan2 = problem("one")  # never measured: the fixed order for both, one backend
    ran.clear()
    check_against_oracle(p2, chooser._traced(plan2, p2.x, p2.weight, p2.bias))
    assert {name for name, _ in ran} == {"masked"}


@pytest.mark.slow
def test_torch_compile_trains_with_the_backward_choice(tmp_path):
    """The same pairing traced whole (fullgraph), forward and backward, with the gradients of
    the oracle: a compiled training step runs the measured backward."""
    chooser = Chooser({"reference": reference_conv2d, "masked": masked_conv2d},
                      {"reference": reference_conv2d_backward}, lambda plan, x: ["masked",
                                                                                 "reference"],
                      timer=FakeTimer({("masked", "forward"): 0.1,
                                       ("reference", "backward"): 0.1}), persist=False)
    p, plan = problem()
    torch.autograd.grad(chooser.conv2d(plan, p.x, p.weight, p.bias).sum(), p.leaves())
    assert chooser.choices(plan)["backward 111 graph"] == "reference"

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b):
        return chooser.conv2d(plan, x, w, b)

    check_against_oracle(p, f(p.x, p.weight, p.bias))


def test_gpu_candidates_fixed_order():
    meta = torch.empty(1, device="meta")  # no kernel backend runs on meta tensors
    full = dvn_kernels.conv_plan((8, 4, 3, 3), [(0, 4)], [(0, 8)])
    narrow = dvn_kernels.conv_plan((8, 4, 3, 3), [(0, 2)], [(0, 8)])
    assert _gpu_candidates(full, meta) == ["reference"]
    assert _gpu_candidates(narrow, meta)[0] == "reference"  # slice + cuDNN until measured


def test_cpu_auto_is_unchanged_and_the_switch_checks_its_argument():
    x = torch.randn(1, 2, 4, 4)
    assert backends.implementation("auto", x) is not backends.gpu_chooser().conv2d
    with pytest.raises(TypeError, match="enabled"):
        dvn_kernels.set_auto_measure("no")


@pytest.mark.parametrize("layout", ["one", "two", "full"])
@pytest.mark.parametrize("mask", [(True, True, True), (False, True, False), (True, False, True)])
def test_reference_backward_matches_autograd(layout, mask):
    p, plan = problem(layout, stride=2)
    g = torch.randn(oracle(p).shape, dtype=torch.float64)
    got = reference_conv2d_backward(plan, g, p.x, p.weight, mask)
    want = torch.autograd.grad(reference_conv2d(plan, p.x, p.weight, p.bias),
                               [p.x, p.weight, p.bias], g)
    for a, b, m in zip(got, want, mask):
        assert (a is None) == (not m)
        if m:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ins,outs", [([(2, 4)], [(4, 8)]),  # whole groups: the kernels' case
                                      ([(1, 3)], [(2, 5)])])  # cut groups: the literal meaning
def test_reference_backward_of_grouped_plans(ins, outs):
    weight = torch.randn(12, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
    plan = dvn_kernels.conv_plan(weight.shape, ins, outs, padding=1, groups=4)
    x = torch.randn(2, plan.in_total, 5, 5, dtype=torch.float64, requires_grad=True)
    y = reference_conv2d(plan, x, weight, bias)
    g = torch.randn_like(y)
    got = reference_conv2d_backward(plan, g, x, weight, (True, True, True))
    for a, b in zip(got, torch.autograd.grad(y, [x, weight, bias], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif("triton" not in dvn_kernels.available_backends("cpu", torch.float32),
                    reason="needs Triton under TRITON_INTERPRET=1")
@pytest.mark.parametrize("winners", [("triton", "reference"), ("reference", "triton")])
def test_the_gpu_candidates_pair_triton_and_reference(tmp_path, winners):
    """auto's real wiring (candidates, forwards, backwards) on the interpreter's CPU tensors."""
    timer = FakeTimer({(winners[0], "forward"): 0.1, (winners[1], "backward"): 0.1})
    chooser = Chooser({n: IMPLEMENTATIONS[n] for n in ("reference", "triton")},
                      backends.BACKWARDS, _gpu_candidates, timer=timer, measure=True,
                      persist=False)
    p = make_problem(*SEGMENT_LAYOUTS["two"], size=(6, 5))
    plan = dvn_kernels.conv_plan(p.weight.shape, p.ins, p.outs, **p.conv)
    for _ in range(2):
        y = chooser.conv2d(plan, p.x, p.weight, p.bias)
        want = oracle(p)
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
        for a, b in zip(grads(y, p.leaves()), grads(want, p.leaves())):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert "Paired" in type(y.grad_fn).__name__
    assert len(timer.calls) == 4  # two candidates, two passes, measured once


def test_the_gpu_chooser_exists_before_any_trace():
    """A first CUDA call under torch.compile must not build the chooser inside Dynamo's trace
    (its weak registry cannot be traced: the first H200 run failed so). A fresh process, so
    that no earlier test made it."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from dvn_kernels import backends\n"
            "assert backends._CHOOSER is not None\n"
            "f = torch.compile(lambda x: x + backends.gpu_chooser().measure, fullgraph=True,\n"
            "                  backend='eager')\n"
            "print(float(f(torch.zeros(1))))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_choice_file_follows_the_cache_dir_set_after_import(tmp_path, monkeypatch):
    monkeypatch.setenv("DVN_CACHE_DIR", str(tmp_path))
    chooser = Chooser({}, {}, lambda plan, x: ["reference"])
    assert chooser.file.path == str(tmp_path / CACHE_FILE)


@pytest.mark.slow
def test_torch_compile_traces_the_gpu_fixed_order():
    """The first call of a convolution under torch.compile takes the fixed order through
    _gpu_candidates: every availability check on that path must trace (fullgraph). On the
    first H200 run the dispatcher query behind has_cuda_kernel() did not."""
    chooser = Chooser({n: IMPLEMENTATIONS[n] for n in ("reference", "triton", "cuda")},
                      backends.BACKWARDS, _gpu_candidates, persist=False, measure=False)
    p, plan = problem("one", requires_grad=False)  # float64: no kernel backend on CPU

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b):
        return chooser.conv2d(plan, x, w, b)

    torch.testing.assert_close(f(p.x, p.weight, p.bias), oracle(p))


def test_choices_report_what_runs_per_plan(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1, ("reference", "backward"): 0.1})
    chooser, _ = make_chooser(tmp_path, timer, names=["reference", "masked"], persist=False)
    p, plan = problem()
    other, _ = problem("one")
    other_plan = dvn_kernels.conv_plan(other.weight.shape, other.ins, other.outs, **other.conv)
    assert chooser.choices(plan) == {}
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    assert chooser.choices(plan) == {"forward": "masked", "forward graph": "masked",
                                     "backward 111": "reference",
                                     "backward 111 graph": "reference"}
    assert chooser.choices(other_plan) == {}


def test_eager_calls_pay_host_time_captured_graphs_only_kernel_time(tmp_path):
    """A backend that launches fast but computes slowly (the CUDA kernel at level 1 on an
    H200) runs eagerly; the one with the fastest kernels runs inside a capture. Both choices
    are kept on disk and read back without measuring."""
    from dvn_kernels.choice import Timing
    timings = {("masked", "forward"): Timing(host=0.02, kernel=0.05),     # eager 0.05
               ("reference", "forward"): Timing(host=0.30, kernel=0.01),  # eager 0.30
               ("masked", "backward"): Timing(host=0.30, kernel=0.01),
               ("reference", "backward"): Timing(host=0.02, kernel=0.05)}
    capturing = [False]
    timer = FakeTimer(timings)
    chooser, ran = make_chooser(tmp_path, timer, names=["reference", "masked"],
                                capturing=lambda: capturing[0])
    p, plan = problem()
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    assert chooser.choices(plan) == {"forward": "masked", "forward graph": "reference",
                                     "backward 111": "reference",
                                     "backward 111 graph": "masked"}
    ran.clear()
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    assert ran == [("masked", "forward"), ("reference", "backward")]
    ran.clear()
    capturing[0] = True
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    # masked has no backward op: its gradients come by autograd through its forward
    assert ran == [("reference", "forward"), ("masked", "forward")]
    check_against_oracle(p, chooser.conv2d(plan, p.x, p.weight, p.bias))

    again = FakeTimer()
    second, _ = make_chooser(tmp_path, again, names=["reference", "masked"])
    y = second.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    assert again.calls == [] and second.choices(plan) == chooser.choices(plan)


def test_a_file_without_graph_choices_is_measured_again(tmp_path):
    """A cache written before graph choices existed (eager keys only) is not trusted for them."""
    timer = FakeTimer({("masked", "forward"): 0.1})
    first, _ = make_chooser(tmp_path, timer, names=["reference", "masked"])
    p, plan = problem(requires_grad=False)
    first.conv2d(plan, p.x, p.weight, p.bias)
    path = tmp_path / CACHE_FILE
    data = json.loads(path.read_text())
    for env in data["choices"].values():
        for key in [k for k in env if k.endswith(" graph")]:
            del env[key]
    path.write_text(json.dumps(data))
    again = FakeTimer({("masked", "forward"): 0.1})
    second, _ = make_chooser(tmp_path, again, names=["reference", "masked"])
    second.conv2d(plan, p.x, p.weight, p.bias)
    assert {s for _, s in again.calls} == {"forward"}


@pytest.mark.gpu
def test_cuda_timer_separates_host_and_kernel_time():
    """The timer's two numbers: a 0.5 ms kernel launched at once reads as kernel time; 1 ms of
    Python before a tiny kernel reads as host time, not as kernel time (the GPU is held until
    every launch is queued)."""
    import time

    from dvn_kernels.choice import _cycles_per_ms, cuda_timer
    cycles = int(_cycles_per_ms() * 0.5)
    t = cuda_timer("kernel-bound", "forward", lambda: torch.cuda._sleep(cycles))
    assert 0.35 < t.kernel < 0.8 and t.host < 0.3, t

    def host_bound():
        time.sleep(0.001)
        torch.cuda._sleep(1000)
    t = cuda_timer("host-bound", "forward", host_bound)
    assert t.host >= 1.0 and t.kernel < 0.3, t
    assert t.eager == t.host


@pytest.mark.gpu
def test_cuda_timer_times_kernels_without_cached_weight_copies():
    """The kernel-time calls run as a graph replay does, converting weights afresh; the
    warm-up and host-time calls use the cache as eager calls do."""
    from dvn_kernels.choice import cuda_timer
    from dvn_kernels.weight_cache import weight_cache_allowed

    w = torch.randn(4, 3, 3, 3, device="cuda")
    allowed = []
    cuda_timer("probe", "forward", lambda: allowed.append(weight_cache_allowed(w)),
               warmup=2, repeats=5)
    assert allowed == [True] * 7 + [False] * 5
    assert weight_cache_allowed(w)


def test_counts_report_the_backends_per_pass_and_mode(tmp_path):
    timer = FakeTimer({("masked", "forward"): 0.1, ("reference", "backward"): 0.1})
    chooser, _ = make_chooser(tmp_path, timer, names=["reference", "masked"], persist=False)
    p, plan = problem()
    y = chooser.conv2d(plan, p.x, p.weight, p.bias)
    torch.autograd.grad(y.sum(), [p.x, p.weight, p.bias])
    with torch.no_grad():
        other, _ = problem(batch=3)  # another batch size: another convolution key
        chooser.conv2d(plan, other.x, other.weight, other.bias)
    assert chooser.counts(batch=p.x.shape[0]) == {
        "forward": {"masked": 1}, "forward graph": {"masked": 1},
        "backward 111": {"reference": 1}, "backward 111 graph": {"reference": 1}}
    assert chooser.counts()["forward"] == {"masked": 2}
