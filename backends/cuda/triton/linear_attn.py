"""Chunked gated linear attention (GLA family) in Triton: forward and backward, GQA-native, varlen.

Math (SPEC section 1), per sequence and KV head, query heads h on that KV head:
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        o_t[h] = scale * q_t[h] S_t

Chunked algorithm (chunk of BT tokens, sub-blocks of SUB = 16 rows inside a chunk):
  gc_t   cumulative gate from the chunk start (float32, inclusive), G = gc at the chunk's last row.
  h_c    state before chunk c (stored per chunk and per *KV head*, never per query head).
  state pass:  h_{c+1} = diag(exp(G)) h_c + (k * exp(G - gc))^T v
  output pass: o_t = scale * [(q_t * exp(gc_t)) h_c + sum_{s<=t in chunk} (q_t . k_s exp(gc_t - gc_s)) v_s]
Every exponent used is <= 0 (a difference "later minus earlier" of a non-increasing cumulative
gate), so strong decay (g ~ -20 per step) or long sequences never overflow:
  * per-key gate, sub-block i after sub-block j: factor through the boundary row r between them,
    q_t exp(gc_t - gc_r) and k_s exp(gc_r - gc_s), both factors <= 1, then one matmul;
  * diagonal 16x16 sub-blocks: exp(gc_t - gc_s) elementwise, masked to s <= t before the exp;
  * per-head gate / no gate: the decay is one number per (t, s), applied to the [16, BT] score block.

Backward (dh pass in reverse, then one kernel per (sub-block, chunk, KV head)):
  dh_c = gradient w.r.t. the state at the end of chunk c:  dh_{c-1} = diag(exp(G_c)) dh_c + sum_h scale (q exp(gc))^T dO
  dq, dk, dv from the per-chunk h and dh plus the intra-chunk terms (same factorisation as forward).
  Gate gradient: with b_t the cumulative gate, d b_t = sum_h q_t[h] * dq_t[h] - k_t * dk_t, and
  dg_s = sum_{t >= s in its chunk} d b_t + rowsum(dh_c * S_end_c) (the chunk seen as a sequence
  of its own), so no sum of d b runs over the whole sequence.

State passes: sequential over the chunks of a sequence by default; config key "h_seg" = S > 0
selects a two-level pass (segments of S chunks in parallel from zero, a short sequential carry over
the segments, then a parallel fix-up of every chunk's state) for both h and dh, same outputs.

Everything runs on packed tokens: a batch [B, T] is treated as B sequences of length T (varlen
with cu_seqlens = 0, T, 2T, ...), so there is one code path.
"""
from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

_SUB = 16  # rows of an intra-chunk sub-block (the smallest tl.dot M/N/K)
SUB = tl.constexpr(_SUB)
_SUPPORTED_DIMS = (64, 128)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_GATE_NONE, _GATE_HEAD, _GATE_KEY = 0, 1, 2
_GATE_NAMES = {_GATE_NONE: "none", _GATE_HEAD: "head", _GATE_KEY: "key"}


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    # PREC is "ieee" for float32 inputs (exact fp32 products, no tf32) and "tf32" otherwise
    # (ignored for 16-bit operands, which always use the tensor cores).
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _gate_rows(gc_ptr, rows, t_last, kvh, offs_k, HKV, K: tl.constexpr,
               GATE: tl.constexpr):
    """Cumulative gate of a block of rows: [R, BK] per key, [R, 1] per head, zeros without gate.
    Rows past the chunk end are clamped to its last row, so padded rows repeat G and every
    exponent built from them stays <= 0 (their q/k/v/dO are loaded as zeros anyway)."""
    r = tl.minimum(rows, t_last).to(tl.int64)
    if GATE == 2:
        x = tl.load(gc_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :])
    elif GATE == 1:
        x = tl.load(gc_ptr + r * HKV + kvh)[:, None]
    else:
        x = tl.zeros_like(r)[:, None].to(tl.float32)
    return x


@triton.jit
def _gate_row(gc_ptr, row, kvh, offs_k, valid, HKV, K: tl.constexpr,
              GATE: tl.constexpr):
    """Cumulative gate at one token: [BK] per key, [1] per head or without gate (0 if not valid)."""
    r = row.to(tl.int64)
    if GATE == 2:
        x = tl.load(gc_ptr + (r * HKV + kvh) * K + offs_k, mask=(offs_k >= 0) & valid, other=0.0)
    elif GATE == 1:
        z = tl.zeros([1], dtype=tl.int64)
        x = tl.load(gc_ptr + r * HKV + kvh + z, mask=(z == 0) & valid, other=0.0)
    else:
        x = tl.zeros([1], dtype=tl.float32)
    return x


# ----------------------------------------------------------------------------- gate cumsum
@triton.jit
def _gate_cumsum_kernel(g_ptr, gc_ptr, chunk_ptr, HKV, K: tl.constexpr,
                        BT: tl.constexpr, GATE: tl.constexpr):
    """gc = inclusive cumulative sum of g inside each chunk, float32. grid (NT, HKV)."""
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    t0 = tl.load(chunk_ptr + c * 3 + 1)
    t1 = tl.load(chunk_ptr + c * 3 + 2)
    rows = t0 + tl.arange(0, BT)
    m = rows < t1
    r = rows.to(tl.int64)
    if GATE == 2:
        offs_k = tl.arange(0, K)
        p = (r[:, None] * HKV + kvh) * K + offs_k[None, :]
        x = tl.load(g_ptr + p, mask=m[:, None], other=0.0).to(tl.float32)
        tl.store(gc_ptr + p, tl.cumsum(x, 0), mask=m[:, None])
    else:
        p = r * HKV + kvh
        x = tl.load(g_ptr + p, mask=m, other=0.0).to(tl.float32)
        tl.store(gc_ptr + p, tl.cumsum(x, 0), mask=m)


@triton.jit
def _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, rows, t1, kvh, offs_k, offs_v, HKV, K: tl.constexpr,
                  V: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """One chunk of the forward state recurrence on a [BK, BV] tile (rows < t1 of the chunk):
    b <- exp(G) b + (k exp(G - gc))^T v. Returns (b, G), G the chunk's log decay per key row
    (zeros without a gate)."""
    dt: tl.constexpr = k_ptr.dtype.element_ty
    m = rows < t1
    r = rows.to(tl.int64)
    kt = tl.load(k_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :], mask=m[:, None], other=0.0)
    vt = tl.load(v_ptr + (r[:, None] * HKV + kvh) * V + offs_v[None, :], mask=m[:, None], other=0.0)
    if GATE > 0:
        gcb = _gate_rows(gc_ptr, rows, t1 - 1, kvh, offs_k, HKV, K, GATE)
        G = _gate_row(gc_ptr, t1 - 1, kvh, offs_k, True, HKV, K, GATE)
        kt = (kt.to(tl.float32) * tl.exp(G[None, :] - gcb)).to(dt)   # exp(G - gc_t) <= 1
        b = b * tl.exp(G)[:, None]
    else:
        G = tl.zeros([BK], dtype=tl.float32)
    b += _dot(tl.trans(kt), vt, PREC)
    return b, G


@triton.jit
def _dh_chunk_step(b, q_ptr, do_ptr, gc_ptr, rows, t1, kvh, offs_k, offs_v, scale, H, HKV,
                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr,
                   PREC: tl.constexpr):
    """One chunk of the backward dh recurrence on a [BK, BV] tile, summed over the KV head's query
    heads: b <- exp(G) b + sum_h (scale q_h exp(gc))^T dO_h. Returns (b, G) as _h_chunk_step."""
    dt: tl.constexpr = q_ptr.dtype.element_ty
    GRP = H // HKV
    m = rows < t1
    r = rows.to(tl.int64)
    if GATE > 0:
        gcb = _gate_rows(gc_ptr, rows, t1 - 1, kvh, offs_k, HKV, K, GATE)
        G = _gate_row(gc_ptr, t1 - 1, kvh, offs_k, True, HKV, K, GATE)
        b = b * tl.exp(G)[:, None]
        qdec = tl.exp(gcb) * scale
    else:
        G = tl.zeros([BK], dtype=tl.float32)
    for hh in range(GRP):
        ih = kvh * GRP + hh
        qt = tl.load(q_ptr + (r[:, None] * H + ih) * K + offs_k[None, :], mask=m[:, None], other=0.0)
        if GATE > 0:
            qt = (qt.to(tl.float32) * qdec).to(dt)
        else:
            qt = (qt.to(tl.float32) * scale).to(dt)
        dot_ = tl.load(do_ptr + (r[:, None] * H + ih) * V + offs_v[None, :], mask=m[:, None], other=0.0)
        b += _dot(tl.trans(qt), dot_.to(dt), PREC)
    return b, G


# ------------------------------------------------------------------------------ state pass
@triton.jit
def _fwd_h_kernel(k_ptr, v_ptr, gc_ptr, h_ptr, h0_ptr, ht_ptr, cu_ptr, coff_ptr,
                  HKV, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr,
                  PREC: tl.constexpr):
    """Per-chunk states h[c] (state before chunk c) and the final state. grid (NK*NV, HKV, N).
    Each program owns a [BK, BV] tile of one KV head's state (rows of the state decay
    independently, so K and V tiles never interact) and walks its sequence's chunks in order."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    n = tl.program_id(2)
    bos = tl.load(cu_ptr + n).to(tl.int32)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    c0 = tl.load(coff_ptr + n).to(tl.int32)
    nc = tl.load(coff_ptr + n + 1).to(tl.int32) - c0
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    state_base = (n.to(tl.int64) * HKV + kvh) * K * V
    if HAS_H0:
        b = tl.load(h0_ptr + state_base + tile).to(tl.float32)
    else:
        b = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(nc):
        t0 = bos + c * BT
        t1 = tl.minimum(t0 + BT, eos)
        tl.store(h_ptr + ((c0 + c).to(tl.int64) * HKV + kvh) * K * V + tile, b.to(h_ptr.dtype.element_ty))
        b, _ = _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                             HKV, K, V, BK, GATE, PREC)
    tl.store(ht_ptr + state_base + tile, b)


# ---------------------------------------------- two-level (segmented) state pass, opt-in
# Selected by the config key "h_seg" = S > 0 (absent or 0: the sequential pass above). Each
# sequence's chunks are cut into segments of S chunks (the last one may be shorter; segments never
# cross a sequence boundary). Forward:
#   pass 1 (_fwd_h_seg_kernel, parallel over segments x tiles): from a zero state, the local state
#          before every chunk of the segment but its first (stored in h), the local end state
#          (hs[seg], float32), the segment's log decay D = sum of G over its chunks (dseg) and,
#          per chunk, the log decay from the segment start to the chunk start (dcum);
#   pass 2 (_seg_carry_kernel, sequential over the segments of a sequence only):
#          H_start(s+1) = exp(D_s) H_start(s) + local_end(s), from the initial state (or 0);
#          H_start overwrites hs in place, the last value is the final state;
#   pass 3 (_seg_fix_kernel, parallel over chunks x tiles): h_c = local_c + exp(dcum_c) H_start(seg).
# Backward dh: the same three passes walking the chunks / segments in reverse, dcum_c being the
# log decay from the end of chunk c to the end of its segment. All decays are sums of G <= 0.
@triton.jit
def _fwd_h_seg_kernel(k_ptr, v_ptr, gc_ptr, h_ptr, hs_ptr, dseg_ptr, dcum_ptr, cu_ptr, seg_ptr,
                      HKV, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Pass 1 of the segmented state pass. grid (NK*NV, HKV, NSEG); seg rows (seq, first chunk,
    chunk count, first token)."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    sg = tl.program_id(2)
    n = tl.load(seg_ptr + sg * 4)
    cf = tl.load(seg_ptr + sg * 4 + 1)
    ns = tl.load(seg_ptr + sg * 4 + 2)
    tf = tl.load(seg_ptr + sg * 4 + 3)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    b = tl.zeros([BK, BV], dtype=tl.float32)
    dsum = tl.zeros([BK], dtype=tl.float32)
    for i in range(ns):
        c = (cf + i).to(tl.int64)
        t0 = tf + i * BT
        t1 = tl.minimum(t0 + BT, eos)
        # the first chunk's local state is zero: pass 3 writes H_start there without reading h
        tl.store(h_ptr + (c * HKV + kvh) * K * V + tile, b.to(h_ptr.dtype.element_ty), mask=(tile >= 0) & (i > 0))
        if GATE > 0:
            tl.store(dcum_ptr + (c * HKV + kvh) * K + offs_k, dsum, mask=(offs_k >= 0) & (i > 0) & (iv == 0))
        b, G = _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                             HKV, K, V, BK, GATE, PREC)
        dsum += G
    sgo = sg.to(tl.int64) * HKV + kvh
    tl.store(hs_ptr + sgo * K * V + tile, b)
    if GATE > 0:
        tl.store(dseg_ptr + sgo * K + offs_k, dsum, mask=(offs_k >= 0) & (iv == 0))


@triton.jit
def _seg_carry_kernel(hs_ptr, dseg_ptr, s0_ptr, st_ptr, segoff_ptr, HKV, K: tl.constexpr, V: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_S0: tl.constexpr,
                      STORE_ST: tl.constexpr, REVERSE: tl.constexpr):
    """Pass 2: carry the true state across the segments of sequence n, in place in hs (local end
    state in, true start state out; reversed: local start in, true end out). Stores the last carry
    (final state forward, initial-state gradient reversed). grid (NK*NV, HKV, N)."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    n = tl.program_id(2)
    s_a = tl.load(segoff_ptr + n).to(tl.int32)
    ns = tl.load(segoff_ptr + n + 1).to(tl.int32) - s_a
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    state_base = (n.to(tl.int64) * HKV + kvh) * K * V
    if HAS_S0:
        b = tl.load(s0_ptr + state_base + tile).to(tl.float32)
    else:
        b = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(ns):
        if REVERSE:
            sg = s_a + ns - 1 - i
        else:
            sg = s_a + i
        sgo = sg.to(tl.int64) * HKV + kvh
        p = hs_ptr + sgo * K * V + tile
        loc = tl.load(p)
        tl.store(p, b)
        if GATE > 0:
            b = b * tl.exp(tl.load(dseg_ptr + sgo * K + offs_k))[:, None]
        b += loc
    if STORE_ST:
        tl.store(st_ptr + state_base + tile, b)


@triton.jit
def _seg_fix_kernel(h_ptr, hs_ptr, dcum_ptr, chunk_ptr, coff_ptr, segoff_ptr, S, HKV,
                    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    GATE: tl.constexpr, HAS_S0: tl.constexpr, REVERSE: tl.constexpr):
    """Pass 3: h_c = local_c + exp(dcum_c) * carry(seg) for chunk c, in place in h (float32 math,
    stored in h's dtype). grid (NK*NV, HKV, NT)."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    c = tl.program_id(2)
    n = tl.load(chunk_ptr + c * 3)
    c0 = tl.load(coff_ptr + n).to(tl.int32)
    nc = tl.load(coff_ptr + n + 1).to(tl.int32) - c0
    s_a = tl.load(segoff_ptr + n).to(tl.int32)
    ns = tl.load(segoff_ptr + n + 1).to(tl.int32) - s_a
    cl = c - c0
    sl = cl // S
    j = cl % S
    if REVERSE:
        fresh = (j == S - 1) | (cl == nc - 1)      # first chunk walked: local dh is zero
        carried = sl < ns - 1                      # else the carry is zero unless given (dht)
    else:
        fresh = j == 0                             # local state is zero
        carried = sl > 0                           # else the carry is zero unless given (h0)
    if HAS_S0:
        carried = carried | (sl >= 0)
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    sgo = (s_a + sl).to(tl.int64) * HKV + kvh
    p = h_ptr + (c.to(tl.int64) * HKV + kvh) * K * V + tile
    need = (tile >= 0) & (fresh | carried)         # nothing to do: h_c = local_c already
    hst = tl.load(hs_ptr + sgo * K * V + tile, mask=need, other=0.0)
    loc = tl.load(p, mask=need & (fresh == 0), other=0.0).to(tl.float32)
    if GATE > 0:
        dc = tl.load(dcum_ptr + (c.to(tl.int64) * HKV + kvh) * K + offs_k, mask=(offs_k >= 0) & (fresh == 0),
                     other=0.0)
        hst = hst * tl.exp(dc)[:, None]
    tl.store(p, (loc + hst).to(h_ptr.dtype.element_ty), mask=need)


# ------------------------------------------------------- diagonal sub-blocks, per-key gate
# Inside a 16-row sub-block every pair t > s is split once, at the level M (8, 4, 2, 1) where
# t and s fall in the upper / lower half of the same aligned group of 2M rows. Through the last
# lower row rr of that group, exp(gc_t - gc_s) = exp(gc_t - gc_rr) * exp(gc_rr - gc_s), both
# factors <= 1, so each level is one small matmul instead of a [16, 16, K] elementwise product.
@triton.jit
def _level_factor(gc_ptr, gc_j, r0, t1, kvh, offs_k, M: tl.constexpr, HKV, K: tl.constexpr,
                  GATE: tl.constexpr):
    """[SUB, BK]: exp(gc_t - gc_rr) on upper rows, exp(gc_rr - gc_s) on lower rows (level M)."""
    ar = tl.arange(0, SUB)
    rr = (ar // (2 * M)) * (2 * M) + M - 1
    up = (ar % (2 * M)) >= M
    gref = _gate_rows(gc_ptr, r0 + rr, t1 - 1, kvh, offs_k, HKV, K, GATE)
    return tl.exp(tl.where(up[:, None], gc_j - gref, gref - gc_j))


@triton.jit
def _level_operands(qs, kf32, f, M: tl.constexpr, dt: tl.constexpr):
    """Level-M operands: (q * factor on upper rows, k * factor on lower rows, pair mask [SUB, SUB])."""
    ar = tl.arange(0, SUB)
    up = (ar % (2 * M)) >= M
    qf = tl.where(up[:, None], qs * f, 0.0).to(dt)
    kf = tl.where(up[:, None], 0.0, kf32 * f).to(dt)
    pm = up[:, None] & ((ar[None, :] % (2 * M)) < M) & ((ar[:, None] // (2 * M)) == (ar[None, :] // (2 * M)))
    return qf, kf, pm


@triton.jit
def _diag_scores(qs, kf32, f8, f4, f2, f1, dt: tl.constexpr, PREC: tl.constexpr):
    """A[t, s] = sum_k qs_t k_s exp(gc_t - gc_s) for s <= t inside one sub-block."""
    ar = tl.arange(0, SUB)
    a = tl.where(ar[:, None] == ar[None, :], tl.sum(qs * kf32, 1)[:, None], 0.0)
    qf, kf, pm = _level_operands(qs, kf32, f8, 8, dt)
    a += tl.where(pm, _dot(qf, tl.trans(kf), PREC), 0.0)
    qf, kf, pm = _level_operands(qs, kf32, f4, 4, dt)
    a += tl.where(pm, _dot(qf, tl.trans(kf), PREC), 0.0)
    qf, kf, pm = _level_operands(qs, kf32, f2, 2, dt)
    a += tl.where(pm, _dot(qf, tl.trans(kf), PREC), 0.0)
    qf, kf, pm = _level_operands(qs, kf32, f1, 1, dt)
    a += tl.where(pm, _dot(qf, tl.trans(kf), PREC), 0.0)
    return a


@triton.jit
def _diag_bwd_level(qs, kf32, dd, f, M: tl.constexpr, a, dq, dk, dt: tl.constexpr, PREC: tl.constexpr):
    """Level-M share of the diagonal sub-block: scores a (for dv), dq (unscaled) and dk."""
    qf, kf, pm = _level_operands(qs, kf32, f, M, dt)
    up = (tl.arange(0, SUB) % (2 * M)) >= M
    a += tl.where(pm, _dot(qf, tl.trans(kf), PREC), 0.0)
    ddm = tl.where(pm, dd, 0.0).to(dt)
    dq += tl.where(up[:, None], f, 0.0) * _dot(ddm, kf, PREC)
    dk += tl.where(up[:, None], 0.0, f) * _dot(tl.trans(ddm), qf, PREC)
    return a, dq, dk


# ----------------------------------------------------------------------------- output pass
@triton.jit
def _fwd_o_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, o_ptr, chunk_ptr, scale, H, HKV,
                  K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr,
                  PREC: tl.constexpr):
    """o for the 16 rows of sub-block i of chunk c, for every query head of KV head kvh.
    grid (BT // SUB, NT, HKV). The gate factors (all the exps) and h[c] depend only on the KV
    head, so they are computed / loaded once and reused by the H/HKV query heads."""
    GRP = H // HKV
    i = tl.program_id(0)
    c = tl.program_id(1)
    kvh = tl.program_id(2)
    t0 = tl.load(chunk_ptr + c * 3 + 1)
    t1 = tl.load(chunk_ptr + c * 3 + 2)
    dt: tl.constexpr = k_ptr.dtype.element_ty
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    r0 = t0 + i * SUB
    rows = r0 + tl.arange(0, SUB)
    m = rows < t1
    r = rows.to(tl.int64)
    rc = t0 + tl.arange(0, BT)
    mc = rc < t1
    rc64 = rc.to(tl.int64)
    k_c = tl.load(k_ptr + (rc64[:, None] * HKV + kvh) * K + offs_k[None, :], mask=mc[:, None], other=0.0)
    v_c = tl.load(v_ptr + (rc64[:, None] * HKV + kvh) * V + offs_v[None, :], mask=mc[:, None], other=0.0)
    hb = tl.load(h_ptr + (c.to(tl.int64) * HKV + kvh) * K * V + offs_k[:, None] * V + offs_v[None, :]).to(dt)
    gc_c = _gate_rows(gc_ptr, rc, t1 - 1, kvh, offs_k, HKV, K, GATE)
    gci = _gate_rows(gc_ptr, rows, t1 - 1, kvh, offs_k, HKV, K, GATE)
    qdec = tl.exp(gci)                                  # inter-chunk factor exp(gc_t) (1 without gate)
    if GATE == 2:
        # earlier sub-blocks (columns < r0), factored through row r0 - 1
        ref = _gate_row(gc_ptr, tl.minimum(r0 - 1, t1 - 1), kvh, offs_k, i > 0, HKV, K, GATE)
        qo_f = tl.exp(gci - ref[None, :])
        ko = (k_c.to(tl.float32) *
              tl.exp(tl.where(rc[:, None] < r0, ref[None, :] - gc_c, float("-inf")))).to(dt)
        k_i = tl.load(k_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        v_i = tl.load(v_ptr + (r[:, None] * HKV + kvh) * V + offs_v[None, :], mask=m[:, None], other=0.0)
        f8 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 8, HKV, K, GATE)
        f4 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 4, HKV, K, GATE)
        f2 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 2, HKV, K, GATE)
        f1 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 1, HKV, K, GATE)
    else:
        # per-(t, s) decay of the [SUB, BT] score block, causal mask included
        causal = rc[None, :] <= rows[:, None]
        e = tl.exp(tl.where(causal, gci - tl.trans(gc_c), float("-inf")))
    for hh in range(GRP):
        ih = kvh * GRP + hh
        qs = tl.load(q_ptr + (r[:, None] * H + ih) * K + offs_k[None, :], mask=m[:, None], other=0.0)
        qs = qs.to(tl.float32) * scale
        acc = _dot((qs * qdec).to(dt), hb, PREC)                           # (q exp(gc)) h_c
        if GATE == 2:
            a = _dot((qs * qo_f).to(dt), tl.trans(ko), PREC)               # [SUB, BT]
            acc += _dot(a.to(dt), v_c, PREC)
            d = _diag_scores(qs, k_i, f8, f4, f2, f1, dt, PREC)
            acc += _dot(d.to(dt), v_i, PREC)
        else:
            a = _dot(qs.to(dt), tl.trans(k_c), PREC) * e
            acc += _dot(a.to(dt), v_c, PREC)
        tl.store(o_ptr + (r[:, None] * H + ih) * V + offs_v[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=m[:, None])


# ------------------------------------------------------------------------- backward dh pass
@triton.jit
def _bwd_dh_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, dht_ptr, dh0_ptr, cu_ptr, coff_ptr, scale,
                   H, HKV, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                   HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """dh[c] = gradient w.r.t. the state at the end of chunk c, walking chunks backwards; sums the
    H/HKV query heads of the KV head. Ends with the initial-state gradient. grid (NK*NV, HKV, N)."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    n = tl.program_id(2)
    bos = tl.load(cu_ptr + n).to(tl.int32)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    c0 = tl.load(coff_ptr + n).to(tl.int32)
    nc = tl.load(coff_ptr + n + 1).to(tl.int32) - c0
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    state_base = (n.to(tl.int64) * HKV + kvh) * K * V
    if HAS_DHT:
        b = tl.load(dht_ptr + state_base + tile).to(tl.float32)
    else:
        b = tl.zeros([BK, BV], dtype=tl.float32)
    for ci in range(nc):
        c = nc - 1 - ci
        t0 = bos + c * BT
        t1 = tl.minimum(t0 + BT, eos)
        tl.store(dh_ptr + ((c0 + c).to(tl.int64) * HKV + kvh) * K * V + tile, b.to(dh_ptr.dtype.element_ty))
        b, _ = _dh_chunk_step(b, q_ptr, do_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                              scale, H, HKV, K, V, BK, GATE, PREC)
    if STORE_DH0:
        tl.store(dh0_ptr + state_base + tile, b)


@triton.jit
def _bwd_dh_seg_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, hs_ptr, dseg_ptr, dcum_ptr, cu_ptr, seg_ptr, scale,
                       H, HKV, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                       PREC: tl.constexpr):
    """Pass 1 of the segmented dh pass (see _fwd_h_seg_kernel): walks the segment's chunks backwards
    from a zero gradient; local dh of every chunk but the segment's last into dh, the local gradient
    at the segment start into hs, log decays into dseg / dcum (dcum_c: from the end of chunk c to
    the end of the segment). grid (NK*NV, HKV, NSEG)."""
    NV: tl.constexpr = V // BV
    ik = tl.program_id(0) // NV
    iv = tl.program_id(0) % NV
    kvh = tl.program_id(1)
    sg = tl.program_id(2)
    n = tl.load(seg_ptr + sg * 4)
    cf = tl.load(seg_ptr + sg * 4 + 1)
    ns = tl.load(seg_ptr + sg * 4 + 2)
    tf = tl.load(seg_ptr + sg * 4 + 3)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    b = tl.zeros([BK, BV], dtype=tl.float32)
    dsum = tl.zeros([BK], dtype=tl.float32)
    for ci in range(ns):
        i = ns - 1 - ci
        c = (cf + i).to(tl.int64)
        t0 = tf + i * BT
        t1 = tl.minimum(t0 + BT, eos)
        tl.store(dh_ptr + (c * HKV + kvh) * K * V + tile, b.to(dh_ptr.dtype.element_ty), mask=(tile >= 0) & (ci > 0))
        if GATE > 0:
            tl.store(dcum_ptr + (c * HKV + kvh) * K + offs_k, dsum, mask=(offs_k >= 0) & (ci > 0) & (iv == 0))
        b, G = _dh_chunk_step(b, q_ptr, do_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                              scale, H, HKV, K, V, BK, GATE, PREC)
        dsum += G
    sgo = sg.to(tl.int64) * HKV + kvh
    tl.store(hs_ptr + sgo * K * V + tile, b)
    if GATE > 0:
        tl.store(dseg_ptr + sgo * K + offs_k, dsum, mask=(offs_k >= 0) & (iv == 0))


# ---------------------------------------------------------------------- backward main kernel
@triton.jit
def _bwd_dq_state_kernel(do_ptr, h_ptr, gc_ptr, out_ptr, chunk_ptr, H, HKV, K: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """The inter-chunk term of dq, exp(gc_t) * dO_t h_c^T (before the scale), for the BT rows of chunk
    c and query head ih, into a float32 [rows, H, K] buffer; grid (NT, H).  V is walked in BV tiles,
    so only a [K, BV] state tile is staged at a time: used when _bwd_main_kernel cannot also hold a
    whole [K, V] state tile within the shared memory (config "dq_state_kernel", MACA's 64 KB)."""
    c = tl.program_id(0)
    ih = tl.program_id(1)
    kvh = ih // (H // HKV)
    t0 = tl.load(chunk_ptr + c * 3 + 1)
    t1 = tl.load(chunk_ptr + c * 3 + 2)
    dt: tl.constexpr = h_ptr.dtype.element_ty
    offs_k = tl.arange(0, K)
    rc = t0 + tl.arange(0, BT)
    mc = rc < t1
    rc64 = rc.to(tl.int64)
    state_base = (c.to(tl.int64) * HKV + kvh) * K * V
    acc = tl.zeros([BT, K], dtype=tl.float32)
    for v0 in range(0, V, BV):
        offs_v = v0 + tl.arange(0, BV)
        do_t = tl.load(do_ptr + (rc64[:, None] * H + ih) * V + offs_v[None, :], mask=mc[:, None], other=0.0).to(dt)
        h_t = tl.load(h_ptr + state_base + offs_k[:, None] * V + offs_v[None, :])
        acc += _dot(do_t, tl.trans(h_t), PREC)
    acc = acc * tl.exp(_gate_rows(gc_ptr, rc, t1 - 1, kvh, offs_k, HKV, K, GATE))
    tl.store(out_ptr + (rc64[:, None] * H + ih) * K + offs_k[None, :], acc, mask=mc[:, None])


@triton.jit
def _bwd_main_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, dh_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
                     db_ptr, chunk_ptr, dqs_ptr, scale,
                     H, HKV, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                     DQ_STATE_EXT: tl.constexpr = False):
    """dq (per query head), dk, dv (summed over the query heads of the KV head) and the local gate
    gradient d b for the 16 rows of sub-block j of chunk c. grid (BT // SUB, NT, HKV).
    Everything a program writes lives in its own 16 rows, so no atomics and no placement."""
    GRP = H // HKV
    j = tl.program_id(0)
    c = tl.program_id(1)
    kvh = tl.program_id(2)
    t0 = tl.load(chunk_ptr + c * 3 + 1)
    t1 = tl.load(chunk_ptr + c * 3 + 2)
    dt: tl.constexpr = k_ptr.dtype.element_ty
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    ar = tl.arange(0, SUB)
    r0 = t0 + j * SUB
    rows = r0 + ar
    m = rows < t1
    r = rows.to(tl.int64)
    rc = t0 + tl.arange(0, BT)
    mc = rc < t1
    rc64 = rc.to(tl.int64)
    end_j = tl.minimum(r0 + SUB, t1) - 1          # last valid row of this sub-block
    k_j = tl.load(k_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :], mask=m[:, None], other=0.0)
    v_j = tl.load(v_ptr + (r[:, None] * HKV + kvh) * V + offs_v[None, :], mask=m[:, None], other=0.0)
    k_c = tl.load(k_ptr + (rc64[:, None] * HKV + kvh) * K + offs_k[None, :], mask=mc[:, None], other=0.0)
    v_c = tl.load(v_ptr + (rc64[:, None] * HKV + kvh) * V + offs_v[None, :], mask=mc[:, None], other=0.0)
    gc_j = _gate_rows(gc_ptr, rows, t1 - 1, kvh, offs_k, HKV, K, GATE)
    gc_c = _gate_rows(gc_ptr, rc, t1 - 1, kvh, offs_k, HKV, K, GATE)
    G = _gate_row(gc_ptr, t1 - 1, kvh, offs_k, True, HKV, K, GATE)
    k_jf = k_j.to(tl.float32)
    state_base = (c.to(tl.int64) * HKV + kvh) * K * V
    state_tile = offs_k[:, None] * V + offs_v[None, :]

    # inter-chunk terms through dh (head independent): S_end = exp(G) h_c + (k exp(G - gc))^T v
    dhb = tl.load(dh_ptr + state_base + state_tile).to(dt)
    if GATE > 0:
        dec_j = tl.exp(G[None, :] - gc_j)
        dv_j = _dot((k_jf * dec_j).to(dt), dhb, PREC)
        dk_j = _dot(v_j, tl.trans(dhb), PREC) * dec_j
    else:
        dv_j = _dot(k_j, dhb, PREC)
        dk_j = _dot(v_j, tl.trans(dhb), PREC)

    if GATE == 2:
        # factors for the off-diagonal sub-blocks (all exponents <= 0):
        # rows before r0 (for dq), factored through row r0 - 1 ...
        ref_lo = _gate_row(gc_ptr, tl.minimum(r0 - 1, t1 - 1), kvh, offs_k, j > 0, HKV, K, GATE)
        kk_lo = (k_c.to(tl.float32) *
                 tl.exp(tl.where(rc[:, None] < r0, ref_lo[None, :] - gc_c, float("-inf")))).to(dt)
        qf_j = tl.exp(gc_j - ref_lo[None, :])
        # ... and rows after end_j (for dk, dv), factored through row end_j
        ref_hi = _gate_row(gc_ptr, end_j, kvh, offs_k, True, HKV, K, GATE)
        later = (rc > end_j) & mc
        qf_c = tl.exp(tl.where(later[:, None], gc_c - ref_hi[None, :], float("-inf"))).to(dt)
        kf_j = tl.exp(ref_hi[None, :] - gc_j)
        kk_hi = (k_jf * kf_j).to(dt)
        rows_needed = later
        # diagonal sub-block level factors
        f8 = _level_factor(gc_ptr, gc_j, r0, t1, kvh, offs_k, 8, HKV, K, GATE)
        f4 = _level_factor(gc_ptr, gc_j, r0, t1, kvh, offs_k, 4, HKV, K, GATE)
        f2 = _level_factor(gc_ptr, gc_j, r0, t1, kvh, offs_k, 2, HKV, K, GATE)
        f1 = _level_factor(gc_ptr, gc_j, r0, t1, kvh, offs_k, 1, HKV, K, GATE)
    else:
        rows_needed = (rc >= r0) & mc
        # per-(t, s) decay for the [SUB, BT] block (rows of j, any column) and the [BT, SUB] block
        causal_lo = rc[None, :] <= rows[:, None]
        causal_hi = rc[:, None] >= rows[None, :]
        if GATE == 1:
            e_lo = tl.exp(tl.where(causal_lo, gc_j - tl.trans(gc_c), float("-inf")))
            e_hi = tl.exp(tl.where(causal_hi, gc_c - tl.trans(gc_j), float("-inf")))
        else:
            e_lo = tl.where(causal_lo, 1.0, 0.0)
            e_hi = tl.where(causal_hi, 1.0, 0.0)

    if not DQ_STATE_EXT:
        hb = tl.load(h_ptr + state_base + state_tile).to(dt)
    qdec_j = tl.exp(gc_j)
    dbq = tl.zeros([SUB, K], dtype=tl.float32)
    for hh in range(GRP):
        ih = kvh * GRP + hh
        q_j = tl.load(q_ptr + (r[:, None] * H + ih) * K + offs_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        do_j = tl.load(do_ptr + (r[:, None] * H + ih) * V + offs_v[None, :], mask=m[:, None], other=0.0).to(dt)
        q_c = tl.load(q_ptr + (rc64[:, None] * H + ih) * K + offs_k[None, :], mask=rows_needed[:, None],
                      other=0.0)                                  # unscaled, input dtype
        do_c = tl.load(do_ptr + (rc64[:, None] * H + ih) * V + offs_v[None, :], mask=rows_needed[:, None],
                       other=0.0).to(dt)
        qs_j = q_j * scale
        if DQ_STATE_EXT:                                          # from _bwd_dq_state_kernel
            dq = tl.load(dqs_ptr + (r[:, None] * H + ih) * K + offs_k[None, :], mask=m[:, None], other=0.0)
        else:
            dq = _dot(do_j, tl.trans(hb), PREC) * qdec_j           # exp(gc) dO h^T (times scale below)
        if GATE == 2:
            # dq: earlier sub-blocks
            da_lo = _dot(do_j, tl.trans(v_c), PREC)                # [SUB, BT]
            dq += qf_j * _dot(da_lo.to(dt), kk_lo, PREC)
            # diagonal sub-block: t == s terms, then one matmul per level (see _level_factor)
            dd = _dot(do_j, tl.trans(v_j), PREC)                   # dA[t, s] = dO_t . v_s
            eye = ar[:, None] == ar[None, :]
            dd_diag = tl.sum(tl.where(eye, dd, 0.0), 1)
            d = tl.where(eye, tl.sum(qs_j * k_jf, 1)[:, None], 0.0)
            dq += dd_diag[:, None] * k_jf
            dk_j += dd_diag[:, None] * qs_j
            d, dq, dk_j = _diag_bwd_level(qs_j, k_jf, dd, f8, 8, d, dq, dk_j, dt, PREC)
            d, dq, dk_j = _diag_bwd_level(qs_j, k_jf, dd, f4, 4, d, dq, dk_j, dt, PREC)
            d, dq, dk_j = _diag_bwd_level(qs_j, k_jf, dd, f2, 2, d, dq, dk_j, dt, PREC)
            d, dq, dk_j = _diag_bwd_level(qs_j, k_jf, dd, f1, 1, d, dq, dk_j, dt, PREC)
            dv_j += _dot(tl.trans(d).to(dt), do_j, PREC)
            # later sub-blocks of the chunk (rows > end_j) onto this block's keys/values
            qf = (q_c.to(tl.float32) * scale * qf_c.to(tl.float32)).to(dt)
            a_hi = _dot(qf, tl.trans(kk_hi), PREC)                 # A[t, s], [BT, SUB]
            dv_j += _dot(tl.trans(a_hi.to(dt)), do_c, PREC)
            da_hi = _dot(do_c, tl.trans(v_j), PREC)                # dA[t, s], [BT, SUB]
            dk_j += kf_j * _dot(tl.trans(da_hi.to(dt)), qf, PREC)
        else:
            da_lo = _dot(do_j, tl.trans(v_c), PREC) * e_lo         # [SUB, BT], causal
            dq += _dot(da_lo.to(dt), k_c, PREC)
            # the unscaled q, scale applied in float32 after the dot (as for dq above): the t == s
            # terms of q.dq and k.dk must cancel in d b, and with a 16-bit round(scale * q) here
            # they did not, leaving a residue the dg cumsum amplifies under strong decay
            a_hi = _dot(q_c, tl.trans(k_j), PREC) * (e_hi * scale)  # [BT, SUB], causal
            dv_j += _dot(tl.trans(a_hi.to(dt)), do_c, PREC)
            da_hi = _dot(do_c, tl.trans(v_j), PREC) * e_hi
            dk_j += _dot(tl.trans(da_hi.to(dt)), q_c, PREC) * scale
        dq = dq * scale
        tl.store(dq_ptr + (r[:, None] * H + ih) * K + offs_k[None, :], dq.to(dq_ptr.dtype.element_ty),
                 mask=m[:, None])
        dbq += q_j * dq
    tl.store(dk_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :], dk_j.to(dk_ptr.dtype.element_ty),
             mask=m[:, None])
    tl.store(dv_ptr + (r[:, None] * HKV + kvh) * V + offs_v[None, :], dv_j.to(dv_ptr.dtype.element_ty),
             mask=m[:, None])
    if GATE == 2:
        tl.store(db_ptr + (r[:, None] * HKV + kvh) * K + offs_k[None, :], dbq - k_jf * dk_j, mask=m[:, None])
    elif GATE == 1:
        tl.store(db_ptr + r * HKV + kvh, tl.sum(dbq - k_jf * dk_j, 1), mask=m)


# --------------------------------------------------------------------- gate-gradient cumsum
@triton.jit
def _bwd_dg_kernel(db_ptr, dg_ptr, h_ptr, ht_ptr, dh_ptr, chunk_ptr, cu_ptr, HKV, K: tl.constexpr,
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr):
    """dg_t = sum_{u >= t in chunk c} db_u + rowsum(dh_c * S_end_c).
    Treating chunk c as a sequence of its own (initial state h_c, final state S_end_c = h_{c+1}
    or the sequence's final state, final-state gradient dh_c), the gate gradient is the reverse
    cumsum of d b inside the chunk plus the final-state term, so no sum runs over the whole
    sequence and rounding errors of d b cannot accumulate with T.
    grid (NT, HKV, K // BK) per key, (NT, HKV, 1) with BK = K per head."""
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    n = tl.load(chunk_ptr + c * 3)
    t0 = tl.load(chunk_ptr + c * 3 + 1)
    t1 = tl.load(chunk_ptr + c * 3 + 2)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    offs_k = tl.program_id(2) * BK + tl.arange(0, BK)
    offs_v = tl.arange(0, V)
    tile = offs_k[:, None] * V + offs_v[None, :]
    dhb = tl.load(dh_ptr + (c.to(tl.int64) * HKV + kvh) * K * V + tile).to(tl.float32)
    s_end = tl.load(ht_ptr + (n.to(tl.int64) * HKV + kvh) * K * V + tile, mask=(tile >= 0) & (t1 == eos), other=0.0)
    s_end += tl.load(h_ptr + ((c + 1).to(tl.int64) * HKV + kvh) * K * V + tile,
                     mask=(tile >= 0) & (t1 != eos), other=0.0).to(tl.float32)
    carry = tl.sum(dhb * s_end, 1)                                   # [BK]
    rows = t0 + tl.arange(0, BT)
    m = rows < t1
    r = rows.to(tl.int64)
    if GATE == 2:
        p = (r[:, None] * HKV + kvh) * K + offs_k[None, :]
        msk = m[:, None]
    else:
        p = r * HKV + kvh
        msk = m
        carry = tl.sum(carry, 0)
    x = tl.load(db_ptr + p, mask=msk, other=0.0)
    # inclusive reverse cumsum = total - exclusive forward cumsum
    y = tl.sum(x, 0) - (tl.cumsum(x, 0) - x) + carry
    tl.store(dg_ptr + p, y.to(dg_ptr.dtype.element_ty), mask=msk)


# ----------------------------------------------------------------------------- Python side
def _tuning_path(backend: str) -> str:
    if backend == "cuda":
        return os.path.join(os.path.dirname(__file__), "..", "tuning", "linear_attn.json")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, backend, "tuning", "linear_attn.json")


_CONFIG_CACHE: dict = {}


def load_config(K: int, V: int, gate: str, dtype: torch.dtype, backend: str = "cuda") -> dict:
    """The tuned config for (K, V, gate mode, dtype class): the json's "default" entry updated
    with the entry keyed "K{K}_V{V}_{gate}_{16bit|fp32}" when present."""
    path = _tuning_path(backend)
    if path not in _CONFIG_CACHE:
        with open(path) as f:
            _CONFIG_CACHE[path] = json.load(f)
    table = _CONFIG_CACHE[path]
    key = f"K{K}_V{V}_{gate}_{'fp32' if dtype == torch.float32 else '16bit'}"
    cfg = dict(table["default"])
    cfg.update(table.get("configs", {}).get(key, {}))
    return cfg


def _check_inputs(q, k, v, g, initial_state, cu_seqlens):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"linear_attn: {name} must be 4-D [B, T, heads, dim], got shape {tuple(t.shape)}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"linear_attn: {name} dtype {t.dtype} not supported (float16, bfloat16, float32)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"linear_attn: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, K = q.shape
    HKV, V = k.shape[2], v.shape[3]
    if k.shape != (B, T, HKV, K):
        raise ValueError(f"linear_attn: k must be [B, T, HKV, K] = [{B}, {T}, HKV, {K}], got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, HKV):
        raise ValueError(f"linear_attn: v must be [B, T, HKV, V] with HKV = {HKV}, got {tuple(v.shape)}")
    if H % HKV != 0:
        raise ValueError(f"linear_attn: q heads ({H}) must be a multiple of k/v heads ({HKV})")
    if K not in _SUPPORTED_DIMS:
        raise ValueError(f"linear_attn (triton): key dim K (q/k last dim) = {K} not supported, expected one of {_SUPPORTED_DIMS}")
    if V not in _SUPPORTED_DIMS:
        raise ValueError(f"linear_attn (triton): value dim V (v last dim) = {V} not supported, expected one of {_SUPPORTED_DIMS}")
    gate = _GATE_NONE
    if g is not None:
        if g.shape == (B, T, HKV):
            gate = _GATE_HEAD
        elif g.shape == (B, T, HKV, K):
            gate = _GATE_KEY
        else:
            raise ValueError(f"linear_attn: g must be [B, T, HKV] or [B, T, HKV, K], got {tuple(g.shape)}")
        if g.dtype not in (torch.float32, q.dtype):
            raise ValueError(f"linear_attn: g dtype {g.dtype} must be float32 or the input dtype {q.dtype}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"linear_attn: cu_seqlens needs B == 1, got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("linear_attn: cu_seqlens must be a 1-D int32/int64 tensor")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None:
        if initial_state.shape != (N, HKV, K, V) or initial_state.dtype != torch.float32:
            raise ValueError(f"linear_attn: initial_state must be float32 [{N}, {HKV}, {K}, {V}], got "
                             f"{initial_state.dtype} {tuple(initial_state.shape)}")
    return B, T, H, HKV, K, V, N, gate


def _chunk_tables(cu_seqlens, B, T, BT, device, S=0):
    """cu [N+1] int64, per-sequence first chunk coff [N+1] int64 and chunk rows (seq, t0, t1) int32
    on device, plus the total chunk count and, for S > 0, the segment tables of the two-level state
    pass (else None). One host sync when cu_seqlens is given."""
    if cu_seqlens is None:
        cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int64)[: B + 1]
    else:
        cu = cu_seqlens.detach().to("cpu", torch.int64)
    lens = cu[1:] - cu[:-1]
    nch = (lens + BT - 1) // BT
    coff = torch.zeros(len(nch) + 1, dtype=torch.int64)
    coff[1:] = torch.cumsum(nch, 0)
    NT = int(coff[-1])
    seq = torch.repeat_interleave(torch.arange(len(nch)), nch)
    t0 = cu[seq] + (torch.arange(NT) - coff[seq]) * BT
    t1 = torch.minimum(t0 + BT, cu[seq + 1])
    chunks = torch.stack([seq, t0, t1], 1).to(torch.int32)
    seg = _seg_tables(cu, nch, coff, BT, S, device) if S > 0 else None
    return cu.to(device), coff.to(device), chunks.to(device), NT, seg


def _seg_tables(cu, nch, coff, BT, S, device):
    """Segments of S chunks per sequence (the last one of a sequence may be shorter; none crosses a
    sequence boundary): dict with S, segoff [N+1] int64 (first segment of each sequence), seg rows
    (seq, first chunk, chunk count, first token) int32 [NSEG, 4] on device, and NSEG."""
    nseg = (nch + S - 1) // S
    segoff = torch.zeros(len(nseg) + 1, dtype=torch.int64)
    segoff[1:] = torch.cumsum(nseg, 0)
    NSEG = int(segoff[-1])
    sq = torch.repeat_interleave(torch.arange(len(nseg)), nseg)
    first = (torch.arange(NSEG) - segoff[sq]) * S                       # chunk index in its sequence
    cnt = torch.minimum(nch[sq] - first, torch.full_like(first, S))
    rows = torch.stack([sq, coff[sq] + first, cnt, cu[sq] + first * BT], 1).to(torch.int32)
    return {"S": S, "segoff": segoff.to(device), "seg": rows.to(device), "NSEG": NSEG}


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _gate_cumsum(g, gate, chunks, NT, HKV, K, BT, aux_warps):
    gc = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    _gate_cumsum_kernel[(NT, HKV)](g, gc, chunks, HKV=HKV, K=K, BT=BT, GATE=gate, num_warps=aux_warps)
    return gc


def _states(k, v, gc, gate, h0, cu, coff, N, NT, HKV, K, V, cfg, device):
    """Per-chunk states h [NT, HKV, K, V] (float32 for float32 inputs, else the input dtype) and
    the final states [N, HKV, K, V] float32."""
    BK, BV = min(cfg["h_BK"], K), min(cfg["h_BV"], V)
    h = torch.empty(NT, HKV, K, V, dtype=k.dtype, device=device)
    ht = torch.empty(N, HKV, K, V, dtype=torch.float32, device=device)
    grid = ((K // BK) * (V // BV), HKV, N)
    _fwd_h_kernel[grid](k, v, gc if gc is not None else k, h, h0 if h0 is not None else ht, ht, cu, coff,
                        HKV=HKV, K=K, V=V, BT=cfg["BT"], BK=BK, BV=BV, GATE=gate, HAS_H0=h0 is not None,
                        PREC=_prec(k.dtype), num_warps=cfg["h_warps"], num_stages=cfg["num_stages"])
    return h, ht


def _seg_tiles(cfg, K, V):
    """State tiles of the two-level pass: passes 1-2 use h_BK x h_BV; the elementwise pass 3 uses
    seg_fix_BK (default 32) rows by the whole V."""
    return (min(cfg["h_BK"], K), min(cfg["h_BV"], V), min(cfg.get("seg_fix_BK", 32), K), V)


def _states_seg(k, v, gc, gate, h0, cu, coff, chunks, seg, N, NT, HKV, K, V, cfg, device):
    """Two-level state pass (config "h_seg" = S > 0): same outputs as _states (h in its dtype and
    layout, ht float32), see _fwd_h_seg_kernel for the three passes."""
    BK, BV, BK3, BV3 = _seg_tiles(cfg, K, V)
    NSEG = seg["NSEG"]
    h = torch.empty(NT, HKV, K, V, dtype=k.dtype, device=device)
    ht = torch.empty(N, HKV, K, V, dtype=torch.float32, device=device)
    hs = torch.empty(max(NSEG, 1), HKV, K, V, dtype=torch.float32, device=device)
    dseg = torch.empty(max(NSEG, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    dcum = torch.empty(max(NT, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    nw, ns = cfg["h_warps"], cfg["num_stages"]
    if NSEG > 0:
        _fwd_h_seg_kernel[((K // BK) * (V // BV), HKV, NSEG)](
            k, v, gc if gc is not None else k, h, hs, dseg, dcum, cu, seg["seg"],
            HKV=HKV, K=K, V=V, BT=cfg["BT"], BK=BK, BV=BV, GATE=gate, PREC=_prec(k.dtype),
            num_warps=nw, num_stages=ns)
    _seg_carry_kernel[((K // BK) * (V // BV), HKV, N)](
        hs, dseg, h0 if h0 is not None else ht, ht, seg["segoff"], HKV=HKV, K=K, V=V, BK=BK, BV=BV,
        GATE=gate, HAS_S0=h0 is not None, STORE_ST=True, REVERSE=False, num_warps=nw)
    if NT > 0:
        _seg_fix_kernel[((K // BK3) * (V // BV3), HKV, NT)](
            h, hs, dcum, chunks, coff, seg["segoff"], seg["S"], HKV=HKV, K=K, V=V, BK=BK3, BV=BV3,
            GATE=gate, HAS_S0=h0 is not None, REVERSE=False, num_warps=cfg["aux_warps"])
    return h, ht


def _dh_seg(q, do, gc, gate, dht, dh0, scale, cu, coff, chunks, seg, NT, H, HKV, K, V, cfg, device):
    """Two-level reverse dh pass: fills dh [NT, HKV, K, V] (k's dtype) and, when given, dh0."""
    BK, BV, BK3, BV3 = _seg_tiles(cfg, K, V)
    NSEG = seg["NSEG"]
    N = coff.numel() - 1
    dh = torch.empty(NT, HKV, K, V, dtype=q.dtype, device=device)
    hs = torch.empty(max(NSEG, 1), HKV, K, V, dtype=torch.float32, device=device)
    dseg = torch.empty(max(NSEG, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    dcum = torch.empty(max(NT, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    nw, ns = cfg["h_warps"], cfg["num_stages"]
    if NSEG > 0:
        _bwd_dh_seg_kernel[((K // BK) * (V // BV), HKV, NSEG)](
            q, do, gc if gc is not None else q, dh, hs, dseg, dcum, cu, seg["seg"], float(scale),
            H=H, HKV=HKV, K=K, V=V, BT=cfg["BT"], BK=BK, BV=BV, GATE=gate, PREC=_prec(q.dtype),
            num_warps=nw, num_stages=ns)
    _seg_carry_kernel[((K // BK) * (V // BV), HKV, N)](
        hs, dseg, dht if dht is not None else hs, dh0 if dh0 is not None else hs, seg["segoff"],
        HKV=HKV, K=K, V=V, BK=BK, BV=BV, GATE=gate, HAS_S0=dht is not None, STORE_ST=dh0 is not None,
        REVERSE=True, num_warps=nw)
    if NT > 0:
        _seg_fix_kernel[((K // BK3) * (V // BV3), HKV, NT)](
            dh, hs, dcum, chunks, coff, seg["segoff"], seg["S"], HKV=HKV, K=K, V=V, BK=BK3, BV=BV3,
            GATE=gate, HAS_S0=dht is not None, REVERSE=True, num_warps=cfg["aux_warps"])
    return dh


def _prepare(q, k, v, g, initial_state, cu_seqlens, config, backend):
    B, T, H, HKV, K, V, N, gate = _check_inputs(q, k, v, g, initial_state, cu_seqlens)
    cfg = config if config is not None else load_config(K, V, _GATE_NAMES[gate], q.dtype, backend)
    if cfg["BT"] % _SUB != 0:
        raise ValueError(f"linear_attn: config BT = {cfg['BT']} must be a multiple of {_SUB}")
    S = int(cfg.get("h_seg", 0) or 0)
    if S < 0:
        raise ValueError(f"linear_attn: config h_seg = {S} must be >= 0 (0: sequential state pass)")
    cu, coff, chunks, NT, seg = _chunk_tables(cu_seqlens, B, T, cfg["BT"], q.device, S)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    gc = _gate_cumsum(g.contiguous(), gate, chunks, NT, HKV, K, cfg["BT"], cfg["aux_warps"]) if g is not None else None
    h0 = initial_state.contiguous() if initial_state is not None else None
    return (B, T, H, HKV, K, V, N, gate, cfg, cu, coff, chunks, NT, seg, q, k, v, gc, h0)


def linear_attn_fwd(q, k, v, g, scale, initial_state, cu_seqlens, *, config=None, backend="cuda"):
    """Forward of sbops::linear_attn. Returns (o [B,T,H,V] in q.dtype, final_state [N,HKV,K,V] float32)."""
    (B, T, H, HKV, K, V, N, gate, cfg, cu, coff, chunks, NT, seg,
     q, k, v, gc, h0) = _prepare(q, k, v, g, initial_state, cu_seqlens, config, backend)
    if seg is None:
        h, ht = _states(k, v, gc, gate, h0, cu, coff, N, NT, HKV, K, V, cfg, q.device)
    else:
        h, ht = _states_seg(k, v, gc, gate, h0, cu, coff, chunks, seg, N, NT, HKV, K, V, cfg, q.device)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    _fwd_o_kernel[(cfg["BT"] // _SUB, NT, HKV)](q, k, v, gc if gc is not None else q, h, o, chunks, float(scale),
                                                 H, HKV, K=K, V=V, BT=cfg["BT"], GATE=gate,
                                                 PREC=_prec(q.dtype), num_warps=cfg["o_warps"],
                                                 num_stages=cfg["num_stages"])
    return o, ht


def linear_attn_bwd(q, k, v, g, scale, initial_state, cu_seqlens, grad_o, grad_final_state, *,
                    config=None, backend="cuda"):
    """Backward of sbops::linear_attn. Returns (dq, dk, dv, dg, dinitial_state); dg is empty(0)
    float32 without g, dinitial_state is empty(0) without initial_state."""
    (B, T, H, HKV, K, V, N, gate, cfg, cu, coff, chunks, NT, seg,
     q, k, v, gc, h0) = _prepare(q, k, v, g, initial_state, cu_seqlens, config, backend)
    dev = q.device
    BT = cfg["BT"]
    do = grad_o.contiguous()
    dht = grad_final_state.contiguous() if grad_final_state is not None else None
    if seg is None:
        h, ht = _states(k, v, gc, gate, h0, cu, coff, N, NT, HKV, K, V, cfg, dev)
    else:
        h, ht = _states_seg(k, v, gc, gate, h0, cu, coff, chunks, seg, N, NT, HKV, K, V, cfg, dev)

    # dh pass (reverse), summing the query heads of each KV head
    BK, BV = min(cfg["h_BK"], K), min(cfg["h_BV"], V)
    dh0 = torch.empty(N, HKV, K, V, dtype=torch.float32, device=dev) if h0 is not None else None
    if seg is not None:
        dh = _dh_seg(q, do, gc, gate, dht, dh0, scale, cu, coff, chunks, seg, NT, H, HKV, K, V, cfg, dev)
    else:
        dh = torch.empty(NT, HKV, K, V, dtype=k.dtype, device=dev)
        _bwd_dh_kernel[((K // BK) * (V // BV), HKV, N)](
            q, do, gc if gc is not None else q, dh, dht if dht is not None else dh, dh0 if dh0 is not None else dh,
            cu, coff, float(scale), H=H, HKV=HKV, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate,
            HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, PREC=_prec(q.dtype),
            num_warps=cfg["h_warps"], num_stages=cfg["num_stages"])

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    db = torch.empty(gc.shape, dtype=torch.float32, device=dev) if gc is not None else None
    dq_ext = bool(cfg.get("dq_state_kernel", False))
    dqs = dq
    if dq_ext:
        # the dO h^T term of dq in its own kernel (V in tiles), so the main kernel holds no state tile
        dqs = torch.empty(q.shape, dtype=torch.float32, device=dev)
        _bwd_dq_state_kernel[(NT, H)](
            do, h, gc if gc is not None else q, dqs, chunks, H=H, HKV=HKV, K=K, V=V, BT=BT,
            BV=min(cfg.get("dq_BV", 32), V), GATE=gate, PREC=_prec(q.dtype),
            num_warps=cfg["bwd_warps"], num_stages=cfg["num_stages"])
    try:
        _bwd_main_kernel[(BT // _SUB, NT, HKV)](
            q, k, v, gc if gc is not None else q, h, dh, do, dq, dk, dv, db if db is not None else dq, chunks,
            dqs, float(scale), H=H, HKV=HKV, K=K, V=V, BT=BT, GATE=gate, PREC=_prec(q.dtype),
            DQ_STATE_EXT=dq_ext, num_warps=cfg["bwd_warps"], num_stages=cfg["num_stages"])
    except triton.runtime.errors.OutOfResources as e:
        # e.g. float32 inputs with K = V = 128 need more shared memory than an H100 block has
        raise RuntimeError(f"linear_attn_bwd (triton): {q.dtype} K={K} V={V} gate={_GATE_NAMES[gate]} does not "
                           f"fit this GPU ({e}); use 16-bit inputs or another backend") from e

    if gc is not None:
        dg = torch.empty(g.shape, dtype=g.dtype, device=dev)
        BKG = min(32, K) if gate == _GATE_KEY else K
        _bwd_dg_kernel[(NT, HKV, K // BKG)](db, dg, h, ht, dh, chunks, cu, HKV=HKV, K=K, V=V, BT=BT, BK=BKG,
                                            GATE=gate, num_warps=cfg["aux_warps"])
    else:
        dg = torch.empty(0, dtype=torch.float32, device=dev)
    if dh0 is None:
        dh0 = torch.empty(0, dtype=torch.float32, device=dev)
    return dq, dk, dv, dg, dh0
