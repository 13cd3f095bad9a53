"""Bad input raises a clear error that names the argument; no crash, no silent result."""

import pytest
import torch

import dvn_kernels
from dvn_kernels import BackendUnavailableError, sliced_conv2d

W = torch.randn(8, 6, 3, 3)
B = torch.randn(8)
X = torch.randn(2, 4, 7, 7)
GOOD = dict(x=X, weight=W, bias=B, in_segments=[(0, 2), (4, 2)], out_segments=[(1, 3)],
            stride=1, padding=1, dilation=1)

CASES = [
    # segments
    (dict(in_segments=[(0, 2), (5, 2)]), ValueError, r"in_segments: segment 1 .* outside the 6"),
    (dict(out_segments=[(6, 3)]), ValueError, r"out_segments: segment 0 .* outside the 8"),
    (dict(in_segments=[(0, 3), (2, 1)]), ValueError, r"in_segments: .*sorted and disjoint"),
    (dict(in_segments=[(4, 2), (0, 2)]), ValueError, r"in_segments: .*sorted and disjoint"),
    (dict(in_segments=[]), ValueError, r"in_segments: at least one segment"),
    (dict(out_segments=[(1, 0)]), ValueError, r"out_segments: .*positive length"),
    (dict(in_segments=None), TypeError, r"in_segments: expected a sequence"),
    # x
    (dict(in_segments=[(0, 3)]), ValueError, r"x: has 4 channels but in_segments select 3"),
    (dict(x=X[0]), ValueError, r"x: expected a 4-D"),
    (dict(x=X.numpy()), TypeError, r"x: expected a torch.Tensor"),
    (dict(x=X.double()), TypeError, r"x: dtype torch.float64 does not match weight"),
    (dict(x=torch.randn(2, 4, 1, 1), padding=0), ValueError, r"x: padded H size 1 is smaller"),
    # weight and bias
    (dict(weight=W[0]), ValueError, r"weight: expected a 4-D"),
    (dict(weight=W.long(), x=X.long(), bias=None), TypeError, r"weight: expected a floating"),
    (dict(bias=B[:7]), ValueError, r"bias: expected shape \(8,\)"),
    (dict(bias=B.double()), TypeError, r"bias: dtype torch.float64 does not match"),
    (dict(bias=[1.0]), TypeError, r"bias: expected a torch.Tensor or None"),
    (dict(x=X.to("meta")), ValueError, r"x: device meta does not match weight's device cpu"),
    # geometry
    (dict(stride=0), ValueError, r"stride: values must be >= 1"),
    (dict(stride=(1, 2, 3)), TypeError, r"stride: expected an int or a pair"),
    (dict(stride=True), TypeError, r"stride: expected an int or a pair"),
    (dict(padding=-1), ValueError, r"padding: values must be >= 0"),
    (dict(padding="full"), ValueError, r"padding: expected an int, a pair, 'same' or 'valid'"),
    (dict(padding="same", stride=2), ValueError, r"padding: 'same' needs stride 1"),
    (dict(dilation=0), ValueError, r"dilation: values must be >= 1"),
    (dict(dilation=1.5), TypeError, r"dilation: expected an int or a pair"),
    # groups and backend
    (dict(groups=3), ValueError, r"groups: weight's C_out=8 is not divisible by groups=3"),
    (dict(groups=0), ValueError, r"groups: must be >= 1, got 0"),
    (dict(groups=1.5), TypeError, r"groups: expected an int"),
    (dict(backend="fast"), ValueError, r"backend: unknown backend 'fast'"),
    (dict(backend=3), TypeError, r"backend: expected a string"),
    # float64 CPU tensors: no Triton path (not on CUDA, not in the interpreter either)
    (dict(backend="triton", x=X.double(), weight=W.double(), bias=B.double()),
     BackendUnavailableError, r"backend: 'triton' is unavailable"),
    (dict(backend="cuda"), BackendUnavailableError, r"backend: 'cuda' is unavailable"),
]


@pytest.mark.parametrize("change, error, message", CASES,
                         ids=[f"{i}-{next(iter(c[0]))}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("backend", ["reference", "masked", "cpu"])
def test_bad_input_names_the_argument(change, error, message, backend):
    kwargs = dict(GOOD, backend=backend)
    kwargs.update(change)
    x, weight, bias = kwargs.pop("x"), kwargs.pop("weight"), kwargs.pop("bias")
    with pytest.raises(error, match=message):
        sliced_conv2d(x, weight, bias, **kwargs)


@pytest.mark.parametrize("backend", ["reference", "masked", "cpu"])
@pytest.mark.parametrize("kernel, dilation", [((2, 2), 1), ((2, 3), 1), ((3, 2), (2, 3))])
def test_same_padding_with_an_odd_total_pads_as_conv2d(backend, kernel, dilation):
    """An odd total padding goes one more to the right and bottom, as F.conv2d pads it."""
    if backend not in dvn_kernels.available_backends():
        pytest.skip(f"{backend} unavailable")
    w = torch.randn(4, 6, *kernel, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    y = sliced_conv2d(x, w, in_segments=[(1, 3)], out_segments=[(0, 4)], padding="same",
                      dilation=dilation, backend=backend)
    want = torch.nn.functional.conv2d(x, w[:, 1:4], padding="same", dilation=dilation)
    assert y.shape == want.shape == (2, 4, 5, 7)
    torch.testing.assert_close(y, want)
    got = torch.autograd.grad(y.square().sum(), [x, w])
    expected = torch.autograd.grad(want.square().sum(), [x, w])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_cpu_backend_refuses_other_devices():
    if "cpu" not in dvn_kernels.available_backends():
        pytest.skip("no cpu kernel")
    w = W.to("meta")
    with pytest.raises(BackendUnavailableError, match="backend: 'cpu' is unavailable: it runs "
                                                      "on CPU tensors, got tensors on meta"):
        sliced_conv2d(X.to("meta"), w, in_segments=[(0, 4)], out_segments=[(0, 8)],
                      backend="cpu")


def test_direct_op_calls_are_checked_in_cpp():
    """torch.ops.dvn_kernels.* bypasses the Python checks; the C++ checks must still hold."""
    if "cpu" not in dvn_kernels.available_backends():
        pytest.skip("no cpu kernel")
    op = torch.ops.dvn_kernels.sliced_conv2d

    def spec(ins, outs="0+8", stride="1,1"):
        return f"in={ins} out={outs} stride={stride} padding=1,1 dilation=1,1 groups=1"

    with pytest.raises(ValueError, match="in_segments: channel range ends at 8, outside the 6"):
        op(X, W, B, spec("4+4"))
    with pytest.raises(ValueError, match="spec: in_segments ranges must be sorted and disjoint"):
        op(X, W, B, spec("2+2,0+2"))
    with pytest.raises(ValueError, match="spec: expected at most two ranges"):
        op(X, W, B, spec("0+1,2+1,4+2"))
    with pytest.raises(ValueError, match="spec: in_segments range 0 .* is empty"):
        op(X, W, B, spec("2+0"))
    with pytest.raises(ValueError, match="spec: expected ' out=' at position 6"):
        op(X, W, B, "in=0+4 stride=1,1 padding=1,1 dilation=1,1 groups=1")
    with pytest.raises(ValueError, match="spec: expected the end of the spec"):
        op(X, W, B, spec("0+4") + " extra")
    with pytest.raises(ValueError, match="spec: expected a number below 2\\^31"):
        op(X, W, B, spec("0+99999999999"))
    with pytest.raises(ValueError, match="x: has 4 channels but in_segments select 2"):
        op(X, W, B, spec("0+2"))
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        op(X, W, B[:3], spec("0+4"))
    with pytest.raises(TypeError, match="x: dtype Double does not match weight's dtype Float"):
        op(X.double(), W, B, spec("0+4"))
    with pytest.raises(ValueError, match="spec: stride and dilation must be >= 1"):
        op(X, W, B, spec("0+4", stride="0,1"))
    with pytest.raises(ValueError, match="groups: the kernels compute whole groups"):
        op(X, W, B, spec("0+4").replace("groups=1", "groups=2"))
    with pytest.raises(ValueError, match="groups: weight's C_out=8 is not divisible by "
                                         "groups=3"):
        op(X, W, B, spec("0+4").replace("groups=1", "groups=3"))
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        torch.ops.dvn_kernels.sliced_conv2d_backward(torch.randn(2, 3, 7, 7), X, W, spec("0+4"),
                                                     [True, True, True])
