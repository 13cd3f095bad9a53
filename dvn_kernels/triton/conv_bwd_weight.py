"""Grad weight: gw[out, in, kh, kw] = sum over N*P*Q of gy x x, on the active block only.

GEMM view: M = active output channels, N = active input channels of one tap (grid axis 0
covers taps x input-channel blocks), K = N*P*Q pixels. The spatial sizes are constexprs (a
network has a few; the pixel index's divisions become multiplications). M and N are small and
K is long, so split-K over the pixels is the rule: each split writes a float32 partial block and a second
kernel adds them in a fixed order (deterministic; no atomics) and stores the block into the
full-shape gradient through the segment map. The caller zero-fills the rest. Grouped
convolutions: grid axis 1 is the active group, M and N its output and input channels, and the
weight gradient's second dimension the group's input channels (no range map there).
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
def _store_gw(gw, acc, co, ci, tap, mask, swo, swi, swh, sww, in_s0, in_l0, in_s1,
              out_s0, out_l0, out_s1, KW: tl.constexpr, TWO_IN: tl.constexpr,
              TWO_OUT: tl.constexpr, GROUPED: tl.constexpr):
    """Stores compact output channels co x input channels ci (grouped: in-group) of a tap."""
    kh = tap // KW
    kw = tap - kh * KW
    rows = channel(co, out_s0, out_l0, out_s1, TWO_OUT).to(tl.int64) * swo
    if GROUPED:
        cols = ci * swi + kh * swh + kw * sww
    else:
        cols = channel(ci, in_s0, in_l0, in_s1, TWO_IN) * swi + kh * swh + kw * sww
    tl.store(gw + rows[:, None] + cols[None, :], acc.to(gw.dtype.element_ty), mask=mask)


@triton.autotune(configs=configs.wgrad_configs(), **configs.AUTOTUNE)
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _wgrad_kernel(g, x, gw, ws,
                  N, H: tl.constexpr, W: tl.constexpr, C_IN_U, P: tl.constexpr, Q: tl.constexpr,
                  C_OUT_U, CIN_G_U, COUT_G_U,
                  sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, swo, swi, swh, sww,
                  in_s0_u, in_l0_u, in_s1_u, out_s0_u, out_l0_u, out_s1_u,
                  STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                  SPLIT_K, M_BUCKET, N_BUCKET, K_BUCKET,
                  KH: tl.constexpr, KW: tl.constexpr, ALIGN: tl.constexpr, TWO_IN: tl.constexpr,
                  TWO_OUT: tl.constexpr, NO_PAD: tl.constexpr, DIRECT: tl.constexpr,
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
    # One group's GEMM: M_G output and N_G input channels, from compact channels m0 and c0.
    if GROUPED:
        M_G = COUT_G_U * ALIGN
        N_G = CIN_G_U * ALIGN
    else:
        M_G = C_OUT
        N_G = C_IN
    m0 = tl.program_id(1) * M_G
    c0 = tl.program_id(1) * N_G
    NPQ = N * P * Q
    ci_blocks = tl.cdiv(N_G, BLOCK_N)
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(M_G, BLOCK_M), KH * KW * ci_blocks,
                           SWIZZLE_M)
    pid_k = tl.program_id(2)
    tap = pid_n // ci_blocks
    kh = tap // KW
    kw = tap - kh * KW
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid_n - tap * ci_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M_G
    mask_n = offs_n < N_G
    out_c = m0 + offs_m  # compact output channels
    g_col = g + out_c.to(tl.int64) * sgc
    x_col = x + (c0 + offs_n).to(tl.int64) * sxc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(pid_k, tl.cdiv(NPQ, BLOCK_K), SPLIT_K):
        r = it * BLOCK_K + offs_k
        mask_r = r < NPQ
        q = r % Q
        t = r // Q
        p = t % P
        nb = (t // P).to(tl.int64)
        a = tl.load(g_col[:, None] + (nb * sgn + p * sgh + q * sgw)[None, :],
                    mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        ih = p * STRIDE_H - PAD_H + kh * DIL_H
        iw = q * STRIDE_W - PAD_W + kw * DIL_W
        if NO_PAD:
            valid = mask_r
        else:
            valid = mask_r & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        bt = tl.load(x_col[None, :] + (nb * sxn + ih * sxh + iw * sxw)[:, None],
                     mask=valid[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)

    mask = mask_m[:, None] & mask_n[None, :]
    if DIRECT:
        _store_gw(gw, acc, out_c, offs_n, tap, mask, swo, swi, swh, sww, in_s0, in_l0, in_s1,
                  out_s0, out_l0, out_s1, KW, TWO_IN, TWO_OUT, GROUPED)
    else:
        cols = KH * KW * N_G
        part = ws + pid_k.to(tl.int64) * C_OUT * cols
        tl.store(part + out_c[:, None].to(tl.int64) * cols + (tap * N_G + offs_n)[None, :],
                 acc, mask=mask)


@triton.jit(do_not_specialize=["C_IN", "C_OUT", "in_s0", "in_l0", "in_s1", "out_s0", "out_l0",
                              "out_s1"])
def _wgrad_reduce_kernel(ws, gw, C_IN, C_OUT, TAPS, swo, swi, swh, sww, in_s0, in_l0, in_s1,
                         out_s0, out_l0, out_s1, SPLIT_K, KW: tl.constexpr,
                         TWO_IN: tl.constexpr, TWO_OUT: tl.constexpr, GROUPED: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # C_IN: the input channels of a workspace row (grouped: a group's).
    co = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = TAPS * C_IN
    mask = (co < C_OUT)[:, None] & (col < cols)[None, :]
    ptrs = ws + co[:, None].to(tl.int64) * cols + col[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, SPLIT_K):
        acc += tl.load(ptrs + (s * C_OUT).to(tl.int64) * cols, mask=mask, other=0.0)
    tap = col // C_IN
    _store_gw(gw, acc, co, col - tap * C_IN, tap, mask, swo, swi, swh, sww, in_s0, in_l0,
              in_s1, out_s0, out_l0, out_s1, KW, TWO_IN, TWO_OUT, GROUPED)


def conv_grad_weight(grad_y: torch.Tensor, x: torch.Tensor, ins: ChannelSegments,
                     outs: ChannelSegments, gw: torch.Tensor, stride: tuple[int, int],
                     padding: tuple[int, int], dilation: tuple[int, int], precision: str,
                     split_k: Optional[int] = None, groups: int = 1) -> None:
    """Writes the active block of the weight gradient into the full-shape ``gw``; ``groups``
    as in conv_forward."""
    n, c_in, h, w_ = x.shape
    _, c_out, p, q = grad_y.shape
    kh, kw = gw.shape[2:]
    npq = n * p * q
    if npq == 0:
        return
    cin_g = gw.shape[1] if groups > 1 else c_in
    cout_g = gw.shape[0] // groups if groups > 1 else c_out
    active = c_out // cout_g
    if split_k is None:
        split_k = configs.choose_split_k(
            triton.cdiv(cout_g, 64) * kh * kw * triton.cdiv(cin_g, 64) * active,
            triton.cdiv(npq, 64), configs.sm_count(x.device))
    ws = torch.empty((split_k, c_out, kh * kw * cin_g), device=x.device, dtype=torch.float32) \
        if split_k > 1 else gw

    def grid(meta):
        return (triton.cdiv(cout_g, meta["BLOCK_M"]) * kh * kw
                * triton.cdiv(cin_g, meta["BLOCK_N"]), active, split_k)

    in_s0, in_l0, in_s1, two_in = ins.kernel_scalars()
    out_s0, out_l0, out_s1, two_out = outs.kernel_scalars()
    align = configs.channel_align(c_in, c_out, cin_g, cout_g, in_s0, in_l0, in_s1, out_s0,
                                  out_l0, out_s1)
    configs.launcher(_wgrad_kernel, ws)[grid](
        grad_y, x, gw, ws, n, h, w_, c_in // align, p, q, c_out // align, cin_g // align,
        cout_g // align,
        *grad_y.stride(), *x.stride(), *gw.stride(),
        in_s0 // align, in_l0 // align, in_s1 // align, out_s0 // align, out_l0 // align,
        out_s1 // align,
        *stride, *padding, *dilation,
        split_k, configs.bucket(cout_g), configs.bucket(cin_g), configs.bucket(npq),
        KH=kh, KW=kw, ALIGN=align, TWO_IN=two_in, TWO_OUT=two_out, NO_PAD=padding == (0, 0),
        DIRECT=split_k == 1, CHANNELS_LAST=gemm_layout(x), PRECISION=precision,
        GROUPED=groups > 1)
    if split_k > 1:
        reduce = configs.launcher(_wgrad_reduce_kernel, ws)
        reduce[(triton.cdiv(c_out, 64), triton.cdiv(kh * kw * cin_g, 64))](
            ws, gw, cin_g, c_out, kh * kw, *gw.stride(), in_s0, in_l0, in_s1,
            out_s0, out_l0, out_s1, split_k, KW=kw, TWO_IN=two_in, TWO_OUT=two_out,
            GROUPED=groups > 1, BLOCK_M=64, BLOCK_N=64)
