"""Sequence-parallel sliding-window attention: halo exchange over torch.distributed.

Rank r (global positions start_r .. start_r + T_r - 1) needs the keys/values of the
``need_r = min(window, start_r)`` positions before its shard (all of them when window < 0). They
come straight from the ranks that own them: one send from rank r-1 when shards are at least the
window long, several earlier ranks when they are shorter (each owner sends its overlapping slice
once; keys and values travel together). The rank runs sbops.swa_attn over its own shard as it is
(no copies) and recomputes its first min(window, T_r) queries, the only ones that reach before the
shard, over [halo; first keys] (see local_attn). The backward sends the
halo's dK/dV back to the owners, which add them to their own. Sinks are shared: each rank merges
them once in its own softmax, and their gradients are summed over the ranks.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

import sbops
from sbops import _validate as V
from sbops.ops.swa import _check as _op_check

from ._collectives import (all_reduce_sum, blank_if, dtype_code, exchange, first_tensor, float_code,
                           gather_and_check, local_failure_refusing_meta, rank_and_size)

Piece = Tuple[int, int, int, int]   # (src rank, src row lo, src row hi, row offset in the dst halo)


def halo_plan(lens: Sequence[int], window: int) -> Tuple[List[int], List[List[Piece]]]:
    """For shard lengths ``lens``: each rank's halo length and, per rank, the pieces that fill its halo
    in order (ascending source rank). An empty shard (T_r = 0) needs and sends nothing."""
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + int(n))
    need, pieces = [], []
    for r in range(len(lens)):
        n = starts[r] if window < 0 else min(window, starts[r])
        if lens[r] == 0:             # an empty shard has no queries: it needs no halo
            n = 0
        lo = starts[r] - n
        ps = []
        for j in range(r):
            a, b = max(starts[j], lo), min(starts[j + 1], starts[r])
            if a < b:
                ps.append((j, a - starts[j], b - starts[j], a - lo))
        need.append(n)
        pieces.append(ps)
    return need, pieces


def local_attn(q, k, v, halo_k, halo_v, window, scale, sink_k, sink_v):
    """swa_attn of this shard's queries over [halo; own keys] (halo_k / halo_v [B, n, HKV, D]: the n
    positions before the shard), exact.  With a window, only the shard's first m = min(window, T_r)
    queries reach back before the shard: the shard runs as it is (its inputs read in place, no
    copies) and those m rows come from a second small call over [halo; first m keys] with n zero
    query rows in front (the op has no query offset; the window arithmetic is unchanged by the
    common shift and the zero rows' outputs are dropped).  Full causal (window < 0) pads the whole
    shard that way."""
    n = halo_k.shape[1]
    if n == 0 or q.shape[1] == 0:        # no halo, or an empty shard (T_r = 0: nothing to compute)
        return sbops.swa_attn(q, k, v, window, scale=scale, sink_k=sink_k, sink_v=sink_v)
    B, T, H, D = q.shape
    m = T if window < 0 else min(window, T)

    def head():
        qh = torch.cat([q.new_zeros(B, n, H, D), q[:, :m]], 1)
        kh, vh = torch.cat([halo_k, k[:, :m]], 1), torch.cat([halo_v, v[:, :m]], 1)
        return sbops.swa_attn(qh, kh, vh, window, scale=scale, sink_k=sink_k, sink_v=sink_v)[:, n:]

    if m == T:   # a copy: the slice would keep the n halo rows' outputs alive and not be contiguous
        return head().contiguous()
    o = sbops.swa_attn(q, k, v, window, scale=scale, sink_k=sink_k, sink_v=sink_v)   # exact from row m on
    if o.requires_grad:
        return torch.cat([head(), o[:, m:]], 1)
    o[:, :m].copy_(head())
    return o


class _Halo(torch.autograd.Function):
    """(k, v, sink_k, sink_v) -> (k, v, halo_k, halo_v, sink_k, sink_v): k, v and the sinks pass
    through (so every rank's backward runs through here whether or not it uses a halo), halo_k /
    halo_v are the keys / values of the positions before this shard inside the window, received
    from their owners. Backward: the halo's gradients
    go back to their owners (point-to-point), which add them to their own rows, then the sinks'
    gradients are all-reduced; both always."""

    @staticmethod
    def forward(ctx, k, v, sink_k, sink_v, lens, window, group):
        r, P = rank_and_size(group)
        need, pieces = halo_plan(lens, window)
        B, T, HKV, D = k.shape
        D2 = D + v.shape[-1]
        out = [(dst, lo, hi) for dst in range(r + 1, P) for (src, lo, hi, _) in pieces[dst] if src == r]
        kv = torch.cat([k, v], -1) if out else None
        sends = {dst: kv[:, lo:hi] for (dst, lo, hi) in out}
        recvs = {src: ((B, hi - lo, HKV, D2), k.dtype) for (src, lo, hi, _) in pieces[r]}
        got = exchange(sends, recvs, k.device, group)
        halo = torch.cat([got[src] for (src, _, _, _) in pieces[r]], 1) if pieces[r] else k.new_zeros(B, 0, HKV, D2)
        ctx.plan, ctx.rank, ctx.P, ctx.group, ctx.D, ctx.shape = (need, pieces), r, P, group, D, (B, T, HKV, D2)
        ctx.dtype, ctx.device = k.dtype, k.device
        ctx.has_sinks = sink_k is not None
        if sink_k is not None:
            ctx.sink_shapes, ctx.sink_dtype = (sink_k.shape, sink_v.shape), sink_k.dtype
        hk, hv = halo[..., :D].contiguous(), halo[..., D:].contiguous()
        if sink_k is None:
            return k.view_as(k), v.view_as(v), hk, hv, None, None
        return k.view_as(k), v.view_as(v), hk, hv, sink_k.view_as(sink_k), sink_v.view_as(sink_v)

    @staticmethod
    def backward(ctx, dk_in, dv_in, dhk, dhv, dsink_k, dsink_v):
        (need, pieces), r, P, D = ctx.plan, ctx.rank, ctx.P, ctx.D
        B, T, HKV, D2 = ctx.shape
        dtype, dev = ctx.dtype, ctx.device
        sends = {}
        if pieces[r]:
            n = need[r]
            dhk = torch.zeros(B, n, HKV, D, dtype=dtype, device=dev) if dhk is None else dhk.to(dtype)
            dhv = torch.zeros(B, n, HKV, D2 - D, dtype=dtype, device=dev) if dhv is None else dhv.to(dtype)
            dkv = torch.cat([dhk, dhv], -1)
            sends = {src: dkv[:, off:off + hi - lo] for (src, lo, hi, off) in pieces[r]}
        mine = {dst: (lo, hi) for dst in range(r + 1, P) for (src, lo, hi, _) in pieces[dst] if src == r}
        recvs = {dst: ((B, hi - lo, HKV, D2), dtype) for dst, (lo, hi) in mine.items()}
        got = exchange(sends, recvs, dev, ctx.group)
        dk, dv = dk_in, dv_in
        if mine:
            dk = torch.zeros(B, T, HKV, D, dtype=dtype, device=dev) if dk is None else dk.clone()
            dv = torch.zeros(B, T, HKV, D2 - D, dtype=dtype, device=dev) if dv is None else dv.clone()
            for dst, (lo, hi) in sorted(mine.items()):
                dk[:, lo:hi] += got[dst][..., :D]
                dv[:, lo:hi] += got[dst][..., D:]
        if not ctx.has_sinks:
            return dk, dv, None, None, None, None, None
        sk_shape, sv_shape = ctx.sink_shapes      # a gradient may be None (e.g. an empty shard): zeros
        dsink_k = torch.zeros(sk_shape, dtype=ctx.sink_dtype, device=dev) if dsink_k is None else dsink_k
        dsink_v = torch.zeros(sv_shape, dtype=ctx.sink_dtype, device=dev) if dsink_v is None else dsink_v
        packed = all_reduce_sum(torch.cat([dsink_k.reshape(-1), dsink_v.reshape(-1)]), ctx.group)  # always
        m = dsink_k.numel()
        return dk, dv, packed[:m].view(sk_shape), packed[m:].view(sv_shape), None, None, None


def _check(q, k, v, window, sink_k, sink_v) -> int:
    """The arguments' kinds and ranks; returns window as a Python int (numpy integers are taken, as by
    sbops.swa_attn)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sbops.distributed.swa_attn: {name} must be a tensor, got {type(t).__name__}")
    w = V.as_int(window)
    if w is None:
        raise TypeError(f"sbops.distributed.swa_attn: window must be an int (< 0 for full causal), "
                        f"got {type(window).__name__}")
    if (sink_k is None) != (sink_v is None):
        raise ValueError("sbops.distributed.swa_attn: sink_k and sink_v must be given together")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"sbops.distributed.swa_attn: q, k, v must be [B, T_r, heads, D] (T_r >= 0), got "
                         f"q {list(q.shape)}, k {list(k.shape)}")
    return w


def _check_local(q, k, v, window, scale, sink_k, sink_v) -> Tuple[float, int]:
    """This rank's own arguments, checked as sbops.swa_attn checks them (k and v must have q's B and
    T_r, the sinks [M, HKV, D], ...); returns (scale, window). Run before any collective (local_failure)."""
    window = _check(q, k, v, window, sink_k, sink_v)
    _op_check(q, k, v, window, None, sink_k, sink_v)
    return V.scale("distributed.swa_attn", scale, q.shape[-1], "D"), window


def _agreed_lengths(q, k, v, window, scale, sink_k, group, failure=None) -> List[int]:
    """Every rank's T_r, from the one all_gather this op runs anyway; the arguments that must agree
    travel with it, so a mismatch is the same ValueError on every rank (not an uninitialised halo),
    and so does this rank's own argument error (``failure``): every rank raises it."""
    names = [("window", "int"), ("B", "int"), ("H (query heads)", "int"), ("HKV (key/value heads)", "int"),
             ("D (q/k head dim)", "int"), ("v head dim", "int"), ("dtype", "dtype"), ("sinks given", "bool"),
             ("number of sinks", "int"), ("scale", "float")]
    vals = blank_if(failure, lambda: [
        window, q.shape[0], q.shape[2], k.shape[2], q.shape[3], v.shape[-1], dtype_code(q.dtype),
        sink_k is not None, -1 if sink_k is None else sink_k.shape[0], float_code(scale)], len(names))
    fields = [(n, kind, x) for (n, kind), x in zip(names, vals)]
    lead = blank_if(failure, lambda: [q.shape[1]], 1)
    ref = first_tensor(q, k, v)
    if ref is None:            # no tensor to gather on: this rank alone can raise
        raise failure
    rows = gather_and_check("sbops.distributed.swa_attn", fields, ref.device, group, lead=lead, failure=failure)
    return [row[0] for row in rows]


def swa_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: Optional[float] = None,
             sink_k: Optional[torch.Tensor] = None, sink_v: Optional[torch.Tensor] = None, group=None
             ) -> torch.Tensor:
    """Sequence-parallel sbops.swa_attn: this rank holds the rank-th contiguous shard of every sequence.

    Args: as sbops.swa_attn (docs/SPEC.md section 2) for this rank's shard q [B, T_r, H, D], k, v [B, T_r, HKV, D];
        shards may differ in length (T_r >= 0: empty and shorter than the window too); B, heads, D,
        dtype, window, scale and the sinks must agree on all ranks: they travel with the shard
        lengths, and a mismatch raises the same ValueError on every rank; so does a bad argument on
        one rank (e.g. k or v whose T differs from q's): every rank raises its error. sink_k, sink_v [M, HKV, D]
        are shared by all ranks (each query merges them once in its softmax). group: a
        torch.distributed process group (None: the default group).
    Returns:
        o [B, T_r, H, D], equal to the single-process op on the concatenated shards, sliced to this rank.
    Gradients flow to q, k, v (halo gradients are returned to their owners) and to the sinks, whose
    gradient on every rank is the sum over the ranks (the gradient of the sum of all ranks' losses).
    Communication: the shard lengths (and the arguments above) are exchanged once per call (one
    small all_gather read back to the host: a device synchronisation on GPUs); then point-to-point sends of at most ``window``
    rows of keys+values to each rank forward, the same back in the backward, plus one all_reduce of
    the sinks' gradients. window < 0 (full causal) sends every earlier position: correct, not cheap.
    Every rank must run the backward through its o when any rank does.
    """
    got = {}
    failure = local_failure_refusing_meta(  # first_tensor(q, k, v): the agreement gather's device
        "swa_attn", first_tensor(q, k, v),
        lambda: got.update(sw=_check_local(q, k, v, window, scale, sink_k, sink_v)),
        q=q, k=k, v=v, sink_k=sink_k, sink_v=sink_v)
    rank_and_size(group)
    scale, window = got.get("sw", (0.0, 0))
    lens = _agreed_lengths(q, k, v, window, scale, sink_k, group, failure)   # raises any rank's failure
    k, v, halo_k, halo_v, sk, sv = _Halo.apply(k, v, sink_k, sink_v, lens, window, group)
    return local_attn(q, k, v, halo_k, halo_v, window, scale, sk, sv)


def simulate_swa_attn(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                      window: int, scale: Optional[float] = None, sink_k: Optional[torch.Tensor] = None,
                      sink_v: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """swa_attn for P simulated ranks in one process (no process group): lists of per-rank shards in,
    list of per-rank o out. Same halo plan and local attention as the distributed version (the
    point-to-point sends become slices), on whatever device the shards live (GPU kernels on GPU)."""
    window = _check(qs[0], ks[0], vs[0], window, sink_k, sink_v)
    scale = qs[0].shape[-1] ** -0.5 if scale is None else float(scale)
    need, pieces = halo_plan([q.shape[1] for q in qs], window)
    out = []
    for r in range(len(qs)):
        halo_k = torch.cat([ks[s][:, lo:hi] for (s, lo, hi, _) in pieces[r]] + [ks[r][:, :0]], 1)
        halo_v = torch.cat([vs[s][:, lo:hi] for (s, lo, hi, _) in pieces[r]] + [vs[r][:, :0]], 1)
        out.append(local_attn(qs[r], ks[r], vs[r], halo_k, halo_v, window, scale, sink_k, sink_v))
    return out
