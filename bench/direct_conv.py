"""Would a direct convolution close the `compiled` runtime's gap at one thread? (issue 20)

    python -m bench.direct_conv --json bench/results/direct-conv-<machine>.json

At one thread the `compiled` runtime's small levels are im2col plus MKL's GEMM
(``dvn.deploy.aot.GemmConv``): the GEMMs run near the core's peak and the im2col is the rest
of the call (16-26%), where ONNX Runtime's direct NCHWc convolutions write no im2col matrix.
This measures, per 3x3 stride-1 layer of WRN-14-2's and ResNet-42's GEMM levels, one thread:

* ``direct``: a plain AVX-512 direct convolution (below: NHWC, a padded input, a tile of
  4-14 output pixels x 16 or 32 output channels held in registers, the input broadcast, the
  weight (kh, kw, C, N) read as vectors), built here with the C++ toolchain; the fastest tile;
* ``gemm``: MKL's GEMM (``torch.addmm``) on an im2col matrix made beforehand: the GEMM alone;
* ``im2col_gemm``: an eager im2col and the GEMM, for scale only: Inductor's fused im2col in
  the compiled level is faster (its share of the call, from ``perf``: docs/deploy-runtimes.md).

Each time is the median of shuffled rounds (``bench.timing.time_side_by_side``), a round
calling each candidate 20 times. Then what a custom C++ op costs per call inside an
AOTInductor package (``custom_op_cost``), as a direct convolution in the extension would be
called from a compiled level. The direct kernel's answer is checked against the GEMM's
first (max error <= 1e-3). It is a measurement, not a runtime: the kernel covers only what
is timed (3x3, stride 1, output channels a multiple of 16, float32, AVX-512).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
import torch.nn.functional as F

from .timing import cpu_meta, time_side_by_side, write_results

SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>

// out[h][w][n] = bias[n] + sum over (kh, kw, c) of xp[h + kh][w + kw][c] * wt[kh][kw][c][n]
// A tile: PW output pixels (consecutive in row-major order, across rows) x NV vectors of 16
// output channels, accumulated in registers; x[p] is pixel p's receptive field's first input.
template <int NV, int PW>
static inline void tile(const float* const* x, float* const* out, const float* wt,
                        const float* bias, int Wp, int C, int N, int n0) {
  __m512 acc[PW][NV];
  for (int v = 0; v < NV; ++v) {
    __m512 b = _mm512_loadu_ps(bias + n0 + 16 * v);
    for (int p = 0; p < PW; ++p) acc[p][v] = b;
  }
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      const size_t shift = ((size_t)kh * Wp + kw) * C;
      const float* w = wt + (size_t)(kh * 3 + kw) * C * N + n0;
      for (int c = 0; c < C; ++c) {
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + (size_t)c * N + 16 * v);
        for (int p = 0; p < PW; ++p) {
          __m512 a = _mm512_set1_ps(x[p][shift + c]);
          for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_fmadd_ps(a, wv[v], acc[p][v]);
        }
      }
    }
  for (int p = 0; p < PW; ++p)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out[p] + n0 + 16 * v, acc[p][v]);
}

template <int NV, int PW>
static void run(const float* xp, const float* wt, const float* bias, float* out, int H,
                int W, int C, int N) {
  const int Wp = W + 2, pixels = H * W;
  const float* x[PW];
  float* o[PW];
  for (int q0 = 0; q0 < pixels; q0 += PW) {
    const int n = pixels - q0 < PW ? pixels - q0 : PW;
    for (int p = 0; p < n; ++p) {
      const int h = (q0 + p) / W, w = (q0 + p) % W;
      x[p] = xp + ((size_t)h * Wp + w) * C;
      o[p] = out + (size_t)(q0 + p) * N;
    }
    for (int n0 = 0; n0 < N; n0 += 16 * NV) {
      if (n == PW) tile<NV, PW>(x, o, wt, bias, Wp, C, N, n0);
      else for (int p = 0; p < n; ++p) tile<NV, 1>(x + p, o + p, wt, bias, Wp, C, N, n0);
    }
  }
}

// xp: (H + 2, W + 2, C) padded, contiguous; wt: (3, 3, C, N); bias: (N); N % 16 == 0
torch::Tensor direct(torch::Tensor xp, torch::Tensor wt, torch::Tensor bias, int64_t pixels) {
  TORCH_CHECK(xp.is_contiguous() && wt.is_contiguous() && bias.is_contiguous());
  TORCH_CHECK(xp.scalar_type() == torch::kFloat && wt.scalar_type() == torch::kFloat);
  const int H = xp.size(0) - 2, W = xp.size(1) - 2, C = xp.size(2), N = wt.size(3);
  TORCH_CHECK(N % 16 == 0 && wt.size(2) == C && wt.size(0) == 3 && wt.size(1) == 3);
  auto out = torch::empty({H, W, N}, xp.options());
  const float *x = xp.data_ptr<float>(), *w = wt.data_ptr<float>(), *b = bias.data_ptr<float>();
  float* o = out.data_ptr<float>();
  TORCH_CHECK(pixels == 4 || pixels == 7 || pixels == 8 || pixels == 12 || pixels == 14);
  const bool two = N % 32 == 0;
#define DVN_RUN(P) (two ? run<2, P>(x, w, b, o, H, W, C, N) : run<1, P>(x, w, b, o, H, W, C, N))
  if (pixels == 4) DVN_RUN(4); else if (pixels == 7) DVN_RUN(7);
  else if (pixels == 8) DVN_RUN(8); else if (pixels == 12) DVN_RUN(12); else DVN_RUN(14);
  return out;
}
"""

#: (net and level, size, in channels, out channels): the 3x3 stride-1 layers of the GEMM
#: levels (WRN-14-2 k = 2, 28x28: levels 1 and 2; ResNet-42 k = 4, 64x64: levels 1 and 2), which
#: hold most of their multiply-adds (the stems and the stride-2 layers are left out)
LAYERS = [("wrn14-2 L1", 28, 16, 16), ("wrn14-2 L1", 14, 32, 32), ("wrn14-2 L1", 7, 64, 64),
          ("wrn14-2 L2", 28, 32, 32), ("wrn14-2 L2", 14, 64, 64), ("wrn14-2 L2", 7, 128, 128),
          ("resnet42 L1", 32, 16, 16), ("resnet42 L1", 16, 32, 32), ("resnet42 L1", 8, 64, 64),
          ("resnet42 L1", 4, 128, 128), ("resnet42 L2", 32, 32, 32),
          ("resnet42 L2", 16, 64, 64), ("resnet42 L2", 8, 128, 128),
          ("resnet42 L2", 4, 256, 256)]
#: output pixels per register tile (along a row) that the kernel is built for
TILES = (4, 7, 8, 12, 14)
CALLS = 20  # calls per timed round


def build():
    """The kernel above, compiled in a private temporary folder."""
    from torch.utils.cpp_extension import load_inline
    folder = tempfile.mkdtemp(prefix="dvn-direct-conv-")
    source = SOURCE + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("direct", &direct); }\n'
    return load_inline("dvn_direct_conv_probe", [source], build_directory=folder,
                       extra_cflags=["-O3", "-mavx512f", "-mfma"], verbose=False)


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


def layer_row(ext, net: str, size: int, c: int, n: int, repeats: int) -> dict:
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
    errors = {p: (ext.direct(xp, w, b, p) - want).abs().max().item() for p in TILES}
    if max(errors.values()) > 1e-3:
        raise RuntimeError(f"direct kernel: max error {max(errors.values()):.2e} on {net} "
                           f"{size}x{size}x{c}->{n}")
    fns = {f"direct_{p}": (lambda p=p: [ext.direct(xp, w, b, p) for _ in range(CALLS)])
           for p in TILES}
    fns["gemm"] = lambda: [torch.addmm(b, cols, w2, out=out) for _ in range(CALLS)]
    fns["im2col_gemm"] = lambda: [torch.addmm(b, im2col(), w2) for _ in range(CALLS)]
    us = {k: 1e6 * v / CALLS for k, v in time_side_by_side(fns, repeats=repeats).items()}
    tile = min(TILES, key=lambda p: us[f"direct_{p}"])
    flop = 2 * size * size * 9 * c * n
    return {"net": net, "size": size, "in": c, "out": n, "us": us, "direct_tile": tile,
            "direct_us": us[f"direct_{tile}"], "max_error": max(errors.values()),
            "gflops": {"direct": flop / us[f"direct_{tile}"] / 1e3,
                       "gemm": flop / us["gemm"] / 1e3}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per layer")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats: expected at least 1, got {a.repeats}")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        print(f"bench.direct_conv: this kernel needs AVX-512; this CPU has {capability}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print("  building the direct kernel (about a minute)", file=sys.stderr, flush=True)
    ext = build()
    rows = [layer_row(ext, *layer, a.repeats) for layer in LAYERS]
    print("| layer | direct us (tile) | MKL GEMM on a ready im2col us | im2col + GEMM us | "
          "direct / GEMM | direct / (im2col + GEMM) | GFLOP/s direct / GEMM |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} {r['size']}x{r['size']}x{r['in']}->{r['out']} | "
              f"{r['direct_us']:.1f} ({r['direct_tile']}) | {r['us']['gemm']:.1f} | "
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
