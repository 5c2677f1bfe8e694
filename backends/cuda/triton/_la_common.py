"""Chunked linear attention (see linear_attn.py): the @triton.jit helpers every pass uses (gated
dots, cumulative gate rows, one chunk of the state recurrences, the diagonal sub-block levels) and
the gate cumsum kernel.  q/k/v/dO are read in place through their (batch, time, head) strides
(_common._toff); the float32 cumulative gate gc and every internal buffer are contiguous."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _seq_bounds, _toff

_SUB = 16  # rows of an intra-chunk sub-block (the smallest tl.dot M/N/K)
SUB = tl.constexpr(_SUB)


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



# ------------------------------------------------------------------------------ program ids
# Grid dims 1 and 2 are limited to 65535 on CUDA, so a count that grows with the tokens (chunks,
# sequences, segments) is never put there: those grids are flattened into dim 0 (2^31 - 1).
@triton.jit
def _tile_pid(HKV, NTILE: tl.constexpr):
    """(tile, kvh, z) of a 1-D grid of NTILE * HKV * Z programs, tile fastest (the order of the
    former 3-D grid (NTILE, HKV, Z))."""
    pid = tl.program_id(0)
    rest = pid // NTILE
    return pid % NTILE, rest % HKV, rest // HKV


@triton.jit
def _sub_pid(BT: tl.constexpr):
    """(sub-block, chunk) of grid dim 0 flattened from (BT // SUB, NT), sub-block fastest."""
    pid = tl.program_id(0)
    NSUB: tl.constexpr = BT // SUB
    return pid % NSUB, pid // NSUB


# --------------------------------------------------------------------- chunks and segments
# Without cu_seqlens (VARLEN False) the B sequences of T tokens have cdiv(T, BT) chunks each and
# cdiv(chunks, S) segments each, all derived from the program id: no table.  With cu_seqlens the
# tables come from _la_tables_kernel (on the device, no host sync), sized by host-known bounds;
# rows past the real count are empty (t0 == t1, chunk count 0) and the kernels skip them.
@triton.jit
def _seq_range(cu_ptr, n, T, NTOK, VARLEN: tl.constexpr):
    """(bos, eos) int32: the packed tokens of sequence n (clamped cu_seqlens, or n*T .. n*T + T)."""
    if VARLEN:
        bos, eos = _seq_bounds(cu_ptr, n, NTOK)
    else:
        bos = n * T
        eos = bos + T
    return bos, eos


@triton.jit
def _seq_chunks(cu_ptr, coff_ptr, n, T, NTOK, BT: tl.constexpr, VARLEN: tl.constexpr):
    """(bos, eos, c0, nc) of sequence n: its tokens, its first chunk's row (may be >= the table's
    rows only for overlapping sequences of invalid cu_seqlens) and its chunk count."""
    bos, eos = _seq_range(cu_ptr, n, T, NTOK, VARLEN)
    if VARLEN:
        c0 = tl.load(coff_ptr + n)
    else:
        c0 = n * ((T + BT - 1) // BT)
    nc = (eos - bos + BT - 1) // BT
    return bos, eos, c0, nc


@triton.jit
def _chunk_of(chunk_ptr, c, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """(seq, t0, t1) of chunk c: the packed tokens [t0, t1); t0 == t1 for an unused table row."""
    if VARLEN:
        n = tl.load(chunk_ptr + c * 3)
        t0 = tl.load(chunk_ptr + c * 3 + 1)
        t1 = tl.load(chunk_ptr + c * 3 + 2)
    else:
        per = (T + BT - 1) // BT
        n = c // per
        t0 = n * T + (c - n * per) * BT
        t1 = tl.minimum(t0 + BT, n * T + T)
    return n, t0, t1


@triton.jit
def _seg_of(seg_ptr, sg, T, BT: tl.constexpr, S, VARLEN: tl.constexpr):
    """(seq, first chunk, chunk count, first token) of segment sg (count 0: an unused table row)."""
    if VARLEN:
        n = tl.load(seg_ptr + sg * 4)
        cf = tl.load(seg_ptr + sg * 4 + 1)
        ns = tl.load(seg_ptr + sg * 4 + 2)
        tf = tl.load(seg_ptr + sg * 4 + 3)
    else:
        per = (T + BT - 1) // BT
        nsp = (per + S - 1) // S
        n = sg // nsp
        j = (sg - n * nsp) * S
        cf = n * per + j
        ns = tl.minimum(per - j, S)
        tf = n * T + j * BT
    return n, cf, ns, tf


@triton.jit
def _seg_span(segoff_ptr, n, T, BT: tl.constexpr, S, VARLEN: tl.constexpr):
    """(first segment, segment count) of sequence n; with a table, capped to its rows."""
    if VARLEN:
        a = tl.load(segoff_ptr + n)
        ns = tl.load(segoff_ptr + n + 1) - a
    else:
        nsp = (((T + BT - 1) // BT) + S - 1) // S
        a = n * nsp
        ns = nsp
    return a, ns


@triton.jit
def _la_tables_kernel(cu_ptr, coff_ptr, chunk_ptr, segoff_ptr, seg_ptr, N, NTOK, NTC, NSC, S,
                      BT: tl.constexpr, HAS_SEG: tl.constexpr, BLK: tl.constexpr, BN: tl.constexpr):
    """Varlen tables on the device from cu_seqlens [N+1] (any values: clamped as _seq_bounds):
    coff [N+1] (first chunk of each sequence, then the total; capped at NTC), chunk rows
    (seq, t0, t1) [NTC, 3]; with HAS_SEG also segoff [N+1] (capped at NSC) and segment rows
    (seq, first chunk, chunk count, first token) [NSC, 4].  All int32.  Rows past the real
    count are (0, 0, 0) / (0, 0, 0, 0).  grid (cdiv(NTC, BLK),): program p fills rows
    [p*BLK, p*BLK + BLK) of both tables by scanning every sequence (a sequence owns the rows
    [cumsum before it, cumsum through it)); program 0 also writes coff and segoff."""
    p = tl.program_id(0)
    rows = (p * BLK + tl.arange(0, BLK)).to(tl.int64)
    c_seq = tl.zeros([BLK], dtype=tl.int64)
    c_t0 = tl.zeros([BLK], dtype=tl.int64)
    c_end = tl.zeros([BLK], dtype=tl.int64)
    s_seq = tl.zeros([BLK], dtype=tl.int64)
    s_cf = tl.zeros([BLK], dtype=tl.int64)
    s_cnt = tl.zeros([BLK], dtype=tl.int64)
    s_tf = tl.zeros([BLK], dtype=tl.int64)
    carry_c = tl.sum(tl.zeros([BN], dtype=tl.int64), 0)
    carry_s = tl.sum(tl.zeros([BN], dtype=tl.int64), 0)
    first = tl.arange(0, BN) == 0
    tl.store(coff_ptr + tl.arange(0, BN), tl.zeros([BN], dtype=tl.int32), mask=first & (p == 0))
    if HAS_SEG:
        tl.store(segoff_ptr + tl.arange(0, BN), tl.zeros([BN], dtype=tl.int32), mask=first & (p == 0))
    for nb in range(0, N, BN):
        idx = nb + tl.arange(0, BN)
        ok = idx < N
        a = tl.load(cu_ptr + idx, mask=ok, other=0).to(tl.int64)
        b = tl.load(cu_ptr + idx + 1, mask=ok, other=0).to(tl.int64)
        s = tl.minimum(tl.maximum(a, 0), NTOK)
        e = tl.minimum(tl.maximum(b, s), NTOK)
        nch = (e - s + BT - 1) // BT
        cend = carry_c + tl.cumsum(nch, 0)
        cbeg = cend - nch
        tl.store(coff_ptr + idx + 1, tl.minimum(cend, NTC).to(tl.int32), mask=ok & (p == 0))
        hit = (cbeg[None, :] <= rows[:, None]) & (rows[:, None] < cend[None, :])
        c_seq += tl.sum(tl.where(hit, idx[None, :].to(tl.int64), 0), 1)
        c_t0 += tl.sum(tl.where(hit, s[None, :] + (rows[:, None] - cbeg[None, :]) * BT, 0), 1)
        c_end += tl.sum(tl.where(hit, e[None, :], 0), 1)
        carry_c += tl.sum(nch, 0)
        if HAS_SEG:
            nsg = (nch + S - 1) // S
            send = carry_s + tl.cumsum(nsg, 0)
            sbeg = send - nsg
            tl.store(segoff_ptr + idx + 1, tl.minimum(send, NSC).to(tl.int32), mask=ok & (p == 0))
            hit = (sbeg[None, :] <= rows[:, None]) & (rows[:, None] < send[None, :])
            j = (rows[:, None] - sbeg[None, :]) * S                 # first chunk of the segment in its sequence
            s_seq += tl.sum(tl.where(hit, idx[None, :].to(tl.int64), 0), 1)
            s_cf += tl.sum(tl.where(hit, cbeg[None, :] + j, 0), 1)
            s_cnt += tl.sum(tl.where(hit, tl.minimum(nch[None, :] - j, S), 0), 1)
            s_tf += tl.sum(tl.where(hit, s[None, :] + j * BT, 0), 1)
            carry_s += tl.sum(nsg, 0)
    # a used row has t0 < its sequence's end; an unused one has t0 = end = 0, so t1 = t0
    c_t1 = tl.minimum(c_t0 + BT, c_end)
    cm = rows < NTC
    tl.store(chunk_ptr + rows * 3, c_seq.to(tl.int32), mask=cm)
    tl.store(chunk_ptr + rows * 3 + 1, c_t0.to(tl.int32), mask=cm)
    tl.store(chunk_ptr + rows * 3 + 2, c_t1.to(tl.int32), mask=cm)
    if HAS_SEG:
        sm = rows < NSC
        tl.store(seg_ptr + rows * 4, s_seq.to(tl.int32), mask=sm)
        tl.store(seg_ptr + rows * 4 + 1, s_cf.to(tl.int32), mask=sm)
        tl.store(seg_ptr + rows * 4 + 2, s_cnt.to(tl.int32), mask=sm)
        tl.store(seg_ptr + rows * 4 + 3, s_tf.to(tl.int32), mask=sm)


# ----------------------------------------------------------------------------- gate cumsum
GATE_FLOOR = tl.constexpr(-60.0)   # log-gates below it act as it (see _gate_cumsum_kernel)


@triton.jit
def _gate_cumsum_kernel(g_ptr, gc_ptr, chunk_ptr, HKV, K: tl.constexpr, T, sgb, sgt, sgh,
                        BT: tl.constexpr, GATE: tl.constexpr, FLAT: tl.constexpr, VARLEN: tl.constexpr):
    """gc = inclusive cumulative sum of max(g, GATE_FLOOR) inside each chunk, float32 (g read
    through its strides, gc contiguous). grid (NT, HKV).

    The floor: exp(-60) ~ 1e-26 decays a state to nothing in any dtype, as exp(g) would; an
    unbounded g would make gc_t - gc_s a difference of huge numbers (g = -1e4: 1e-3 absolute
    error in every later decay) and g = -inf would give -inf - -inf = NaN.  A NaN gate stays NaN
    (tl.where, not tl.maximum, which returns the other operand), as on the CPU backend."""
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    _, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
    rows = t0 + tl.arange(0, BT)
    m = rows < t1
    r = rows.to(tl.int64)
    gin = _toff(rows, T, sgb, sgt, FLAT) + kvh.to(tl.int64) * sgh
    if GATE == 2:
        offs_k = tl.arange(0, K)
        p = (r[:, None] * HKV + kvh) * K + offs_k[None, :]
        x = tl.load(g_ptr + gin[:, None] + offs_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        tl.store(gc_ptr + p, tl.cumsum(tl.where(x < GATE_FLOOR, GATE_FLOOR, x), 0), mask=m[:, None])
    else:
        p = r * HKV + kvh
        x = tl.load(g_ptr + gin, mask=m, other=0.0).to(tl.float32)
        tl.store(gc_ptr + p, tl.cumsum(tl.where(x < GATE_FLOOR, GATE_FLOOR, x), 0), mask=m)


@triton.jit
def _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, rows, t1, kvh, offs_k, offs_v, HKV, K: tl.constexpr,
                  V: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                  T, skb, skt, skh, svb, svt, svh, FLAT: tl.constexpr):
    """One chunk of the forward state recurrence on a [BK, BV] tile (rows < t1 of the chunk):
    b <- exp(G) b + (k exp(G - gc))^T v. Returns (b, G), G the chunk's log decay per key row
    (zeros without a gate)."""
    dt: tl.constexpr = k_ptr.dtype.element_ty
    m = rows < t1
    ko = _toff(rows, T, skb, skt, FLAT) + kvh.to(tl.int64) * skh
    vo = _toff(rows, T, svb, svt, FLAT) + kvh.to(tl.int64) * svh
    kt = tl.load(k_ptr + ko[:, None] + offs_k[None, :], mask=m[:, None], other=0.0)
    vt = tl.load(v_ptr + vo[:, None] + offs_v[None, :], mask=m[:, None], other=0.0)
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
                   PREC: tl.constexpr, T, sqb, sqt, sqh, sdb, sdt, sdh, FLAT: tl.constexpr):
    """One chunk of the backward dh recurrence on a [BK, BV] tile, summed over the KV head's query
    heads: b <- exp(G) b + sum_h (scale q_h exp(gc))^T dO_h. Returns (b, G) as _h_chunk_step."""
    dt: tl.constexpr = q_ptr.dtype.element_ty
    GRP = H // HKV
    m = rows < t1
    qo = _toff(rows, T, sqb, sqt, FLAT)
    doo = _toff(rows, T, sdb, sdt, FLAT)
    if GATE > 0:
        gcb = _gate_rows(gc_ptr, rows, t1 - 1, kvh, offs_k, HKV, K, GATE)
        G = _gate_row(gc_ptr, t1 - 1, kvh, offs_k, True, HKV, K, GATE)
        b = b * tl.exp(G)[:, None]
        qdec = tl.exp(gcb) * scale
    else:
        G = tl.zeros([BK], dtype=tl.float32)
    for hh in range(GRP):
        ih = kvh * GRP + hh
        qt = tl.load(q_ptr + (qo + ih.to(tl.int64) * sqh)[:, None] + offs_k[None, :], mask=m[:, None], other=0.0)
        if GATE > 0:
            qt = (qt.to(tl.float32) * qdec).to(dt)
        else:
            qt = (qt.to(tl.float32) * scale).to(dt)
        dot_ = tl.load(do_ptr + (doo + ih.to(tl.int64) * sdh)[:, None] + offs_v[None, :], mask=m[:, None], other=0.0)
        b += _dot(tl.trans(qt), dot_.to(dt), PREC)
    return b, G


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

