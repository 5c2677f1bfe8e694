"""Prefill kernels of spike_linear (W8ASpike): the fused encode pre-pass and the 8-bit tensor-core GEMM.

Two weight formats share one kernel pair, chosen by constexprs:

* int8 weights (the released W8ASpike checkpoints): counts go to the int8 tensor cores (int32
  accumulation, exact).  A count is held in one signed digit while |c| <= 127; rows with larger
  counts are served by base-128 digit passes (DIGIT_BITS = 7).
* float8 e4m3 weights: counts go to the fp8 tensor cores (float32 accumulation).  e4m3 holds every
  integer |c| <= 16 exactly; rows with larger counts are served by base-16 digit passes
  (DIGIT_BITS = 4).  Hopper's fp8 MMA keeps only ~14 significant bits inside one chain of MMAs
  (DeepSeek-V3; an unpromoted chain over K = 18944 is ~2e-2 off): every fp8 chain is promoted to the
  float32 register accumulator at least every BK (<= 128) columns, per group by the group scaling,
  per channel through max_num_imprecise_acc = BK (a second accumulator: 128x128 tiles, not 128x256).
  The fp8 path is written as the plain, common Triton fp8 GEMM: counts and weights are loaded
  through float8e4nv pointers straight into tl.dot (no int8 -> fp8 bitcast, no fp32 -> fp8
  conversion in the GEMM); the encode writes the e4m3 bits of |c| <= 16 with integer arithmetic;
  the rare digit passes run in float16 (digits and e4m3 weights exact, as the decode kernel does).

Encode (`_encode_kernel`, one program per row): reads x once for sum|x| and max|x|, derives vth
= clamp(mean|x| / k, 1e-5, 1e4) as spike_encode does, and writes the counts s = rint(x / vth) once
(int8 or e4m3): the count itself on rows whose max count fits one digit (nd = 1), else its low digit
sign * (|c| mod 2^DIGIT_BITS).  Rows with nd > 1 also write their exact int32 counts to a side buffer
(other rows never touch it) and, per BK-column chunk, how many digits that chunk needs, so the extra
passes of the GEMM skip chunks that have no high digit (outliers cluster in few channels).

int8 tensors are passed as int8; e4m3 ones as float8_e4m3fn (the counts buffer is int8 storage viewed
as e4m3 by the launcher).

GEMM (`_gemm_kernel`): per K step of BK columns one tensor-core dot.  Per-group scales (group =
GROUP_STEPS * BK columns) are applied to each group's partial product and summed in float32; the
scales are read from a [G, N] (transposed, coalesced) or [N, G] layout given by strides.  Row blocks
that hold an nd > 1 row run, per extra digit d, a pass over the chunks whose flag says they need it:
sum_d 2^(DIGIT_BITS d) * digit_d == c exactly, so no count is saturated.  A count >= 2^31 (only
when |x| > 2^31 * vth, vth <= 1e4) cannot be held: its row is NaN.  Kernel sources are torch-free.
"""
from __future__ import annotations

import triton
import triton.language as tl

try:  # the GPU's one-instruction rint (HW paths); a Triton without it (or the interpreter) takes _rint's adds
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    libdevice = None

_RNE_MAGIC = tl.constexpr(8388608.0)  # 2^23: adding it rounds a float32 |q| < 2^23 to an integer, half to even
_CLAMP = tl.constexpr(2147483520.0)   # largest float32 below 2^31


@triton.jit
def _rint(q):
    # round half to even, exactly (IEEE adds in round-to-nearest-even; no fast-math in Triton)
    m = tl.where(q < 0, -_RNE_MAGIC, _RNE_MAGIC)
    r = (q + m) - m
    return tl.where(tl.abs(q) < _RNE_MAGIC, r, q)


@triton.jit
def _digits(mag, DIGIT_BITS: tl.constexpr, MAX_DIGITS: tl.constexpr):
    # how many signed base-2^DIGIT_BITS digits a magnitude (int32, >= 0) needs: 1 + #{d >= 1 : mag >= 2^(bits d)}
    n = (mag >= 0).to(tl.int32)  # 1, shaped as mag (scalar or block)
    for d in tl.static_range(1, MAX_DIGITS):
        n += (mag >= (1 << (DIGIT_BITS * d))).to(tl.int32)
    return n


@triton.jit
def _e4m3_bits(c):
    # the e4m3 bit pattern of an integer |c| <= 16 (int32 in, int32 0..255 out), by integer arithmetic:
    # |c| = 2^e * (1 + m/8) with e = floor(log2|c|) <= 4, biased exponent e + 7; 0 -> 0x00
    n = tl.abs(c)
    e = (n >= 2).to(tl.int32) + (n >= 4).to(tl.int32) + (n >= 8).to(tl.int32) + (n >= 16).to(tl.int32)
    m = ((n << 3) >> e) - 8
    bits = tl.where(n > 0, ((e + 7) << 3) | m, 0)
    return tl.where(c < 0, bits | 128, bits)


@triton.jit
def _recip(vth):
    # RN(1 / vth), the reciprocal _quotient_rint takes (vth is finite: clamped to [1e-5, 1e4]); scalar or block
    return tl.math.div_rn(vth * 0.0 + 1.0, vth)


@triton.jit
def _rint_any(q, HW: tl.constexpr):
    # round half to even: one cvt.rni on the GPU (HW), _rint's exact adds elsewhere (the interpreter has no libdevice).
    # They differ only in the sign of a zero (cvt keeps -0), which no caller below lets reach memory.
    if HW:
        r = libdevice.rint(q)
    else:
        r = _rint(q)
    return r


@triton.jit
def _quotient_rint(x, vth, inv, HW: tl.constexpr = False):
    # rint(x / vth), x / vth correctly rounded (see the module doc); infinities pass through
    q1 = x * inv
    e = tl.fma(-q1, vth, x)
    q = tl.fma(e, inv, q1)
    q = tl.where(tl.abs(q1) < float("inf"), q, q1)
    return _rint_any(q, HW)


@triton.jit
def _row_vth(sum_abs, K, k_div):
    mean = tl.math.div_rn(sum_abs, K.to(tl.float32))
    vth = tl.math.div_rn(mean, k_div)
    return tl.minimum(tl.maximum(vth, 1e-5), 1e4)


@triton.jit
def _encode_kernel(x_ptr, s_ptr, big_ptr, vth_ptr, nd_ptr, flag_ptr, K, n_chunks, stride_xm, k_div,
                   LIMIT: tl.constexpr, DIGIT_BITS: tl.constexpr, MAX_DIGITS: tl.constexpr,
                   FP8: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr, HW: tl.constexpr,
                   DIV: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride_xm
    BLOCK: tl.constexpr = CHUNK * ROWS
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + offs < K
        a = tl.abs(tl.load(xr + k0 + offs, mask=m, other=0.0).to(tl.float32))
        acc += a
        mx = tl.maximum(mx, a)
    vth = _row_vth(tl.sum(acc, axis=0), K, k_div)
    cmax = _rint(tl.math.div_rn(tl.max(mx, axis=0), vth))
    nd = tl.where(cmax <= LIMIT, 1, _digits(tl.minimum(cmax, _CLAMP).to(tl.int32), DIGIT_BITS, MAX_DIGITS))
    nd = tl.where(cmax < 2147483648.0, nd, -1)  # -1: a count beyond int32, the row becomes NaN
    tl.store(vth_ptr + row, vth)
    tl.store(nd_ptr + row, nd)
    wide = nd > 1
    inv = _recip(vth)
    sr = s_ptr + row * K
    br = big_ptr + row * K
    fr = flag_ptr + row * n_chunks
    ci = tl.arange(0, ROWS)
    cj = tl.arange(0, CHUNK)
    for k0 in range(0, K, BLOCK):
        kk = k0 + ci[:, None] * CHUNK + cj[None, :]
        m = kk < K
        x = tl.load(xr + kk, mask=m, other=0.0).to(tl.float32)
        # rint(x / vth) through the reciprocal (_quotient_rint: x / vth correctly rounded, the division's value, without
        # a division per element: the pre-pass was bound by instruction issue, 3.4x its memory time at K = 18944)
        if DIV:  # the division per element, as before session 24: only for timing the two against each other
            q = _rint(tl.math.div_rn(x, vth))
        else:
            q = _quotient_rint(x, vth, inv, HW)
        q = tl.minimum(tl.maximum(q, -_CLAMP), _CLAMP)  # only NaN rows reach the clamp
        c = q.to(tl.int32)
        mag = tl.abs(c)
        low_mag = tl.where(wide, mag & ((1 << DIGIT_BITS) - 1), mag)
        low = tl.where(c < 0, -low_mag, low_mag)
        if FP8:  # the e4m3 bits (|low| <= 16), stored as int8 (the GEMM reads this buffer as e4m3)
            tl.store(sr + kk, _e4m3_bits(low).to(tl.int8), mask=m)
        else:
            tl.store(sr + kk, low.to(tl.int8), mask=m)
        tl.store(br + kk, c, mask=m & ((tl.zeros([ROWS, CHUNK], dtype=tl.int32) + nd) > 1))
        chunk = k0 // CHUNK + ci
        flag = tl.where(wide, _digits(tl.max(mag, axis=1), DIGIT_BITS, MAX_DIGITS), 1)
        tl.store(fr + chunk, flag.to(tl.int8), mask=chunk < n_chunks)


@triton.jit
def _load_tiles(a_ptrs, b_ptrs, kk, K, EVEN_K: tl.constexpr, FP8: tl.constexpr):
    # typed loads straight into tl.dot (int8 or float8e4nv pointers); masked columns read as 0
    if EVEN_K:
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
    elif FP8:
        a = tl.load(a_ptrs, mask=kk[None, :] < K, other=0.0)
        b = tl.load(b_ptrs, mask=kk[:, None] < K, other=0.0)
    else:
        a = tl.load(a_ptrs, mask=kk[None, :] < K, other=0)
        b = tl.load(b_ptrs, mask=kk[:, None] < K, other=0)
    return a, b


@triton.jit
def _digit_passes(big_ptr, w_ptr, sc_ptrs, flag_ptr, nd_rows, rm, rm64, rn64, mmask, K, n_chunks, stride_wn, stride_sg,
                  PER_CHANNEL: tl.constexpr, GROUP_STEPS: tl.constexpr, FP8: tl.constexpr,
                  DIGIT_BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """sum over digits d >= 1 of 2^(DIGIT_BITS d) * (digit_d @ W^T) for the rows of the block with nd > 1
    (per-group scales applied, per-channel ones not), float32 [BM, BN]; other rows contribute 0.  Each
    digit pass visits only the BK chunks whose flag says some row of the block needs that digit."""
    nd_blk = tl.max(nd_rows, axis=0)
    wide = mmask & (nd_rows > 1)
    rmf = rm.to(tl.int64) * n_chunks
    rk = tl.arange(0, BK)
    out = tl.zeros([BM, BN], dtype=tl.float32)  # one accumulator for every digit (a second one spills)
    for d in tl.range(1, nd_blk, num_stages=1):
        shift = DIGIT_BITS * d
        mult = tl.exp2(shift.to(tl.float32))  # a power of two: scaling by it is exact
        for step in tl.range(0, n_chunks, num_stages=1):  # rare path: no shared-memory ring
            # digits chunk `step` needs over the block's wide rows
            f = tl.max(tl.load(flag_ptr + rmf + step, mask=wide, other=0).to(tl.int32), axis=0)
            if f > d:
                kk = step * BK + rk
                c = tl.load(big_ptr + rm64[:, None] * K + kk[None, :], mask=wide[:, None] & (kk[None, :] < K),
                            other=0)
                mag = (tl.abs(c) >> shift) & ((1 << DIGIT_BITS) - 1)
                dig = tl.where(c < 0, -mag, mag)
                wp = w_ptr + rn64[None, :] * stride_wn + kk[:, None]
                if FP8:  # float16: |digit| <= 15 and every e4m3 value exact, products exact
                    b = tl.load(wp, mask=kk[:, None] < K, other=0.0).to(tl.float16)
                    part = tl.dot(dig.to(tl.float32).to(tl.float16), b)
                else:
                    b = tl.load(wp, mask=kk[:, None] < K, other=0)
                    part = tl.dot(dig.to(tl.int8), b).to(tl.float32)
                if PER_CHANNEL:
                    out += part * mult
                else:
                    sc = tl.load(sc_ptrs + (step // GROUP_STEPS) * stride_sg)
                    out += part * (sc * mult)[None, :]
    return out


@triton.jit
def _gemm_kernel(s_ptr, big_ptr, w_ptr, scale_ptr, vth_ptr, nd_ptr, flag_ptr, bias_ptr, y_ptr,
                 M, N, K, n_groups, n_chunks, stride_wn, stride_sn, stride_sg,
                 HAS_BIAS: tl.constexpr, PER_CHANNEL: tl.constexpr, GROUP_STEPS: tl.constexpr,
                 FP8: tl.constexpr, DIGIT_BITS: tl.constexpr, EVEN_K: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    # grouped ordering: GROUP_M row blocks share each weight tile while it is in L2
    width = GROUP_M * num_n
    gid = pid // width
    first_m = gid * GROUP_M
    gm = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % gm
    pid_n = (pid % width) // gm

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask = rm < M
    nmask = rn < N
    # out-of-range rows / columns read a valid row (wrapped) and are never stored: loads stay unmasked in M, N
    rm64 = (rm % M).to(tl.int64)
    rn64 = (rn % N).to(tl.int64)
    a_ptrs = s_ptr + rm64[:, None] * K + rk[None, :]
    b_ptrs = w_ptr + rn64[None, :] * stride_wn + rk[:, None]
    sc_ptrs = scale_ptr + rn64 * stride_sn

    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if PER_CHANNEL:
        if FP8:
            for k0 in range(0, K, BK):
                a, b = _load_tiles(a_ptrs, b_ptrs, k0 + rk, K, EVEN_K, FP8)
                acc = tl.dot(a, b, acc, max_num_imprecise_acc=BK)  # promoted to float32 every BK
                a_ptrs += BK
                b_ptrs += BK
        else:
            iacc = tl.zeros([BM, BN], dtype=tl.int32)
            for k0 in range(0, K, BK):
                a, b = _load_tiles(a_ptrs, b_ptrs, k0 + rk, K, EVEN_K, FP8)
                iacc += tl.dot(a, b)  # not tl.dot(a, b, iacc): wrong on int8 (triton-lang/triton#5669)
                a_ptrs += BK
                b_ptrs += BK
            acc = iacc.to(tl.float32)
    else:
        for g in range(0, n_groups):
            if GROUP_STEPS == 1:  # the fast path: one dot per group, promoted and scaled at once
                a, b = _load_tiles(a_ptrs, b_ptrs, g * BK + rk, K, EVEN_K, FP8)
                part = tl.dot(a, b)
                a_ptrs += BK
                b_ptrs += BK
            else:
                part = tl.zeros([BM, BN], dtype=tl.float32 if FP8 else tl.int32)
                for j in tl.static_range(GROUP_STEPS):
                    a, b = _load_tiles(a_ptrs, b_ptrs, (g * GROUP_STEPS + j) * BK + rk, K, EVEN_K, FP8)
                    if FP8:  # a group longer than BK: promoted every BK
                        part = tl.dot(a, b, part, max_num_imprecise_acc=BK)
                    else:  # int8: a fresh dot added, never dot(a, b, acc) (triton-lang/triton#5669)
                        part += tl.dot(a, b)
                    a_ptrs += BK
                    b_ptrs += BK
            sc = tl.load(sc_ptrs + g * stride_sg)
            acc += part.to(tl.float32) * sc[None, :]

    # rows whose counts need more than one digit: one more pass per digit, over the chunks that need it
    nd_rows = tl.load(nd_ptr + rm, mask=mmask, other=1)
    if tl.max(nd_rows, axis=0) > 1:
        acc += _digit_passes(big_ptr, w_ptr, sc_ptrs, flag_ptr, nd_rows, rm, rm64, rn64, mmask, K, n_chunks,
                             stride_wn, stride_sg, PER_CHANNEL, GROUP_STEPS, FP8, DIGIT_BITS, BM, BN, BK)

    if PER_CHANNEL:
        sc = tl.load(sc_ptrs)
        acc = acc * sc[None, :]
    vth = tl.load(vth_ptr + rm, mask=mmask, other=0.0)
    acc = acc * vth[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn64).to(tl.float32)
        acc += bias[None, :]
    acc = tl.where((nd_rows < 0)[:, None], float("nan"), acc)
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * N + rn.to(tl.int64)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])
