"""Sliding-window attention in Triton (see swa.py): the forward kernel.  q/k/v are read in place
through their (batch, time, head) strides (unit last stride); o and lse are written contiguous."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _block_of


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, lo, hi, L, window,
               qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
               PREC: tl.constexpr):
    """Online-softmax update over key rows [lo, hi) of k_base/v_base (row strides stride_kt/vt).

    MASK: 0 = every (row, key) pair is visible and in bounds; 1 = causal sliding-window mask
    ``i - window <= j <= i`` plus ``j < L``; 2 = key bound ``j < hi`` only (sinks).
    split_masks only: 3 = window edge ``j >= i - window`` only, keys in bounds (unmasked
    loads).
    Scores are in log2 units (qk_scale includes log2(e)).
    """
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        # row offsets as int64 block base + int32 in-block part: strides of views can be large
        k_ptrs = (k_base + tl.cast(start_n, tl.int64) * stride_kt) + (offs_n0[:, None] * stride_kt + offs_d[None, :])
        v_ptrs = (v_base + tl.cast(start_n, tl.int64) * stride_vt) + (offs_n0[:, None] * stride_vt + offs_d[None, :])
        if MASK == 0 or MASK == 3:  # keys in bounds
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            kmask = (offs_n < hi)[:, None]
            k = tl.load(k_ptrs, mask=kmask, other=0.0)
            v = tl.load(v_ptrs, mask=kmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if MASK == 1:
            visible = ((offs_n[None, :] <= offs_m[:, None])
                       & (offs_n[None, :] >= offs_m[:, None] - window)
                       & (offs_n[None, :] < L))
            s = tl.where(visible, s, float("-inf"))
        elif MASK == 2:
            s = tl.where((offs_n < hi)[None, :], s, float("-inf"))
        elif MASK == 3:
            s = tl.where(offs_n[None, :] >= offs_m[:, None] - window, s, float("-inf"))
        # m_i starts finite (-1e30), so fully masked rows give p = 0 rather than NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["T", "NB", "M_SINK", "window"])
def _fwd_kernel(Q, K, V, SK, SV, O, LSE, CU, TAB, T, NB, M_SINK, window, qk_scale,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IS_VARLEN: tl.constexpr, HAS_SINK: tl.constexpr, PREC: tl.constexpr,
                FAR_MASK: tl.constexpr):
    # grid (H * NJ,): head fastest, then block slots heaviest first (_block_of)
    h = tl.program_id(0) % H
    n, bos, L, m0 = _block_of(CU, TAB, tl.program_id(0) // H, tl.num_programs(0) // H, NB, T, BLOCK_M,
                              IS_VARLEN, True)
    if IS_VARLEN:   # B == 1, T tokens; bounds clamped into [0, T] (memory-safe on any cu)
        q_in = bos.to(tl.int64) * sqt
        k_in = bos.to(tl.int64) * skt
        v_in = bos.to(tl.int64) * svt
    else:
        q_in = n.to(tl.int64) * sqb
        k_in = n.to(tl.int64) * skb
        v_in = n.to(tl.int64) * svb
    if m0 < L:
        hkv = h // (H // HKV)
        stride_qt: tl.constexpr = H * HEAD_DIM          # o (contiguous)
        stride_st: tl.constexpr = HKV * HEAD_DIM        # sinks (contiguous)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_mask = (offs_m < L)[:, None]
        q_ptrs = Q + q_in + h.to(tl.int64) * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_mask, other=0.0)

        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)

        if HAS_SINK:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, SK + hkv * HEAD_DIM, SV + hkv * HEAD_DIM,
                                       stride_st, stride_st, offs_m, 0, M_SINK, L, window, qk_scale,
                                       BLOCK_N, HEAD_DIM, 2, PREC)

        k_base = K + k_in + hkv.to(tl.int64) * skh
        v_base = V + v_in + hkv.to(tl.int64) * svh
        hi = tl.minimum(m0 + BLOCK_M, L)
        lo = (tl.maximum(m0 - window, 0) // BLOCK_N) * BLOCK_N
        # blocks [mid_lo, mid_hi) are seen whole by every row of the query block:
        # they end at or before key m0 (causal) and start at or after key m0+BLOCK_M-1-window.
        mid_hi = ((m0 + 1) // BLOCK_N) * BLOCK_N
        mid_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 - window, 0), BLOCK_N) * BLOCK_N
        mid_lo = tl.minimum(tl.maximum(mid_lo, lo), mid_hi)
        # FAR_MASK: 1, or 3 under split_masks ([lo, mid_lo) ends at or before key m0 + 1 <= L, so
        # its keys are <= every row and in bounds: window mask only, unmasked loads).
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m,
                                   lo, mid_lo, L, window, qk_scale, BLOCK_N, HEAD_DIM, FAR_MASK, PREC)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m,
                                   mid_lo, mid_hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 0, PREC)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m,
                                   mid_hi, hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 1, PREC)

        # rows past L (padding of the last block) may have l = 0; they are not stored.
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        lse = (m_i + tl.math.log2(l_safe)) / 1.4426950408889634
        o_ptrs = O + (bos + offs_m[:, None]).to(tl.int64) * stride_qt + h * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_mask)
        tl.store(LSE + (bos + offs_m).to(tl.int64) * H + h, lse, mask=offs_m < L)

