"""Kernels of spike_linear's "scaled_mm" prefill path (e4m3 weights per channel, bf16 x): the vendor fp8
GEMM runs the counts clamped to e4m3's exact range, and a sparse fix-up adds what the clamp cut off.

Every count is split as c = lo + r with lo = clamp(c, -16, 16) (exact in e4m3) and r = c - lo, which is
non-zero only where |c| > 16: about 1e-5 of the elements of a Gaussian row at k = 3, and the few outlier
channels of an LLM's activations, but ~2.6% of a SwiGLU product's (a down projection's input), which
makes the fix-up a dense GEMM.  For such inputs PLANES = 2 writes a second e4m3 plane, c = lo + 16 hi
(_split_counts: exact for |c| <= 264), run as a second vendor GEMM, and r is what is past both.  So

    y = vth * (lo @ W^T) * scale  [torch._scaled_mm: fp8 tensor cores, vth and scale in its epilogue]
      + vth * (r @ W^T) * scale   [_outlier_fix_kernel, over only the FC-column chunks that hold an r]

* `_encode_lo_kernel` (R rows per program): vth = clamp(mean|x| / k, 1e-5, 1e4) as spike_encode, the
  e4m3 bits of lo (one byte per element, written once, by conversion), and a flag per (BM-row block, FC-column
  chunk) holding a non-zero r (the flags start at zero; a flagged element stores 1, a benign race; a tile with
  no such element stores none).  HW: rint as one instruction (libdevice), else _rint's adds; OLD (off): the
  session 23 encoding, kept only to time the two against each other.  Rows that
  fit one block of columns are read once; longer rows twice (the sum, then the counts).
* `_flag_list_kernel` (one program per row block): the flagged chunks' indices, compacted (cumsum).
* `_outlier_fix_kernel` (row block x a group of BN-column tiles): the listed chunks of FC (16 or 64) columns,
  up to 128 columns at a time: r recomputed from x (the same quotient as the encode, bit for bit), then per
  tile of the group r times those columns' weights on the float16 tensor cores (e4m3 weights are exact in
  float16; r in one float16 term while |r| < 2048, else three exact terms, see _split3; float32
  accumulation), and vth * scale * (r @ W^T) added to the rows it touched (read-modify-write of those rows
  only).  A block with no flagged chunk returns after one load.  No count is saturated, and
  no buffer grows with the counts: memory is M x K bytes per plane, the flags, and with two planes a
  temporary [M, N] output of the second GEMM.

FP8 = False (the "int_mm" path of int8 per-channel weights, spike_linear_intmm.py): the same encode writes one
int8 plane, lo = clamp(c, -127, 127), and flags what is past it (~2e-7 of a SwiGLU product's counts at k = 3); the
fix-up kernels take int8 weights (exact in float16 too) and that r.

Quotient: x / vth correctly rounded through the reciprocal and one fused correction (Markstein: with
inv = RN(1 / vth) and q1 = RN(x * inv), RN(q1 + fma(-q1, vth, x) * inv) = RN(x / vth)), then rounded to
an integer half to even, so lo + r is the count spike_encode gives.  Kernel sources are torch-free.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .spike_linear_kernels import _e4m3_bits, _quotient_rint, _recip, _rint, _rint_any, _row_vth  # noqa: F401

@triton.jit
def _split_counts(q, FP8: tl.constexpr, PLANES: tl.constexpr, HW: tl.constexpr = False):
    # integer counts q = lo + F * hi + r (F = 16 for e4m3, 128 for int8), lo and hi clamped to their exact
    # 8-bit range: with PLANES = 2, e4m3 |lo| <= 16 (<= 8 when hi != 0), |hi| <= 16, exact for |q| <= 264;
    # int8 |lo|, |hi| <= 127, exact for |q| <= 16320; with PLANES = 1, lo = clamp(q, -16, 16) (e4m3) or
    # clamp(q, -127, 127) (int8), hi = 0.
    # r, the rest served exactly elsewhere, is non-zero only past that range (and NaN for a NaN count)
    if PLANES == 2:
        if FP8:
            hi = tl.where(tl.abs(q) > 16.0, _rint_any(q * 0.0625, HW), 0.0)
            hi = tl.minimum(tl.maximum(hi, -16.0), 16.0)
            lo = tl.minimum(tl.maximum(q - 16.0 * hi, -16.0), 16.0)
        else:
            hi = tl.where(tl.abs(q) > 127.0, _rint_any(q * 0.0078125, HW), 0.0)
            hi = tl.minimum(tl.maximum(hi, -127.0), 127.0)
            lo = tl.minimum(tl.maximum(q - 128.0 * hi, -127.0), 127.0)
    elif FP8:
        lo = tl.minimum(tl.maximum(q, -16.0), 16.0)
        hi = tl.zeros_like(q)
    else:  # one int8 plane (the "int_mm" path): |lo| <= 127
        lo = tl.minimum(tl.maximum(q, -127.0), 127.0)
        hi = tl.zeros_like(q)
    return lo, hi, q - (lo + (16.0 if FP8 else 128.0) * hi)


@triton.jit
def _split3(r):
    # r (float32 integers, or NaN / inf) as r = (a * 2^22 + b * 2^11 + c) * 2^s per row, a, b, c float16 and exact:
    # s = 0 unless the row's largest |r| is past 2^31; only digits 2^-33 below a row's largest count can round
    s = tl.maximum(tl.ceil(tl.log2(tl.max(tl.abs(r), axis=1))) - 31.0, 0.0)
    rs = r * tl.exp2(-s)[:, None]
    a = _rint(rs * (1.0 / 4194304.0))
    rem = rs - a * 4194304.0
    b = _rint(rem * (1.0 / 2048.0))
    c = rem - b * 2048.0
    return a.to(tl.float16), b.to(tl.float16), c.to(tl.float16), tl.exp2(s)


@triton.jit
def _horner3(a, b, c, w):
    # (a * 2^22 + b * 2^11 + c) @ w as ((a @ w) * 2^11 + b @ w) * 2^11 + c @ w, each dot accumulating into the
    # scaled last one (scaling by 2^11 is exact): one live accumulator instead of three, so the fix-up kernels
    # keep their [BM, BN] tiles in registers (Triton 3.6, sm_90: the three-sum form spilled 656 bytes a thread)
    t = tl.dot(a, w)
    t = tl.dot(b, w, t * 2048.0)
    return tl.dot(c, w, t * 2048.0)


@triton.jit
def _exact_dot(r, w):
    # r @ w with r float32 integers (or NaN / inf) and w float16 (e4m3 values, exact) on the float16 tensor
    # cores, float32 accumulation: one term when every |r| < 2048 (float16's exact integers), else the three
    # terms of _split3 (one return at the end: Triton 3.6 cannot lower a return inside an if)
    if tl.max(tl.abs(r), axis=None) < 2048.0:
        part = tl.dot(r.to(tl.float16), w)
    else:
        a, b, c, sc2 = _split3(r)
        part = _horner3(a, b, c, w) * sc2[:, None]
    return part


@triton.jit
def _store_flags(flag_ptr, rows, cols, out, n_fc, BM: tl.constexpr, FC: tl.constexpr):
    # 1 for the (BM-row block, FC-column chunk) of every element in `out` (a benign race: every writer stores 1)
    fl = flag_ptr + (rows // BM).to(tl.int64)[:, None] * n_fc + cols[None, :] // FC
    tl.store(fl, tl.full(fl.shape, 1, tl.int8), mask=out)


@triton.jit
def _encode_tile(x, vth, inv, rows, cols, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM: tl.constexpr, FC: tl.constexpr,
                 PLANES: tl.constexpr, HW: tl.constexpr, OLD: tl.constexpr, FP8: tl.constexpr = True):
    # the counts and their split as the fix-up kernels recompute them (the same helpers; HW: rint in one instruction,
    # the same values), and the e4m3 bytes by conversion (cvt.rn.satfinite.e4m3x2 on sm_89+: exact for these
    # integers) instead of integer arithmetic: this pre-pass was bound by instruction issue (~60 per element;
    # session 19: 4x its memory time), not by memory.
    q = _quotient_rint(x, vth[:, None], inv[:, None], HW)
    offs = rows.to(tl.int64)[:, None] * K + cols[None, :]
    lo, hi, r = _split_counts(q, FP8, PLANES, HW)
    if PLANES == 2:  # the second plane stored as 16 hi (exact in e4m3)
        tl.store(hi_ptr + offs, (hi * 16.0).to(hi_ptr.dtype.element_ty), mask=m)
    out = m & (r != 0.0)  # NaN counts are flagged too: the fix-up makes their row NaN
    if OLD:  # the encoding before session 24 (integer e4m3 bytes, a flag store per element): only for timing
        tl.store(s_ptr + offs, _e4m3_bits(lo.to(tl.int32)).to(tl.int8), mask=m)
        _store_flags(flag_ptr, rows, cols, out, n_fc, BM, FC)
    else:
        if FP8:  # + 0.0 turns -0 into +0 (the byte the integer encoding wrote)
            tl.store(s_ptr + offs, (lo + 0.0).to(tl.float8e4nv).to(tl.int8, bitcast=True), mask=m)
        else:  # one int8 plane (the "int_mm" path: PLANES = 1)
            tl.store(s_ptr + offs, lo.to(tl.int8), mask=m)
        # (a NaN count was clamped to a finite lo)
        if tl.max(out.to(tl.int32), axis=None) > 0:  # rare: most tiles have no count past the planes
            _store_flags(flag_ptr, rows, cols, out, n_fc, BM, FC)


@triton.jit
def _encode_lo_kernel(x_ptr, s_ptr, hi_ptr, vth_ptr, flag_ptr, M, K, n_fc, stride_xm, k_div,
                      R: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr, BM: tl.constexpr,
                      FC: tl.constexpr, PLANES: tl.constexpr, HW: tl.constexpr, OLD: tl.constexpr = False,
                      FP8: tl.constexpr = True, sums_ptr=None, n_sums=0, stride_sm=0, NS: tl.constexpr = 0):
    rows = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rows < M
    xr = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    offs = tl.arange(0, BLOCK)
    if ONE_PASS:  # the whole row in registers: x read once
        m = rmask[:, None] & (offs[None, :] < K)
        x = tl.load(xr + offs[None, :], mask=m, other=0.0).to(tl.float32)
        vth = _row_vth(tl.sum(tl.abs(x), axis=1), K, k_div)
        inv = _recip(vth)
        _encode_tile(x, vth, inv, rows, offs, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM, FC, PLANES, HW, OLD, FP8)
    else:
        if NS > 0:  # the row's sum of |x| given as n_sums partial sums (the SwiGLU epilogue's): x read once, below
            sc = tl.arange(0, NS)
            part = tl.load(sums_ptr + rows.to(tl.int64)[:, None] * stride_sm + sc[None, :],
                           mask=rmask[:, None] & (sc < n_sums)[None, :], other=0.0)
            vth = _row_vth(tl.sum(part, axis=1), K, k_div)
        else:  # a first pass over the row for its sum
            acc = tl.zeros([R, BLOCK], dtype=tl.float32)
            for k0 in range(0, K, BLOCK):
                m = rmask[:, None] & (k0 + offs[None, :] < K)
                acc += tl.abs(tl.load(xr + k0 + offs[None, :], mask=m, other=0.0).to(tl.float32))
            vth = _row_vth(tl.sum(acc, axis=1), K, k_div)
        inv = _recip(vth)
        for k0 in range(0, K, BLOCK):
            cols = k0 + offs
            m = rmask[:, None] & (cols[None, :] < K)
            x = tl.load(xr + cols[None, :], mask=m, other=0.0).to(tl.float32)
            _encode_tile(x, vth, inv, rows, cols, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM, FC, PLANES, HW, OLD, FP8)
    tl.store(vth_ptr + rows, vth, mask=rmask)


@triton.jit
def _flag_list_kernel(flag_ptr, list_ptr, cnt_ptr, n_fc, CB: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CB)
    cnt = 0
    for c0 in range(0, n_fc, CB):
        c = c0 + offs
        f = tl.load(flag_ptr + b * n_fc + c, mask=c < n_fc, other=0) != 0
        pos = cnt + tl.cumsum(f.to(tl.int32), axis=0) - 1
        tl.store(list_ptr + b * n_fc + pos, c, mask=f)
        cnt += tl.sum(f.to(tl.int32), axis=0)
    tl.store(cnt_ptr + b, cnt)


@triton.jit
def _fix_one_tile(x_ptr, w_ptr, scale_ptr, y_ptr, vth, inv, lst, cnt, rm, rm64, mmask, pid_n, M, N, K, stride_xm,
                  stride_wn, BM: tl.constexpr, BN: tl.constexpr, FC: tl.constexpr, PLANES: tl.constexpr,
                  FP8: tl.constexpr = True, RAW: tl.constexpr = False):
    # y[row block, tile pid_n] += vth * scale * (r @ W^T) over the row block's cnt listed chunks, one at a time,
    # float32 accumulation; y is read, added to and rounded once
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rn64 = (rn % N).to(tl.int64)  # out-of-range columns read a valid one and are never stored
    cj = tl.arange(0, FC)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    touched = tl.zeros([BM], dtype=tl.int32)
    for j in range(0, cnt):
        kk = tl.load(lst + j) * FC + cj
        kin = kk < K
        x = tl.load(x_ptr + rm64[:, None] * stride_xm + kk[None, :], mask=kin[None, :], other=0.0)
        q = _quotient_rint(x.to(tl.float32), vth[:, None], inv[:, None])
        _, _, r = _split_counts(q, FP8, PLANES)  # NaN stays NaN
        r = tl.where(mmask[:, None] & kin[None, :], r, 0.0)
        touched = tl.maximum(touched, tl.max((r != 0.0).to(tl.int32), axis=1))
        w = tl.load(w_ptr + rn64[None, :] * stride_wn + kk[:, None], mask=kin[:, None], other=0.0).to(tl.float16)
        acc += _exact_dot(r, w)
    rows = mmask & (touched > 0)
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * N + rn.to(tl.int64)[None, :]
    m2 = rows[:, None] & nmask[None, :]
    if not RAW:  # RAW: y holds s @ W^T without vth and the scales (scaled_mm_raw), and so does what is added
        acc = acc * tl.load(scale_ptr + rn64)[None, :] * vth[:, None]
    y = tl.load(y_ptrs, mask=m2, other=0.0).to(tl.float32) + acc
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _outlier_fix_kernel(x_ptr, w_ptr, scale_ptr, vth_ptr, list_ptr, cnt_ptr, y_ptr, M, N, K, n_fc,
                        stride_xm, stride_wn, BM: tl.constexpr, BN: tl.constexpr, FC: tl.constexpr,
                        PLANES: tl.constexpr, FP8: tl.constexpr = True, RAW: tl.constexpr = False):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BN)
    pid_m = pid // num_n
    pid_n = pid % num_n
    cnt = tl.load(cnt_ptr + pid_m)
    if cnt > 0:
        rm = pid_m * BM + tl.arange(0, BM)
        mmask = rm < M
        rm64 = (rm % M).to(tl.int64)  # out-of-range rows read a valid one and are never stored
        vth = tl.load(vth_ptr + rm64)
        inv = _recip(vth)
        _fix_one_tile(x_ptr, w_ptr, scale_ptr, y_ptr, vth, inv, list_ptr + pid_m.to(tl.int64) * n_fc, cnt, rm, rm64,
                      mmask, pid_n, M, N, K, stride_xm, stride_wn, BM, BN, FC, PLANES, FP8, RAW)


@triton.jit
def _fix_tiles(a, b, c, sc2, vth, rows_t, rm, t0, t1, kk, kin, w_ptr, scale_ptr, y_ptr, N, stride_wn,
               BN: tl.constexpr, TERMS: tl.constexpr, RAW: tl.constexpr = False):
    # y[rows_t, tiles t0..t1-1] += vth * scale * (r @ W[:, kk]^T), r given as float16 terms (TERMS = 1: a = r;
    # TERMS = 3: r = (a * 2^22 + b * 2^11 + c) * sc2 per row, see _exact_dot); the tiles' weight loads are
    # independent of each other, so the loop pipelines; each y tile is read and written once per call
    for t in range(t0, t1):
        rn = t * BN + tl.arange(0, BN)
        nmask = rn < N
        rn64 = (rn % N).to(tl.int64)  # out-of-range columns read a valid one and are never stored
        w = tl.load(w_ptr + rn64[None, :] * stride_wn + kk[:, None], mask=kin[:, None], other=0.0).to(tl.float16)
        if TERMS == 1:
            acc = tl.dot(a, w)
        else:
            acc = _horner3(a, b, c, w) * sc2[:, None]
        y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * N + rn.to(tl.int64)[None, :]
        m2 = rows_t[:, None] & nmask[None, :]
        if not RAW:
            acc = acc * tl.load(scale_ptr + rn64)[None, :] * vth[:, None]
        y = tl.load(y_ptrs, mask=m2, other=0.0).to(tl.float32) + acc
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _batch_r(x_ptr, vth, inv, lst, cnt, rm64, mmask, K, stride_xm, FC: tl.constexpr, CB: tl.constexpr,
             PLANES: tl.constexpr, FP8: tl.constexpr = True):
    # r (the part of the counts the planes do not hold) of the cnt <= CB listed chunks, [BM, CB * FC]
    ci = tl.arange(0, CB * FC)
    j = ci // FC
    jin = j < cnt
    kk = tl.load(lst + j, mask=jin, other=0) * FC + ci % FC
    kin = jin & (kk < K)
    x = tl.load(x_ptr + rm64[:, None] * stride_xm + kk[None, :], mask=kin[None, :], other=0.0)
    q = _quotient_rint(x.to(tl.float32), vth[:, None], inv[:, None])
    _, _, r = _split_counts(q, FP8, PLANES)  # NaN stays NaN
    return tl.where(mmask[:, None] & kin[None, :], r, 0.0), kk, kin


@triton.jit
def _outlier_fix_grouped_kernel(x_ptr, w_ptr, scale_ptr, vth_ptr, list_ptr, cnt_ptr, y_ptr, M, N, K, n_fc, tiles_per,
                                stride_xm, stride_wn, BM: tl.constexpr, BN: tl.constexpr, FC: tl.constexpr,
                                CB: tl.constexpr, PLANES: tl.constexpr, FP8: tl.constexpr = True,
                                RAW: tl.constexpr = False):
    # program (row block, group of tiles_per BN-column tiles). A row block listing at most CB chunks (at the 7B
    # shapes on Gaussian rows ~5 of them, CB = 8) takes them in one batch: r of those CB * FC columns is computed
    # once, then every tile of the group gets its share. A row block listing more takes the tiles one at a time
    # as the "tiles" kernel does (r recomputed per tile, chunk by chunk), so y is still read, added to and rounded
    # once per tile.
    pid_m = tl.program_id(0)
    cnt = tl.load(cnt_ptr + pid_m)
    if cnt > 0:
        t0 = tl.program_id(1) * tiles_per
        t1 = tl.minimum(t0 + tiles_per, tl.cdiv(N, BN))
        rm = pid_m * BM + tl.arange(0, BM)
        mmask = rm < M
        rm64 = (rm % M).to(tl.int64)  # out-of-range rows read a valid one and are never stored
        vth = tl.load(vth_ptr + rm64)
        inv = _recip(vth)
        lst = list_ptr + pid_m.to(tl.int64) * n_fc
        if cnt <= CB:
            r, kk, kin = _batch_r(x_ptr, vth, inv, lst, cnt, rm64, mmask, K, stride_xm, FC, CB, PLANES, FP8)
            rows_t = mmask & (tl.max((r != 0.0).to(tl.int32), axis=1) > 0)
            if tl.max(tl.abs(r), axis=None) < 2048.0:  # every |r| exact in one float16 term
                a = r.to(tl.float16)
                _fix_tiles(a, a, a, vth, vth, rows_t, rm, t0, t1, kk, kin, w_ptr, scale_ptr, y_ptr, N, stride_wn,
                           BN, 1, RAW)
            else:
                a, b, c, sc2 = _split3(r)
                _fix_tiles(a, b, c, sc2, vth, rows_t, rm, t0, t1, kk, kin, w_ptr, scale_ptr, y_ptr, N, stride_wn, BN, 3,
                           RAW)
        else:
            for t in range(t0, t1):
                _fix_one_tile(x_ptr, w_ptr, scale_ptr, y_ptr, vth, inv, lst, cnt, rm, rm64, mmask, t, M, N, K,
                              stride_xm, stride_wn, BM, BN, FC, PLANES, FP8, RAW)
