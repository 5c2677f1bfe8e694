"""Decode kernels of spike_linear (M <= 32 rows): weight-bandwidth bound, two launches.

1. `_decode_encode_kernel` (grid rows x column chunks; x is tiny at decode, so every program sums its whole
   row): vth = clamp(mean|x| / k, 1e-5, 1e4) as spike_encode, and the counts c = rint(x / vth) (the prefill encode's exact quotient,
   spike_linear_fp8._quotient_rint) written as two 8-bit planes, c = lo + F * hi:
   e4m3 weights: F = 16, |lo| <= 16 when hi = 0 else |lo| <= 8, |hi| <= 16, every value exact in e4m3
   (exact for |c| <= 264); int8 weights: F = 128, |lo| <= 127, |hi| <= 127 (exact for |c| <= 16320).
   A single plane would cut at 16 for e4m3, and the input of a SwiGLU down projection at k = 3 has
   ~2.6% of its counts past 16 (but ~2e-7 past 127).  A chunk of a row with a count past the planes (or
   NaN / inf) is marked in rare[m, chunk].
2. `_decode_kernel`, grid (column blocks of BN, SPLIT slices of K), computes y^T = W @ s^T ("swap AB"):
   the weight tile [BN, BK] goes straight into the 8-bit tensor cores in its storage type (no conversion)
   against the planes' [BK, MP] tiles (MP = 16 or 32 padded rows), two MMAs per step sharing the tile,
   per-group scales per step.  The loop is a plain pipelined GEMM loop; only when some row is marked
   rare does a second loop variant add, per step, r = c - lo - F * hi (recomputed from x) times the
   weight tile converted to float16 (exact) through spike_linear_fp8._exact_dot, so no count is
   saturated and every finite count gives the reference's result.  With SPLIT > 1 (USE_WS) each program
   writes its float32 partial to a workspace and bumps a per-column-block counter; the last to arrive
   sums the SPLIT partials in a fixed order (deterministic), applies vth and bias, writes y and resets
   the counter to 0 for the next call.

Kernel sources are torch-free.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .spike_linear_fp8 import _exact_dot, _quotient_rint, _recip, _split_counts
from .spike_linear_kernels import _row_vth


@triton.jit
def _decode_encode_kernel(x_ptr, lo_ptr, hi_ptr, vth_ptr, rare_ptr, K, n_ch, stride_xm, k_div,
                          FP8: tl.constexpr, BLOCK: tl.constexpr):
    # grid (M, n_ch): every program sums its whole row (x is tiny at decode; BLOCK columns per step) and
    # writes the planes of its own BLOCK-column chunk, so no program walks a long row twice
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    xr = x_ptr + row * stride_xm
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        acc += tl.abs(tl.load(xr + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32))
    vth = _row_vth(tl.sum(acc, axis=0), K, k_div)
    inv = _recip(vth)
    cols = ch * BLOCK + offs
    m = cols < K
    q = _quotient_rint(tl.load(xr + cols, mask=m, other=0.0).to(tl.float32), vth, inv)
    lo, hi, r = _split_counts(q, FP8, 2)
    rare = (r != 0.0).to(tl.int32)  # NaN counts are rare too
    tl.store(lo_ptr + row * K + cols, lo.to(lo_ptr.dtype.element_ty), mask=m)
    tl.store(hi_ptr + row * K + cols, hi.to(hi_ptr.dtype.element_ty), mask=m)
    tl.store(rare_ptr + row * n_ch + ch, tl.max(rare, axis=0))
    if ch == 0:
        tl.store(vth_ptr + row, vth)


@triton.jit
def _step(w_ptrs, lo_ptrs, hi_ptrs, km, mmask, FP8: tl.constexpr):
    # one K step of the plain loop: the weight tile and both planes' tiles, two MMAs sharing the weight tile
    lm = mmask[:, None] & km[None, :]
    if FP8:
        w = tl.load(w_ptrs, mask=km[None, :], other=0.0)
        lo = tl.load(lo_ptrs, mask=lm, other=0.0)
        hi = tl.load(hi_ptrs, mask=lm, other=0.0)
        part = tl.dot(w, tl.trans(lo)) + tl.dot(w, tl.trans(hi)) * 16.0
    else:  # int32 accumulation; fresh dots added, never dot(a, b, acc) (triton-lang/triton#5669)
        w = tl.load(w_ptrs, mask=km[None, :], other=0)
        lo = tl.load(lo_ptrs, mask=lm, other=0)
        hi = tl.load(hi_ptrs, mask=lm, other=0)
        part = tl.dot(w, tl.trans(lo)).to(tl.float32) + tl.dot(w, tl.trans(hi)).to(tl.float32) * 128.0
    return part


@triton.jit
def _group_scaled(part, sc_ptrs, k0, stride_sg, PER_CHANNEL: tl.constexpr, GROUP_STEPS: tl.constexpr,
                  BK: tl.constexpr):
    # a K step's [BN, BM] partial times its group's scales (per-channel scales are applied once, at the end)
    if not PER_CHANNEL:
        part = part * tl.load(sc_ptrs + (k0 // (GROUP_STEPS * BK)) * stride_sg)[:, None]
    return part


@triton.jit
def _decode_kernel(x_ptr, lo_ptr, hi_ptr, w_ptr, scale_ptr, vth_ptr, rare_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                   M, N, K, k_per, n_ch, stride_xm, stride_wn, stride_sn, stride_sg,
                   FP8: tl.constexpr, HAS_BIAS: tl.constexpr, PER_CHANNEL: tl.constexpr,
                   GROUP_STEPS: tl.constexpr, SPLIT, USE_WS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    mmask = rm < M
    rm64 = rm.to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rn64 = (rn % N).to(tl.int64)
    vth = tl.where(mmask, tl.load(vth_ptr + rm, mask=mmask, other=1.0), 1.0)
    rc = tl.arange(0, RC)
    any_rare = tl.max(tl.load(rare_ptr + rm[:, None] * n_ch + rc[None, :], mask=mmask[:, None] & (rc < n_ch)[None, :],
                              other=0), axis=None)

    k_begin = pid_k * k_per
    k_end = tl.minimum(K, k_begin + k_per)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BN, BM], dtype=tl.float32)  # y^T tile
    w_rows = w_ptr + rn64[:, None] * stride_wn
    lo_rows = lo_ptr + rm64[:, None] * K
    hi_rows = hi_ptr + rm64[:, None] * K
    sc_ptrs = scale_ptr + rn64 * stride_sn
    if any_rare == 0:  # the plain pipelined loop
        for k0 in range(k_begin, k_end, BK):
            kk = k0 + rk
            km = kk < k_end
            part = _step(w_rows + kk[None, :], lo_rows + kk[None, :], hi_rows + kk[None, :], km, mmask, FP8)
            acc += _group_scaled(part, sc_ptrs, k0, stride_sg, PER_CHANNEL, GROUP_STEPS, BK)
    else:  # some row has a count past the planes: each step also adds the rest, r @ W^T, exactly
        inv = _recip(vth)
        for k0 in range(k_begin, k_end, BK):
            kk = k0 + rk
            km = kk < k_end
            part = _step(w_rows + kk[None, :], lo_rows + kk[None, :], hi_rows + kk[None, :], km, mmask, FP8)
            x = tl.load(x_ptr + rm64[:, None] * stride_xm + kk[None, :], mask=mmask[:, None] & km[None, :], other=0.0)
            _, _, r = _split_counts(_quotient_rint(x.to(tl.float32), vth[:, None], inv[:, None]), FP8, 2)
            if tl.max((r != 0.0).to(tl.int32), axis=None) > 0:  # NaN stays NaN (r != 0 holds for it)
                w16 = tl.load(w_rows + kk[None, :], mask=km[None, :], other=0.0).to(tl.float16)
                part += tl.trans(_exact_dot(r, tl.trans(w16)))
            acc += _group_scaled(part, sc_ptrs, k0, stride_sg, PER_CHANNEL, GROUP_STEPS, BK)
    if PER_CHANNEL:
        acc = acc * tl.load(sc_ptrs)[:, None]
    omask = nmask[:, None] & mmask[None, :]
    if USE_WS:  # SPLIT > 1
        ws = ws_ptr + rm64[None, :] * N + rn.to(tl.int64)[:, None]
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
