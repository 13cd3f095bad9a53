"""``dvn_kernels.direct``: the direct 3x3 NHWC convolution, its checks and fake, and its use by
the compiled runtime's GEMM levels (``dvn.deploy.aot.GemmConv``)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dvn_kernels import direct

pytestmark = pytest.mark.skipif(not direct.BUILT, reason="the extension is not built with "
                                "the direct op")


def padded(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad)).contiguous()


def kernel_weight(w: torch.Tensor) -> torch.Tensor:  # (K, C, 3, 3) -> (3, 3, C, K)
    return w.permute(2, 3, 1, 0).contiguous()


@pytest.mark.parametrize("n,c,h,w,k,bias", [
    (1, 16, 28, 28, 16, True),   # tiles of 14 pixels x 16 channels, no remainder
    (1, 32, 14, 14, 32, True),   # tiles of 8 pixels x 32 channels
    (2, 3, 5, 7, 48, False),     # 48: an odd number of 16s; 35 pixels: a remainder
    (1, 8, 1, 1, 32, True),      # one pixel
    (3, 5, 9, 2, 64, True),      # rows of 2, tiles across rows
    (1, 128, 4, 4, 128, False),
])
def test_direct_conv_is_conv2d(n, c, h, w, k, bias):
    g = torch.Generator().manual_seed(n * 100 + c)
    x = torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(k, c, 3, 3, generator=g)
    b = torch.randn(k, generator=g) if bias else None
    want = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), padding=1)
    got = direct.direct_conv3x3_nhwc(padded(x), kernel_weight(wt), b)
    assert got.shape == (n, h, w, k) and got.is_contiguous()
    torch.testing.assert_close(got.permute(0, 3, 1, 2).double(), want, atol=1e-4, rtol=1e-4)


def test_direct_conv_without_padding_is_a_valid_convolution():
    x, wt = torch.randn(1, 4, 6, 5), torch.randn(16, 4, 3, 3)
    got = direct.direct_conv3x3_nhwc(x.permute(0, 2, 3, 1).contiguous(), kernel_weight(wt))
    torch.testing.assert_close(got.permute(0, 3, 1, 2), F.conv2d(x, wt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("x,w,b,name", [
    ((1, 6, 6), (3, 3, 4, 16), None, "x: expected a padded"),
    ((1, 6, 6, 4), (3, 3, 4, 24), None, "weight: expected \\(3, 3, 4, K\\) with K a multiple"),
    ((1, 6, 6, 4), (3, 3, 5, 16), None, "weight: expected \\(3, 3, 4, K\\)"),
    ((1, 6, 6, 4), (1, 1, 4, 16), None, "weight: expected \\(3, 3, 4, K\\)"),
    ((1, 6, 6, 4), (3, 3, 4, 16), (8,), "bias: expected a float32 CPU tensor of shape \\(16,\\)"),
    ((1, 2, 6, 4), (3, 3, 4, 16), None, "x: expected a padded"),
])
def test_direct_conv_names_the_bad_argument(x, w, b, name):
    with pytest.raises(ValueError, match=name):
        direct.direct_conv3x3_nhwc(torch.randn(x), torch.randn(w),
                                   None if b is None else torch.randn(b))
    with pytest.raises(ValueError, match="x, weight: direct_conv3x3_nhwc takes float32"):
        direct.direct_conv3x3_nhwc(torch.randn(1, 6, 6, 4, dtype=torch.float64),
                                   torch.randn(3, 3, 4, 16, dtype=torch.float64))


def test_direct_conv_schema_and_fake():
    args = (padded(torch.randn(2, 8, 5, 6)), torch.randn(3, 3, 8, 32), torch.randn(32))
    torch.library.opcheck(torch.ops.dvn_kernels.direct_conv3x3_nhwc.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not direct.available(), reason="needs an AVX-512 CPU")
def test_gemm_conv_runs_small_3x3_stride1_layers_direct_and_the_rest_as_gemms():
    from dvn.deploy.aot import GemmConv
    torch.manual_seed(0)
    cases = {"3x3 s1": (nn.Conv2d(16, 32, 3, padding=1), True),
             "stride 2": (nn.Conv2d(16, 32, 3, stride=2, padding=1), False),
             "1x1": (nn.Conv2d(16, 32, 1), False),
             "K not a multiple of 16": (nn.Conv2d(16, 24, 3, padding=1), False),
             "narrow input (read in the weight's order)": (nn.Conv2d(3, 16, 3, padding=1), False),
             "weight over 1 MB": (nn.Conv2d(256, 256, 3, padding=1), False),
             "no padding": (nn.Conv2d(16, 16, 3), True)}
    x = {c: torch.randn(1, conv.in_channels, 9, 7) for c, (conv, _) in cases.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not GemmConv(cases["3x3 s1"][0]).direct  # one thread only
    finally:
        torch.set_num_threads(1)
    try:
        made = {name: GemmConv(conv) for name, (conv, _) in cases.items()}
    finally:
        torch.set_num_threads(threads)
    for name, (conv, runs_direct) in cases.items():
        g = made[name]
        assert g.direct is runs_direct, name
        with torch.no_grad():
            torch.testing.assert_close(g(x[name]), conv(x[name]), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not direct.available(), reason="needs an AVX-512 CPU")
def test_a_compiled_level_calls_the_direct_kernel(one_thread, monkeypatch):
    import zipfile

    from dvn.deploy import aot
    sources = []  # each package's generated code, read before its folder is removed
    compile_package = torch._inductor.aoti_compile_and_package

    def keep_source(*args, **kwargs):
        path = compile_package(*args, **kwargs)
        with zipfile.ZipFile(path) as z:
            sources.append(b"".join(z.read(n) for n in z.namelist()
                                    if n.endswith((".cpp", ".json"))))
        return path
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", keep_source)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1)).eval()
    x = torch.randn(1, 8, 12, 12)
    run = aot.aot_capture(net, x)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), atol=1e-4, rtol=1e-4)
    assert b"direct_conv3x3_nhwc" in sources[0]
