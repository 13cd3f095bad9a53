"""Depthwise sliced convolutions (one input channel per group) as direct kernels.

A depthwise convolution is no GEMM: each output channel reads one input channel through
kh x kw taps, so the implicit GEMM would fill tensor-core tiles with one useful column. These
kernels tile (pixels x channels), walk the taps (constexprs) and accumulate in float32:

- forward: y[n, c] = b[c] + sum over taps of x[n, c // MULT] * w[c, 0, tap];
- grad input: gx[n, a] = sum over the MULT output channels of a and the taps hitting the
  pixel (stride parity) of gy * w;
- grad weight: per (output-channel block, tap), partial sums over pixel chunks into a float32
  workspace, added in a fixed order by a second kernel (deterministic), which writes the
  active rows of the full gradient (the caller zero-fills the rest).

Compact channels are consecutive active groups (whole groups only); output channel c of group
a = c // MULT lives in the weight at row ``channel(c, out ranges)``. MULT is the depth
multiplier (output channels per group).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..segments import ChannelSegments
from . import configs
from .common import channel

BLOCK_P = 32  # pixels per tile (a tile is BLOCK_P x BLOCK_C)
BLOCK_C = 32  # channels per tile
WGRAD_CHUNK = 1024  # pixels per grad-weight program


@triton.jit
def _pixel(offs, P, Q):
    q = offs % Q
    t = offs // Q
    return t // P, t % P, q


@triton.jit
def _dw_fwd_kernel(x, w, b, y, M, H, W, P, Q, C_OUT, sxn, sxc, sxh, sxw, swo, swh, sww,
                   syn, syc, syh, syw, out_s0, out_l0, out_s1, STRIDE_H, STRIDE_W, PAD_H,
                   PAD_W, DIL_H, DIL_W, MULT, KH: tl.constexpr, KW: tl.constexpr,
                   TWO_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < M
    mask_c = offs_c < C_OUT
    n, p, q = _pixel(offs_p, P, Q)
    x_base = x + n.to(tl.int64)[:, None] * sxn + (offs_c // MULT)[None, :] * sxc
    w_row = w + channel(offs_c, out_s0, out_l0, out_s1, TWO_OUT).to(tl.int64) * swo
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(KH):
        ih = p * STRIDE_H - PAD_H + r * DIL_H
        for s in tl.static_range(KW):
            iw = q * STRIDE_W - PAD_W + s * DIL_W
            ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_base + (ih * sxh + iw * sxw)[:, None],
                        mask=ok[:, None] & mask_c[None, :], other=0.0)
            wt = tl.load(w_row + r * swh + s * sww, mask=mask_c, other=0.0)
            acc += v.to(tl.float32) * wt.to(tl.float32)[None, :]
    if HAS_BIAS:
        co = channel(offs_c, out_s0, out_l0, out_s1, TWO_OUT)
        acc += tl.load(b + co, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    dst = y + (n.to(tl.int64) * syn + p * syh + q * syw)[:, None] + offs_c[None, :] * syc
    tl.store(dst, acc.to(y.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_dgrad_kernel(g, w, gx, M, H, W, P, Q, C_IN, sgn, sgc, sgh, sgw, swo, swh, sww,
                     sxn, sxc, sxh, sxw, out_s0, out_l0, out_s1, STRIDE_H, STRIDE_W, PAD_H,
                     PAD_W, DIL_H, DIL_W, MULT, KH: tl.constexpr, KW: tl.constexpr,
                     TWO_OUT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_a = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # compact input channels
    mask_p = offs_p < M
    mask_a = offs_a < C_IN
    n, h, w_ = _pixel(offs_p, H, W)
    g_base = g + n.to(tl.int64)[:, None] * sgn
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for j in range(0, MULT):
        c = offs_a * MULT + j  # the output channels of group a
        w_row = w + channel(c, out_s0, out_l0, out_s1, TWO_OUT).to(tl.int64) * swo
        for r in tl.static_range(KH):
            th = h + PAD_H - r * DIL_H  # = p * STRIDE_H when this tap reaches output row p
            op = th // STRIDE_H
            ok_h = (th >= 0) & (th - op * STRIDE_H == 0) & (op < P)
            for s in tl.static_range(KW):
                tw = w_ + PAD_W - s * DIL_W
                oq = tw // STRIDE_W
                ok = mask_p & ok_h & (tw >= 0) & (tw - oq * STRIDE_W == 0) & (oq < Q)
                v = tl.load(g_base + (op * sgh + oq * sgw)[:, None] + c[None, :] * sgc,
                            mask=ok[:, None] & mask_a[None, :], other=0.0)
                wt = tl.load(w_row + r * swh + s * sww, mask=mask_a, other=0.0)
                acc += v.to(tl.float32) * wt.to(tl.float32)[None, :]
    dst = gx + (n.to(tl.int64) * sxn + h * sxh + w_ * sxw)[:, None] + offs_a[None, :] * sxc
    tl.store(dst, acc.to(gx.dtype.element_ty), mask=mask_p[:, None] & mask_a[None, :])


@triton.jit
def _dw_wgrad_kernel(g, x, ws, M, H, W, P, Q, C_OUT, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                     STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, MULT, CHUNK,
                     KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Partial sums of one pixel chunk: ws[chunk, tap, c]."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    chunk = tl.program_id(2)
    r = tap // KW
    s = tap - r * KW
    mask_c = offs_c < C_OUT
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, M), BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        n, p, q = _pixel(offs_p, P, Q)
        ih = p * STRIDE_H - PAD_H + r * DIL_H
        iw = q * STRIDE_W - PAD_W + s * DIL_W
        ok = (offs_p < M) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        mask = ok[:, None] & mask_c[None, :]
        nb = n.to(tl.int64)[:, None]
        gv = tl.load(g + nb * sgn + (p * sgh + q * sgw)[:, None] + offs_c[None, :] * sgc,
                     mask=mask, other=0.0)
        xv = tl.load(x + nb * sxn + (ih * sxh + iw * sxw)[:, None]
                     + (offs_c // MULT)[None, :] * sxc, mask=mask, other=0.0)
        acc += tl.sum(gv.to(tl.float32) * xv.to(tl.float32), axis=0)
    taps = KH * KW
    tl.store(ws + (chunk * taps + tap).to(tl.int64) * C_OUT + offs_c, acc, mask=mask_c)


@triton.jit
def _dw_wgrad_reduce_kernel(ws, gw, C_OUT, CHUNKS, swo, swh, sww, out_s0, out_l0, out_s1,
                            KW: tl.constexpr, TAPS: tl.constexpr, TWO_OUT: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    mask_c = offs_c < C_OUT
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k in range(0, CHUNKS):  # fixed order: deterministic
        acc += tl.load(ws + (k * TAPS + tap).to(tl.int64) * C_OUT + offs_c, mask=mask_c,
                       other=0.0)
    r = tap // KW
    s = tap - r * KW
    row = channel(offs_c, out_s0, out_l0, out_s1, TWO_OUT).to(tl.int64) * swo
    tl.store(gw + row + r * swh + s * sww, acc.to(gw.dtype.element_ty), mask=mask_c)


def _geometry(stride, padding, dilation):
    return (*stride, *padding, *dilation)


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      outs: ChannelSegments, y: torch.Tensor, stride: tuple[int, int],
                      padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
    """Writes y (compact) of a depthwise conv of whole active groups."""
    n, _, h, w_ = x.shape
    _, c_out, p, q = y.shape
    m = n * p * q
    if m == 0:
        return
    s0, l0, s1, two = outs.kernel_scalars()
    b = bias if bias is not None else y
    configs.launcher(_dw_fwd_kernel, y)[(triton.cdiv(m, BLOCK_P), triton.cdiv(c_out, BLOCK_C))](
        x, weight, b, y, m, h, w_, p, q, c_out, *x.stride(), weight.stride(0),
        *weight.stride()[2:], *y.stride(), s0, l0, s1, *_geometry(stride, padding, dilation),
        weight.shape[0] // groups, KH=weight.shape[2], KW=weight.shape[3], TWO_OUT=two,
        HAS_BIAS=bias is not None, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C)


def depthwise_grad_input(grad_y: torch.Tensor, weight: torch.Tensor, outs: ChannelSegments,
                         gx: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                         dilation: tuple[int, int], groups: int) -> None:
    """Writes grad x (compact) of a depthwise conv."""
    n, c_in, h, w_ = gx.shape
    _, _, p, q = grad_y.shape
    m = n * h * w_
    if m == 0:
        return
    s0, l0, s1, two = outs.kernel_scalars()
    configs.launcher(_dw_dgrad_kernel, gx)[(triton.cdiv(m, BLOCK_P), triton.cdiv(c_in, BLOCK_C))](
        grad_y, weight, gx, m, h, w_, p, q, c_in, *grad_y.stride(), weight.stride(0),
        *weight.stride()[2:], *gx.stride(), s0, l0, s1, *_geometry(stride, padding, dilation),
        weight.shape[0] // groups, KH=weight.shape[2], KW=weight.shape[3], TWO_OUT=two,
        BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C)


def depthwise_grad_weight(grad_y: torch.Tensor, x: torch.Tensor, outs: ChannelSegments,
                          gw: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int], groups: int) -> None:
    """Writes the active rows of the full weight gradient ``gw`` of a depthwise conv."""
    n, _, h, w_ = x.shape
    _, c_out, p, q = grad_y.shape
    m = n * p * q
    if m == 0:
        return
    kh, kw = gw.shape[2:]
    chunks = triton.cdiv(m, WGRAD_CHUNK)
    ws = torch.empty((chunks, kh * kw, c_out), device=x.device, dtype=torch.float32)
    cblocks = triton.cdiv(c_out, BLOCK_C)
    configs.launcher(_dw_wgrad_kernel, ws)[(cblocks, kh * kw, chunks)](
        grad_y, x, ws, m, h, w_, p, q, c_out, *grad_y.stride(), *x.stride(),
        *_geometry(stride, padding, dilation), gw.shape[0] // groups, WGRAD_CHUNK, KH=kh, KW=kw,
        BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C)
    s0, l0, s1, two = outs.kernel_scalars()
    configs.launcher(_dw_wgrad_reduce_kernel, ws)[(cblocks, kh * kw)](
        ws, gw, c_out, chunks, gw.stride(0), *gw.stride()[2:], s0, l0, s1, KW=kw, TAPS=kh * kw,
        TWO_OUT=two, BLOCK_C=BLOCK_C)
