// dvn_kernels::direct_conv3x3_nhwc: a 3x3, stride-1 convolution of an NHWC input that is
// already padded, as a direct AVX-512 kernel: no im2col matrix.
//
// What it is for: the `compiled` runtime's small levels (dvn/deploy/aot.py), which ran each
// convolution as an im2col and MKL's GEMM. The GEMMs ran near the core's peak and the im2col
// was the rest of the call (16-26%); this kernel does the GEMM's work in 0.98-1.09x its time
// and writes no im2col (bench/direct_conv.py). A tile of PW output pixels (consecutive in
// row-major order, across rows) x NV vectors of 16 output channels is accumulated in
// registers; per (kh, kw, c) the weight's NV vectors are loaded once and each pixel's input is
// broadcast.
//
// x: (N, H + 2, W + 2, C) contiguous; weight: (3, 3, C, K) contiguous, K a multiple of 16;
// bias: (K,) or none; out: (N, H, W, K) contiguous. float32, CPU. On a CPU without AVX-512 it
// falls back to ATen's convolution (same result, no speed claim).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>

namespace dvn::cpu {
namespace {

#define DVN_AVX512 __attribute__((target("avx512f,fma")))

template <int NV, int PW>
DVN_AVX512 inline void tile(const float* const* x, float* const* out, const float* wt,
                            const float* bias, int64_t Wp, int64_t C, int64_t K, int64_t k0) {
  __m512 acc[PW][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512 b = bias ? _mm512_loadu_ps(bias + k0 + 16 * v) : _mm512_setzero_ps();
    for (int p = 0; p < PW; ++p) acc[p][v] = b;
  }
  for (int kh = 0; kh < 3; ++kh) {
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t shift = (kh * Wp + kw) * C;
      const float* w = wt + (kh * 3 + kw) * C * K + k0;
      for (int64_t c = 0; c < C; ++c) {
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + c * K + 16 * v);
        for (int p = 0; p < PW; ++p) {
          const __m512 a = _mm512_set1_ps(x[p][shift + c]);
          for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_fmadd_ps(a, wv[v], acc[p][v]);
        }
      }
    }
  }
  for (int p = 0; p < PW; ++p)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out[p] + k0 + 16 * v, acc[p][v]);
}

// Tiles t0..t1 of one image: output pixels in tiles of PW, output channels in blocks of
// 16 * NV.
template <int NV, int PW>
DVN_AVX512 void tiles(const float* xp, const float* wt, const float* bias, float* out,
                      int64_t H, int64_t W, int64_t C, int64_t K, int64_t t0, int64_t t1) {
  const int64_t Wp = W + 2, pixels = H * W;
  const float* x[PW];
  float* o[PW];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t q0 = t * PW;
    const int64_t n = pixels - q0 < PW ? pixels - q0 : PW;
    for (int64_t p = 0; p < n; ++p) {
      const int64_t h = (q0 + p) / W, w = (q0 + p) % W;
      x[p] = xp + (h * Wp + w) * C;
      o[p] = out + (q0 + p) * K;
    }
    for (int64_t k0 = 0; k0 < K; k0 += 16 * NV) {
      if (n == PW) {
        tile<NV, PW>(x, o, wt, bias, Wp, C, K, k0);
      } else {
        for (int64_t p = 0; p < n; ++p) tile<NV, 1>(x + p, o + p, wt, bias, Wp, C, K, k0);
      }
    }
  }
}

// One image, its tiles split over torch's intra-op threads (at least 8 tiles a thread).
template <int NV, int PW>
void image(const float* xp, const float* wt, const float* bias, float* out, int64_t H,
           int64_t W, int64_t C, int64_t K) {
  const int64_t count = (H * W + PW - 1) / PW;
  at::parallel_for(0, count, 8, [&](int64_t t0, int64_t t1) {
    tiles<NV, PW>(xp, wt, bias, out, H, W, C, K, t0, t1);
  });
}

// Tiles of 8 pixels x 32 channels (or 14 x 16 where K is an odd number of 16s): at most 28
// accumulators of AVX-512's 32 registers; the fastest or within 5% of it on the measured
// layers (bench/direct_conv.py).
void run_avx512(const float* xp, const float* wt, const float* bias, float* out, int64_t H,
                int64_t W, int64_t C, int64_t K) {
  if (K % 32 == 0) {
    image<2, 8>(xp, wt, bias, out, H, W, C, K);
  } else {
    image<1, 14>(xp, wt, bias, out, H, W, C, K);
  }
}

at::Tensor direct_conv3x3_nhwc(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && weight.device().is_cpu(),
                    "x, weight: direct_conv3x3_nhwc runs on CPU tensors, got ", x.device(),
                    " and ", weight.device());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
                    "x, weight: direct_conv3x3_nhwc takes float32, got ", x.scalar_type(),
                    " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) >= 3 && x.size(2) >= 3,
                    "x: expected a padded (N, H + 2, W + 2, C) tensor with H, W >= 1, got ",
                    x.sizes());
  const int64_t C = x.size(3), K = weight.dim() == 4 ? weight.size(3) : 0;
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == 3 && weight.size(1) == 3 &&
                        weight.size(2) == C && K > 0 && K % 16 == 0,
                    "weight: expected (3, 3, ", C, ", K) with K a multiple of 16, got ",
                    weight.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == K && bias->device().is_cpu() &&
                          bias->scalar_type() == at::kFloat,
                      "bias: expected a float32 CPU tensor of shape (", K, ",), got ",
                      bias->sizes());
  }
  const int64_t N = x.size(0), H = x.size(1) - 2, W = x.size(2) - 2;
  if (!__builtin_cpu_supports("avx512f")) {  // the same function through ATen
    auto y = at::conv2d(x.permute({0, 3, 1, 2}), weight.permute({3, 2, 0, 1}),
                        has_bias ? *bias : at::Tensor());
    return y.permute({0, 2, 3, 1}).contiguous();
  }
  const auto xc = x.contiguous();
  const auto wc = weight.contiguous();
  const auto bc = has_bias ? bias->contiguous() : at::Tensor();
  auto out = at::empty({N, H, W, K}, x.options());
  const float* b = has_bias ? bc.data_ptr<float>() : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    run_avx512(xc.data_ptr<float>() + n * (H + 2) * (W + 2) * C, wc.data_ptr<float>(), b,
               out.data_ptr<float>() + n * H * W * K, H, W, C, K);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dvn_kernels, CPU, m) {
  m.impl("direct_conv3x3_nhwc", &direct_conv3x3_nhwc);
}

}  // namespace dvn::cpu
