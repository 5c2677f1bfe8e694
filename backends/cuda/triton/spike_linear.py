"""W8ASpike on tensor cores: y = vth * (s @ dequant(weight_q, weight_scale)^T) + bias.

Two launches, no float round trip of the activations:

1. `_encode_kernel` (one program per row) reads x once for sum|x| and max|x|, derives the row's
   threshold vth = clamp(mean|x| / k, 1e-5, 1e4) as spike_encode does, and writes the counts
   s = rint(x / vth) once as int8.  A count needs more than one signed 7-bit digit only on rows whose
   max |x| / vth exceeds 127 (rare: |x| over ~42x the row's mean |x| at k=3).  Such rows also write
   their exact int32 counts to a side buffer (rows that don't are never written nor read) and record
   how many base-128 digits they need; their int8 tensor holds the low digit sign * (|c| & 127).
2. `_gemm_kernel` multiplies the int8 counts by the int8 weights on the tensor cores (int32
   accumulation per scale group, float32 across groups), and for a row block that holds an outlier
   row runs one more int8 pass per extra digit d, reading digit_d = sign * ((|c| >> 7d) & 127) from
   the side buffer: sum_d 128^d * digit_d == c exactly, so no count is ever saturated.  Counts of
   2^31 or more (|x| beyond 2^31 * 1e4 after the 1e4 clamp of vth) cannot be held: their row is NaN.

Scales: `weight_scale [N]` (per output channel) or `[N, K // group_size]` (per group of
`group_size` input channels, as W8ASpike's group 128).  Inputs may be strided with a unit last
stride (read in place); the output is contiguous, in x's dtype.  Kernel sources are torch-free apart
from the thin launcher at the bottom.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_RNE_MAGIC = tl.constexpr(8388608.0)  # 2^23: adding it rounds a float32 |q| < 2^23 to an integer, half to even


@triton.jit
def _rint(q):
    # round half to even, exactly (IEEE adds in round-to-nearest-even; no fast-math in Triton)
    m = tl.where(q < 0, -_RNE_MAGIC, _RNE_MAGIC)
    r = (q + m) - m
    return tl.where(tl.abs(q) < _RNE_MAGIC, r, q)


@triton.jit
def _encode_kernel(x_ptr, s_ptr, big_ptr, vth_ptr, nd_ptr, K, stride_xm, k_div,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride_xm
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + offs < K
        a = tl.abs(tl.load(xr + k0 + offs, mask=m, other=0.0).to(tl.float32))
        acc += a
        mx = tl.maximum(mx, a)
    mean = tl.math.div_rn(tl.sum(acc, axis=0), K.to(tl.float32))
    vth = tl.math.div_rn(mean, k_div)
    vth = tl.minimum(tl.maximum(vth, 1e-5), 1e4)
    cmax = _rint(tl.math.div_rn(tl.max(mx, axis=0), vth))
    # base-128 signed digits each row needs; -1: a count beyond int32 (the row becomes NaN)
    nd = tl.where(cmax <= 127.0, 1,
                  tl.where(cmax <= 16383.0, 2,
                           tl.where(cmax <= 2097151.0, 3,
                                    tl.where(cmax <= 268435455.0, 4,
                                             tl.where(cmax < 2147483648.0, 5, -1)))))
    tl.store(vth_ptr + row, vth)
    tl.store(nd_ptr + row, nd)
    sr = s_ptr + row * K
    br = big_ptr + row * K
    for k0 in range(0, K, BLOCK):
        m = k0 + offs < K
        x = tl.load(xr + k0 + offs, mask=m, other=0.0).to(tl.float32)
        q = _rint(tl.math.div_rn(x, vth))
        q = tl.minimum(tl.maximum(q, -2147483520.0), 2147483520.0)  # only NaN rows reach the clamp
        c = q.to(tl.int32)
        mag = tl.abs(c)
        low = tl.where(c < 0, -(mag & 127), mag & 127)
        tl.store(sr + k0 + offs, low.to(tl.int8), mask=m)
        tl.store(br + k0 + offs, c, mask=m & (tl.zeros([BLOCK], dtype=tl.int32) + nd > 1))


@triton.jit
def _gemm_kernel(s_ptr, big_ptr, w_ptr, scale_ptr, vth_ptr, nd_ptr, bias_ptr, y_ptr,
                 M, N, K, n_groups, stride_wn,
                 HAS_BIAS: tl.constexpr, PER_CHANNEL: tl.constexpr, GROUP_STEPS: tl.constexpr,
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
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    a_ptrs = s_ptr + rm64[:, None] * K + rk[None, :]
    b_ptrs = w_ptr + rn64[None, :] * stride_wn + rk[:, None]

    acc = tl.zeros([BM, BN], dtype=tl.float32)
    n_steps = tl.cdiv(K, BK)
    if PER_CHANNEL:
        iacc = tl.zeros([BM, BN], dtype=tl.int32)
        for step in range(0, n_steps):
            kk = step * BK + rk
            a = tl.load(a_ptrs, mask=mmask[:, None] & (kk[None, :] < K), other=0)
            b = tl.load(b_ptrs, mask=nmask[None, :] & (kk[:, None] < K), other=0)
            iacc += tl.dot(a, b)
            a_ptrs += BK
            b_ptrs += BK
        acc = iacc.to(tl.float32)
    else:
        for g in range(0, n_groups):
            iacc = tl.zeros([BM, BN], dtype=tl.int32)
            for j in tl.static_range(GROUP_STEPS):
                kk = (g * GROUP_STEPS + j) * BK + rk
                a = tl.load(a_ptrs, mask=mmask[:, None] & (kk[None, :] < K), other=0)
                b = tl.load(b_ptrs, mask=nmask[None, :] & (kk[:, None] < K), other=0)
                iacc += tl.dot(a, b)
                a_ptrs += BK
                b_ptrs += BK
            sc = tl.load(scale_ptr + rn64 * n_groups + g, mask=nmask, other=0.0)
            acc += iacc.to(tl.float32) * sc[None, :]

    # rows whose counts need more than one base-128 digit: one more int8 pass per digit
    nd_rows = tl.load(nd_ptr + rm, mask=mmask, other=1)
    nd_blk = tl.max(nd_rows, axis=0)
    if nd_blk > 1:
        wide = mmask & (nd_rows > 1)
        for d in tl.range(1, nd_blk, num_stages=1):
            shift = 7 * d
            dacc = tl.zeros([BM, BN], dtype=tl.float32)
            c_ptrs = big_ptr + rm64[:, None] * K + rk[None, :]
            b_ptrs = w_ptr + rn64[None, :] * stride_wn + rk[:, None]
            for g in tl.range(0, n_groups, num_stages=1):  # rare path: no shared-memory ring
                iacc = tl.zeros([BM, BN], dtype=tl.int32)
                for j in tl.static_range(GROUP_STEPS):
                    kk = (g * GROUP_STEPS + j) * BK + rk
                    c = tl.load(c_ptrs, mask=wide[:, None] & (kk[None, :] < K), other=0)
                    mag = (tl.abs(c) >> shift) & 127
                    dig = tl.where(c < 0, -mag, mag).to(tl.int8)
                    b = tl.load(b_ptrs, mask=nmask[None, :] & (kk[:, None] < K), other=0)
                    iacc += tl.dot(dig, b)
                    c_ptrs += BK
                    b_ptrs += BK
                if PER_CHANNEL:
                    dacc += iacc.to(tl.float32)
                else:
                    sc = tl.load(scale_ptr + rn64 * n_groups + g, mask=nmask, other=0.0)
                    dacc += iacc.to(tl.float32) * sc[None, :]
            acc += dacc * tl.exp2(shift.to(tl.float32))

    if PER_CHANNEL:
        sc = tl.load(scale_ptr + rn64, mask=nmask, other=0.0)
        acc = acc * sc[None, :]
    vth = tl.load(vth_ptr + rm, mask=mmask, other=0.0)
    acc = acc * vth[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = tl.where((nd_rows < 0)[:, None], float("nan"), acc)
    y_ptrs = y_ptr + rm64[:, None] * N + rn64[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _config(M: int, N: int, K: int, group_size):
    """Tile sizes: (BM, BN, BK, GROUP_M, num_warps, num_stages).  Per-channel scales keep one int32
    accumulator: 128x256 tiles on 8 warps.  Per-group scales keep an int32 and a float32 accumulator:
    128x128 tiles so the two fit in registers.  Small M (decode): narrow row blocks, more column blocks."""
    bk = 128 if group_size is None or group_size % 128 == 0 else 64
    if M <= 16:
        return 16, 32 if N <= 8192 else 64, bk, 1, 4, 4
    if M <= 64:
        return 64, 64, bk, 1, 4, 4
    if group_size is not None or M <= 1024:
        return 128, 128, bk, 8, 8, 3
    return 128, 256, bk, 8, 8, 4


def spike_linear_fwd(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float,
                     bias, group_size, config=None):
    """x [M, K] float (unit last stride; other strides read in place), weight_q [N, K] int8 (unit
    last stride), weight_scale float32 [N] or [N, K // group_size]; returns y [M, N] in x's dtype."""
    if x.stride(-1) != 1:
        x = x.contiguous()  # the kernels need a unit last stride; this is the only copy
    if weight_q.stride(-1) != 1:
        weight_q = weight_q.contiguous()
    M, K = x.shape
    N = weight_q.shape[0]
    dev = x.device
    s = torch.empty((M, K), device=dev, dtype=torch.int8)
    big = torch.empty((M, K), device=dev, dtype=torch.int32)  # only outlier rows are written/read
    vth = torch.empty((M,), device=dev, dtype=torch.float32)
    nd = torch.empty((M,), device=dev, dtype=torch.int32)
    y = torch.empty((M, N), device=dev, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    scale = weight_scale.to(torch.float32).contiguous()
    BM, BN, BK, GM, warps, stages = config or _config(M, N, K, group_size)
    per_channel = group_size is None
    if per_channel:  # one int32 accumulator over all of K; the digit passes walk K in BK steps
        n_groups, steps = triton.cdiv(K, BK), 1
    else:
        if group_size % BK:
            raise ValueError(f"spike_linear: group_size={group_size} must be a multiple of {BK}")
        n_groups, steps = K // group_size, group_size // BK
    _encode_kernel[(M,)](x, s, big, vth, nd, K, x.stride(0), float(k), BLOCK=1024 if K >= 1024 else 256,
                         num_warps=4)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _gemm_kernel[grid](s, big, weight_q, scale, vth, nd, bias if bias is not None else y, y,
                       M, N, K, n_groups, weight_q.stride(0),
                       HAS_BIAS=bias is not None, PER_CHANNEL=per_channel, GROUP_STEPS=steps,
                       BM=BM, BN=BN, BK=BK, GROUP_M=GM, num_warps=warps, num_stages=stages)
    return y
