"""One op contract for the native and the Triton ops: the same schemas, the same checks.

The native ops check their arguments in C++ (csrc/conv_problem.cpp); every Python entry point
(the Triton ops, the fake implementations) in ``dvn_kernels.ops.check_call``. The same
bad-input matrix goes through each of them via torch.ops directly, and each must reject every
case with the same exception type, naming the same argument.
"""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dvn_kernels
from dvn_kernels import extension, ops
from dvn_kernels.spec import KernelSpec, parse_spec

HAS_NATIVE = "cpu" in dvn_kernels.available_backends("cpu", torch.float32)
HAS_TRITON = "triton" in dvn_kernels.available_backends("cpu", torch.float32)


def _triton_ops():
    import dvn_kernels.triton  # noqa: F401  (defines the Triton ops)

    return (torch.ops.dvn_kernels.triton_sliced_conv2d.default,
            torch.ops.dvn_kernels.triton_sliced_conv2d_backward.default)


def _signature(schema):
    """A schema's argument and return types, names aside."""
    return ([str(a.type) for a in schema.arguments], [str(r.type) for r in schema.returns])


@pytest.mark.skipif(not extension.LOADED, reason="extension not built")
def test_native_ops_declare_the_schemas_of_ops_py():
    for name, schema in zip(ops.NATIVE_OPS, (ops.FORWARD_SCHEMA, ops.BACKWARD_SCHEMA)):
        registered = getattr(torch.ops.dvn_kernels, name).default._schema
        assert str(registered) == f"dvn_kernels::{name}{schema}"


@pytest.mark.skipif(not (extension.LOADED and HAS_TRITON), reason="needs both op families")
def test_triton_ops_declare_the_native_schemas():
    _triton_ops()
    for native, triton in zip(ops.NATIVE_OPS, ops.TRITON_OPS):
        a = getattr(torch.ops.dvn_kernels, native).default._schema
        b = getattr(torch.ops.dvn_kernels, triton).default._schema
        assert _signature(a) == _signature(b), (a, b)
        assert str(a).split("(", 1)[1] == str(b).split("(", 1)[1]  # argument names too
        assert [x.N for x in a.arguments] == [x.N for x in b.arguments]  # bool[3], not bool[]
    bwd = torch.ops.dvn_kernels.triton_sliced_conv2d_backward.default._schema
    assert _signature(bwd) == (["Tensor", "Tensor", "Tensor", "str", "List[bool]"],
                               ["Tensor", "Tensor", "Tensor"])
    assert bwd.arguments[4].N == 3


X = torch.randn(2, 4, 7, 7)
W = torch.randn(8, 6, 3, 3)
B = torch.randn(8)


def spec(ins="0+2,4+2", outs="1+3", stride="1,1", padding="1,1", groups="1"):
    return f"in={ins} out={outs} stride={stride} padding={padding} dilation=1,1 groups={groups}"


# (case, changes to (x, weight, bias, spec), the argument the error names, its type)
FORWARD_CASES = [
    ("range past C_in", dict(spec=spec(ins="0+2,5+2")), "in_segments", ValueError),
    ("range past C_out", dict(spec=spec(outs="6+3")), "out_segments", ValueError),
    ("unsorted ranges", dict(spec=spec(ins="4+2,0+2")), "spec", ValueError),
    ("three ranges", dict(spec=spec(ins="0+1,2+1,4+2")), "spec", ValueError),
    ("empty range", dict(spec=spec(ins="0+0")), "spec", ValueError),
    ("old start:stop form", dict(spec=spec(ins="0:2,4:6")), "spec", ValueError),
    ("no out", dict(spec="in=0+4 stride=1,1 padding=1,1 dilation=1,1 groups=1"), "spec",
     ValueError),
    ("trailing text", dict(spec=spec() + " extra"), "spec", ValueError),
    ("huge number", dict(spec=spec(ins="0+99999999999")), "spec", ValueError),
    ("zero stride", dict(spec=spec(stride="0,1")), "spec", ValueError),
    ("zero groups", dict(spec=spec(groups="0")), "groups", ValueError),
    ("groups not dividing C_out", dict(spec=spec(groups="3")), "groups", ValueError),
    ("ranges cutting groups", dict(spec=spec(groups="2")), "groups", ValueError),
    ("x channels", dict(spec=spec(ins="0+3")), "x", ValueError),
    ("x 3-D", dict(x=X[0]), "x", ValueError),
    ("x dtype", dict(x=X.double()), "x", TypeError),
    ("x too small", dict(x=torch.randn(2, 4, 1, 1), spec=spec(padding="0,0")), "x", ValueError),
    ("weight 3-D", dict(weight=W[0]), "weight", ValueError),
    ("weight integer", dict(weight=W.long(), x=X.long(), bias=None), "weight", TypeError),
    ("bias shape", dict(bias=B[:7]), "bias", ValueError),
    ("bias dtype", dict(bias=B.double()), "bias", TypeError),
]

GRAD_OUT = torch.randn(2, 3, 7, 7)
BACKWARD_CASES = [
    ("grad_out shape", dict(grad_out=torch.randn(2, 4, 7, 7)), "grad_out", ValueError),
    ("grad_out dtype", dict(grad_out=GRAD_OUT.double()), "grad_out", TypeError),
    ("x dtype", dict(x=X.double()), "x", TypeError),
    ("x channels", dict(spec=spec(ins="0+3")), "x", ValueError),
    ("bad spec", dict(spec=spec(ins="2+2,0+2")), "spec", ValueError),
    ("range past C_in", dict(spec=spec(ins="0+2,5+2")), "in_segments", ValueError),
]


def _forward_args(change):
    args = dict(x=X, weight=W, bias=B, spec=spec())
    args.update(change)
    return args["x"], args["weight"], args["bias"], args["spec"]


def _backward_args(change):
    args = dict(grad_out=GRAD_OUT, x=X, weight=W, spec=spec())
    args.update(change)
    return args["grad_out"], args["x"], args["weight"], args["spec"], [True, True, True]


def _rejection(op, args):
    """(exception type, the argument its message names) of a rejected call."""
    try:
        op(*args)
    except (TypeError, ValueError) as exc:
        match = re.match(r"(\w+):", str(exc))
        return type(exc), match.group(1) if match else str(exc)
    raise AssertionError("the call was accepted")


def _entries(backward: bool):
    """The entry points a direct call can reach: the native op, its fake (under
    FakeTensorMode), the Triton op."""
    index = 1 if backward else 0
    found = {}
    if HAS_NATIVE:
        native = getattr(torch.ops.dvn_kernels, ops.NATIVE_OPS[index]).default
        found["native"] = native

        def fake(*args, op=native):
            with FakeTensorMode() as mode:
                fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                return op(*fakes)
        found["native fake"] = fake
    if HAS_TRITON:
        found["triton"] = _triton_ops()[index]
    return found


@pytest.mark.skipif(not (HAS_NATIVE or HAS_TRITON), reason="no kernel op here")
@pytest.mark.parametrize("case, change, name, error", FORWARD_CASES,
                         ids=[c[0] for c in FORWARD_CASES])
def test_forward_ops_reject_bad_input_naming_the_same_argument(case, change, name, error):
    args = _forward_args(change)
    got = {entry: _rejection(op, args) for entry, op in _entries(False).items()}
    assert got and all(v == (error, name) for v in got.values()), got


@pytest.mark.skipif(not (HAS_NATIVE or HAS_TRITON), reason="no kernel op here")
@pytest.mark.parametrize("case, change, name, error", BACKWARD_CASES,
                         ids=[c[0] for c in BACKWARD_CASES])
def test_backward_ops_reject_bad_input_naming_the_same_argument(case, change, name, error):
    args = _backward_args(change)
    got = {entry: _rejection(op, args) for entry, op in _entries(True).items()}
    assert got and all(v == (error, name) for v in got.values()), got


@pytest.mark.skipif(not (HAS_NATIVE and HAS_TRITON), reason="needs both op families")
def test_good_input_runs_on_both_ops_alike():
    x, w, b, s = _forward_args({})
    native, triton = _entries(False)["native"], _entries(False)["triton"]
    torch.testing.assert_close(triton(x, w, b, s), native(x, w, b, s))
    g = torch.randn(2, 3, 7, 7)
    for got, want in zip(_triton_ops()[1](g, x, w, s, [True] * 3),
                         torch.ops.dvn_kernels.sliced_conv2d_backward(g, x, w, s, [True] * 3)):
        torch.testing.assert_close(got, want)


def test_spec_string_round_trips_start_and_length():
    text = "in=0+16,32+16 out=8+8 stride=2,1 padding=1,0 dilation=1,2 groups=1"
    s = parse_spec(text)
    assert isinstance(s, KernelSpec)
    assert s.in_segments.pairs == ((0, 16), (32, 16)) and s.out_segments.pairs == ((8, 8),)
    assert (s.stride, s.padding, s.dilation, s.groups) == ((2, 1), (1, 0), (1, 2), 1)
    assert s.text() == text
    plan = dvn_kernels.conv_plan((24, 48, 3, 3), [(0, 16), (32, 16)], [(8, 8)], stride=(2, 1),
                                 padding=(1, 0), dilation=(1, 2))
    assert plan.spec == text and plan.kernel == s
    assert (plan.stride, plan.padding, plan.dilation) == (s.stride, s.padding, s.dilation)


def test_kernel_scalars_are_the_ranges():
    s = parse_spec(spec())
    assert s.in_segments.kernel_scalars() == (0, 2, 4, True)
    assert s.out_segments.kernel_scalars() == (1, 3, 0, False)
    assert s.in_segments.ranges == ((0, 2), (4, 2))


def test_grad_mask_drops_an_absent_bias():
    assert ops.grad_mask((True, False, True), has_bias=False) == [True, False, False]
    assert ops.grad_mask((False, True, True), has_bias=True) == [False, True, True]


@pytest.mark.skipif(not (extension.LOADED and dvn_kernels.backends.TRITON_INSTALLED
                         and hasattr(torch.library, "triton_op")), reason="needs Triton")
def test_triton_op_path_declares_the_native_schemas():
    """Off the interpreter the Triton ops are triton_ops (the GPU path): the same schemas
    (torch 2.11's triton_op would infer ``bool[]`` from annotations; ops.py keeps bool[3])."""
    import os
    import subprocess
    import sys

    code = ("import torch, dvn_kernels.triton\n"
            "from dvn_kernels import ops\n"
            "from dvn_kernels.triton import configs\n"
            "assert not configs.INTERPRET\n"
            "for n, t in zip(ops.NATIVE_OPS, ops.TRITON_OPS):\n"
            "    a = str(getattr(torch.ops.dvn_kernels, n).default._schema).split('(', 1)[1]\n"
            "    b = str(getattr(torch.ops.dvn_kernels, t).default._schema).split('(', 1)[1]\n"
            "    assert a == b, (a, b)\n"
            "print('same')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-3000:]
