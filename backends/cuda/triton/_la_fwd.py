"""Chunked linear attention (see linear_attn.py): the forward output pass.  q/k/v are read in place
through their (batch, time, head) strides; o is written contiguous."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _toff
from ._la_common import SUB, _chunk_of, _sub_pid, _diag_scores, _dot, _gate_row, _gate_rows, _level_factor


# ----------------------------------------------------------------------------- output pass
@triton.jit
def _fwd_o_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, o_ptr, chunk_ptr, scale, H, HKV,
                  K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr,
                  PREC: tl.constexpr, T, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, FLAT: tl.constexpr,
                  VARLEN: tl.constexpr):
    """o for the 16 rows of sub-block i of chunk c, for every query head of KV head kvh.
    grid ((BT // SUB) * NT, HKV): _sub_pid. The gate factors (all the exps) and h[c] depend only on the KV
    head, so they are computed / loaded once and reused by the H/HKV query heads."""
    GRP = H // HKV
    i, c = _sub_pid(BT)
    kvh = tl.program_id(1)
    _, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
    dt: tl.constexpr = k_ptr.dtype.element_ty
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    r0 = t0 + i * SUB
    rows = r0 + tl.arange(0, SUB)
    m = rows < t1
    r = rows.to(tl.int64)
    rc = t0 + tl.arange(0, BT)
    mc = rc < t1
    kco = _toff(rc, T, skb, skt, FLAT) + kvh.to(tl.int64) * skh
    vco = _toff(rc, T, svb, svt, FLAT) + kvh.to(tl.int64) * svh
    k_c = tl.load(k_ptr + kco[:, None] + offs_k[None, :], mask=mc[:, None], other=0.0)
    v_c = tl.load(v_ptr + vco[:, None] + offs_v[None, :], mask=mc[:, None], other=0.0)
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
        kio = _toff(rows, T, skb, skt, FLAT) + kvh.to(tl.int64) * skh
        vio = _toff(rows, T, svb, svt, FLAT) + kvh.to(tl.int64) * svh
        k_i = tl.load(k_ptr + kio[:, None] + offs_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        v_i = tl.load(v_ptr + vio[:, None] + offs_v[None, :], mask=m[:, None], other=0.0)
        f8 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 8, HKV, K, GATE)
        f4 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 4, HKV, K, GATE)
        f2 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 2, HKV, K, GATE)
        f1 = _level_factor(gc_ptr, gci, r0, t1, kvh, offs_k, 1, HKV, K, GATE)
    else:
        # per-(t, s) decay of the [SUB, BT] score block, causal mask included
        causal = rc[None, :] <= rows[:, None]
        e = tl.exp(tl.where(causal, gci - tl.trans(gc_c), float("-inf")))
    qro = _toff(rows, T, sqb, sqt, FLAT)
    for hh in range(GRP):
        ih = kvh * GRP + hh
        qs = tl.load(q_ptr + (qro + ih.to(tl.int64) * sqh)[:, None] + offs_k[None, :], mask=m[:, None], other=0.0)
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

