"""Sliding-window attention in Triton (see swa.py): the backward kernels (delta, dK/dV, sinks, dQ).
q/k/v/o/dO are read in place through their (batch, time, head) strides (unit last stride); lse,
delta and every gradient are contiguous."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _block_of


@triton.jit(do_not_specialize=["R", "T"])
def _bwd_preprocess_kernel(O, DO, GLSE, DELTA, R, T, H, sob, sot, soh, sdb, sdt, sdh,
                           HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, HAS_GLSE: tl.constexpr):
    """delta[r] = sum_d O[r, d] * dO[r, d] - grad_lse[r] over the R = B*T*H rows (r = (b*T + t)*H + h)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    rmask = offs_r < R
    r64 = offs_r.to(tl.int64)
    hh = r64 % H
    bt = r64 // H
    bb = bt // T
    tt = bt % T
    o_ptrs = (bb * sob + tt * sot + hh * soh)[:, None] + offs_d[None, :]
    d_ptrs = (bb * sdb + tt * sdt + hh * sdh)[:, None] + offs_d[None, :]
    o = tl.load(O + o_ptrs, mask=rmask[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + d_ptrs, mask=rmask[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_GLSE:
        delta -= tl.load(GLSE + offs_r, mask=rmask, other=0.0).to(tl.float32)
    tl.store(DELTA + offs_r, delta, mask=rmask)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n, lo, hi, window,
                    qk_scale, H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    MASK: tl.constexpr, PREC: tl.constexpr, dq_base, ATOMIC_DQ: tl.constexpr,
                    stride_qm, stride_dom):
    """Accumulate dk/dv of key rows offs_n over query rows [lo, hi) of one query head.

    The pointers are already offset to the head; query rows have strides stride_qm (q) and
    stride_dom (dO), lse/delta stride H. Works on transposed tiles (keys x queries). MASK: 0 = all pairs visible and
    rows in bounds; 1 = causal window ``j <= i <= j + window`` and ``i < hi``; 2 = ``i < hi``;
    split_masks only: 4 = window edge ``i <= j + window`` and ``i < hi``.
    ATOMIC_DQ (bwd_atomic_dq): also add this tile's dq (unscaled, float32) into dq_base (rows of
    stride H*HEAD_DIM, like q_base) with atomics.
    """
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q_ptrs = q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None].to(tl.int64) * stride_dom + offs_d[None, :]
        if MASK == 0:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse2 = tl.load(lse_base + offs_m.to(tl.int64) * H) * 1.4426950408889634
            delta = tl.load(delta_base + offs_m.to(tl.int64) * H)
        else:
            rmask = offs_m < hi
            q = tl.load(q_ptrs, mask=rmask[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=rmask[:, None], other=0.0)
            lse2 = tl.load(lse_base + offs_m.to(tl.int64) * H, mask=rmask, other=0.0) * 1.4426950408889634
            delta = tl.load(delta_base + offs_m.to(tl.int64) * H, mask=rmask, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale      # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if MASK == 1:
            visible = ((offs_m[None, :] >= offs_n[:, None])
                       & (offs_m[None, :] <= offs_n[:, None] + window)
                       & (offs_m[None, :] < hi))
            p_t = tl.where(visible, p_t, 0.0)
        elif MASK == 2:
            p_t = tl.where((offs_m < hi)[None, :], p_t, 0.0)
        elif MASK == 4:
            p_t = tl.where((offs_m[None, :] <= offs_n[:, None] + window) & (offs_m < hi)[None, :],
                           p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)               # [BLOCK_N, BLOCK_M]
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=PREC)  # [BLOCK_M, D]
            dq_ptrs = dq_base + offs_m[:, None].to(tl.int64) * (H * HEAD_DIM) + offs_d[None, :]
            if MASK == 0:
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, mask=(offs_m < hi)[:, None], sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["T", "NB", "window"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, TAB, T, NB, window, qk_scale, scale, DQACC,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                     H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FAR_MASK: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr):
    # grid (HKV * NJ,): KV head fastest, then key-block slots (_block_of)
    hkv = tl.program_id(0) % HKV
    n, bos, L, n0 = _block_of(CU, TAB, tl.program_id(0) // HKV, tl.num_programs(0) // HKV, NB, T, BLOCK_N,
                              IS_VARLEN, False)
    if IS_VARLEN:   # B == 1, T tokens; bounds clamped into [0, T] (memory-safe on any cu)
        q_in, k_in = bos.to(tl.int64) * sqt, bos.to(tl.int64) * skt
        v_in, d_in = bos.to(tl.int64) * svt, bos.to(tl.int64) * sdt
    else:
        q_in, k_in = n.to(tl.int64) * sqb, n.to(tl.int64) * skb
        v_in, d_in = n.to(tl.int64) * svb, n.to(tl.int64) * sdb
    if n0 < L:
        G: tl.constexpr = H // HKV
        stride_kt: tl.constexpr = HKV * HEAD_DIM        # dk / dv (contiguous)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_off = (bos + offs_n[:, None]).to(tl.int64) * stride_kt + hkv * HEAD_DIM + offs_d[None, :]
        kv_mask = (offs_n < L)[:, None]
        rows_n = offs_n[:, None].to(tl.int64)
        k = tl.load(K + k_in + hkv.to(tl.int64) * skh + rows_n * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + v_in + hkv.to(tl.int64) * svh + rows_n * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

        # queries that see some key of this block: n0 <= i < min(n0 + BLOCK_N + window, L)
        hi = tl.minimum(n0 + BLOCK_N + window, L)
        # the first query blocks straddle the diagonal (causal mask) ...
        diag_end = tl.minimum(n0 + tl.cdiv(BLOCK_N, BLOCK_M) * BLOCK_M, hi)
        # ... then whole blocks of rows i <= n0 + window (seen by every key), then the edge.
        full_end = tl.minimum(n0 + window + 1, L)
        mid_hi = diag_end + (tl.maximum(full_end - diag_end, 0) // BLOCK_M) * BLOCK_M
        row0 = bos.to(tl.int64) * H
        for g in range(G):
            h = hkv * G + g
            q_base = Q + q_in + h.to(tl.int64) * sqh
            do_base = DO + d_in + h.to(tl.int64) * sdh
            lse_base = LSE + row0 + h
            delta_base = DELTA + row0 + h
            dq_base = DQACC + bos.to(tl.int64) * (H * HEAD_DIM) + h * HEAD_DIM
            # FAR_MASK: 1, or 4 under split_masks (rows >= mid_hi >= n0 + BLOCK_N when non-empty
            # need no causal mask)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     n0, diag_end, window, qk_scale, H, HEAD_DIM, BLOCK_M, 1, PREC,
                                     dq_base, ATOMIC_DQ, sqt, sdt)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     diag_end, mid_hi, window, qk_scale, H, HEAD_DIM, BLOCK_M, 0, PREC,
                                     dq_base, ATOMIC_DQ, sqt, sdt)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     mid_hi, hi, window, qk_scale, H, HEAD_DIM, BLOCK_M, FAR_MASK, PREC,
                                     dq_base, ATOMIC_DQ, sqt, sdt)
        tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=["T", "NSEQ", "M_SINK"])
def _bwd_sink_kernel(Q, SK, SV, DO, LSE, DELTA, DSK, DSV, CU, T, NSEQ, M_SINK, qk_scale, scale, DQACC,
                     sqb, sqt, sqh, sdb, sdt, sdh,
                     H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                     PREC: tl.constexpr, ATOMIC_DQ: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Partial dsink_k/dsink_v of sink rows [s0, s0+BLOCK_N) over query rows of one chunk.

    Every query row of every sequence sees every sink, so the T rows of each batch entry are split
    into chunks without regard to sequences (with cu_seqlens: rows before clamp(cu[NSEQ], 0, T)).
    Program z of axis 0 is chunk z % cdiv(T, CHUNK) of batch entry z // cdiv(T, CHUNK).
    Output: float32 [num_programs(0), M, HKV, D].
    ATOMIC_DQ: also add the sinks' dq terms into the float32 buffer DQACC [B, T, H, D].
    """
    z = tl.program_id(0)                                # the chunks in dim 0 (dims 1, 2 <= 65535)
    hkv = tl.program_id(1)
    s0 = tl.program_id(2) * BLOCK_N
    cpb = tl.cdiv(T, CHUNK)
    bb = (z // cpb).to(tl.int64)
    c = z % cpb
    if IS_VARLEN:
        end = tl.minimum(tl.maximum(tl.load(CU + NSEQ), 0), T).to(tl.int32)
    else:
        end = T
    G: tl.constexpr = H // HKV
    stride_kt: tl.constexpr = HKV * HEAD_DIM
    offs_n = s0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    s_off = offs_n[:, None] * stride_kt + hkv * HEAD_DIM + offs_d[None, :]
    s_mask = (offs_n < M_SINK)[:, None]
    sk = tl.load(SK + s_off, mask=s_mask, other=0.0)
    sv = tl.load(SV + s_off, mask=s_mask, other=0.0)
    dsk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dsv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, end)
    row0 = bb * T * H                                   # lse / delta rows of this batch entry
    for g in range(G):
        h = hkv * G + g
        dsk, dsv = _bwd_dkdv_inner(dsk, dsv, sk, sv, Q + bb * sqb + h.to(tl.int64) * sqh, DO + bb * sdb + h.to(tl.int64) * sdh,
                                   LSE + row0 + h, DELTA + row0 + h, offs_n, lo, hi, 0, qk_scale,
                                   H, HEAD_DIM, BLOCK_M, 2, PREC, DQACC + row0 * HEAD_DIM + h * HEAD_DIM,
                                   ATOMIC_DQ, sqt, sdt)
    out_off = z.to(tl.int64) * M_SINK * stride_kt + s_off
    tl.store(DSK + out_off, dsk * scale, mask=s_mask)
    tl.store(DSV + out_off, dsv, mask=s_mask)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, lo, hi, L, window,
                  qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
                  PREC: tl.constexpr):
    """Accumulate dq (unscaled) over key rows [lo, hi); MASK as in _fwd_inner."""
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
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
        p = tl.math.exp2(s - lse2[:, None])
        if MASK == 1:
            visible = ((offs_n[None, :] <= offs_m[:, None])
                       & (offs_n[None, :] >= offs_m[:, None] - window)
                       & (offs_n[None, :] < L))
            p = tl.where(visible, p, 0.0)
        elif MASK == 2:
            p = tl.where((offs_n < hi)[None, :], p, 0.0)
        elif MASK == 3:
            p = tl.where(offs_n[None, :] >= offs_m[:, None] - window, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq


@triton.jit(do_not_specialize=["T", "NB", "M_SINK", "window"])
def _bwd_dq_kernel(Q, K, V, SK, SV, DO, LSE, DELTA, DQ, CU, TAB, T, NB, M_SINK, window, qk_scale, scale,
                   sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                   H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   IS_VARLEN: tl.constexpr, HAS_SINK: tl.constexpr, PREC: tl.constexpr,
                   FAR_MASK: tl.constexpr):
    # grid (H * NJ,): head fastest, then block slots heaviest first (_block_of)
    h = tl.program_id(0) % H
    n, bos, L, m0 = _block_of(CU, TAB, tl.program_id(0) // H, tl.num_programs(0) // H, NB, T, BLOCK_M,
                              IS_VARLEN, True)
    if IS_VARLEN:   # B == 1, T tokens; bounds clamped into [0, T] (memory-safe on any cu)
        q_in, k_in = bos.to(tl.int64) * sqt, bos.to(tl.int64) * skt
        v_in, d_in = bos.to(tl.int64) * svt, bos.to(tl.int64) * sdt
    else:
        q_in, k_in = n.to(tl.int64) * sqb, n.to(tl.int64) * skb
        v_in, d_in = n.to(tl.int64) * svb, n.to(tl.int64) * sdb
    if m0 < L:
        hkv = h // (H // HKV)
        stride_qt: tl.constexpr = H * HEAD_DIM          # dq (contiguous)
        stride_st: tl.constexpr = HKV * HEAD_DIM        # sinks (contiguous)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        rmask = offs_m < L
        q_off = (bos + offs_m[:, None]).to(tl.int64) * stride_qt + h * HEAD_DIM + offs_d[None, :]
        rows_m = offs_m[:, None].to(tl.int64)
        q = tl.load(Q + q_in + h.to(tl.int64) * sqh + rows_m * sqt + offs_d[None, :], mask=rmask[:, None], other=0.0)
        do = tl.load(DO + d_in + h.to(tl.int64) * sdh + rows_m * sdt + offs_d[None, :], mask=rmask[:, None], other=0.0)
        lse2 = tl.load(LSE + (bos + offs_m).to(tl.int64) * H + h, mask=rmask, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + (bos + offs_m).to(tl.int64) * H + h, mask=rmask, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if HAS_SINK:
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, SK + hkv * HEAD_DIM, SV + hkv * HEAD_DIM,
                               stride_st, stride_st, offs_m, 0, M_SINK, L, window, qk_scale,
                               BLOCK_N, HEAD_DIM, 2, PREC)
        k_base = K + k_in + hkv.to(tl.int64) * skh
        v_base = V + v_in + hkv.to(tl.int64) * svh
        # same key phases as the forward
        hi = tl.minimum(m0 + BLOCK_M, L)
        lo = (tl.maximum(m0 - window, 0) // BLOCK_N) * BLOCK_N
        mid_hi = ((m0 + 1) // BLOCK_N) * BLOCK_N
        mid_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 - window, 0), BLOCK_N) * BLOCK_N
        mid_lo = tl.minimum(tl.maximum(mid_lo, lo), mid_hi)
        # FAR_MASK as in the forward
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, skt, svt, offs_m, lo,
                           mid_lo, L, window, qk_scale, BLOCK_N, HEAD_DIM, FAR_MASK, PREC)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, skt, svt, offs_m, mid_lo,
                           mid_hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 0, PREC)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, skt, svt, offs_m, mid_hi,
                           hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 1, PREC)
        tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=rmask[:, None])

