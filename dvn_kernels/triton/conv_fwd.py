"""Forward pass: y = conv(x, weight[out][:, in]) as an implicit GEMM.

GEMM view: M = N*P*Q output pixels, N = active output channels, K = active input channels x
kh x kw, iterated as (channel block, tap). The weight is read in place through the segment
map; x and y are addressed by their strides (NCHW or channels_last). With SPLIT_K > 1 each
split sums an interleaved share of the K iterations into a float32 workspace and a second
kernel adds the splits in a fixed order (deterministic), then bias, then stores.

Grouped convolutions (GROUPED): grid axis 1 is the active group; within it N = the group's
output channels and K = its input channels x kh x kw, the weight's second dimension being the
group's input channels (no range map on that side). The active groups are consecutive in the
compact tensors on both sides.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import configs
from .common import channel, swizzle
from ..segments import ChannelSegments
from .layout import gemm_layout

_NO_SPECIALIZE = ["C_IN_U", "C_OUT_U", "CIN_G_U", "COUT_G_U", "in_s0_u", "in_l0_u", "in_s1_u",
                  "out_s0_u", "out_l0_u", "out_s1_u", "M_BUCKET", "N_BUCKET", "K_BUCKET"]


@triton.jit
def _store_y(y, b, acc, offs_m, offs_n, mask_n, M, P, Q, syn, syc, syh, syw,
             out_s0, out_l0, out_s1, TWO_OUT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Stores (plus bias) the tile of compact output channels ``offs_n`` (valid: mask_n)."""
    q = offs_m % Q
    t = offs_m // Q
    p = t % P
    n = t // P
    if HAS_BIAS:
        co = channel(offs_n, out_s0, out_l0, out_s1, TWO_OUT)
        acc += tl.load(b + co, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    row = n.to(tl.int64) * syn + p * syh + q * syw
    ptrs = y + row[:, None] + offs_n[None, :] * syc
    tl.store(ptrs, acc.to(y.dtype.element_ty), mask=(offs_m < M)[:, None] & mask_n[None, :])


@triton.autotune(configs=configs.gemm_configs(), **configs.AUTOTUNE)
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _fwd_kernel(x, w, b, y, ws,
                N, H, W, C_IN_U, P, Q, C_OUT_U, CIN_G_U, COUT_G_U,
                sxn, sxc, sxh, sxw, swo, swi, swh, sww, syn, syc, syh, syw,
                in_s0_u, in_l0_u, in_s1_u, out_s0_u, out_l0_u, out_s1_u,
                STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                SPLIT_K, M_BUCKET, N_BUCKET, K_BUCKET,
                KH: tl.constexpr, KW: tl.constexpr, ALIGN: tl.constexpr, TWO_IN: tl.constexpr,
                TWO_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, NO_PAD: tl.constexpr,
                DIRECT: tl.constexpr, CHANNELS_LAST: tl.constexpr, PRECISION: tl.constexpr,
                GROUPED: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SWIZZLE_M: tl.constexpr):
    # Channel counts and segment scalars arrive in units of ALIGN channels, so the compiler
    # knows their alignment (vector loads, pipelined copies) without specialising on values.
    C_IN = C_IN_U * ALIGN
    C_OUT = C_OUT_U * ALIGN
    in_s0 = in_s0_u * ALIGN
    in_l0 = in_l0_u * ALIGN
    in_s1 = in_s1_u * ALIGN
    out_s0 = out_s0_u * ALIGN
    out_l0 = out_l0_u * ALIGN
    out_s1 = out_s1_u * ALIGN
    # One group's GEMM: N_G output and K_G input channels, from compact channels n0 and c0.
    if GROUPED:
        N_G = COUT_G_U * ALIGN
        K_G = CIN_G_U * ALIGN
    else:
        N_G = C_OUT
        K_G = C_IN
    n0 = tl.program_id(1) * N_G
    c0 = tl.program_id(1) * K_G
    M = N * P * Q
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N_G, BLOCK_N),
                           SWIZZLE_M)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N_G
    out_c = n0 + offs_n  # compact output channels
    q = offs_m % Q
    t = offs_m // Q
    p = t % P
    n = t // P
    ih0 = p * STRIDE_H - PAD_H
    iw0 = q * STRIDE_W - PAD_W
    x_row = x + n.to(tl.int64) * sxn + c0 * sxc
    w_col = w + channel(out_c, out_s0, out_l0, out_s1, TWO_OUT).to(tl.int64) * swo

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_blocks = tl.cdiv(K_G, BLOCK_K)
    # Taps innermost: consecutive iterations reread the same weight and x lines (L1 hits).
    for it in range(pid_k, KH * KW * c_blocks, SPLIT_K):
        cb = it // (KH * KW)
        tap = it - cb * (KH * KW)
        ci = cb * BLOCK_K + offs_k
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh * DIL_H
        iw = iw0 + kw * DIL_W
        if NO_PAD:
            valid = mask_m
        else:
            valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        mask_k = ci < K_G
        a = tl.load(x_row[:, None] + (ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc,
                    mask=valid[:, None] & mask_k[None, :], other=0.0)
        if GROUPED:
            cin = ci  # the weight's second dimension is the group's input channels
        else:
            cin = channel(ci, in_s0, in_l0, in_s1, TWO_IN)
        bt = tl.load(w_col[None, :] + (cin * swi + kh * swh + kw * sww)[:, None],
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)

    if DIRECT:
        _store_y(y, b, acc, offs_m, out_c, mask_n, M, P, Q, syn, syc, syh, syw,
                 out_s0, out_l0, out_s1, TWO_OUT, HAS_BIAS)
    else:
        part = ws + pid_k.to(tl.int64) * M * C_OUT
        tl.store(part + offs_m[:, None].to(tl.int64) * C_OUT + out_c[None, :], acc,
                 mask=mask_m[:, None] & mask_n[None, :])


@triton.jit(do_not_specialize=["C_OUT", "out_s0", "out_l0", "out_s1"])
def _fwd_reduce_kernel(ws, b, y, M, C_OUT, P, Q, syn, syc, syh, syw, out_s0, out_l0, out_s1,
                       SPLIT_K, TWO_OUT: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < C_OUT)[None, :]
    ptrs = ws + offs_m[:, None].to(tl.int64) * C_OUT + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, SPLIT_K):
        acc += tl.load(ptrs + (s * M).to(tl.int64) * C_OUT, mask=mask, other=0.0)
    _store_y(y, b, acc, offs_m, offs_n, offs_n < C_OUT, M, P, Q, syn, syc, syh, syw,
             out_s0, out_l0, out_s1, TWO_OUT, HAS_BIAS)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 ins: ChannelSegments, outs: ChannelSegments, y: torch.Tensor,
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 precision: str, split_k: Optional[int] = None, groups: int = 1) -> None:
    """Writes the forward result into ``y`` (compact, any strides). ``ins``/``outs`` hold at
    most two ranges each, of whole groups when ``groups`` > 1 (the weight's groups);
    ``split_k`` overrides the heuristic (tests)."""
    n, c_in, h, w_ = x.shape
    _, c_out, p, q = y.shape
    kh, kw = weight.shape[2:]
    m = n * p * q
    if m == 0:
        return
    # The kernel's groups: the active ones (grid axis 1), each of these sizes.
    cin_g = weight.shape[1] if groups > 1 else c_in
    cout_g = weight.shape[0] // groups if groups > 1 else c_out
    active = c_out // cout_g
    if split_k is None:
        split_k = configs.choose_split_k(triton.cdiv(m, 128) * triton.cdiv(cout_g, 64) * active,
                                         triton.cdiv(cin_g * kh * kw, 64),
                                         configs.sm_count(x.device), max_split=kh * kw * 4)
    ws = torch.empty((split_k, m, c_out), device=x.device, dtype=torch.float32) \
        if split_k > 1 else y
    b = bias if bias is not None else y

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cout_g, meta["BLOCK_N"]), active,
                split_k)

    in_s0, in_l0, in_s1, two_in = ins.kernel_scalars()
    out_s0, out_l0, out_s1, two_out = outs.kernel_scalars()
    align = configs.channel_align(c_in, c_out, cin_g, cout_g, in_s0, in_l0, in_s1, out_s0,
                                  out_l0, out_s1)
    configs.launcher(_fwd_kernel, ws)[grid](
        x, weight, b, y, ws, n, h, w_, c_in // align, p, q, c_out // align, cin_g // align,
        cout_g // align,
        *x.stride(), *weight.stride(), *y.stride(),
        in_s0 // align, in_l0 // align, in_s1 // align, out_s0 // align, out_l0 // align,
        out_s1 // align,
        *stride, *padding, *dilation,
        split_k, configs.bucket(m), configs.bucket(cout_g), configs.bucket(cin_g),
        KH=kh, KW=kw, ALIGN=align, TWO_IN=two_in, TWO_OUT=two_out, HAS_BIAS=bias is not None,
        NO_PAD=padding == (0, 0), DIRECT=split_k == 1, CHANNELS_LAST=gemm_layout(x),
        PRECISION=precision, GROUPED=groups > 1)
    if split_k > 1:
        reduce = configs.launcher(_fwd_reduce_kernel, ws)
        reduce[(triton.cdiv(m, 64), triton.cdiv(c_out, 64))](
            ws, b, y, m, c_out, p, q, *y.stride(), out_s0, out_l0, out_s1, split_k,
            TWO_OUT=two_out, HAS_BIAS=bias is not None, BLOCK_M=64, BLOCK_N=64)
