"""Grad input: gx = conv_transpose(gy, weight[out][:, in]) as an implicit GEMM.

GEMM view: M = N*H*W input pixels, N = active input channels, K = active output channels x
kh x kw. Strided convolutions are decomposed by the parity class (h mod stride_h,
w mod stride_w) of the input pixel (grid axis 1, as CUTLASS's strided dgrad): inside one
class a tap either hits output pixels for every row or for none, so the K loop visits only
the hitting taps instead of masking 3/4 of the loads at stride 2. Split-K and the
deterministic float32 reduction work as in the forward pass. Grouped convolutions: grid axis 1
also runs over the active groups (group x class), each with N = its input channels and K =
its output channels x taps.
"""

from __future__ import annotations

import math
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
def _store_gx(gx, acc, offs_m, offs_n, mask_n, rh, rw, MC, H, W, HC, WC, sxn, sxc, sxh, sxw,
              STRIDE_H, STRIDE_W):
    """Stores the tile of compact input channels ``offs_n`` (valid: mask_n) of one class."""
    ww = offs_m % WC
    t = offs_m // WC
    hh = t % HC
    n = t // HC
    h = rh + hh * STRIDE_H
    w = rw + ww * STRIDE_W
    mask_m = (offs_m < MC) & (h < H) & (w < W)
    row = n.to(tl.int64) * sxn + h * sxh + w * sxw
    tl.store(gx + row[:, None] + offs_n[None, :] * sxc, acc.to(gx.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _tap_product(acc, g_row, w_col, hh, ww, mask_m, offs_k, c0, oh, ow, kh, kw,
                 P, Q, K_G, n0, sgc, sgh, sgw, swo, swh, sww, out_s0, out_l0, out_s1,
                 mask_n, STRIDE_H, STRIDE_W, TWO_OUT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + gy[pixels hit by tap (kh, kw)] @ weight[out, in, kh, kw] for one channel block
    (output channels c0.. of the K_G from compact channel n0; g_row starts at n0)."""
    p = hh + oh // STRIDE_H
    q = ww + ow // STRIDE_W
    valid = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
    co = c0 + offs_k
    mask_k = co < K_G
    a = tl.load(g_row[:, None] + (p * sgh + q * sgw)[:, None] + co[None, :] * sgc,
                mask=valid[:, None] & mask_k[None, :], other=0.0)
    cout = channel(n0 + co, out_s0, out_l0, out_s1, TWO_OUT)
    bt = tl.load(w_col[None, :] + (cout.to(tl.int64) * swo + kh * swh + kw * sww)[:, None],
                 mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    return tl.dot(a, bt, acc, input_precision=PRECISION)


@triton.jit
def _first_tap(r, DIL, STRIDE, PERIOD, K: tl.constexpr):
    """Smallest k < PERIOD with (r - k * DIL) % STRIDE == 0, or K when there is none."""
    k0 = K
    for j in range(0, PERIOD):
        k0 = tl.where((r - j * DIL) % STRIDE == 0, tl.minimum(k0, j), k0)
    return k0


@triton.autotune(configs=configs.gemm_configs(), **configs.AUTOTUNE)
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _dgrad_kernel(g, w, gx, ws,
                  N, H, W, C_IN_U, P, Q, C_OUT_U, CIN_G_U, COUT_G_U, HC, WC,
                  sgn, sgc, sgh, sgw, swo, swi, swh, sww, sxn, sxc, sxh, sxw,
                  in_s0_u, in_l0_u, in_s1_u, out_s0_u, out_l0_u, out_s1_u,
                  STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, PERIOD_H, PERIOD_W,
                  SPLIT_K, M_BUCKET, N_BUCKET, K_BUCKET,
                  KH: tl.constexpr, KW: tl.constexpr, ALIGN: tl.constexpr, TWO_IN: tl.constexpr,
                  TWO_OUT: tl.constexpr, UNIT_STRIDE: tl.constexpr, DIRECT: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr, PRECISION: tl.constexpr, GROUPED: tl.constexpr,
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
    # One group's GEMM: N_G input and K_G output channels, from compact channels c0 and n0.
    if GROUPED:
        N_G = CIN_G_U * ALIGN
        K_G = COUT_G_U * ALIGN
    else:
        N_G = C_IN
        K_G = C_OUT
    MC = N * HC * WC  # pixels of one parity class (padded to the largest class)
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(MC, BLOCK_M), tl.cdiv(N_G, BLOCK_N),
                           SWIZZLE_M)
    classes = STRIDE_H * STRIDE_W
    grp = tl.program_id(1) // classes
    cls = tl.program_id(1) - grp * classes
    c0 = grp * N_G
    n0 = grp * K_G
    pid_k = tl.program_id(2)
    rh = cls // STRIDE_W
    rw = cls - rh * STRIDE_W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    ww = offs_m % WC
    t = offs_m // WC
    hh = t % HC
    n = t // HC
    mask_m = (offs_m < MC) & (rh + hh * STRIDE_H < H) & (rw + ww * STRIDE_W < W)
    mask_n = offs_n < N_G
    in_c = c0 + offs_n  # compact input channels
    g_row = g + n.to(tl.int64) * sgn + n0 * sgc
    if GROUPED:
        w_col = w + offs_n.to(tl.int64) * swi  # the weight's in-group channels
    else:
        w_col = w + channel(offs_n, in_s0, in_l0, in_s1, TWO_IN).to(tl.int64) * swi

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_blocks = tl.cdiv(K_G, BLOCK_K)
    if UNIT_STRIDE:
        for it in range(pid_k, KH * KW * c_blocks, SPLIT_K):  # taps innermost, as in forward
            cb = it // (KH * KW)
            tap = it - cb * (KH * KW)
            kh = tap // KW
            kw = tap - kh * KW
            acc = _tap_product(acc, g_row, w_col, hh, ww, mask_m, offs_k, cb * BLOCK_K,
                               PAD_H - kh * DIL_H, PAD_W - kw * DIL_W, kh, kw, P, Q, K_G, n0,
                               sgc, sgh, sgw, swo, swh, sww, out_s0, out_l0, out_s1, mask_n,
                               1, 1, TWO_OUT, PRECISION)
    else:
        # Only the taps that hit output pixels from this class: kh = kh0 + j * PERIOD_H
        # (PERIOD_H = stride / gcd(stride, dilation)); no branch in the loop, so it pipelines.
        kh0 = _first_tap(rh + PAD_H, DIL_H, STRIDE_H, PERIOD_H, KH)
        kw0 = _first_tap(rw + PAD_W, DIL_W, STRIDE_W, PERIOD_W, KW)
        nkh = tl.maximum(tl.cdiv(KH - kh0, PERIOD_H), 0)
        nkw = tl.maximum(tl.cdiv(KW - kw0, PERIOD_W), 0)
        taps = nkh * nkw
        for it in range(pid_k, taps * c_blocks, SPLIT_K):
            cb = it // taps
            tap = it - cb * taps
            jh = tap // nkw
            kh = kh0 + jh * PERIOD_H
            kw = kw0 + (tap - jh * nkw) * PERIOD_W
            acc = _tap_product(acc, g_row, w_col, hh, ww, mask_m, offs_k, cb * BLOCK_K,
                               rh + PAD_H - kh * DIL_H, rw + PAD_W - kw * DIL_W, kh, kw, P, Q,
                               K_G, n0, sgc, sgh, sgw, swo, swh, sww, out_s0, out_l0, out_s1,
                               mask_n, STRIDE_H, STRIDE_W, TWO_OUT, PRECISION)

    if DIRECT:
        _store_gx(gx, acc, offs_m, in_c, mask_n, rh, rw, MC, H, W, HC, WC, sxn, sxc, sxh, sxw,
                  STRIDE_H, STRIDE_W)
    else:
        part = ws + (pid_k * classes + cls).to(tl.int64) * MC * C_IN
        tl.store(part + offs_m[:, None].to(tl.int64) * C_IN + in_c[None, :], acc,
                 mask=(offs_m < MC)[:, None] & mask_n[None, :])


@triton.jit(do_not_specialize=["C_IN"])
def _dgrad_reduce_kernel(ws, gx, MC, H, W, HC, WC, C_IN, sxn, sxc, sxh, sxw,
                         STRIDE_H, STRIDE_W, SPLIT_K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cls = tl.program_id(2)
    classes = STRIDE_H * STRIDE_W
    rh = cls // STRIDE_W
    rw = cls - rh * STRIDE_W
    mask = (offs_m < MC)[:, None] & (offs_n < C_IN)[None, :]
    ptrs = ws + offs_m[:, None].to(tl.int64) * C_IN + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, SPLIT_K):
        acc += tl.load(ptrs + (s * classes + cls).to(tl.int64) * MC * C_IN, mask=mask,
                       other=0.0)
    _store_gx(gx, acc, offs_m, offs_n, offs_n < C_IN, rh, rw, MC, H, W, HC, WC, sxn, sxc, sxh,
              sxw, STRIDE_H, STRIDE_W)


def conv_grad_input(grad_y: torch.Tensor, weight: torch.Tensor, ins: ChannelSegments,
                    outs: ChannelSegments, gx: torch.Tensor, stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], precision: str,
                    split_k: Optional[int] = None, groups: int = 1) -> None:
    """Writes the input gradient into ``gx`` (compact, any strides); ``groups`` as in
    conv_forward."""
    n, c_in, h, w_ = gx.shape
    _, c_out, p, q = grad_y.shape
    kh, kw = weight.shape[2:]
    sh, sw = stride
    hc, wc = triton.cdiv(h, sh), triton.cdiv(w_, sw)
    mc = n * hc * wc
    if mc == 0:
        return
    classes = sh * sw
    cin_g = weight.shape[1] if groups > 1 else c_in
    cout_g = weight.shape[0] // groups if groups > 1 else c_out
    active = c_out // cout_g
    if split_k is None:
        split_k = configs.choose_split_k(
            triton.cdiv(mc, 128) * triton.cdiv(cin_g, 64) * classes * active,
            triton.cdiv(cout_g * triton.cdiv(kh, sh) * triton.cdiv(kw, sw), 64),
            configs.sm_count(gx.device), max_split=kh * kw * 4)
    ws = torch.empty((split_k, classes, mc, c_in), device=gx.device, dtype=torch.float32) \
        if split_k > 1 else gx

    def grid(meta):
        return (triton.cdiv(mc, meta["BLOCK_M"]) * triton.cdiv(cin_g, meta["BLOCK_N"]),
                classes * active, split_k)

    in_s0, in_l0, in_s1, two_in = ins.kernel_scalars()
    out_s0, out_l0, out_s1, two_out = outs.kernel_scalars()
    align = configs.channel_align(c_in, c_out, cin_g, cout_g, in_s0, in_l0, in_s1, out_s0,
                                  out_l0, out_s1)
    configs.launcher(_dgrad_kernel, ws)[grid](
        grad_y, weight, gx, ws, n, h, w_, c_in // align, p, q, c_out // align, cin_g // align,
        cout_g // align, hc, wc,
        *grad_y.stride(), *weight.stride(), *gx.stride(),
        in_s0 // align, in_l0 // align, in_s1 // align, out_s0 // align, out_l0 // align,
        out_s1 // align,
        *stride, *padding, *dilation, sh // math.gcd(sh, dilation[0]),
        sw // math.gcd(sw, dilation[1]),
        split_k, configs.bucket(mc * classes), configs.bucket(cin_g),
        configs.bucket(cout_g),
        KH=kh, KW=kw, ALIGN=align, TWO_IN=two_in, TWO_OUT=two_out, UNIT_STRIDE=stride == (1, 1),
        DIRECT=split_k == 1, CHANNELS_LAST=gemm_layout(gx), PRECISION=precision,
        GROUPED=groups > 1)
    if split_k > 1:
        reduce = configs.launcher(_dgrad_reduce_kernel, ws)
        reduce[(triton.cdiv(mc, 64), triton.cdiv(c_in, 64), classes)](
            ws, gx, mc, h, w_, hc, wc, c_in, *gx.stride(), sh, sw, split_k,
            BLOCK_M=64, BLOCK_N=64)
