"""The Triton op's layout handling: every caller gets the coalesced channels_last kernels.

NCHW activations and KCRS weights are brought to channels_last inside the op (the weight once
per version, cached), so an NCHW call launches exactly the kernel variants a channels_last call
launches, and its results keep the layouts of ``dvn_kernels.ops``. On a CPU machine the
kernels run under TRITON_INTERPRET=1 on tiny shapes.
"""

import gc

import pytest
import torch

import dvn_kernels
from dvn_kernels import ChannelSegments, sliced_conv2d
from dvn_kernels.backends import _why_unavailable
from dvn_kernels.ops import empty_grads, empty_output

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    "triton" not in dvn_kernels.available_backends(DEVICE),
    reason=f"triton backend unavailable: {_why_unavailable('triton', DEVICE, torch.float32)}")
if "triton" in dvn_kernels.available_backends(DEVICE):
    from dvn_kernels.triton import configs, layout

CL = torch.channels_last
# name -> (c_in, c_out, kernel, groups, in ranges, out ranges, stride, padding)
CASES = {
    "k3-two-ranges": (13, 11, 3, 1, [(1, 3), (9, 4)], [(2, 2), (6, 5)], 2, 1),
    "k1": (12, 10, 1, 1, [(4, 8)], [(0, 6)], 1, 0),
    "grouped": (16, 8, 3, 4, [(4, 8)], [(2, 4)], 1, 1),  # groups of 4 in / 2 out channels
    "depthwise": (8, 8, 3, 8, [(2, 4)], [(2, 4)], 1, 1),
}
REL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _ieee_float32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def problem(case: str, dtype=torch.float32, x_cl=False, w_cl=False, batch=2, seed=0):
    """(x, weight, bias, conv kwargs) on DEVICE, leaves requiring grad, in the given layouts."""
    c_in, c_out, k, groups, ins, outs, stride, padding = CASES[case]
    ins, outs = ChannelSegments(ins), ChannelSegments(outs)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, c_in // groups, k, k, generator=gen) / (c_in // groups * k * k) ** .5
    b = torch.randn(c_out, generator=gen)
    x = torch.randn(batch, ins.total, 7, 6, generator=gen)
    x, w, b = (t.to(DEVICE, dtype) for t in (x, w, b))
    if x_cl:
        x = x.contiguous(memory_format=CL)
    if w_cl:
        w = w.contiguous(memory_format=CL)
    conv = dict(in_segments=ins, out_segments=outs, stride=stride, padding=padding,
                groups=groups)
    return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), conv


def forward_backward(x, w, b, conv, backend="triton", seed=1):
    y = sliced_conv2d(x, w, b, backend=backend, **conv)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    return (y, *torch.autograd.grad(y, [x, w, b], g))


def reference(x, w, b, conv):
    """The reference backend in float64 on CPU, on the same (rounded) values."""
    exact = [t.detach().cpu().double().requires_grad_() for t in (x, w, b)]
    return forward_backward(*exact, conv, backend="reference")


def assert_near(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    assert got.shape == want.shape, what
    err = (got.detach().cpu().double() - want.detach()).norm().item()
    assert err <= rel * max(want.norm().item(), 1e-30), f"{what}: {err / want.norm():.2e}"


def launches(x, w, b, conv) -> list:
    with configs.record_launches() as rec:
        forward_backward(x, w, b, conv)
    return [(r.kernel, r.constexprs, r.specialization) for r in rec]


@pytest.mark.parametrize("case", list(CASES))
def test_nchw_runs_the_channels_last_variants(case):
    """An NCHW float32 call with a KCRS weight launches the kernels of a channels_last call
    with a channels_last weight: same kernels, constexprs (CHANNELS_LAST, ALIGN, ...) and
    argument specialisations (unit channel strides, alignment), in the same order."""
    nchw = launches(*problem(case))
    cl = launches(*problem(case, x_cl=True, w_cl=True))
    assert len(nchw) == (4 if case == "depthwise" else 3) and nchw == cl  # + dw reduction
    channel_strides = ("sxc", "syc", "sgc", "swi")
    for kernel, constexprs, spec in nchw:
        if case != "depthwise":
            assert constexprs["CHANNELS_LAST"] is True, kernel
        strides = [spec[s] for s in channel_strides if s in spec]
        assert strides or "reduce" in kernel, kernel
        assert all(s == "1" for s in strides), (kernel, spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("x_cl, w_cl", [(False, False), (True, True), (False, True),
                                        (True, False)], ids=["nchw", "cl", "nchw-wcl", "cl-kcrs"])
@pytest.mark.parametrize("case", ["k3-two-ranges", "grouped", "depthwise"])
def test_layouts_match_the_reference(case, x_cl, w_cl, dtype):
    """Forward and gradients against the reference backend, each result in the layout the
    op's fake implementation gives (y and grad x follow x, grad weight follows the weight)."""
    x, w, b, conv = problem(case, dtype, x_cl, w_cl)
    got = forward_backward(x, w, b, conv)
    for name, a, e in zip(("y", "grad x", "grad weight", "grad bias"), got,
                          reference(x, w, b, conv)):
        assert a.dtype == dtype, name
        assert_near(a, e, REL[dtype], name)
    kernel = dvn_kernels.conv_plan(w.shape, conv["in_segments"], conv["out_segments"],
                                   stride=conv["stride"], padding=conv["padding"],
                                   groups=conv["groups"]).kernel
    want = [empty_output(x, w, kernel), *empty_grads(x, w, [True] * 3)]
    assert [t.stride() for t in got] == [t.stride() for t in want]


def test_weight_cache_follows_in_place_updates():
    """One channels_last copy per weight version: reused while the weight is unchanged,
    replaced after an optimizer step (the next call sees the new weight), dropped with the
    weight."""
    layout.clear_weight_cache()
    x, w, b, conv = problem("k3-two-ranges")
    w = torch.nn.Parameter(w.detach())
    forward_backward(x, w, b, conv)
    assert layout.cached_weights() == 1
    first = layout.weight_channels_last(w)
    assert first.is_contiguous(memory_format=CL) and torch.equal(first, w.detach())
    assert layout.weight_channels_last(w) is first  # a hit: no new conversion

    opt = torch.optim.SGD([w], lr=0.5)
    sliced_conv2d(x, w, b, backend="triton", **conv).square().sum().backward()
    opt.step()  # in place: bumps the version counter
    got = forward_backward(x, w, b, conv)
    for name, a, e in zip(("y", "grad x", "grad weight"), got, reference(x, w, b, conv)):
        assert_near(a, e, REL[torch.float32], f"{name} after the step")
    second = layout.weight_channels_last(w)
    assert second is not first and torch.equal(second, w.detach())
    assert layout.cached_weights() == 1  # the stale copy went with its version

    with torch.no_grad():
        w.mul_(-1)  # any in-place write counts
    assert torch.equal(layout.weight_channels_last(w), w.detach())
    del w, opt, got, first, second
    gc.collect()
    assert layout.cached_weights() == 0  # weakly held: nothing kept for dead weights


def test_weight_cache_is_bounded_and_skipped_when_not_needed(monkeypatch):
    layout.clear_weight_cache()
    monkeypatch.setattr(layout, "MAX_CACHED_WEIGHTS", 2)
    weights = [torch.randn(4, 3, 3, 3, device=DEVICE) for _ in range(3)]
    for w in weights:
        layout.weight_channels_last(w)
    assert layout.cached_weights() == 2
    # Nothing to convert: channels_last, 1x1 and depthwise weights are used as they are.
    for w in (weights[0].contiguous(memory_format=CL), torch.randn(4, 3, 1, 1, device=DEVICE),
              torch.randn(4, 1, 3, 3, device=DEVICE)):
        assert layout.weight_channels_last(w) is w
    x = torch.randn(2, 3, 5, 5, device=DEVICE).contiguous(memory_format=CL)
    assert layout.channels_last(x) is x
    layout.clear_weight_cache()
    assert layout.cached_weights() == 0


def test_no_weight_cache_while_tracing(monkeypatch):
    """Under torch.compile, fake tensors or dispatch modes: a plain conversion, no cache."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layout.clear_weight_cache()
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(w)
        assert layout.weight_channels_last(fake).is_contiguous(memory_format=CL)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert layout.weight_channels_last(w).is_contiguous(memory_format=CL)
    assert layout.cached_weights() == 0


def test_no_weight_cache_for_excluded_weights():
    """``exclude_from_weight_cache`` (the weights of a model run through compiled CUDA
    graphs): a fresh conversion each call for that storage, views included, on every thread;
    other weights still cache; an exclusion ends with its tensor."""
    import threading

    from dvn_kernels import exclude_from_weight_cache

    layout.clear_weight_cache()
    w, other = (torch.randn(4, 3, 3, 3, device=DEVICE) for _ in range(2))
    exclude_from_weight_cache([w])
    first = layout.weight_channels_last(w)
    assert first.is_contiguous(memory_format=CL) and torch.equal(first, w)
    assert layout.weight_channels_last(w) is not first
    assert layout.weight_channels_last(w.view(w.shape)) is not first  # an alias: same storage
    seen = []
    thread = threading.Thread(target=lambda: seen.append(layout.weight_channels_last(w)))
    thread.start()
    thread.join()
    assert layout.cached_weights() == 0 and torch.equal(seen[0], w)
    assert layout.weight_channels_last(other) is layout.weight_channels_last(other)
    assert layout.cached_weights() == 1
    ptr = w.data_ptr()
    del w, first, seen
    gc.collect()
    again = torch.empty(0).new_empty(4, 3, 3, 3)
    if again.data_ptr() == ptr:  # storage reused by a new tensor: not excluded
        assert layout.weight_channels_last(again) is layout.weight_channels_last(again)


def test_no_weight_cache_while_bypassed_in_this_thread():
    """``weight_cache_bypassed`` (auto's kernel timing: what a graph replay converts): no
    copy read or made inside the block, in its thread only; the cache serves again after."""
    import threading

    from dvn_kernels.weight_cache import weight_cache_bypassed

    layout.clear_weight_cache()
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    cached = layout.weight_channels_last(w)
    other_thread = []
    with weight_cache_bypassed():
        fresh = layout.weight_channels_last(w)
        thread = threading.Thread(
            target=lambda: other_thread.append(layout.weight_channels_last(w)))
        thread.start()
        thread.join()
    assert fresh is not cached and torch.equal(fresh, w)
    assert other_thread[0] is cached
    assert layout.weight_channels_last(w) is cached and layout.cached_weights() == 1


@pytest.mark.gpu
def test_no_weight_cache_inside_a_cuda_graph():
    """A captured call converts the weight inside the graph, so a replay after an in-place
    update reads the new weight, not a copy cached at capture."""
    x, w, b, conv = (t.detach() if torch.is_tensor(t) else t for t in problem("k3-two-ranges"))
    layout.clear_weight_cache()
    with torch.no_grad():
        sliced_conv2d(x, w, b, backend="triton", **conv)  # warm-up: compiles, caches a copy
        assert layout.cached_weights() == 1
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = sliced_conv2d(x, w, b, backend="triton", **conv)
        w.mul_(-2)
        graph.replay()
    torch.cuda.synchronize()
    want = reference(x, w, b, conv)[0]
    assert_near(y, want, REL[x.dtype], "y after the weight changed")


def test_recording_leaves_no_state():
    x, w, b, conv = problem("k1", batch=1)
    with configs.record_launches() as outer:
        with configs.record_launches() as inner:
            sliced_conv2d(x, w, b, backend="triton", **conv)
        assert configs._RECORDING is outer
    assert configs._RECORDING is None
    assert [r.kernel for r in inner] == ["_fwd_kernel"] and outer == []


@pytest.mark.parametrize("x_cl, w_cl", [(False, True), (True, False)], ids=["nchw-wcl",
                                                                             "cl-kcrs"])
def test_opcheck_mixed_layouts(x_cl, w_cl):
    """The fake implementation's layouts hold for the conversions (forward and backward)."""
    x, w, b, conv = problem("k3-two-ranges", x_cl=x_cl, w_cl=w_cl, batch=1)
    spec = dvn_kernels.conv_plan(w.shape, conv["in_segments"], conv["out_segments"],
                                 stride=conv["stride"], padding=conv["padding"]).spec
    ops = torch.ops.dvn_kernels
    torch.library.opcheck(ops.triton_sliced_conv2d.default, (x, w, b, spec))
    y = ops.triton_sliced_conv2d(x.detach(), w.detach(), None, spec)
    torch.library.opcheck(ops.triton_sliced_conv2d_backward.default,
                          (torch.randn_like(y), x.detach(), w.detach(), spec, [True] * 3))


_TRACE = '''
import torch
from torch._functorch.aot_autograd import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
import dvn_kernels
from dvn_kernels.triton import configs, layout, op  # noqa: F401 (registers the triton_ops)
assert not configs.INTERPRET
configs._sm_count = lambda index: 132  # no GPU to ask
ins = dvn_kernels.ChannelSegments([(1, 3), (9, 4)])
outs = dvn_kernels.ChannelSegments([(2, 2), (6, 5)])
spec = dvn_kernels.conv_plan((11, 13, 3, 3), ins, outs, stride=2, padding=1).spec
codes = []

def f(x, w, b, gy):
    ops = torch.ops.dvn_kernels
    return (ops.triton_sliced_conv2d(x, w, b, spec),
            *ops.triton_sliced_conv2d_backward(gy, x, w, spec, [True, True, True]))

with FakeTensorMode():
    args = [torch.empty(s, device="cuda") for s in ((2, 7, 9, 8), (11, 13, 3, 3), (11,),
                                                     (2, 7, 5, 4))]
    outs = aot_function(f, fw_compiler=lambda gm, _: codes.append(gm.code) or gm)(*args)
print([t.stride() for t in outs])
print(sum("aten.clone" in l and "channels_last" in l for l in codes[0].splitlines()))
print(layout.cached_weights())
'''


def test_triton_op_traces_plain_conversions():
    """The GPU path (triton_ops that Inductor decomposes) traced by AOTAutograd on fake CUDA
    tensors, no GPU needed: the conversions are graph ops (x, weight twice, grad out, x), the
    results have the fake layouts (NCHW here) and no weight is cached."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _TRACE], env=env, capture_output=True,
                       text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    strides, clones, cached = r.stdout.strip().splitlines()[-3:]
    assert strides == "[(140, 20, 4, 1), (504, 72, 8, 1), (117, 9, 3, 1), (1,)]"
    assert clones == "5" and cached == "0"


def _kernels() -> dict:
    """name -> (its parameters, the names its autotune configs set), of every Triton kernel."""
    import triton

    from dvn_kernels.triton import conv_bwd_input, conv_bwd_weight, conv_fwd, depthwise

    found = {}
    for module in (conv_fwd, conv_bwd_input, conv_bwd_weight, depthwise):
        for obj in vars(module).values():
            if isinstance(obj, triton.runtime.Autotuner) or hasattr(obj, "arg_names") \
                    or type(obj).__name__ == "InterpretedFunction":
                name, params = configs._parameters(obj)
                set_by_config = set(obj.configs[0].kwargs) \
                    if isinstance(obj, triton.runtime.Autotuner) else set()
                found[name] = ({p for p, _, _ in params}, set_by_config)
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_every_launch_passes_every_parameter(case):
    """Each launch passes every kernel parameter, or its autotune config sets it: torch
    2.11's wrap_triton (torch.compile, opcheck) counts a parameter left to its default as
    missing, and Inductor then compiles the kernel without it (the first H200 run)."""
    kernels = _kernels()
    with configs.record_launches() as rec:
        forward_backward(*problem(case))
    assert rec
    for launch in rec:
        params, set_by_config = kernels[launch.kernel]
        given = set(launch.constexprs) | set(launch.specialization) | set_by_config
        assert params == given, (launch.kernel, params - given)
