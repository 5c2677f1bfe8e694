"""Chunked linear attention (see linear_attn.py): the backward kernels after the dh pass: the
optional dq state term, the main dq/dk/dv/d b kernel and the gate-gradient cumsum.  q/k/v/dO are
read in place through their (batch, time, head) strides; gradients are written contiguous."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _toff
from ._la_common import SUB, _chunk_of, _sub_pid, _diag_bwd_level, _dot, _gate_row, _gate_rows, _level_factor, _seq_range


# ---------------------------------------------------------------------- backward main kernel
@triton.jit
def _bwd_dq_state_kernel(do_ptr, h_ptr, gc_ptr, out_ptr, chunk_ptr, H, HKV, K: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                         T, sdb, sdt, sdh, FLAT: tl.constexpr, VARLEN: tl.constexpr):
    """The inter-chunk term of dq, exp(gc_t) * dO_t h_c^T (before the scale), for the BT rows of chunk
    c and query head ih, into a float32 [rows, H, K] buffer; grid (NT, H).  V is walked in BV tiles,
    so only a [K, BV] state tile is staged at a time: used when _bwd_main_kernel cannot also hold a
    whole [K, V] state tile within the shared memory (config "dq_state_kernel", MACA's 64 KB)."""
    c = tl.program_id(0)
    ih = tl.program_id(1)
    kvh = ih // (H // HKV)
    _, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
    dt: tl.constexpr = h_ptr.dtype.element_ty
    offs_k = tl.arange(0, K)
    rc = t0 + tl.arange(0, BT)
    mc = rc < t1
    rc64 = rc.to(tl.int64)
    state_base = (c.to(tl.int64) * HKV + kvh) * K * V
    doo = _toff(rc, T, sdb, sdt, FLAT) + ih.to(tl.int64) * sdh
    acc = tl.zeros([BT, K], dtype=tl.float32)
    for v0 in range(0, V, BV):
        offs_v = v0 + tl.arange(0, BV)
        do_t = tl.load(do_ptr + doo[:, None] + offs_v[None, :], mask=mc[:, None], other=0.0).to(dt)
        h_t = tl.load(h_ptr + state_base + offs_k[:, None] * V + offs_v[None, :])
        acc += _dot(do_t, tl.trans(h_t), PREC)
    acc = acc * tl.exp(_gate_rows(gc_ptr, rc, t1 - 1, kvh, offs_k, HKV, K, GATE))
    tl.store(out_ptr + (rc64[:, None] * H + ih) * K + offs_k[None, :], acc, mask=mc[:, None])


@triton.jit
def _bwd_main_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, dh_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
                     db_ptr, chunk_ptr, dqs_ptr, scale,
                     H, HKV, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                     T, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                     FLAT: tl.constexpr, DQ_STATE_EXT: tl.constexpr = False, VARLEN: tl.constexpr = False):
    """dq (per query head), dk, dv (summed over the query heads of the KV head) and the local gate
    gradient d b for the 16 rows of sub-block j of chunk c. grid ((BT // SUB) * NT, HKV): _sub_pid.
    Everything a program writes lives in its own 16 rows, so no atomics and no placement."""
    GRP = H // HKV
    j, c = _sub_pid(BT)
    kvh = tl.program_id(1)
    _, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
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
    end_j = tl.minimum(r0 + SUB, t1) - 1          # last valid row of this sub-block
    kjo = _toff(rows, T, skb, skt, FLAT) + kvh.to(tl.int64) * skh
    vjo = _toff(rows, T, svb, svt, FLAT) + kvh.to(tl.int64) * svh
    kco = _toff(rc, T, skb, skt, FLAT) + kvh.to(tl.int64) * skh
    vco = _toff(rc, T, svb, svt, FLAT) + kvh.to(tl.int64) * svh
    k_j = tl.load(k_ptr + kjo[:, None] + offs_k[None, :], mask=m[:, None], other=0.0)
    v_j = tl.load(v_ptr + vjo[:, None] + offs_v[None, :], mask=m[:, None], other=0.0)
    k_c = tl.load(k_ptr + kco[:, None] + offs_k[None, :], mask=mc[:, None], other=0.0)
    v_c = tl.load(v_ptr + vco[:, None] + offs_v[None, :], mask=mc[:, None], other=0.0)
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
    qjo = _toff(rows, T, sqb, sqt, FLAT)
    djo = _toff(rows, T, sdb, sdt, FLAT)
    qco = _toff(rc, T, sqb, sqt, FLAT)
    dco = _toff(rc, T, sdb, sdt, FLAT)
    for hh in range(GRP):
        ih = kvh * GRP + hh
        q_j = tl.load(q_ptr + (qjo + ih.to(tl.int64) * sqh)[:, None] + offs_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        do_j = tl.load(do_ptr + (djo + ih.to(tl.int64) * sdh)[:, None] + offs_v[None, :], mask=m[:, None], other=0.0).to(dt)
        q_c = tl.load(q_ptr + (qco + ih.to(tl.int64) * sqh)[:, None] + offs_k[None, :], mask=rows_needed[:, None],
                      other=0.0)                                  # unscaled, input dtype
        do_c = tl.load(do_ptr + (dco + ih.to(tl.int64) * sdh)[:, None] + offs_v[None, :], mask=rows_needed[:, None],
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
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, NTOK,
                   T, VARLEN: tl.constexpr):
    """dg_t = sum_{u >= t in chunk c} db_u + rowsum(dh_c * S_end_c).
    Treating chunk c as a sequence of its own (initial state h_c, final state S_end_c = h_{c+1}
    or the sequence's final state, final-state gradient dh_c), the gate gradient is the reverse
    cumsum of d b inside the chunk plus the final-state term, so no sum runs over the whole
    sequence and rounding errors of d b cannot accumulate with T.
    grid (NT, HKV, K // BK) per key, (NT, HKV, 1) with BK = K per head."""
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    n, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
    _, eos = _seq_range(cu_ptr, n, T, NTOK, VARLEN)
    offs_k = tl.program_id(2) * BK + tl.arange(0, BK)
    offs_v = tl.arange(0, V)
    tile = offs_k[:, None] * V + offs_v[None, :]
    dhb = tl.load(dh_ptr + (c.to(tl.int64) * HKV + kvh) * K * V + tile).to(tl.float32)
    s_end = tl.load(ht_ptr + (n.to(tl.int64) * HKV + kvh) * K * V + tile, mask=(tile >= 0) & (t1 == eos), other=0.0)
    # h[c + 1] exists unless chunk c is the last row of a table that overlapping sequences of invalid
    # cu_seqlens overflowed (then this chunk's dg is unspecified, but nothing is read out of bounds)
    s_end += tl.load(h_ptr + ((c + 1).to(tl.int64) * HKV + kvh) * K * V + tile,
                     mask=(tile >= 0) & (t1 != eos) & (c + 1 < tl.num_programs(0)), other=0.0).to(tl.float32)
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

