"""Sliding-window attention: prefill/training and ring-buffer decode. SPEC section 2."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import _validate as V
from .. import _registration
from ._common import run, run_no_grad

_T = torch.Tensor
_FLOATS = frozenset(V.FLOAT_DTYPES)
_INDEX = frozenset(V.INDEX_DTYPES)
_FULL = "full_causal"


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _window(op, window) -> int:
    w = V.as_int(window)
    if w is None:
        raise TypeError(f"sbops.{op}: window must be an int (< 0 for full causal), got {type(window).__name__}")
    if not _I64_MIN <= w <= _I64_MAX:   # the schema's int is int64
        raise ValueError(f"sbops.{op}: window must fit int64 ([{_I64_MIN}, {_I64_MAX}]; < 0 for full "
                         f"causal), got {w}")
    return w


def _check(q, k, v, window, cu_seqlens, sink_k, sink_v):
    op = "swa_attn"
    V.tensor(op, "q", q, ndim=4, dtypes=V.FLOAT_DTYPES, what="[B, T, H, D]")
    dev = q.device
    B, T, H, D = q.shape
    HKV = V.size(k, 4, 2)
    V.tensor(op, "k", k, ndim=4, device=dev, shape=(B, T, HKV, D), what="[B, T, HKV, D]")
    V.tensor(op, "v", v, device=dev, shape=(B, T, HKV, D), what="[B, T, HKV, D]")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        V.same_dtype(op, "q", q, k=k, v=v)
    if not HKV or H % HKV:
        V.divisible_heads(op, H, HKV)
    window = _window(op, window)
    V.cu_seqlens(op, cu_seqlens, B, T, dev)
    _check_sinks(op, q, sink_k, sink_v, HKV, D, dev)
    feats = ("varlen" if cu_seqlens is not None else None, "sinks" if sink_k is not None else None,
             "full_causal" if window < 0 else None)
    return (D,), feats


def _check_sinks(op, q, sink_k, sink_v, HKV, D, dev):
    if (sink_k is None) != (sink_v is None):
        raise ValueError(f"sbops.{op}: sink_k and sink_v must be given together")
    if sink_k is not None:
        M = V.size(sink_k, 3, 0)
        V.tensor(op, "sink_k", sink_k, ndim=3, device=dev, shape=(M, HKV, D), what="[M, HKV, D]")
        V.tensor(op, "sink_v", sink_v, device=dev, shape=(M, HKV, D), what="[M, HKV, D]")
        V.same_dtype(op, "q", q, sink_k=sink_k, sink_v=sink_v)


def swa_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: Optional[float] = None,
             cu_seqlens: Optional[torch.Tensor] = None, sink_k: Optional[torch.Tensor] = None,
             sink_v: Optional[torch.Tensor] = None, return_lse: bool = False
             ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Causal sliding-window attention (softmax in float32).

    Args:
        q: [B, T, H, D]; k, v: [B, T, HKV, D] (GQA: H % HKV == 0).
        window: query i attends keys i - window .. i (window + 1 keys); window < 0: full causal.
        scale: defaults to D ** -0.5.
        cu_seqlens: int32/int64 [N+1] packed variable-length sequences (B must be 1); attention
            never crosses a sequence boundary.
        sink_k, sink_v: [M, HKV, D] extra keys/values every query attends (SpikingBrain-76B's meta
            tokens), merged into the same softmax.
        return_lse: also return lse [B, T, H] float32 (natural log).
    Returns:
        o [B, T, H, D] in q's dtype, or (o, lse). Differentiable in q, k, v, sink_k, sink_v.

    Inputs may be strided views (slices, splits of a fused qkv projection, transposed batches):
    the GPU kernels read tensors whose last dimension is contiguous in place and copy others
    internally; the CPU reference copies.  Outputs are contiguous.
    Data checks: cu_seqlens (start 0, non-decreasing, end T) is checked on CPU tensors only by
    default (see sbops.set_data_checks); on the GPU the kernels clamp its offsets into [0, T], so
    bad offsets give an unspecified result but never an out-of-bounds access.
    """
    hd, feats = _check(q, k, v, window, cu_seqlens, sink_k, sink_v)
    scale = V.scale("swa_attn", scale, q.shape[-1], "D")
    o, lse = run("swa_attn", q, hd, feats, q, k, v, int(window), scale, cu_seqlens, sink_k, sink_v)
    return (o, lse) if return_lse else o


def _check_cache(op, k_cache, v_cache, dev, HKV, D, inplace=False):
    S, C = V.size(k_cache, 4, 0), V.size(k_cache, 4, 1)
    V.tensor(op, "k_cache", k_cache, ndim=4, dtypes=V.FLOAT_DTYPES, device=dev, shape=(S, C, HKV, D),
             what="[S, C, HKV, D]", inplace=inplace)
    V.tensor(op, "v_cache", v_cache, device=dev, shape=(S, C, HKV, D), what="[S, C, HKV, D]", inplace=inplace)
    if v_cache.dtype != k_cache.dtype:
        V.same_dtype(op, "k_cache", k_cache, v_cache=v_cache)
    return S, C


def _check_slots(op, slot_indices, N, S, dev):
    if slot_indices is not None:
        V.tensor(op, "slot_indices", slot_indices, dtypes=V.INDEX_DTYPES, device=dev, shape=(N,), what="[N]")
        V.index_range(op, "slot_indices", slot_indices, 0, S)
    elif N > S:
        raise ValueError(f"sbops.{op}: without slot_indices sequence i uses slot i, but the cache has {S} slots "
                         f"for N={N} sequences")


def swa_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
               window: int, scale: Optional[float] = None, slot_indices: Optional[torch.Tensor] = None,
               sink_k: Optional[torch.Tensor] = None, sink_v: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention of one new query per sequence over its ring-buffer cache.

    Args:
        q: [N, H, D]; k_cache, v_cache: [S, C, HKV, D] ring buffers (position p at row p % C),
            C >= window + 1 (or >= the longest length when window < 0).
        seq_lens: int32/int64 [N] lengths L including the current token (already written with
            swa_cache_write); positions max(0, L-1-window) .. L-1 are attended.
        slot_indices: [N] cache slot of each sequence (default i).
        sink_k, sink_v: [M, HKV, D] extra keys/values every query attends (SpikingBrain-76B's meta
            tokens), merged into the same softmax, as in swa_attn.
    Returns:
        o: [N, H, D] in q's dtype; equals the last row of swa_attn over the same sequence (with
        the same sinks).  Not differentiable (backward through it raises; train with swa_attn).

    q and the caches may be strided views (e.g. `q[:, t]`); the CUDA kernel reads them in place
    when their last dimension is contiguous.  Outputs are contiguous.
    Data checks: slot_indices in [0, S), seq_lens >= 1 and the cache capacity are checked on CPU
    tensors only by default (see sbops.set_data_checks).  Unchecked, a sequence whose slot is out
    of range or whose seq_len is < 1 gets a NaN output row; nothing is read out of bounds.
    """
    op = "swa_decode"
    # fast path (the common call, no sinks): plain comparisons that imply every check below passes;
    # anything else takes the full checks, which raise naming the argument
    if (sink_k is None and sink_v is None and type(window) is int and _I64_MIN <= window <= _I64_MAX
            and q.__class__ is _T
            and k_cache.__class__ is _T and v_cache.__class__ is _T and seq_lens.__class__ is _T):
        qs, cs = q.shape, k_cache.shape
        if (len(qs) == 3 and len(cs) == 4 and cs[2] and qs[1] % cs[2] == 0 and qs[2] == cs[3]
                and v_cache.shape == cs and (dt := q.dtype) in _FLOATS and k_cache.dtype == dt
                and v_cache.dtype == dt and seq_lens.dtype in _INDEX and seq_lens.shape == qs[:1]
                and (dev := q.device) == k_cache.device and v_cache.device == dev and seq_lens.device == dev
                and (slot_indices is None and qs[0] <= cs[0]
                     or slot_indices.__class__ is _T and slot_indices.dtype in _INDEX
                     and slot_indices.shape == qs[:1] and slot_indices.device == dev)
                and not (qs[0] and V.checking_data(seq_lens))):
            sc = V.scale(op, scale, qs[2], "D")
            return run_no_grad(op, q, (qs[2],), (_FULL if window < 0 else None, None),
                               (q, k_cache, v_cache),
                               q, k_cache, v_cache, seq_lens, window, sc, slot_indices)
    V.tensor(op, "q", q, ndim=3, dtypes=V.FLOAT_DTYPES, what="[N, H, D]")
    dev = q.device
    N, H, D = q.shape
    HKV = V.size(k_cache, 4, 2)
    S, C = _check_cache(op, k_cache, v_cache, dev, HKV, D)
    if not HKV or H % HKV:
        V.divisible_heads(op, H, HKV)
    V.tensor(op, "seq_lens", seq_lens, dtypes=V.INDEX_DTYPES, device=dev, shape=(N,), what="[N]")
    window = _window(op, window)
    _check_slots(op, slot_indices, N, S, dev)
    _check_sinks(op, q, sink_k, sink_v, HKV, D, dev)
    if N > 0 and V.checking_data(seq_lens):
        lo, hi = (int(t) for t in torch.aminmax(seq_lens))
        if lo < 1:
            raise ValueError(f"sbops.{op}: seq_lens must be >= 1 (the current token is in the cache), got {lo}")
        need = hi if window < 0 else min(hi, window + 1)
        if need > C:
            raise ValueError(f"sbops.{op}: the cache holds C={C} rows but a sequence needs {need} "
                             f"(window={window}, longest seq_len={hi}); C must be >= "
                             + ("the longest seq_len (window < 0: full causal)" if window < 0 else "window + 1"))
    if k_cache.dtype != q.dtype:
        V.same_dtype(op, "q", q, k_cache=k_cache)
    feats = ("full_causal" if window < 0 else None, "sinks" if sink_k is not None else None)
    scale = V.scale(op, scale, D, "D")
    grad_inputs = (q, k_cache, v_cache, sink_k, sink_v)
    if sink_k is None:   # the schema's sink arguments default to None
        return run_no_grad(op, q, (D,), feats, grad_inputs, q, k_cache, v_cache, seq_lens, int(window), scale, slot_indices)
    return run_no_grad(op, q, (D,), feats, grad_inputs, q, k_cache, v_cache, seq_lens, int(window), scale, slot_indices,
                       sink_k, sink_v)


def swa_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    positions: torch.Tensor, slot_indices: Optional[torch.Tensor] = None) -> None:
    """Store the new token's k, v [N, HKV, D] at row positions[i] % C of slot slot_indices[i] (in place).

    k and v may be strided views (e.g. `k[:, t]`, or splits of a fused projection).  k_cache and
    v_cache are written in place: their last dimension must be contiguous (other strides are fine)
    and their elements must not share memory (no expanded dimension).
    Data checks: slot_indices in [0, S) and positions >= 0 are checked on CPU tensors only by
    default (see sbops.set_data_checks).  Unchecked, a row whose slot is out of range or whose
    position is negative is not written.
    """
    op = "swa_cache_write"
    # fast path: plain comparisons that imply every check below passes (else the full checks raise)
    fast = (k.__class__ is _T and v.__class__ is _T and k_cache.__class__ is _T and v_cache.__class__ is _T
            and positions.__class__ is _T
            and len(ks := k.shape) == 3 and len(cs := k_cache.shape) == 4 and ks[1:] == cs[2:] and v.shape == ks
            and v_cache.shape == cs
            and (dt := k.dtype) in _FLOATS and v.dtype == dt and k_cache.dtype == dt and v_cache.dtype == dt
            and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
            and 0 not in k_cache.stride() and 0 not in v_cache.stride()
            and positions.dtype in _INDEX and positions.shape == ks[:1]
            and (dev := k.device) == v.device and k_cache.device == dev and v_cache.device == dev
            and positions.device == dev
            and (slot_indices is None and ks[0] <= cs[0]
                 or slot_indices.__class__ is _T and slot_indices.dtype in _INDEX
                 and slot_indices.shape == ks[:1] and slot_indices.device == dev)
            and not (ks[0] and V.checking_data(positions)))
    if not fast:
        V.tensor(op, "k", k, ndim=3, dtypes=V.FLOAT_DTYPES, what="[N, HKV, D]")
        dev = k.device
        N, HKV, D = k.shape
        V.tensor(op, "v", v, device=dev, shape=(N, HKV, D), what="[N, HKV, D]")
        S, C = _check_cache(op, k_cache, v_cache, dev, HKV, D, inplace=True)
        if k.dtype != k_cache.dtype or v.dtype != k_cache.dtype:
            V.same_dtype(op, "k_cache", k_cache, k=k, v=v)
        V.tensor(op, "positions", positions, dtypes=V.INDEX_DTYPES, device=dev, shape=(N,), what="[N]")
        _check_slots(op, slot_indices, N, S, dev)
        if N > 0 and V.checking_data(positions):
            lo = int(positions.min())
            if lo < 0:
                raise ValueError(f"sbops.{op}: positions must be >= 0, got {lo}")
    run(op, k_cache, (k.shape[2],), (), k, v, k_cache, v_cache, positions, slot_indices)
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or k_cache.requires_grad or v_cache.requires_grad):
        _registration.mark_cache_write(k_cache, v_cache)
