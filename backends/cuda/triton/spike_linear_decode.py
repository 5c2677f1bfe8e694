"""Decode kernel of spike_linear (M <= 32 rows): weight-bandwidth bound, one launch (plus an optional tiny
vth pre-pass).

Grid (column blocks of BN, SPLIT slices of K).  The product is computed transposed, y^T = W @ s^T
("swap AB"): the weight tile [BN, BK] is the MMA's large operand, loaded in its storage type (e4m3 or
int8) straight into the tensor cores with no conversion, and the rows' counts [BK, MP] (MP = 16 or 32
padded rows) are the small one.  Every program:

1. gets its rows' thresholds: with FUSED_VTH it recomputes vth = clamp(mean|x| / k, 1e-5, 1e4) from x
   itself (x is tiny at decode: M x K), otherwise it reads them from the `_vth_kernel` pre-pass (for
   larger M x K, where every program re-reading x would cost more L2 traffic than the weights);
2. walks its K slice: counts c = rint(x / vth) are made in registers (no counts buffer; the quotient as
   the prefill encode computes it, spike_linear_fp8._quotient_rint), clamped to the weight type's exact
   range (+-16 in e4m3, +-127 in int8) and multiplied with the weight tile on the 8-bit tensor cores;
   a tile where some count is past that range (rare) adds r = c - clamp(c) times the weight tile
   (re-read, converted to float16: exact) through spike_linear_fp8._exact_dot, so no count is
   saturated and the result is the reference's for every finite count; per-group scales per K step;
3. with SPLIT > 1 (USE_WS) writes its float32 partial to a workspace and bumps a per-column-block counter;
   the program that arrives last sums the SPLIT partials in a fixed order (deterministic), applies vth
   and bias, writes y and resets the counter to 0 for the next call.

Kernel sources are torch-free.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .spike_linear_fp8 import _exact_dot, _quotient_rint
from .spike_linear_kernels import _row_vth


@triton.jit
def _vth_kernel(x_ptr, vth_ptr, K, stride_xm, k_div, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        acc += tl.abs(tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32))
    tl.store(vth_ptr + row, _row_vth(tl.sum(acc, axis=0), K, k_div))


@triton.jit
def _decode_kernel(x_ptr, w_ptr, scale_ptr, vth_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                   M, N, K, k_per, k_div, stride_xm, stride_wn, stride_sn, stride_sg,
                   FUSED_VTH: tl.constexpr, FP8: tl.constexpr, HAS_BIAS: tl.constexpr, PER_CHANNEL: tl.constexpr,
                   GROUP_STEPS: tl.constexpr, SPLIT, USE_WS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, VK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    mmask = rm < M
    xrow = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rn64 = (rn % N).to(tl.int64)
    if FUSED_VTH:
        ks = tl.arange(0, VK)
        sacc = tl.zeros([BM, VK], dtype=tl.float32)
        for k0 in range(0, K, VK):
            xv = tl.load(xrow + k0 + ks[None, :], mask=mmask[:, None] & (k0 + ks < K)[None, :], other=0.0)
            sacc += tl.abs(xv.to(tl.float32))
        vth = _row_vth(tl.sum(sacc, axis=1), K, k_div)
    else:
        vth = tl.load(vth_ptr + rm, mask=mmask, other=1.0)
    vth = tl.where(mmask, vth, 1.0)
    inv = tl.math.div_rn(tl.full(vth.shape, 1.0, tl.float32), vth)
    LIMIT: tl.constexpr = 16.0 if FP8 else 127.0

    k_begin = pid_k * k_per
    k_end = tl.minimum(K, k_begin + k_per)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BN, BM], dtype=tl.float32)  # y^T tile
    for k0 in range(k_begin, k_end, BK):
        kk = k0 + rk
        km = kk < k_end
        x = tl.load(xrow + kk[None, :], mask=mmask[:, None] & km[None, :], other=0.0).to(tl.float32)
        q = _quotient_rint(x, vth[:, None], inv[:, None])
        lo = tl.minimum(tl.maximum(q, -LIMIT), LIMIT)
        if FP8:
            w = tl.load(w_ptr + rn64[:, None] * stride_wn + kk[None, :], mask=km[None, :], other=0.0)
            part = tl.dot(w, tl.trans(lo.to(tl.float8e4nv)))
        else:  # int32 accumulation; a fresh dot added, never dot(a, b, acc) (triton-lang/triton#5669)
            w = tl.load(w_ptr + rn64[:, None] * stride_wn + kk[None, :], mask=km[None, :], other=0)
            part = tl.dot(w, tl.trans(lo.to(tl.int8))).to(tl.float32)
        r = q - lo  # non-zero only past the clamp; NaN for a NaN input (r != 0 holds for NaN)
        if tl.max((r != 0.0).to(tl.int32), axis=None) > 0:  # rare: counts past the 8-bit range
            w16 = tl.load(w_ptr + rn64[:, None] * stride_wn + kk[None, :], mask=km[None, :]).to(tl.float16)
            part += tl.trans(_exact_dot(r, tl.trans(w16)))
        if PER_CHANNEL:
            acc += part
        else:
            sc = tl.load(scale_ptr + rn64 * stride_sn + (k0 // (GROUP_STEPS * BK)) * stride_sg)
            acc += part * sc[:, None]
    if PER_CHANNEL:
        acc = acc * tl.load(scale_ptr + rn64 * stride_sn)[:, None]
    omask = nmask[:, None] & mmask[None, :]
    if USE_WS:  # SPLIT > 1
        ws = ws_ptr + rm.to(tl.int64)[None, :] * N + rn.to(tl.int64)[:, None]
        tl.store(ws + pid_k.to(tl.int64) * M * N, acc, mask=omask)
        tl.debug_barrier()  # every thread's partial is issued before the release below
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:  # the last slice of this column block: reduce in a fixed order
            acc = tl.zeros([BN, BM], dtype=tl.float32)
            for s in range(0, SPLIT):
                acc += tl.load(ws + s * M * N, mask=omask, other=0.0, cache_modifier=".cg")
            _epilogue(acc, vth, bias_ptr, y_ptr, rm, rn, rn64, N, omask, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)
    else:
        _epilogue(acc, vth, bias_ptr, y_ptr, rm, rn, rn64, N, omask, HAS_BIAS)


@triton.jit
def _epilogue(acc, vth, bias_ptr, y_ptr, rm, rn, rn64, N, omask, HAS_BIAS: tl.constexpr):
    acc = acc * vth[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn64).to(tl.float32)[:, None]
    y = y_ptr + rm.to(tl.int64)[None, :] * N + rn.to(tl.int64)[:, None]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=omask)
