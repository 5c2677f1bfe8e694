"""Linear attention (GLA family): chunked prefill/training and one-token decode. SPEC section 1."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _validate as V
from ._common import request, run

OP = "linear_attn"


def _check(q, k, v, g, initial_state, cu_seqlens):
    op = OP
    V.tensor(op, "q", q, ndim=4, dtypes=V.FLOAT_DTYPES, what="[B, T, H, K]")
    dev = q.device
    B, T, H, K = q.shape
    V.tensor(op, "k", k, ndim=4, device=dev, what="[B, T, HKV, K]")
    HKV = k.shape[2]
    V.tensor(op, "k", k, shape=(B, T, None, K), what="[B, T, HKV, K]")
    V.tensor(op, "v", v, ndim=4, device=dev, shape=(B, T, HKV, None), what="[B, T, HKV, V]")
    V.same_dtype(op, "q", q, k=k, v=v)
    V.divisible_heads(op, H, HKV)
    gate = None
    if g is not None:
        V.tensor(op, "g", g, dtypes=(torch.float32, q.dtype), device=dev)
        if g.dim() == 3:
            V.tensor(op, "g", g, shape=(B, T, HKV), what="[B, T, HKV] (one log-decay per head)")
            gate = "gate_per_head"
        else:
            V.tensor(op, "g", g, shape=(B, T, HKV, K), what="[B, T, HKV, K] (one log-decay per key channel)")
            gate = "gate_per_key"
    N = V.cu_seqlens(op, cu_seqlens, B, T, dev)
    if initial_state is not None:
        V.tensor(op, "initial_state", initial_state, dtypes=(torch.float32,), device=dev,
                 shape=(N, HKV, K, v.shape[-1]), what="[N, HKV, K, V] float32")
    feats = (gate, "varlen" if cu_seqlens is not None else None,
             "initial_state" if initial_state is not None else None)
    return request(op, q, head_dims=(K, v.shape[-1]), features=feats)


def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention over a whole sequence (chunked prefill / training).

    Args:
        q: [B, T, H, K] queries.  k: [B, T, HKV, K] keys.  v: [B, T, HKV, V] values; H % HKV == 0,
            query head h reads KV head h // (H // HKV) (GQA-native: one state per KV head).
        g: None (no decay), [B, T, HKV] or [B, T, HKV, K] log-decays (<= 0), float32 or q's dtype.
        scale: defaults to K ** -0.5.
        initial_state: [N, HKV, K, V] float32 starting states.
        output_final_state: also return the final states [N, HKV, K, V] float32.
        cu_seqlens: int32/int64 [N+1] offsets of variable-length sequences packed in T (B must be 1).
    Returns:
        (o [B, T, H, V] in q's dtype, final_state or None).
    Math: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t;  o_t = scale * q_t S_t.  Differentiable in
    q, k, v, g and initial_state.
    """
    req = _check(q, k, v, g, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = run(req, q, k, v, g, scale, initial_state, cu_seqlens)
    return o, (final_state if output_final_state else None)


def _check_decode(q, k, v, g, state, state_indices):
    op = "linear_attn_decode"
    V.tensor(op, "q", q, ndim=3, dtypes=V.FLOAT_DTYPES, what="[N, H, K]")
    dev = q.device
    N, H, K = q.shape
    V.tensor(op, "k", k, ndim=3, device=dev, what="[N, HKV, K]")
    HKV = k.shape[1]
    V.tensor(op, "k", k, shape=(N, HKV, K), what="[N, HKV, K]")
    V.tensor(op, "v", v, ndim=3, device=dev, shape=(N, HKV, None), what="[N, HKV, V]")
    V.same_dtype(op, "q", q, k=k, v=v)
    V.divisible_heads(op, H, HKV)
    Vd = v.shape[-1]
    gate = None
    if g is not None:
        V.tensor(op, "g", g, dtypes=(torch.float32, q.dtype), device=dev)
        if g.dim() == 2:
            V.tensor(op, "g", g, shape=(N, HKV), what="[N, HKV]")
            gate = "gate_per_head"
        else:
            V.tensor(op, "g", g, shape=(N, HKV, K), what="[N, HKV, K]")
            gate = "gate_per_key"
    V.tensor(op, "state", state, ndim=4, dtypes=(torch.float32, torch.bfloat16), device=dev,
             shape=(None, HKV, K, Vd), what="[S, HKV, K, V] cache of S slots")
    S = state.shape[0]
    if state_indices is not None:
        V.tensor(op, "state_indices", state_indices, dtypes=V.INDEX_DTYPES, device=dev, shape=(N,), what="[N]")
        if V.checking_data() and N > 0:
            lo, hi = int(state_indices.min()), int(state_indices.max())
            if lo < 0 or hi >= S:
                raise IndexError(f"sbops.{op}: state_indices must lie in [0, {S}), got values in [{lo}, {hi}]")
    elif N > S:
        raise ValueError(f"sbops.{op}: without state_indices sequence i uses slot i, but the state has "
                         f"{S} slots for N={N} sequences")
    return request(op, q, head_dims=(K, Vd), features=(gate,))


def linear_attn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                       state: torch.Tensor, state_indices: Optional[torch.Tensor] = None,
                       scale: Optional[float] = None) -> torch.Tensor:
    """One decode step of linear attention for N sequences, updating their state slots in place.

    Args:
        q: [N, H, K]; k: [N, HKV, K]; v: [N, HKV, V]; g: None | [N, HKV] | [N, HKV, K].
        state: [S, HKV, K, V] float32 or bfloat16 cache; sequence i uses slot state_indices[i]
            (default i), updated in place with S <- diag(exp(g)) S + k^T v.
        scale: defaults to K ** -0.5.
    Returns:
        o: [N, H, V] in q's dtype, equal to linear_attn's output at that step.
    """
    req = _check_decode(q, k, v, g, state, state_indices)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return run(req, q, k, v, g, state, state_indices, scale)
