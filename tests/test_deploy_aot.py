"""``dvn.deploy.aot``: convolutions as im2col + GEMM (exact in eager, every geometry), which
convolutions are rewritten, and errors. The compiled path itself is tested through the
``compiled`` runtime in test_deploy_onnx.py."""

import pytest
import torch
import torch.nn as nn

from dvn.deploy import aot


@pytest.mark.parametrize("cin,cout,k,stride,padding,bias", [
    (16, 8, 3, 1, 1, True), (16, 8, 3, 2, 1, False), (3, 8, 7, 2, 3, False),
    (1, 4, 5, 1, 0, True), (8, 16, 1, 1, 0, False), (12, 6, 1, 2, 0, True),
    (8, 4, (3, 1), (1, 2), (1, 0), True), (2, 3, 2, 2, 1, False)])
def test_gemm_conv_equals_the_convolution(cin, cout, k, stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, bias=bias)
    gemm = aot.GemmConv(conv)
    assert gemm.channels_last == (cin >= aot.CHANNELS_LAST_FROM)
    kh, kw = conv.kernel_size
    assert gemm.weight.shape == (cin * kh * kw, cout)  # (K, N): MKL's NN kernel
    for shape in [(1, cin, 11, 9), (3, cin, 8, 8)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(gemm(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 8, 3, dilation=2),
                                  nn.Conv2d(8, 8, 3, padding="same"),
                                  nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")])
def test_gemm_conv_refuses_what_it_cannot_compute(conv):
    with pytest.raises(ValueError, match="conv: expected an ungrouped, undilated"):
        aot.GemmConv(conv)


def _net(*convs: nn.Module) -> nn.Sequential:
    layers = []
    for c in convs:
        layers += [c, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_gemm_convs_rewrites_a_level_of_small_plain_convolutions():
    torch.manual_seed(0)
    net = _net(nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.Conv2d(16, 16, 3, padding=1),
               nn.Conv2d(16, 32, 1, stride=2))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
    assert aot.gemm_convs(net, x) is net
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["GemmConv", "ReLU"] * 3, kinds
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("odd", [
    nn.Conv2d(64, 64, 3, padding=1),            # 64 * 64 * 9 * 32 * 32 = 37.7 M MACs
    nn.Conv2d(64, 64, 3, padding=1, groups=64),  # depthwise
    nn.Conv2d(64, 64, 3, padding=2, dilation=2)])
def test_gemm_convs_leaves_a_level_with_a_large_or_special_convolution(odd):
    """All or none: one convolution left among GEMMs made Inductor lay the level out for it."""
    net = _net(nn.Conv2d(3, 64, 3, padding=1), odd)
    x = torch.randn(1, 3, 32, 32)
    aot.gemm_convs(net, x)
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU"] * 2


class _Loader:
    def __init__(self, fn):
        self.fn = fn

    def boxed_run(self, inputs):
        return [self.fn(inputs[0])]


class _Package:
    """A loaded package's shape: the public call and its loader's boxed entry."""

    def __init__(self, public, boxed):
        self.public, self.loader = public, _Loader(boxed)

    def __call__(self, x):
        return self.public(x)


def test_direct_entry_is_used_only_when_it_answers_like_the_public_call():
    x = torch.randn(1, 2, 3, 3)
    same = _Package(lambda t: t * 2, lambda t: t * 2)
    run = aot._direct(same, x)
    assert run is not same and torch.equal(run(x), x * 2)
    differs = _Package(lambda t: t * 2, lambda t: t * 3)
    assert aot._direct(differs, x) is differs
    tupled = _Package(lambda t: (t, t), lambda t: t)
    assert aot._direct(tupled, x) is tupled


_ORDER_SCRIPT = r"""
import sys, zipfile
import torch
import torch.nn as nn
from dvn.deploy import aot

sources = []
compile_package = torch._inductor.aoti_compile_and_package

def keep_source(*args, **kwargs):
    path = compile_package(*args, **kwargs)
    with zipfile.ZipFile(path) as z:
        sources.append("".join(z.read(n).decode() for n in z.namelist()
                               if n.endswith("wrapper.cpp")))
    return path

torch._inductor.aoti_compile_and_package = keep_source
torch.manual_seed(0)
x = torch.randn(1, 8, 32, 32)
gemms = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
convs = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval()
for net in (gemms, convs, gemms):
    run = aot.aot_capture(net, x)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), atol=1e-4, rtol=1e-4)
for src in sources:
    print(src.count("mkldnn__convolution_pointwise"), src.count("aoti_torch_cpu_convolution("),
          src.count("linear_pointwise"), src.count("mm_out("))
"""


def test_each_level_compiles_alike_whatever_was_compiled_before():
    """Inductor registers its weight-packing patterns at the first compilation with freezing of
    a process. A GEMM level, then a convolution level, then a GEMM level again, in a fresh
    process: the convolutions are prepacked for oneDNN, and neither GEMM level's GEMMs are."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = [tuple(map(int, line.split())) for line in out.stdout.splitlines()]
    gemm1, conv, gemm2 = counts
    assert conv[:2] == (2, 0), counts      # two prepacked oneDNN convolutions, no ATen one
    for g in (gemm1, gemm2):
        assert g[:3] == (0, 0, 0) and g[3] >= 1, counts  # MKL's GEMM, no oneDNN linear
