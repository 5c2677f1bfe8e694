"""Linear attention (GLA family): chunked prefill/training and one-token decode. SPEC section 1."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _validate as V
from ._common import run, run_no_grad

OP = "linear_attn"
_T = torch.Tensor
_F32 = torch.float32
_FLOATS = frozenset(V.FLOAT_DTYPES)
_INDEX = frozenset(V.INDEX_DTYPES)
_STATE_DTYPES = frozenset((torch.float32, torch.bfloat16))


def _check(q, k, v, g, initial_state, cu_seqlens):
    op = OP
    V.tensor(op, "q", q, ndim=4, dtypes=V.FLOAT_DTYPES, what="[B, T, H, K]")
    dev = q.device
    B, T, H, K = q.shape
    HKV = V.size(k, 4, 2)
    V.tensor(op, "k", k, ndim=4, device=dev, shape=(B, T, HKV, K), what="[B, T, HKV, K]")
    Vd = V.size(v, 4, 3)
    V.tensor(op, "v", v, ndim=4, device=dev, shape=(B, T, HKV, Vd), what="[B, T, HKV, V]")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        V.same_dtype(op, "q", q, k=k, v=v)
    if not HKV or H % HKV:
        V.divisible_heads(op, H, HKV)
    gate = _check_gate(op, g, q, dev, (B, T, HKV), K)
    N = V.cu_seqlens(op, cu_seqlens, B, T, dev)
    if initial_state is not None:
        V.tensor(op, "initial_state", initial_state, dtypes=(torch.float32,), device=dev,
                 shape=(N, HKV, K, Vd), what="[N, HKV, K, V] float32")
    feats = (gate, "varlen" if cu_seqlens is not None else None,
             "initial_state" if initial_state is not None else None)
    return (K, Vd), feats


_GATE_WHAT = {3: ("[B, T, HKV] (one log-decay per head)", "[B, T, HKV, K] (one log-decay per key channel)"),
              2: ("[N, HKV] (one log-decay per head)", "[N, HKV, K] (one log-decay per key channel)")}


def _check_gate(op, g, q, dev, lead, K):
    """g: None, lead (one log-decay per head) or lead + (K,) (per key channel); returns the feature."""
    if g is None:
        return None
    per_head, per_key = _GATE_WHAT[len(lead)]
    dts = (torch.float32,) if q.dtype == torch.float32 else (torch.float32, q.dtype)
    if isinstance(g, torch.Tensor) and g.dim() == len(lead):
        V.tensor(op, "g", g, dtypes=dts, device=dev, shape=lead, what=per_head)
        feature = "gate_per_head"
    else:
        V.tensor(op, "g", g, dtypes=dts, device=dev, shape=lead + (K,), what=per_key)
        feature = "gate_per_key"
    _check_gate_values(op, g)
    return feature


def _check_gate_values(op, g):
    """g <= 0 where data checks run (CPU tensors by default: a GPU call never reads g back); NaN log-decays pass
    (the output is NaN where they reach, as documented)."""
    if V.checking_data(g) and g.numel():
        g = g.detach()
        pos = g > 0
        if bool(pos.any()):
            raise ValueError(f"sbops.{op}: g holds log-decays, which must be <= 0 (decay factors exp(g) <= 1); got "
                             f"{int(pos.sum())} positive value(s), the largest {g[pos].max().item():g}")


def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention over a whole sequence (chunked prefill / training).

    Args:
        q: [B, T, H, K] queries.  k: [B, T, HKV, K] keys.  v: [B, T, HKV, V] values; H % HKV == 0,
            query head h reads KV head h // (H // HKV) (GQA-native: one state per KV head).
        g: None (no decay), [B, T, HKV] or [B, T, HKV, K] log-decays (<= 0), float32 or q's dtype.
           -inf resets the state (a document boundary).  The Triton (GPU) kernels treat any g below
           -60 as -60 (exp(-60) ~ 1e-26: the same reset in float32); NaN propagates.
        scale: defaults to K ** -0.5.
        initial_state: [N, HKV, K, V] float32 starting states.
        output_final_state: also return the final states [N, HKV, K, V] float32.
        cu_seqlens: int32/int64 [N+1] offsets of variable-length sequences packed in T (B must be 1).
    Returns:
        (o [B, T, H, V] in q's dtype, final_state or None).
    Math: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t;  o_t = scale * q_t S_t.  Differentiable in
    q, k, v, g and initial_state.

    Inputs may be strided views (slices along T, splits of a fused qkv projection, transposed
    batches): the CUDA/Triton kernels read tensors whose last dimension is contiguous in place
    and copy others internally; the CPU reference copies.  Outputs are contiguous.
    Data checks: cu_seqlens (start 0, non-decreasing, end T) and g <= 0 are checked on CPU tensors only by
    default (see sbops.set_data_checks); on the GPU the kernels clamp its offsets into [0, T], so
    bad offsets give an unspecified result but never an out-of-bounds access.
    """
    # fast path (the common inference call: no packed sequences, no initial state): plain comparisons
    # that imply every check of _check passes; anything else takes the full checks, which raise
    # naming the argument
    if (initial_state is None and cu_seqlens is None and q.__class__ is _T and k.__class__ is _T
            and v.__class__ is _T and (g is None or g.__class__ is _T)):
        qs, ks, vs = q.shape, k.shape, v.shape
        if (len(qs) == 4 and len(ks) == 4 and len(vs) == 4 and ks[:2] == qs[:2] and ks[3] == qs[3]
                and vs[:3] == ks[:3] and ks[2] and qs[2] % ks[2] == 0
                and (dt := q.dtype) in _FLOATS and k.dtype == dt and v.dtype == dt
                and (dev := q.device) == k.device and v.device == dev
                and (g is None or (g.dtype == _F32 or g.dtype == dt) and g.device == dev
                     and (g.shape == ks[:3] or g.shape == ks))):
            if g is not None:
                _check_gate_values(OP, g)
            feats = (None if g is None else ("gate_per_head" if g.dim() == 3 else "gate_per_key"), None, None)
            sc = V.scale(OP, scale, qs[3], "K")
            o, final_state = run(OP, q, (qs[3], vs[3]), feats, q, k, v, g, sc, None, None)
            return o, (final_state if output_final_state else None)
    hd, feats = _check(q, k, v, g, initial_state, cu_seqlens)
    scale = V.scale(OP, scale, q.shape[-1], "K")
    o, final_state = run(OP, q, hd, feats, q, k, v, g, scale, initial_state, cu_seqlens)
    return o, (final_state if output_final_state else None)


def _check_decode(q, k, v, g, state, state_indices):
    op = "linear_attn_decode"
    V.tensor(op, "q", q, ndim=3, dtypes=V.FLOAT_DTYPES, what="[N, H, K]")
    dev = q.device
    N, H, K = q.shape
    HKV = V.size(k, 3, 1)
    V.tensor(op, "k", k, ndim=3, device=dev, shape=(N, HKV, K), what="[N, HKV, K]")
    Vd = V.size(v, 3, 2)
    V.tensor(op, "v", v, ndim=3, device=dev, shape=(N, HKV, Vd), what="[N, HKV, V]")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        V.same_dtype(op, "q", q, k=k, v=v)
    if not HKV or H % HKV:
        V.divisible_heads(op, H, HKV)
    gate = _check_gate(op, g, q, dev, (N, HKV), K)
    S = V.size(state, 4, 0)
    V.tensor(op, "state", state, ndim=4, dtypes=(torch.float32, torch.bfloat16), device=dev,
             shape=(S, HKV, K, Vd), what="[S, HKV, K, V] cache of S slots", inplace=True)
    if state_indices is not None:
        V.tensor(op, "state_indices", state_indices, dtypes=V.INDEX_DTYPES, device=dev, shape=(N,), what="[N]")
        V.index_range(op, "state_indices", state_indices, 0, S)
    elif N > S:
        raise ValueError(f"sbops.{op}: without state_indices sequence i uses slot i, but the state has "
                         f"{S} slots for N={N} sequences")
    return (K, Vd), (gate,)


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
        o: [N, H, V] in q's dtype, equal to linear_attn's output at that step.  Not differentiable
        (backward through it raises; train with linear_attn).

    q, k, v, g may be strided views (e.g. `q[:, t]` of a [N, T, H, K] tensor, or splits of a fused
    projection); the CUDA kernel reads them in place when their last dimension is contiguous.
    `state` is written in place: its last dimension must be contiguous (other strides are fine) and
    its elements must not share memory (no expanded dimension).
    Data checks: state_indices in [0, S) and g <= 0 are checked on CPU tensors only by default (see
    sbops.set_data_checks).  Unchecked, a sequence whose state_indices[i] is out of range gets a NaN
    output row and no state slot is touched.
    """
    # fast path: plain comparisons that imply every check of _check_decode passes (anything else
    # takes the full checks, which raise naming the argument)
    if (q.__class__ is _T and k.__class__ is _T and v.__class__ is _T and state.__class__ is _T
            and (g is None or g.__class__ is _T)):
        qs, ks, vs, ss = q.shape, k.shape, v.shape, state.shape
        if (len(qs) == 3 and len(ks) == 3 and len(vs) == 3 and len(ss) == 4 and ks[0] == qs[0]
                and ks[2] == qs[2] and vs[:2] == ks[:2] and ks[1] and qs[1] % ks[1] == 0
                and ss[1:] == (ks[1], ks[2], vs[2]) and state.stride(-1) == 1
                and 0 not in state.stride()
                and (dt := q.dtype) in _FLOATS and k.dtype == dt and v.dtype == dt
                and state.dtype in _STATE_DTYPES
                and (dev := q.device) == k.device and v.device == dev and state.device == dev
                and (g is None or (g.dtype == _F32 or g.dtype == dt) and g.device == dev
                     and (g.shape == ks[:2] or g.shape == ks))
                and (state_indices is None and qs[0] <= ss[0]
                     or state_indices.__class__ is _T and state_indices.dtype in _INDEX
                     and state_indices.shape == qs[:1] and state_indices.device == dev
                     and not (qs[0] and V.checking_data(state_indices)))):
            if g is not None:
                _check_gate_values("linear_attn_decode", g)
            feats = (None if g is None else ("gate_per_head" if g.dim() == 2 else "gate_per_key"),)
            sc = V.scale("linear_attn_decode", scale, qs[2], "K")
            return run_no_grad("linear_attn_decode", q, (qs[2], vs[2]), feats, (q, k, v, g),
                               q, k, v, g, state, state_indices, sc)
    hd, feats = _check_decode(q, k, v, g, state, state_indices)
    scale = V.scale("linear_attn_decode", scale, q.shape[-1], "K")
    return run_no_grad("linear_attn_decode", q, hd, feats, (q, k, v, g),
                       q, k, v, g, state, state_indices, scale)
