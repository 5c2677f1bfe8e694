"""Expert-parallel MoE: dispatch token rows to the ranks owning their experts and combine them back.

Rank r owns experts [r*E/P, (r+1)*E/P). moe_dispatch sorts this rank's routed (token, slot) rows
by expert with sbops.moe_permute (so they are already grouped by destination rank), exchanges the
per-expert counts with one all_to_all_single (read back to the host for the split sizes: one small
host synchronisation per dispatch), sends the rows with a second all_to_all_single, and regroups the
received rows from (source rank, expert) order to (expert, source rank) order: within an expert
they are then ordered by (source rank, token, slot), i.e. moe_permute of the concatenated batch
restricted to this rank's experts. moe_combine undoes the regrouping, sends the rows back with the
splits swapped and sums them with sbops.moe_unpermute (float32 accumulation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

import sbops
from sbops import _validate as V
from sbops._validate import checking_data

from ._collectives import (AllToAllRows, all_to_all_rows, blank_if, dtype_code, encode_failure, first_tensor,
                           gather_and_check, is_meta, local_failure, local_failure_refusing_meta, raise_failures,
                           rank_and_size, refuse_meta)


@dataclass
class MoEHandle:
    """What moe_combine needs from moe_dispatch (opaque to callers)."""
    row_map: torch.Tensor          # [T, k] int32: (token, slot) -> row of this rank's moe_permute output
    weights: torch.Tensor          # [T, k] combine weights
    send_splits: List[int]         # rows sent to each rank
    recv_splits: List[int]         # rows received from each rank
    order: torch.Tensor            # [N_local] int64: expert-major row i is rank-major row order[i]
    inverse: torch.Tensor          # [N_local] int64: inverse permutation of order
    num_rows: int                  # T * k
    group: object = None
    x_local: Optional[torch.Tensor] = None   # moe_dispatch's output (moe_combine keeps y_local tied to it)


def _as_int(n):
    """num_experts as a Python int where it is an integer (numpy integers too, as sbops.moe_permute takes
    them; not a bool), else as given, for _check to name."""
    v = V.as_int(n)
    return n if v is None else v


def _check(x, ids, weights, num_experts, P):
    op = "sbops.distributed.moe_dispatch"
    V.tensor("distributed.moe_dispatch", "x", x, dtypes=V.FLOAT_DTYPES, what="[T, Hd]")
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be [T, Hd], got {list(x.shape)}")
    V.tensor("distributed.moe_dispatch", "ids", ids, dtypes=V.INDEX_DTYPES, device=x.device,
             what="[T, k] expert ids (< 0: dropped)")
    if ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: ids must be [T={x.shape[0]}, k], got {list(ids.shape)}")
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != tuple(ids.shape):
        got = list(weights.shape) if isinstance(weights, torch.Tensor) else weights
        raise ValueError(f"{op}: weights must be [T, k] = {list(ids.shape)}, got {got}")
    if not isinstance(num_experts, int) or isinstance(num_experts, bool):
        raise ValueError(f"{op}: num_experts must be a Python int, got {type(num_experts).__name__} {num_experts!r}")
    if num_experts < 1 or num_experts % P:
        raise ValueError(f"{op}: num_experts must be a positive multiple of the world size {P}, got {num_experts!r}")


def plan(recv_counts: torch.Tensor, P: int, n_local: int):
    """recv_counts [P, E/P] (rows from source s for local expert e) -> (order, inverse, expert_offsets):
    order maps expert-major rows (expert, source) to the received rank-major rows (source, expert)."""
    dev = recv_counts.device
    flat = recv_counts.reshape(-1)
    starts_rm = (torch.cumsum(flat, 0) - flat).view(recv_counts.shape)      # block (s, e) start, rank-major
    cnt_em = recv_counts.t().reshape(-1)                                      # blocks in (e, s) order
    start_em = starts_rm.t().reshape(-1)
    blk_base = torch.cumsum(cnt_em, 0) - cnt_em
    rows = torch.arange(n_local, device=dev, dtype=torch.int64)
    blk = torch.repeat_interleave(torch.arange(cnt_em.numel(), device=dev), cnt_em, output_size=n_local)
    order = start_em[blk] + rows - blk_base[blk]
    inverse = torch.empty_like(order)
    inverse[order] = rows
    per_expert = recv_counts.sum(0)
    offsets = torch.cat([per_expert.new_zeros(1), torch.cumsum(per_expert, 0)])
    return order, inverse, offsets


def _send_side(x, ids, num_experts, P):
    x_perm, offs, row_map = sbops.moe_permute(x, ids, num_experts)
    counts = (offs[1:] - offs[:-1]).to(torch.int64)          # [E] rows per expert, experts of rank d contiguous
    return x_perm, counts, row_map


def moe_dispatch(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, num_experts: int, group=None
                 ) -> Tuple[torch.Tensor, torch.Tensor, MoEHandle]:
    """Expert-parallel dispatch of this rank's tokens to the ranks owning their experts.

    Args:
        x [T, Hd] this rank's tokens; ids [T, k] expert ids (< 0: dropped, not routed); weights [T, k]
        (kept for moe_combine); num_experts E, a multiple of the world size P: rank r owns experts
        [r*E/P, (r+1)*E/P). group: a torch.distributed process group (None: the default group).
    Returns:
        x_local [N, Hd]: the rows routed to this rank's experts, grouped by local expert ascending and,
        within an expert, ordered by (source rank, token, slot); expert_offsets [E/P + 1] int64 (each
        local expert's slice of x_local); handle for moe_combine. Differentiable in x.
    Host synchronisation: the per-expert counts are exchanged with all_to_all_single and read back to
    the host for the split sizes (one small sync per dispatch; x_local's length is data-dependent).
    Hidden size, dtype and num_experts must agree on every rank: where sbops runs its data checks
    (CPU tensors by default, GPU tensors with SBOPS_DATA_CHECKS=1) one small all_gather compares
    them first (with each rank's count of ids >= num_experts) and a mismatch or a bad id raises the
    same ValueError on every rank; so does a bad argument on one rank (x, ids, weights: shapes and
    dtypes), checked before any collective. Without those data checks (GPU tensors by default) a
    bad argument on one rank travels in the counts all_to_all (two more int64 per destination, read
    back with the counts) and every rank raises the same error; only where that exchange cannot be
    set up on the failing rank (num_experts not a positive multiple of P, no tensor argument) does it
    raise alone while the others wait until the process group's timeout.
    """
    if is_meta(first_tensor(x, ids, weights)):   # the device of the agreement and of the counts' exchange
        refuse_meta("moe_dispatch", x=x, ids=ids, weights=weights)
    r, P = rank_and_size(group)
    num_experts = _as_int(num_experts)
    # this rank's own arguments first (shapes, dtypes, weights); num_experts is compared below, so its
    # local check (a positive multiple of P) runs after the agreement
    failure = local_failure(lambda: (refuse_meta("moe_dispatch", x=x, ids=ids, weights=weights),
                                     _check(x, ids, weights, P, P)))
    if isinstance(x, torch.Tensor) and checking_data(x):
        hd, dt = blank_if(failure, lambda: [x.shape[-1], dtype_code(x.dtype)], 2)
        fields = [("hidden size (x.shape[-1])", "int", hd), ("x dtype", "dtype", dt),
                  ("num_experts (-1: not an int)", "int", num_experts if isinstance(num_experts, int) else -1)]
        n_bad = 0
        if failure is None and isinstance(num_experts, int) and ids.numel():
            n_bad = int((ids >= num_experts).sum())
        rows = gather_and_check("sbops.distributed.moe_dispatch", fields, x.device, group, lead=[n_bad],
                                failure=failure)     # raises any rank's failure on every rank
        if any(row[0] for row in rows):   # a bad id on one rank: the same error everywhere, not a lone raise
            raise ValueError(f"sbops.distributed.moe_dispatch: ids hold expert ids >= num_experts={num_experts} "
                             f"(count by group rank: {[row[0] for row in rows]})")
    elif failure is not None:
        # no agreement gather here (no host sync): the failure rides in the counts all_to_all below, which
        # every rank reads back anyway; where that exchange cannot be set up, this rank alone raises
        ref = first_tensor(x, ids, weights)
        dev = None if ref is None else ref.device
        if dev is None or isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts <= 0 \
                or num_experts % P:
            raise failure
    if failure is None:
        _check(x, ids, weights, num_experts, P)
        dev = x.device
        x_perm, counts, row_map = _send_side(x, ids, num_experts, P)
    else:           # data checks off, a bad argument here: zero counts carry the failure to every rank
        counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    El = num_experts // P
    kind, msg = encode_failure(failure)
    # per destination: its El expert counts, then (failure kind, message length) of this rank
    send = torch.cat([counts.view(P, El), torch.tensor([kind, len(msg)], dtype=torch.int64,
                                                       device=dev).expand(P, 2)], 1)
    recv = all_to_all_rows(send.reshape(-1), [El + 2] * P, [El + 2] * P, group).view(P, El + 2)
    host = torch.cat([counts.view(P, El).sum(1), recv.reshape(-1)]).tolist()   # the one host sync
    rows = [host[P + s * (El + 2):P + (s + 1) * (El + 2)] for s in range(P)]
    raise_failures("sbops.distributed.moe_dispatch", [(row[El], row[El + 1]) for row in rows], msg, dev, group)
    recv_counts = recv[:, :El].contiguous()                                  # [P, El]: from s, for my experts
    send_splits, recv_splits = host[:P], [sum(row[:El]) for row in rows]
    x_recv = AllToAllRows.apply(x_perm[:sum(send_splits)], send_splits, recv_splits, group)
    order, inverse, offsets = plan(recv_counts.view(P, El), P, sum(recv_splits))
    x_local = x_recv.index_select(0, order)
    handle = MoEHandle(row_map, weights, send_splits, recv_splits, order, inverse, ids.numel(), group, x_local)
    return x_local, offsets, handle


def _finish(y_back, handle):
    pad = handle.num_rows - y_back.shape[0]
    y_perm = torch.cat([y_back, y_back.new_zeros(pad, y_back.shape[1])]) if pad else y_back
    return sbops.moe_unpermute(y_perm, handle.row_map, handle.weights)


def _check_combine(y_local, handle):
    V.tensor("distributed.moe_combine", "y_local", y_local, dtypes=V.FLOAT_DTYPES, what="[N, Hd]")
    if y_local.dim() != 2 or y_local.shape[0] != handle.order.numel():
        raise ValueError(f"sbops.distributed.moe_combine: y_local must be [N={handle.order.numel()}, Hd] "
                         f"(one row per x_local row), got {list(y_local.shape)}")


def moe_combine(y_local: torch.Tensor, handle: MoEHandle) -> torch.Tensor:
    """y [T, Hd'] on each rank: y[t] = sum_j weights[t, j] * y_expert(t, j) over routed slots.

    y_local [N, Hd'] is the experts' output for x_local's rows (same order). The rows go back to
    their source ranks (all_to_all_single, splits swapped; no host sync) and are summed by
    sbops.moe_unpermute in float32. Differentiable in y_local and weights.
    Every rank's backward must run the same all-to-alls: a rank whose experts received no rows
    should still build y_local from x_local (e.g. ``x_local * 0`` or its experts run on the empty
    rows). A y_local outside the graph while x_local requires grad is tied to x_local here (exact
    zero); whether y_local requires grad must agree on every rank (checked where sbops runs its
    data checks: CPU tensors by default, a clear ValueError on every rank).
    """
    failure = local_failure_refusing_meta(  # the agreement gather's device
        "moe_combine", first_tensor(y_local, getattr(handle, "order", None)), lambda: _check_combine(y_local, handle),
        y_local=y_local)
    # the agreement gather runs on y_local's device, or the handle's where y_local is not a tensor, so that a
    # rank whose y_local is not even a tensor raises with the others instead of leaving them waiting
    ref = first_tensor(y_local, handle.order)
    gather = ref is not None and checking_data(ref)
    if failure is not None and not gather:
        raise failure                 # no agreement gather here (no host sync): this rank alone raises
    xl = handle.x_local
    if failure is None and torch.is_grad_enabled() and xl is not None and xl.requires_grad \
            and not y_local.requires_grad:
        # x_local is in the graph but y_local is not (e.g. an empty result built with new_zeros on a
        # rank whose experts got no rows): tie it in with an exact zero (a sum over no elements), so
        # this rank's backward still runs both all-to-alls like every other rank's.
        y_local = y_local + xl.reshape(-1)[:0].sum().to(y_local.dtype)
    if gather:
        vals = blank_if(failure, lambda: [y_local.shape[-1], dtype_code(y_local.dtype), y_local.requires_grad], 3)
        fields = [("y_local width (shape[-1])", "int", vals[0]), ("y_local dtype", "dtype", vals[1]),
                  ("y_local requires grad", "bool", vals[2])]
        gather_and_check("sbops.distributed.moe_combine", fields, ref.device, handle.group,
                         failure=failure)       # raises any rank's failure on every rank
    y_rm = y_local.index_select(0, handle.inverse)
    y_back = AllToAllRows.apply(y_rm, handle.recv_splits, handle.send_splits, handle.group)
    return _finish(y_back, handle)


# ----------------------------------------------------------------------------- simulated ranks
def _sim_all_to_all(parts: Sequence[torch.Tensor], splits: Sequence[Sequence[int]]) -> List[torch.Tensor]:
    """parts[s] split by splits[s] (one chunk per destination) -> per destination, chunks by source."""
    chunks = [list(p.split(list(sp), 0)) for p, sp in zip(parts, splits)]
    return [torch.cat([chunks[s][d] for s in range(len(parts))]) for d in range(len(parts))]


def simulate_moe_dispatch(xs: Sequence[torch.Tensor], idss: Sequence[torch.Tensor],
                          weightss: Sequence[torch.Tensor], num_experts: int):
    """moe_dispatch for P simulated ranks in one process: lists in, lists of (x_local, expert_offsets,
    handle) out; same permutation and plan as the distributed version (all-to-alls become slices)."""
    P = len(xs)
    num_experts = _as_int(num_experts)
    for x, ids, w in zip(xs, idss, weightss):
        _check(x, ids, w, num_experts, P)
    El = num_experts // P
    sides = [_send_side(x, ids, num_experts, P) for x, ids in zip(xs, idss)]
    cnt = [c.view(P, El) for (_, c, _) in sides]
    send = [c.sum(1).tolist() for c in cnt]
    recv_counts = [torch.stack([cnt[s][d] for s in range(P)]) for d in range(P)]
    recv = [[send[s][d] for s in range(P)] for d in range(P)]
    x_recv = _sim_all_to_all([xp[:sum(send[s])] for s, (xp, _, _) in enumerate(sides)], send)
    out = []
    for d in range(P):
        order, inverse, offsets = plan(recv_counts[d], P, sum(recv[d]))
        h = MoEHandle(sides[d][2], weightss[d], send[d], recv[d], order, inverse, idss[d].numel(), None)
        out.append((x_recv[d].index_select(0, order), offsets, h))
    return out


def simulate_moe_combine(y_locals: Sequence[torch.Tensor], handles: Sequence[MoEHandle]) -> List[torch.Tensor]:
    """moe_combine for P simulated ranks (lists in, list of per-rank y out)."""
    y_rm = [y.index_select(0, h.inverse) for y, h in zip(y_locals, handles)]
    back = _sim_all_to_all(y_rm, [h.recv_splits for h in handles])
    return [_finish(b, h) for b, h in zip(back, handles)]
