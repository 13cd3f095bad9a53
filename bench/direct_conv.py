"""Would a direct convolution close the `compiled` runtime's gap at one thread? (issue 20)

    python -m bench.direct_conv --json bench/results/direct-conv-<machine>.json

At one thread the `compiled` runtime's small levels are im2col plus MKL's GEMM
(``dvn.deploy.aot.GemmConv``): the GEMMs run near the core's peak and the im2col is the rest
of the call (16-26%), where ONNX Runtime's direct NCHWc convolutions write no im2col matrix.
This measures, per 3x3 stride-1 layer of WRN-14-2's and ResNet-42's GEMM levels, one thread:

* ``direct``: the extension's direct kernel (``dvn_kernels.direct``, the one ``compiled``
  runs: NHWC, a padded input, a tile of 8 pixels x 32 output channels or 14 x 16 held in
  registers, the input broadcast, the weight (kh, kw, C, N) read as vectors);
* ``gemm``: MKL's GEMM (``torch.addmm``) on an im2col matrix made beforehand: the GEMM alone;
* ``im2col_gemm``: an eager im2col and the GEMM, for scale only: Inductor's fused im2col in
  the compiled level is faster (its share of the call, from ``perf``: docs/deploy-runtimes.md).

Each time is the median of shuffled rounds (``bench.timing.time_side_by_side``), a round
calling each candidate 20 times. Then what a custom C++ op costs per call inside an
AOTInductor package (``custom_op_cost``), as a direct convolution in the extension would be
called from a compiled level. The direct kernel's answer is checked against the GEMM's
first (max error <= 1e-3). Needs an AVX-512 CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
import torch.nn.functional as F

from dvn_kernels.direct import available, direct_conv3x3_nhwc

from .timing import cpu_meta, time_side_by_side, write_results

#: (net and level, size, in channels, out channels): the 3x3 stride-1 layers of the GEMM
#: levels (WRN-14-2 k = 2, 28x28: levels 1 and 2; ResNet-42 k = 4, 64x64: levels 1 and 2), which
#: hold most of their multiply-adds (the stems and the stride-2 layers are left out)
LAYERS = [("wrn14-2 L1", 28, 16, 16), ("wrn14-2 L1", 14, 32, 32), ("wrn14-2 L1", 7, 64, 64),
          ("wrn14-2 L2", 28, 32, 32), ("wrn14-2 L2", 14, 64, 64), ("wrn14-2 L2", 7, 128, 128),
          ("resnet42 L1", 32, 16, 16), ("resnet42 L1", 16, 32, 32), ("resnet42 L1", 8, 64, 64),
          ("resnet42 L1", 4, 128, 128), ("resnet42 L2", 32, 32, 32),
          ("resnet42 L2", 16, 64, 64), ("resnet42 L2", 8, 128, 128),
          ("resnet42 L2", 4, 256, 256)]
CALLS = 20  # calls per timed round


PROBE_OP = r"""
#include <torch/library.h>
#include <ATen/ATen.h>
static at::Tensor twice(const at::Tensor& x) { return x * 2; }
TORCH_LIBRARY(dvn_direct_conv_probe, m) { m.def("twice(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(dvn_direct_conv_probe, CPU, m) { m.impl("twice", &twice); }
"""
#: custom-op calls in the AOTInductor package of ``custom_op_cost``
OP_CALLS = 40


def custom_op_cost(repeats: int) -> dict:
    """What a custom C++ op costs per call inside an AOTInductor package (the way a direct
    convolution in the extension would be called from a compiled level): a package of
    ``OP_CALLS`` calls of a trivial op (``x * 2`` on 1024 floats, through the package's proxy
    executor) against the same graph in ATen ops, which Inductor fuses into one kernel."""
    import os

    from torch.utils.cpp_extension import load_inline
    folder = tempfile.mkdtemp(prefix="dvn-direct-conv-op-")
    load_inline("dvn_direct_conv_probe_op", [PROBE_OP], build_directory=folder,
                is_python_module=False, verbose=False)
    torch.library.register_fake("dvn_direct_conv_probe::twice")(torch.empty_like)

    class Custom(torch.nn.Module):
        def forward(self, x):
            for _ in range(OP_CALLS):
                x = torch.ops.dvn_direct_conv_probe.twice(torch.relu(x))
            return x

    class Aten(torch.nn.Module):
        def forward(self, x):
            for _ in range(OP_CALLS):
                x = torch.relu(x) * 2
            return x
    x = torch.randn(1, 16, 8, 8)
    runs = {}
    for name, module in (("custom", Custom()), ("aten", Aten())):
        program = torch.export.export(module, (x,))
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(folder, f"{name}.pt2"))
        runs[name] = torch._inductor.aoti_load_package(package)
        torch.testing.assert_close(runs[name](x), module(x))
    us = {k: 1e6 * v for k, v in time_side_by_side(
        {k: (lambda f=f: f(x)) for k, f in runs.items()}, repeats=repeats * 20).items()}
    return {"calls": OP_CALLS, "package_us": us,
            "us_per_call": (us["custom"] - us["aten"]) / OP_CALLS}


def layer_row(net: str, size: int, c: int, n: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(size * 1000 + c)
    x = torch.randn(size, size, c, generator=g)
    w = torch.randn(3, 3, c, n, generator=g) / (3 * c ** 0.5)
    b = torch.randn(n, generator=g)
    xp = F.pad(x, (0, 0, 1, 1, 1, 1)).contiguous()
    w2 = w.reshape(9 * c, n)

    def im2col():
        return xp.unfold(0, 3, 1).unfold(1, 3, 1).permute(0, 1, 3, 4, 2).reshape(size * size,
                                                                               9 * c)
    cols = im2col().contiguous()
    out = torch.empty(size * size, n)
    want = torch.addmm(b, cols, w2).view(size, size, n)
    x4, w4 = xp.unsqueeze(0), w.contiguous()
    error = (direct_conv3x3_nhwc(x4, w4, b)[0] - want).abs().max().item()
    if error > 1e-3:
        raise RuntimeError(f"direct kernel: max error {error:.2e} on {net} "
                           f"{size}x{size}x{c}->{n}")
    fns = {"direct": lambda: [direct_conv3x3_nhwc(x4, w4, b) for _ in range(CALLS)]}
    fns["gemm"] = lambda: [torch.addmm(b, cols, w2, out=out) for _ in range(CALLS)]
    fns["im2col_gemm"] = lambda: [torch.addmm(b, im2col(), w2) for _ in range(CALLS)]
    us = {k: 1e6 * v / CALLS for k, v in time_side_by_side(fns, repeats=repeats).items()}
    flop = 2 * size * size * 9 * c * n
    return {"net": net, "size": size, "in": c, "out": n, "us": us, "direct_us": us["direct"],
            "max_error": error, "gflops": {"direct": flop / us["direct"] / 1e3,
                                           "gemm": flop / us["gemm"] / 1e3}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per layer")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats: expected at least 1, got {a.repeats}")
    if not available():
        print("bench.direct_conv: the direct kernel needs the extension built with it and an "
              f"AVX-512 CPU; this CPU has {torch.backends.cpu.get_cpu_capability()}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = [layer_row(*layer, a.repeats) for layer in LAYERS]
    print("| layer | direct us | MKL GEMM on a ready im2col us | im2col + GEMM us | "
          "direct / GEMM | direct / (im2col + GEMM) | GFLOP/s direct / GEMM |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} {r['size']}x{r['size']}x{r['in']}->{r['out']} | "
              f"{r['direct_us']:.1f} | {r['us']['gemm']:.1f} | "
              f"{r['us']['im2col_gemm']:.1f} | {r['direct_us'] / r['us']['gemm']:.2f} | "
              f"{r['direct_us'] / r['us']['im2col_gemm']:.2f} | "
              f"{r['gflops']['direct']:.0f} / {r['gflops']['gemm']:.0f} |")
    op = custom_op_cost(a.repeats)
    print(f"\na custom C++ op in an AOTInductor package: {op['us_per_call']:.2f} us a call "
          f"({op['calls']} calls: {op['package_us']['custom']:.1f} us, against "
          f"{op['package_us']['aten']:.1f} us fused in ATen)")
    if a.json:
        write_results(a.json, cpu_meta("bench.direct_conv", argv, threads=1,
                                       custom_op_in_package=op), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
