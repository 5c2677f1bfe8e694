"""Triton sliding-window attention (flash-attention style), forward and backward.

Implements the CUDA kernels of ``sbops::swa_attn`` and ``sbops::swa_attn_bwd`` (see
docs/DESIGN.md): q [B,T,H,D], k/v [B,T,HKV,D] (GQA: query head h reads KV head h // (H//HKV)),
query i attends keys j with ``i - window <= j <= i`` (window < 0: full causal), never across a
``cu_seqlens`` boundary, plus M sink keys/values [M,HKV,D] merged in the same softmax.

Design
------
* Rows are addressed as flattened tokens ``bos + i`` of a ``[B*T]`` token axis; a program gets
  its sequence's ``bos`` (start row) and length ``L`` from ``n*T, T`` or from ``cu_seqlens``.
* Forward: one program per (query head, query block, sequence). It visits only the key blocks
  that intersect the window of its query block, in three phases: the left edge of the window
  (masked), the blocks every row sees completely (no mask), the diagonal (causal mask). Sinks
  are a fourth, first phase over the sink rows. Online softmax in float32 with exp2.
  ``window < 0`` (or a window >= the longest sequence) is run as ``window = max_len``.
* Backward (three launches, a fourth with sinks; no atomics, deterministic):
  1. ``delta = rowsum(dO * O) - grad_lse`` (float32, [B,T,H]);
  2. dK/dV: one program per (KV head, key block, sequence) loops over the G query heads of its
     group and over the query blocks whose window covers its keys; dk/dv of the KV head are
     accumulated in registers, so no races and no float32 side buffers;
  3. dQ: one program per (query head, query block, sequence), visiting key blocks like the
     forward (sinks included);
  4. with sinks, dsink_k/dsink_v: one program per (sink block, KV head, chunk of query rows)
     writes float32 partial sums; the chunks are summed with torch.
  Scores/probabilities are recomputed from the saved lse (natural log) as in FlashAttention-2.
* Configs (block sizes, warps, stages) are data: ``<root>/<backend>/tuning/swa.json`` with
  root = two directories above this file. The dQ kernel uses the backward config with
  BLOCK_M and BLOCK_N swapped (long query block, short key block), like the dK/dV kernel's
  transpose.
* Opt-in config keys (absent/false = the path above, unchanged):
  - ``split_masks`` (fwd and bwd configs): the edge phases apply only the mask they need:
    the window's far edge only ``j >= i - window`` with unmasked loads (forward and dQ); in
    the dK/dV kernel the far edge only window + row bound. The diagonal keeps the full mask:
    a runtime choice between two masked loops made Triton pipeline both, 416 KB of shared
    memory at D=128 (over the H100's 227 KB).
  - ``bwd_atomic_dq`` (bwd config): the dK/dV kernel also computes each tile's dq =
    dS^T K and adds it with float32 atomics into a zeroed [B,T,H,D] buffer (the sink kernel adds
    the sinks' terms); the dQ kernel is skipped (5 matmuls per tile instead of 7), the buffer is
    scaled and cast at the end. Not deterministic (atomic order).
* Runtime sizes (T, window, M, R) are not specialized (``do_not_specialize``): one compiled
  kernel serves every length; alignment comes from the constexpr strides H*D and HKV*D.
"""
from __future__ import annotations

import functools
import json
import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
_SUPPORTED_HEAD_DIMS = (64, 128)
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Query rows per program of the sink-gradient kernel (a multiple of every BLOCK_M we use).
_SINK_CHUNK = 1024


# ----------------------------------------------------------------------------- forward kernels
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m, lo, hi, L, window,
               qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
               PREC: tl.constexpr):
    """Online-softmax update over key rows [lo, hi) of k_base/v_base (row stride stride_kt).

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
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_kt + offs_d[None, :]
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


@triton.jit(do_not_specialize=["T", "M_SINK", "window"])
def _fwd_kernel(Q, K, V, SK, SV, O, LSE, CU, T, M_SINK, window, qk_scale,
                H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IS_VARLEN: tl.constexpr, HAS_SINK: tl.constexpr, PREC: tl.constexpr,
                FAR_MASK: tl.constexpr):
    h = tl.program_id(0)
    # heaviest query blocks (most keys under full causal attention) are scheduled first
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    n = tl.program_id(2)
    if IS_VARLEN:
        bos = tl.load(CU + n).to(tl.int32)
        L = tl.load(CU + n + 1).to(tl.int32) - bos
    else:
        bos = n * T
        L = T
    m0 = pid_m * BLOCK_M
    if m0 < L:
        hkv = h // (H // HKV)
        stride_qt: tl.constexpr = H * HEAD_DIM
        stride_kt: tl.constexpr = HKV * HEAD_DIM
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_mask = (offs_m < L)[:, None]
        q_ptrs = Q + (bos + offs_m[:, None]).to(tl.int64) * stride_qt + h * HEAD_DIM + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_mask, other=0.0)

        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)

        if HAS_SINK:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, SK + hkv * HEAD_DIM, SV + hkv * HEAD_DIM,
                                       stride_kt, offs_m, 0, M_SINK, L, window, qk_scale,
                                       BLOCK_N, HEAD_DIM, 2, PREC)

        k_base = K + bos.to(tl.int64) * stride_kt + hkv * HEAD_DIM
        v_base = V + bos.to(tl.int64) * stride_kt + hkv * HEAD_DIM
        hi = tl.minimum(m0 + BLOCK_M, L)
        lo = (tl.maximum(m0 - window, 0) // BLOCK_N) * BLOCK_N
        # blocks [mid_lo, mid_hi) are seen whole by every row of the query block:
        # they end at or before key m0 (causal) and start at or after key m0+BLOCK_M-1-window.
        mid_hi = ((m0 + 1) // BLOCK_N) * BLOCK_N
        mid_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 - window, 0), BLOCK_N) * BLOCK_N
        mid_lo = tl.minimum(tl.maximum(mid_lo, lo), mid_hi)
        # FAR_MASK: 1, or 3 under split_masks ([lo, mid_lo) ends at or before key m0 + 1 <= L, so
        # its keys are <= every row and in bounds: window mask only, unmasked loads).
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m,
                                   lo, mid_lo, L, window, qk_scale, BLOCK_N, HEAD_DIM, FAR_MASK, PREC)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m,
                                   mid_lo, mid_hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 0, PREC)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m,
                                   mid_hi, hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 1, PREC)

        # rows past L (padding of the last block) may have l = 0; they are not stored.
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        lse = (m_i + tl.math.log2(l_safe)) / 1.4426950408889634
        o_ptrs = O + (bos + offs_m[:, None]).to(tl.int64) * stride_qt + h * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_mask)
        tl.store(LSE + (bos + offs_m).to(tl.int64) * H + h, lse, mask=offs_m < L)


# ---------------------------------------------------------------------------- backward kernels
@triton.jit(do_not_specialize=["R"])
def _bwd_preprocess_kernel(O, DO, GLSE, DELTA, R, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
                           HAS_GLSE: tl.constexpr):
    """delta[r] = sum_d O[r, d] * dO[r, d] - grad_lse[r] over the R = B*T*H rows."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    rmask = offs_r < R
    ptrs = offs_r[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + ptrs, mask=rmask[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=rmask[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_GLSE:
        delta -= tl.load(GLSE + offs_r, mask=rmask, other=0.0).to(tl.float32)
    tl.store(DELTA + offs_r, delta, mask=rmask)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n, lo, hi, window,
                    qk_scale, H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    MASK: tl.constexpr, PREC: tl.constexpr, dq_base, ATOMIC_DQ: tl.constexpr):
    """Accumulate dk/dv of key rows offs_n over query rows [lo, hi) of one query head.

    The pointers are already offset to the head; query rows have stride H*HEAD_DIM and lse/delta
    stride H. Works on transposed tiles (keys x queries). MASK: 0 = all pairs visible and
    rows in bounds; 1 = causal window ``j <= i <= j + window`` and ``i < hi``; 2 = ``i < hi``;
    split_masks only: 4 = window edge ``i <= j + window`` and ``i < hi``.
    ATOMIC_DQ (bwd_atomic_dq): also add this tile's dq (unscaled, float32) into dq_base (rows of
    stride H*HEAD_DIM, like q_base) with atomics.
    """
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q_ptrs = q_base + offs_m[:, None].to(tl.int64) * (H * HEAD_DIM) + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None].to(tl.int64) * (H * HEAD_DIM) + offs_d[None, :]
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


@triton.jit(do_not_specialize=["T", "window"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, T, window, qk_scale, scale, DQACC,
                     H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FAR_MASK: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr):
    hkv = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2)
    if IS_VARLEN:
        bos = tl.load(CU + n).to(tl.int32)
        L = tl.load(CU + n + 1).to(tl.int32) - bos
    else:
        bos = n * T
        L = T
    n0 = pid_n * BLOCK_N
    if n0 < L:
        G: tl.constexpr = H // HKV
        stride_kt: tl.constexpr = HKV * HEAD_DIM
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_off = (bos + offs_n[:, None]).to(tl.int64) * stride_kt + hkv * HEAD_DIM + offs_d[None, :]
        kv_mask = (offs_n < L)[:, None]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
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
            q_base = Q + bos.to(tl.int64) * (H * HEAD_DIM) + h * HEAD_DIM
            do_base = DO + bos.to(tl.int64) * (H * HEAD_DIM) + h * HEAD_DIM
            lse_base = LSE + row0 + h
            delta_base = DELTA + row0 + h
            dq_base = DQACC + bos.to(tl.int64) * (H * HEAD_DIM) + h * HEAD_DIM
            # FAR_MASK: 1, or 4 under split_masks (rows >= mid_hi >= n0 + BLOCK_N when non-empty
            # need no causal mask)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     n0, diag_end, window, qk_scale, H, HEAD_DIM, BLOCK_M, 1, PREC,
                                     dq_base, ATOMIC_DQ)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     diag_end, mid_hi, window, qk_scale, H, HEAD_DIM, BLOCK_M, 0, PREC,
                                     dq_base, ATOMIC_DQ)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n,
                                     mid_hi, hi, window, qk_scale, H, HEAD_DIM, BLOCK_M, FAR_MASK, PREC,
                                     dq_base, ATOMIC_DQ)
        tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=["R", "M_SINK"])
def _bwd_sink_kernel(Q, SK, SV, DO, LSE, DELTA, DSK, DSV, R, M_SINK, qk_scale, scale, DQACC,
                     H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                     PREC: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """Partial dsink_k/dsink_v of sink rows [s0, s0+BLOCK_N) over query rows of one chunk.

    Every query row of every sequence sees every sink, so the R = B*T rows are split into
    chunks without regard to sequences. Output: float32 [num_chunks, M, HKV, D].
    ATOMIC_DQ: also add the sinks' dq terms into the float32 buffer DQACC [B*T, H, D].
    """
    s0 = tl.program_id(0) * BLOCK_N
    hkv = tl.program_id(1)
    c = tl.program_id(2)
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
    hi = tl.minimum(lo + CHUNK, R)
    for g in range(G):
        h = hkv * G + g
        dsk, dsv = _bwd_dkdv_inner(dsk, dsv, sk, sv, Q + h * HEAD_DIM, DO + h * HEAD_DIM,
                                   LSE + h, DELTA + h, offs_n, lo, hi, 0, qk_scale,
                                   H, HEAD_DIM, BLOCK_M, 2, PREC, DQACC + h * HEAD_DIM, ATOMIC_DQ)
    out_off = c.to(tl.int64) * M_SINK * stride_kt + s_off
    tl.store(DSK + out_off, dsk * scale, mask=s_mask)
    tl.store(DSV + out_off, dsv, mask=s_mask)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, lo, hi, L, window,
                  qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
                  PREC: tl.constexpr):
    """Accumulate dq (unscaled) over key rows [lo, hi); MASK as in _fwd_inner."""
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_kt + offs_d[None, :]
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


@triton.jit(do_not_specialize=["T", "M_SINK", "window"])
def _bwd_dq_kernel(Q, K, V, SK, SV, DO, LSE, DELTA, DQ, CU, T, M_SINK, window, qk_scale, scale,
                   H: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   IS_VARLEN: tl.constexpr, HAS_SINK: tl.constexpr, PREC: tl.constexpr,
                   FAR_MASK: tl.constexpr):
    h = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    n = tl.program_id(2)
    if IS_VARLEN:
        bos = tl.load(CU + n).to(tl.int32)
        L = tl.load(CU + n + 1).to(tl.int32) - bos
    else:
        bos = n * T
        L = T
    m0 = pid_m * BLOCK_M
    if m0 < L:
        hkv = h // (H // HKV)
        stride_qt: tl.constexpr = H * HEAD_DIM
        stride_kt: tl.constexpr = HKV * HEAD_DIM
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        rmask = offs_m < L
        q_off = (bos + offs_m[:, None]).to(tl.int64) * stride_qt + h * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_off, mask=rmask[:, None], other=0.0)
        do = tl.load(DO + q_off, mask=rmask[:, None], other=0.0)
        lse2 = tl.load(LSE + (bos + offs_m).to(tl.int64) * H + h, mask=rmask, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + (bos + offs_m).to(tl.int64) * H + h, mask=rmask, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if HAS_SINK:
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, SK + hkv * HEAD_DIM, SV + hkv * HEAD_DIM,
                               stride_kt, offs_m, 0, M_SINK, L, window, qk_scale,
                               BLOCK_N, HEAD_DIM, 2, PREC)
        k_base = K + bos.to(tl.int64) * stride_kt + hkv * HEAD_DIM
        v_base = V + bos.to(tl.int64) * stride_kt + hkv * HEAD_DIM
        # same key phases as the forward
        hi = tl.minimum(m0 + BLOCK_M, L)
        lo = (tl.maximum(m0 - window, 0) // BLOCK_N) * BLOCK_N
        mid_hi = ((m0 + 1) // BLOCK_N) * BLOCK_N
        mid_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 - window, 0), BLOCK_N) * BLOCK_N
        mid_lo = tl.minimum(tl.maximum(mid_lo, lo), mid_hi)
        # FAR_MASK as in the forward
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, lo,
                           mid_lo, L, window, qk_scale, BLOCK_N, HEAD_DIM, FAR_MASK, PREC)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, mid_lo,
                           mid_hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 0, PREC)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, mid_hi,
                           hi, L, window, qk_scale, BLOCK_N, HEAD_DIM, 1, PREC)
        tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=rmask[:, None])


# ------------------------------------------------------------------------------------ configs
_BACKEND_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=None)
def _load_tuning(backend: str) -> dict:
    path = os.path.join(_BACKEND_ROOT, backend, "tuning", "swa.json")
    with open(path) as f:
        return json.load(f)


def default_config(kind: str, head_dim: int, dtype: torch.dtype, backend: str = "cuda") -> dict:
    """The tuned config for ``kind`` ("fwd" or "bwd"): the entry ``d<D>_<dtype>`` if present,
    else ``d<D>``, else ``default``, from ``<root>/<backend>/tuning/swa.json``."""
    table = _load_tuning(backend)[kind]
    dt = str(dtype).replace("torch.", "")
    for key in (f"d{head_dim}_{dt}", f"d{head_dim}", "default"):
        if key in table:
            return dict(table[key])
    raise KeyError(f"swa.json ({backend}) has no {kind} config for head dim {head_dim}")


def _resolve_config(config, kind, head_dim, dtype, backend):
    cfg = default_config(kind, head_dim, dtype, backend)
    if config:
        cfg.update(config)
    for key in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"):
        if key not in cfg:
            raise KeyError(f"swa {kind} config lacks {key}: {cfg}")
    return cfg


# ---------------------------------------------------------------------------------- launchers
def _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"swa_attn: q, k, v must be 4-D [B,T,H,D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    HKV = k.shape[2]
    if D not in _SUPPORTED_HEAD_DIMS:
        raise ValueError(f"swa_attn (triton): head dim {D} is not supported; "
                         f"supported head dims: {_SUPPORTED_HEAD_DIMS}")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"swa_attn (triton): dtype {q.dtype} is not supported; "
                         f"supported: {_SUPPORTED_DTYPES}")
    if k.shape != (B, T, HKV, D) or v.shape != k.shape or HKV == 0 or H % HKV != 0:
        raise ValueError(f"swa_attn: k and v must be [B,T,HKV,D] with H % HKV == 0; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"swa_attn: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if (sink_k is None) != (sink_v is None):
        raise ValueError("swa_attn: sink_k and sink_v must be given together")
    if sink_k is not None:
        if sink_k.dim() != 3 or sink_k.shape[1:] != (HKV, D) or sink_v.shape != sink_k.shape:
            raise ValueError(f"swa_attn: sink_k/sink_v must be [M,HKV,D] = [M,{HKV},{D}], got "
                             f"{tuple(sink_k.shape)}, {tuple(sink_v.shape)}")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"swa_attn: cu_seqlens requires B == 1, got B = {B}")


def _prepare(q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen):
    """Common launch parameters: (N, max_len, window_eff, scale, cu, sinks, M, PREC)."""
    B, T, H, D = q.shape
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        N = cu.numel() - 1
        # the grid needs the longest sequence: one host sync unless the caller passes it
        max_len = int(max_seqlen) if max_seqlen is not None else (
            int((cu[1:] - cu[:-1]).max().item()) if N > 0 else 0)
    else:
        cu = None
        N, max_len = B, T
    # full causal, or a window no sequence can exceed, is the same as window = max_len
    window_eff = max_len if (window < 0 or window > max_len) else int(window)
    scale = D ** -0.5 if scale is None else float(scale)
    if sink_k is not None and sink_k.shape[0] > 0:
        sk, sv, M = sink_k.to(q.dtype).contiguous(), sink_v.to(q.dtype).contiguous(), sink_k.shape[0]
    else:
        sk, sv, M = None, None, 0
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return N, max_len, window_eff, scale, cu, sk, sv, M, prec


def swa_attn_fwd(q, k, v, window, scale, cu_seqlens, sink_k, sink_v, *, config=None,
                 backend="cuda", max_seqlen=None):
    """Forward of ``sbops::swa_attn``: returns (o [B,T,H,D] in q.dtype, lse [B,T,H] float32)."""
    _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, H, D = q.shape
    HKV = k.shape[2]
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen)
    # with cu_seqlens, tokens past cu[-1] belong to no sequence: they get zeros
    alloc = torch.zeros if cu is not None else torch.empty
    o = alloc(q.shape, device=q.device, dtype=q.dtype)
    lse = alloc((B, T, H), device=q.device, dtype=torch.float32)
    if q.numel() == 0 or N == 0:
        return o, lse
    cfg = _resolve_config(config, "fwd", D, q.dtype, backend)
    grid = (H, triton.cdiv(max_len, cfg["BLOCK_M"]), N)
    _fwd_kernel[grid](
        q, k, v, sk if sk is not None else k, sv if sv is not None else v, o, lse,
        cu if cu is not None else q, T, M, window_eff, scale * _LOG2E,
        H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        IS_VARLEN=cu is not None, HAS_SINK=M > 0, PREC=prec,
        FAR_MASK=3 if cfg.get("split_masks", False) else 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o, lse


def _bwd_delta(o, grad_o, grad_lse):
    """delta = rowsum(dO * O) - grad_lse, float32 [B,T,H] (o, grad_o contiguous [B,T,H,D])."""
    B, T, H, D = o.shape
    R = B * T * H
    delta = torch.empty((B, T, H), device=o.device, dtype=torch.float32)
    glse = grad_lse.to(torch.float32).contiguous() if grad_lse is not None else None
    BLOCK_R = 64
    _bwd_preprocess_kernel[(triton.cdiv(R, BLOCK_R),)](
        o, grad_o, glse if glse is not None else delta, delta, R,
        HEAD_DIM=D, BLOCK_R=BLOCK_R, HAS_GLSE=glse is not None)
    return delta


def _launch_dq(q, k, v, sk, sv, grad_o, lse, delta, dq, cu, N, max_len, M, window_eff, scale, prec,
               cfg):
    """dQ kernel: long query block, short key block (the dK/dV config transposed); writes dq."""
    B, T, H, D = q.shape
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    _bwd_dq_kernel[(H, triton.cdiv(max_len, BN), N)](
        q, k, v, sk if sk is not None else k, sv if sv is not None else v, grad_o, lse,
        delta, dq, cu if cu is not None else q, T, M, window_eff, scale * _LOG2E, scale,
        H=H, HKV=k.shape[2], HEAD_DIM=D, BLOCK_M=BN, BLOCK_N=BM, IS_VARLEN=cu is not None,
        HAS_SINK=M > 0, PREC=prec, FAR_MASK=3 if cfg.get("split_masks", False) else 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def swa_attn_bwd_dq(q, k, v, o, lse, grad_o, grad_lse, window, scale, *, backend="cuda"):
    """dq of ``sbops::swa_attn`` alone (no varlen, no sinks): the dQ half of ``swa_attn_bwd``,
    for a backward whose dK/dV come from elsewhere (the sm_90 kernel without its fused dQ)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, lse, grad_o = o.contiguous(), lse.contiguous(), grad_o.to(q.dtype).contiguous()
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, None, None, None, None)
    dq = torch.empty_like(q)
    if q.numel() == 0:
        return dq
    cfg = _resolve_config(None, "bwd", q.shape[-1], q.dtype, backend)
    _launch_dq(q, k, v, sk, sv, grad_o, lse, _bwd_delta(o, grad_o, grad_lse), dq, cu, N, max_len, M,
               window_eff, scale, prec, cfg)
    return dq


def swa_attn_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale, cu_seqlens, sink_k, sink_v,
                 *, config=None, backend="cuda", max_seqlen=None):
    """Backward of ``sbops::swa_attn``: returns (dq, dk, dv, dsink_k, dsink_v).

    dq/dk/dv in the dtypes of q/k/v; dsink_k/dsink_v [M,HKV,D] in the sinks' dtype, or
    ``torch.empty(0)`` without sinks. grad_lse (None = zero) enters through
    ``delta_i = rowsum(dO_i * O_i) - grad_lse_i``.
    """
    _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, lse, grad_o = o.contiguous(), lse.contiguous(), grad_o.to(q.dtype).contiguous()
    B, T, H, D = q.shape
    HKV = k.shape[2]
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if sink_k is not None:
        dsk = torch.zeros_like(sink_k)
        dsv = torch.zeros_like(sink_v)
    else:
        dsk = torch.empty(0, device=q.device, dtype=torch.float32)
        dsv = torch.empty(0, device=q.device, dtype=torch.float32)
    if q.numel() == 0 or N == 0:
        return dq, dk.zero_(), dv.zero_(), dsk, dsv
    if cu is not None:
        # tokens outside every sequence (cu[-1] < T) get no gradient
        dq.zero_(), dk.zero_(), dv.zero_()
    cfg = _resolve_config(config, "bwd", D, q.dtype, backend)
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    split = bool(cfg.get("split_masks", False))
    atomic_dq = bool(cfg.get("bwd_atomic_dq", False))
    # bwd_atomic_dq: dq accumulates unscaled in float32 (zeros: rows outside every sequence
    # stay 0) through atomics of the dK/dV (and sink) kernels; no dQ kernel
    dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic_dq else dq

    delta = _bwd_delta(o, grad_o, grad_lse)
    qk_scale = scale * _LOG2E
    cu_arg = cu if cu is not None else q
    _bwd_dkdv_kernel[(HKV, triton.cdiv(max_len, BN), N)](
        q, k, v, grad_o, lse, delta, dk, dv, cu_arg, T, window_eff, qk_scale, scale, dq_acc,
        H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, IS_VARLEN=cu is not None,
        PREC=prec, FAR_MASK=4 if split else 1, ATOMIC_DQ=atomic_dq, **launch)
    if not atomic_dq:
        _launch_dq(q, k, v, sk, sv, grad_o, lse, delta, dq, cu, N, max_len, M, window_eff, scale, prec,
                   cfg)
    if M > 0:
        rows = B * T
        n_chunks = triton.cdiv(rows, _SINK_CHUNK)
        part_k = torch.empty((n_chunks, M, HKV, D), device=q.device, dtype=torch.float32)
        part_v = torch.empty_like(part_k)
        # rows outside every sequence (cu[-1] < B*T) must not contribute: bound R by cu[-1]
        used_rows = rows if cu is None else int(cu_seqlens[-1])
        # sink rows play the keys of the dK/dV kernel: same block shapes
        _bwd_sink_kernel[(triton.cdiv(M, BN), HKV, n_chunks)](
            q, sk, sv, grad_o, lse, delta, part_k, part_v, used_rows, M, qk_scale, scale,
            dq_acc, H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, CHUNK=_SINK_CHUNK,
            PREC=prec, ATOMIC_DQ=atomic_dq, **launch)
        dsk = part_k.sum(0).to(sink_k.dtype)
        dsv = part_v.sum(0).to(sink_v.dtype)
    if atomic_dq:
        dq = dq_acc.mul_(scale).to(q.dtype)
    return dq, dk, dv, dsk, dsv
