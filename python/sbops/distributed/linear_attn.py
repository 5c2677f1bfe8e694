"""Sequence-parallel gated linear attention: LASP-2-style state passing over torch.distributed.

Rank r holds the r-th contiguous shard of every sequence. With G_t the inclusive prefix sum of the
log-decays inside the shard and Gamma_r = G_{T_r} its total, the single-process recurrence
splits exactly into
    o_t   = o_local_t + scale * (q_t * exp(G_t)) @ h_r          (o_local: the shard run from zero state)
    h_r+1 = exp(Gamma_r) * h_r + S_r,   S_r = sum_t (k_t * exp(Gamma_r - G_t))^T v_t
with h_0 = initial_state and h_P = final_state. Each rank computes (S_r, Gamma_r) locally, one
all_gather exchanges them (P * B * HKV * K * (V + 1) floats, independent of the sequence length),
every rank folds the ranks before it into h_r and all of them into the final state.
The backward mirrors it with one all_gather of each rank's (d h_r, d final_state).

16-bit and float32 inputs run the op's own kernels and float32 states (_ThroughOp): on cuda / maca one
kernel sequence with the chunk states fixed in the middle; elsewhere (CPU) the op runs twice, from zero
state and then from h_r.  float64 inputs run the state math in torch (S_r, the fold, and the zero-state
output corrected by the second term above: one small matmul), so float64 results equal the
single-process op to rounding (the op's states are float32 by contract).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

import sbops
from sbops._validate import checking_data

from sbops import _validate as V
from sbops.ops.linear_attn import _check as _op_check

from ._collectives import (all_gather_stack, blank_if, dtype_code, first_tensor, float_code, gather_and_check,
                           local_failure_refusing_meta, rank_and_size)


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def local_pre(q, k, v, g, scale):
    """This shard from zero state: (o_local, S_r [B,HKV,K,V], Gamma_r [B,HKV,K], G or None).

    G [B, T, HKV, K or 1] is the inclusive prefix sum of the log-decays (None without a gate).
    Differentiable (the op's autograd plus torch)."""
    o_loc, _ = sbops.linear_attn(q, k, v, g, scale=scale)
    B, T, HKV, K = k.shape
    cdt = _cdt(q.dtype)
    kf, vf = k.to(cdt), v.to(cdt)
    if g is None:
        return o_loc, torch.einsum("btnk,btnv->bnkv", kf, vf), kf.new_zeros(B, HKV, K), None
    gf = g.to(cdt)
    if gf.dim() == 3:
        gf = gf.unsqueeze(-1)
    G = gf.cumsum(1)
    suffix = gf.flip(1).cumsum(1).flip(1)            # sum_{s >= t} g_s, accurate where it matters
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1)   # sum_{s > t} g_s
    S = torch.einsum("btnk,btnv->bnkv", kf * after.exp(), vf)
    gamma = gf.sum(1).expand(B, HKV, K)                # the shard's total (0 for an empty shard)
    return o_loc, S, gamma, G


def local_post(o_loc, q, G, h, scale):
    """o = o_local + scale * (q * exp(G)) @ h, per KV-head group of query heads."""
    B, T, H, K = q.shape
    HKV, V = h.shape[1], h.shape[-1]
    qf = q.to(h.dtype).view(B, T, HKV, H // HKV, K)
    if G is not None:
        qf = qf * G.exp().unsqueeze(3)
    corr = torch.einsum("btngk,bnkv->btngv", qf, h).reshape(B, T, H, V) * scale
    return (o_loc.to(h.dtype) + corr).to(o_loc.dtype)


def fold_forward(S_all: torch.Tensor, gam_all: torch.Tensor, init: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """h_0 = init (or 0), h_{j+1} = exp(Gamma_j) * h_j + S_j; returns [h_0, ..., h_P] (new tensors)."""
    h = S_all[0].new_zeros(S_all.shape[1:]) if init is None else init.to(S_all.dtype).clone()
    hs = [h]
    for j in range(S_all.shape[0]):
        h = gam_all[j].exp().unsqueeze(-1) * h + S_all[j]
        hs.append(h)
    return hs


def fold_backward(gam_all, hs, dh_all, dfinal):
    """Adjoint of fold_forward: given d h_j for j < P (each rank's own h) and d h_P (d final_state,
    summed over ranks), returns (dS_all, dGamma_all, d init)."""
    P = gam_all.shape[0]
    adj = dfinal
    dS, dgam = [None] * P, [None] * P
    for j in range(P - 1, -1, -1):
        decay = gam_all[j].exp()
        dS[j] = adj
        dgam[j] = (adj * hs[j]).sum(-1) * decay
        adj = dh_all[j] + decay.unsqueeze(-1) * adj
    return torch.stack(dS), torch.stack(dgam), adj


def gather_fold(S, gam, init, group):
    """One all_gather of every rank's (S_r, Gamma_r), then the fold: (S_all, Gamma_all, [h_0 .. h_P])."""
    packed = all_gather_stack(torch.cat([S.reshape(-1), gam.reshape(-1)]), group)
    P = packed.shape[0]
    S_all = packed[:, :S.numel()].reshape((P,) + tuple(S.shape))
    gam_all = packed[:, S.numel():].reshape((P,) + tuple(gam.shape))
    return S_all, gam_all, fold_forward(S_all, gam_all, init)


class _StateFold(torch.autograd.Function):
    """(S_r, Gamma_r, initial_state) -> (h_r, final_state): one all_gather forward, one backward."""

    @staticmethod
    def forward(ctx, S, gam, init, group):
        r, P = rank_and_size(group)
        S_all, gam_all, hs = gather_fold(S, gam, init, group)
        ctx.save_for_backward(S_all, gam_all, init)
        ctx.rank, ctx.group, ctx.has_init = r, group, init is not None
        return hs[r], hs[P]

    @staticmethod
    def backward(ctx, dh, dfinal):
        S_all, gam_all, init = ctx.saved_tensors
        n = dh.numel()
        packed = all_gather_stack(torch.cat([dh.reshape(-1), dfinal.reshape(-1)]), ctx.group)  # always issued
        dh_all = packed[:, :n].reshape(S_all.shape)
        dfinal_sum = packed[:, n:].sum(0).reshape(S_all.shape[1:])
        hs = fold_forward(S_all, gam_all, init)
        dS, dgam, dinit = fold_backward(gam_all, hs, dh_all, dfinal_sum)
        r = ctx.rank
        return dS[r], dgam[r], (dinit if ctx.has_init else None), None


def _check_state(initial_state, q, k, v):
    if initial_state is None:
        return
    B, HKV, K, V = q.shape[0], k.shape[2], k.shape[3], v.shape[3]
    if (not isinstance(initial_state, torch.Tensor) or initial_state.dtype != torch.float32
            or tuple(initial_state.shape) != (B, HKV, K, V) or initial_state.device != q.device):
        got = (f"{initial_state.dtype} {list(initial_state.shape)} on {initial_state.device}"
               if isinstance(initial_state, torch.Tensor) else type(initial_state).__name__)
        raise ValueError(f"sbops.distributed.linear_attn: initial_state must be a float32 [B, HKV, K, V] = "
                         f"{[B, HKV, K, V]} tensor on {q.device} (the same on every rank), got {got}")


def _check_local(q, k, v, g, scale, initial_state) -> float:
    """This rank's own arguments, checked as sbops.linear_attn checks them (k, v, g with q's B and
    T_r, initial_state [B, HKV, K, V] float32, ...); returns the scale. Run before any collective."""
    _op_check(q, k, v, g, None, None)
    _check_state(initial_state, q, k, v)
    return V.scale("distributed.linear_attn", scale, q.shape[-1], "K")


def _check_agree(q, k, v, g, scale, initial_state, group, device, failure=None):
    """One small all_gather of the arguments that must agree on every rank (shapes, dtype, gate kind,
    scale, initial_state given), read on the host: a mismatch is the same ValueError on every rank
    instead of a size-mismatched all_gather (an abort) or a silently wrong state. This rank's own
    argument error (``failure``) travels with it: every rank raises it."""
    names = [("B", "int"), ("H (query heads)", "int"), ("HKV (key/value heads)", "int"), ("K (key dim)", "int"),
             ("V (value dim)", "int"), ("dtype", "dtype"), ("gate kind (0 none, 1 per head, 2 per key)", "int"),
             ("initial_state given", "bool"), ("scale", "float")]
    vals = blank_if(failure, lambda: [
        q.shape[0], q.shape[2], k.shape[2], k.shape[3], v.shape[3], dtype_code(q.dtype),
        0 if g is None else (1 if g.dim() == 3 else 2), initial_state is not None, float_code(scale)], len(names))
    fields = [(n, kind, x) for (n, kind), x in zip(names, vals)]
    gather_and_check("sbops.distributed.linear_attn", fields, device, group, failure=failure)


def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, group=None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sequence-parallel sbops.linear_attn: this rank holds the rank-th contiguous shard of every sequence.

    Args: as sbops.linear_attn (docs/SPEC.md section 1) for this rank's shard, q [B, T_r, H, K],
        k [B, T_r, HKV, K], v [B, T_r, HKV, V], g None | [B, T_r, HKV] | [B, T_r, HKV, K]; shards may
        differ in length (T_r >= 0: empty shards too); B, heads, head dims, dtypes, gate kind, scale
        and whether initial_state is given must agree on all ranks. Where sbops runs its data checks
        (CPU tensors by default, GPU tensors with SBOPS_DATA_CHECKS=1 / sbops.set_data_checks(True))
        they are all-gathered first (one small all_gather and host read), and a mismatch raises the
        same ValueError on every rank, and so does a bad argument on one rank (a shape, a dtype, the
        initial_state): every rank raises its error. On GPUs by default nothing is read back (no sync):
        a rank with a bad argument raises alone, before any collective, and the others wait in the
        state all_gather until the process group's timeout.
        initial_state [B, HKV, K, V] float32 is the state before rank 0's first token, identical on
        every rank. group: a torch.distributed process group (None: the default group). No varlen
        (cu_seqlens) here.
    Returns:
        (o [B, T_r, H, V], final_state [B, HKV, K, V] float32 after the last token of the whole
        sequence, on every rank, or None).
    Equal to the single-process op on the concatenated shards, forward and backward. Gradients to
    a replicated tensor are totals over the ranks: initial_state's gradient on every rank is the
    gradient of the sum of all ranks' losses (d final_state is summed over ranks likewise).
    16-bit and float32 inputs run through the op's kernels (_ThroughOp: on cuda / maca one kernel
    sequence forward, the reverse state pass plus one op backward backward); float64 runs the
    state math in torch (exact to float64 rounding).
    Communication: one all_gather of P * B * HKV * K * (V + 1) floats forward, one of
    2 * P * B * HKV * K * V backward; no host synchronisation (beyond the argument check above, on
    CPU by default). Every rank must run the backward through its o (or final_state) when any rank
    does.
    """
    got = {}
    failure = local_failure_refusing_meta(  # first_tensor(q, k, v): the agreement gather's device
        "linear_attn", first_tensor(q, k, v), lambda: got.update(scale=_check_local(q, k, v, g, scale, initial_state)),
        q=q, k=k, v=v, g=g, initial_state=initial_state)
    rank_and_size(group)
    # the agreement gather runs on the device of the first of q, k, v that is a tensor, so that a rank whose q is
    # not even a tensor raises with the others instead of leaving them waiting
    ref = first_tensor(q, k, v)
    if ref is not None and checking_data(ref):
        _check_agree(q, k, v, g, got.get("scale", 0.0), initial_state, group, ref.device, failure)   # raises any
    elif failure is not None:
        raise failure                 # no agreement gather here (no host sync): this rank alone raises
    scale = got["scale"]
    if q.dtype != torch.float64:
        o, final = _ThroughOp.apply(q, k, v, g, initial_state, scale, group)
        return o, (final if output_final_state else None)
    o_loc, S, gam, G = local_pre(q, k, v, g, scale)
    init = None if initial_state is None else initial_state.to(S.dtype)
    h, final = _StateFold.apply(S, gam, init, group)
    o = local_post(o_loc, q, G, h, scale)
    return o, (final.float() if output_final_state else None)


def _extensions(q, k, v, g) -> dict:
    """The serving backend's named extensions (Backend.extensions), {} on the CPU or while compiling."""
    if q.device.type == "cpu" or torch.compiler.is_compiling():
        return {}
    from sbops import _dispatch
    from sbops.ops._common import request
    from sbops.ops.linear_attn import _check
    hd, feats = _check(q, k, v, g, None, None)
    try:
        return _dispatch.select(request("linear_attn", q, hd, feats)).extensions
    except _dispatch.NoBackendError:
        return {}


def _total_log_decay(g, k):
    """Gamma [B, HKV, K] float32: the shard's summed log-decay per key channel (zeros without a gate)."""
    B, _, HKV, K = k.shape
    if g is None:
        return torch.zeros(B, HKV, K, dtype=torch.float32, device=k.device)
    tot = g.float().sum(1)
    return (tot.unsqueeze(-1) if g.dim() == 3 else tot).expand(B, HKV, K).contiguous()


def _fwd_carry_two_calls(q, k, v, g, scale, carry):
    """linear_attn_fwd_carry for a backend without it: the op from zero state (its final state is S),
    then the op again from the carried state."""
    _, S = sbops.linear_attn(q, k, v, g, scale=scale, output_final_state=True)
    h = carry(S, _total_log_decay(g, k))
    return sbops.linear_attn(q, k, v, g, scale=scale, initial_state=h)[0]


def _dh0_full_backward(q, k, v, g, do, scale):
    """linear_attn_dh0 for a backend without it: the op's whole backward from a zero state."""
    B, _, HKV, K = k.shape
    zero = torch.zeros(B, HKV, K, v.shape[-1], dtype=torch.float32, device=q.device)
    return torch.ops.sbops.linear_attn_bwd(q, k, v, g, scale, zero, None, do, None)[4]


class _ThroughOp(torch.autograd.Function):
    """Sequence-parallel GLA for 16-bit and float32 inputs through the op's own kernels and states.

    Forward: the shard's state pass from zero gives (S_r, Gamma_r); one all_gather and the fold give
    h_r and the final state; the output pass runs from h_r.  With the backend's
    "linear_attn_fwd_carry" extension (cuda / maca: Triton) that is one kernel sequence with a fix of
    the chunk states in the middle; otherwise the op runs twice (zero state, then from h_r).
    Backward: a_{P} = d final_state summed over ranks, a_j = dh_j + exp(Gamma_j) * a_{j+1}, where dh_j
    is the gradient of rank j's own output with respect to its entering state (the reverse state pass
    only: extension "linear_attn_dh0", else the op's backward), exchanged with one all_gather; the
    op's backward from h_r with grad_final_state = a_{r+1} then gives dq, dk, dv, dg; d initial_state
    = a_0 on every rank."""

    @staticmethod
    def forward(ctx, q, k, v, g, init, scale, group):
        r = rank_and_size(group)[0]
        ext = _extensions(q, k, v, g)
        st = {}

        def carry(S, gam):
            st["S_all"], st["gam_all"], st["hs"] = gather_fold(S, gam, init, group)
            return st["hs"][r]

        o = ext.get("linear_attn_fwd_carry", _fwd_carry_two_calls)(q, k, v, g, scale, carry)
        ctx.save_for_backward(q, k, v, g, st["hs"][r], st["gam_all"])
        ctx.scale, ctx.group, ctx.rank, ctx.has_init = scale, group, r, init is not None
        ctx.dh0 = ext.get("linear_attn_dh0", _dh0_full_backward)
        return o, st["hs"][-1]

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, g, h_r, gam_all = ctx.saved_tensors
        P = gam_all.shape[0]
        do = do.contiguous()
        dh = ctx.dh0(q, k, v, g, do, ctx.scale)                          # always issued, like the gather
        df = torch.zeros_like(dh) if dfinal is None else dfinal.float()
        n = dh.numel()
        packed = all_gather_stack(torch.cat([dh.reshape(-1), df.reshape(-1)]), ctx.group)
        dh_all = packed[:, :n].reshape((P,) + tuple(dh.shape))
        a = packed[:, n:].sum(0).reshape(dh.shape)                       # adjoint of the final state
        exit_adj = a if ctx.rank == P - 1 else None
        for j in range(P - 1, -1, -1):
            a = dh_all[j] + gam_all[j].exp().unsqueeze(-1) * a             # adjoint of h_j
            if j == ctx.rank + 1:
                exit_adj = a
        dq, dk, dv, dg, _ = torch.ops.sbops.linear_attn_bwd(q, k, v, g, ctx.scale, h_r, None, do,
                                                             exit_adj.contiguous())
        return dq, dk, dv, (dg if g is not None else None), (a if ctx.has_init else None), None, None


class _SimFold(torch.autograd.Function):
    """All ranks' fold in one process (the simulated-ranks harness); same math as _StateFold."""

    @staticmethod
    def forward(ctx, P, init, *parts):
        S_all, gam_all = torch.stack(parts[:P]), torch.stack(parts[P:])
        ctx.save_for_backward(S_all, gam_all, init)
        ctx.has_init = init is not None
        return tuple(fold_forward(S_all, gam_all, init))

    @staticmethod
    def backward(ctx, *grads):
        S_all, gam_all, init = ctx.saved_tensors
        P = S_all.shape[0]
        hs = fold_forward(S_all, gam_all, init)
        dS, dgam, dinit = fold_backward(gam_all, hs, torch.stack(grads[:P]), grads[P])
        return (None, dinit if ctx.has_init else None) + tuple(dS.unbind(0)) + tuple(dgam.unbind(0))


def simulate_linear_attn(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                         gs: Optional[Sequence[Optional[torch.Tensor]]] = None, scale: Optional[float] = None,
                         initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False):
    """linear_attn for P simulated ranks in one process (no process group): lists of per-rank shards
    in, (list of per-rank o, final_state or None) out. Same local math and fold as the distributed
    version (the all_gather becomes a stack), on whatever device the shards live (GPU kernels on GPU)."""
    P = len(qs)
    gs = [None] * P if gs is None else list(gs)
    scale = qs[0].shape[-1] ** -0.5 if scale is None else float(scale)
    _check_state(initial_state, qs[0], ks[0], vs[0])
    pre = [local_pre(qs[r], ks[r], vs[r], gs[r], scale) for r in range(P)]
    init = None if initial_state is None else initial_state.to(pre[0][1].dtype)
    hs = _SimFold.apply(P, init, *[p[1] for p in pre], *[p[2] for p in pre])
    os_ = [local_post(pre[r][0], qs[r], pre[r][3], hs[r], scale) for r in range(P)]
    return os_, (hs[P].float() if output_final_state else None)
