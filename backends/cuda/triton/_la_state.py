"""Chunked linear attention (see linear_attn.py): the state passes.  Forward: the per-chunk states h
and the final state; backward: the per-chunk state gradients dh and the initial-state gradient.
Sequential over a sequence's chunks, or (config "h_seg" = S > 0) the two-level segmented pass.
Sequence bounds come from cu through _common._seq_bounds (clamped, memory-safe on any cu), or
from the program id without cu_seqlens (VARLEN False); see _la_common's chunk helpers.  A table
(VARLEN) has NTC chunk rows and NSC segment rows: nothing is stored past them (only overlapping
sequences of invalid cu_seqlens can need more), and unused rows (empty) are skipped."""
from __future__ import annotations

import triton
import triton.language as tl

from ._la_common import _chunk_of, _tile_pid, _dh_chunk_step, _h_chunk_step, _seg_of, _seg_span, _seq_chunks, _seq_range


# ------------------------------------------------------------------------------ state pass
@triton.jit
def _fwd_h_kernel(k_ptr, v_ptr, gc_ptr, h_ptr, h0_ptr, ht_ptr, cu_ptr, coff_ptr,
                  HKV, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr,
                  PREC: tl.constexpr, T, NTOK, skb, skt, skh, svb, svt, svh, FLAT: tl.constexpr,
                  NTC, VARLEN: tl.constexpr):
    """Per-chunk states h[c] (state before chunk c) and the final state. grid (NK*NV*HKV*N,): _tile_pid.
    Each program owns a [BK, BV] tile of one KV head's state (rows of the state decay
    independently, so K and V tiles never interact) and walks its sequence's chunks in order."""
    NV: tl.constexpr = V // BV
    tile, kvh, n = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    bos, eos, c0, nc = _seq_chunks(cu_ptr, coff_ptr, n, T, NTOK, BT, VARLEN)
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
        tl.store(h_ptr + ((c0 + c).to(tl.int64) * HKV + kvh) * K * V + tile, b.to(h_ptr.dtype.element_ty),
                 mask=(tile >= 0) & (c0 + c < NTC))
        b, _ = _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                             HKV, K, V, BK, GATE, PREC,
                             T, skb, skt, skh, svb, svt, svh, FLAT)
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
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                      T, NTOK, skb, skt, skh, svb, svt, svh, FLAT: tl.constexpr,
                      S, NTC, VARLEN: tl.constexpr):
    """Pass 1 of the segmented state pass. grid (NK*NV*HKV*NSEG,): _tile_pid; seg rows (seq, first chunk,
    chunk count, first token)."""
    NV: tl.constexpr = V // BV
    tile, kvh, sg = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    n, cf, ns, tf = _seg_of(seg_ptr, sg, T, BT, S, VARLEN)
    if ns <= 0:
        return
    _, eos = _seq_range(cu_ptr, n, T, NTOK, VARLEN)
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
        tl.store(h_ptr + (c * HKV + kvh) * K * V + tile, b.to(h_ptr.dtype.element_ty),
                 mask=(tile >= 0) & (i > 0) & (c < NTC))
        if GATE > 0:
            tl.store(dcum_ptr + (c * HKV + kvh) * K + offs_k, dsum, mask=(offs_k >= 0) & (i > 0) & (iv == 0) & (c < NTC))
        b, G = _h_chunk_step(b, k_ptr, v_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                             HKV, K, V, BK, GATE, PREC,
                             T, skb, skt, skh, svb, svt, svh, FLAT)
        dsum += G
    sgo = sg.to(tl.int64) * HKV + kvh
    tl.store(hs_ptr + sgo * K * V + tile, b)
    if GATE > 0:
        tl.store(dseg_ptr + sgo * K + offs_k, dsum, mask=(offs_k >= 0) & (iv == 0))


@triton.jit
def _seg_carry_kernel(hs_ptr, dseg_ptr, s0_ptr, st_ptr, segoff_ptr, HKV, K: tl.constexpr, V: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_S0: tl.constexpr,
                      STORE_ST: tl.constexpr, REVERSE: tl.constexpr, T, S, BT: tl.constexpr,
                      VARLEN: tl.constexpr):
    """Pass 2: carry the true state across the segments of sequence n, in place in hs (local end
    state in, true start state out; reversed: local start in, true end out). Stores the last carry
    (final state forward, initial-state gradient reversed). grid (NK*NV*HKV*N,): _tile_pid."""
    NV: tl.constexpr = V // BV
    tile, kvh, n = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    s_a, ns = _seg_span(segoff_ptr, n, T, BT, S, VARLEN)
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
                    GATE: tl.constexpr, HAS_S0: tl.constexpr, REVERSE: tl.constexpr,
                    cu_ptr, T, NTOK, BT: tl.constexpr, VARLEN: tl.constexpr):
    """Pass 3: h_c = local_c + exp(dcum_c) * carry(seg) for chunk c, in place in h (float32 math,
    stored in h's dtype). grid (NK*NV*HKV*NT,): _tile_pid."""
    NV: tl.constexpr = V // BV
    tile, kvh, c = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    n, t0, t1 = _chunk_of(chunk_ptr, c, T, BT, VARLEN)
    if t1 <= t0:
        return
    _, _, c0, nc = _seq_chunks(cu_ptr, coff_ptr, n, T, NTOK, BT, VARLEN)
    s_a, _ = _seg_span(segoff_ptr, n, T, BT, S, VARLEN)
    ns = (nc + S - 1) // S                         # uncapped (a table's segoff is capped)
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



# ------------------------------------------------------------------------- backward dh pass
@triton.jit
def _bwd_dh_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, dht_ptr, dh0_ptr, cu_ptr, coff_ptr, scale,
                   H, HKV, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                   HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr,
                   T, NTOK, sqb, sqt, sqh, sdb, sdt, sdh, FLAT: tl.constexpr,
                   NTC, VARLEN: tl.constexpr):
    """dh[c] = gradient w.r.t. the state at the end of chunk c, walking chunks backwards; sums the
    H/HKV query heads of the KV head. Ends with the initial-state gradient. grid (NK*NV*HKV*N,): _tile_pid."""
    NV: tl.constexpr = V // BV
    tile, kvh, n = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    bos, eos, c0, nc = _seq_chunks(cu_ptr, coff_ptr, n, T, NTOK, BT, VARLEN)
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
        tl.store(dh_ptr + ((c0 + c).to(tl.int64) * HKV + kvh) * K * V + tile, b.to(dh_ptr.dtype.element_ty),
                 mask=(tile >= 0) & (c0 + c < NTC))
        b, _ = _dh_chunk_step(b, q_ptr, do_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                              scale, H, HKV, K, V, BK, GATE, PREC,
                              T, sqb, sqt, sqh, sdb, sdt, sdh, FLAT)
    if STORE_DH0:
        tl.store(dh0_ptr + state_base + tile, b)


@triton.jit
def _bwd_dh_seg_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, hs_ptr, dseg_ptr, dcum_ptr, cu_ptr, seg_ptr, scale,
                       H, HKV, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                       PREC: tl.constexpr, T, NTOK, sqb, sqt, sqh, sdb, sdt, sdh, FLAT: tl.constexpr,
                       S, NTC, VARLEN: tl.constexpr):
    """Pass 1 of the segmented dh pass (see _fwd_h_seg_kernel): walks the segment's chunks backwards
    from a zero gradient; local dh of every chunk but the segment's last into dh, the local gradient
    at the segment start into hs, log decays into dseg / dcum (dcum_c: from the end of chunk c to
    the end of the segment). grid (NK*NV*HKV*NSEG,): _tile_pid."""
    NV: tl.constexpr = V // BV
    tile, kvh, sg = _tile_pid(HKV, (K // BK) * NV)
    ik = tile // NV
    iv = tile % NV
    n, cf, ns, tf = _seg_of(seg_ptr, sg, T, BT, S, VARLEN)
    if ns <= 0:
        return
    _, eos = _seq_range(cu_ptr, n, T, NTOK, VARLEN)
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
        tl.store(dh_ptr + (c * HKV + kvh) * K * V + tile, b.to(dh_ptr.dtype.element_ty),
                 mask=(tile >= 0) & (ci > 0) & (c < NTC))
        if GATE > 0:
            tl.store(dcum_ptr + (c * HKV + kvh) * K + offs_k, dsum, mask=(offs_k >= 0) & (ci > 0) & (iv == 0) & (c < NTC))
        b, G = _dh_chunk_step(b, q_ptr, do_ptr, gc_ptr, t0 + tl.arange(0, BT), t1, kvh, offs_k, offs_v,
                              scale, H, HKV, K, V, BK, GATE, PREC,
                              T, sqb, sqt, sqh, sdb, sdt, sdh, FLAT)
        dsum += G
    sgo = sg.to(tl.int64) * HKV + kvh
    tl.store(hs_ptr + sgo * K * V + tile, b)
    if GATE > 0:
        tl.store(dseg_ptr + sgo * K + offs_k, dsum, mask=(offs_k >= 0) & (iv == 0))



# ------------------------------------------------------------------------------ carried state (sequence parallel)
@triton.jit
def _carry_fix_kernel(h_ptr, dec_ptr, hin_ptr, PER, HKV, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                      GATE: tl.constexpr):
    """h[n] += exp(dec[n]) * hin[b] for the state before chunk n = b * PER + c of a shard that ran from
    zero state (dec [NT, HKV, K] float32: the log-decay of the shard's chunks before c; GATE 0: none),
    in float32, rounded once to h's dtype.  grid (NT, HKV, K // BK); V is one tile."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    rk = tl.program_id(2) * BK + tl.arange(0, BK)
    rv = tl.arange(0, V)
    b = n // PER
    tile = rk[:, None] * V + rv[None, :]
    hp = h_ptr + (n.to(tl.int64) * HKV + j) * K * V + tile
    carry = tl.load(hin_ptr + (b.to(tl.int64) * HKV + j) * K * V + tile)
    if GATE != 0:
        d = tl.load(dec_ptr + (n.to(tl.int64) * HKV + j) * K + rk)
        carry = carry * tl.exp(d)[:, None]
    tl.store(hp, (tl.load(hp).to(tl.float32) + carry).to(h_ptr.dtype.element_ty))
