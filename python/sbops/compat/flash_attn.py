"""flash-attn API on sbops: flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache.

Semantics follow flash-attn 2:
  * q `[B, Sq, H, D]`, k/v `[B, Sk, HKV, D]` (varlen: `[total, H, D]` with cu_seqlens), H % HKV == 0.
  * softmax_scale defaults to D ** -0.5; the softmax runs in float32.
  * causal masks align to the bottom-right corner: query i attends key j iff
    j <= i + Sk - Sq.  window_size=(left, right) keeps keys i + Sk - Sq - left <= j <= ... + right;
    (left, 0) therefore means left + 1 keys; -1 means unbounded.  causal=True forces right = 0.
  * Supported: causal attention with any left window, and full bidirectional attention
    (causal=False, window_size=(-1, -1)).  Refused with an error naming the argument:
    dropout_p > 0, softcap != 0, alibi_slopes, windows with a right side (right > 0, or
    left >= 0 with right = -1), and in flash_attn_with_kvcache rotary_cos/rotary_sin,
    cache_leftpad and block_table (paged caches).
  * return_attn_probs=True returns `(out, softmax_lse, None)`: the per-row log-sum-exp of the
    scaled scores (natural log, float32; `[B, H, Sq]`, varlen `[H, total_q]`) stands in for the
    probabilities, and the third slot (flash-attn's dropout mask) is None.  A row with no key
    to attend (Sq > Sk under a causal mask) gives out = 0 and lse = +inf, as flash-attn does.
  * deterministic is accepted and ignored (the sbops kernels are deterministic in the forward).

Which path runs (everything is exact; the torch path computes the same math in float32 with
plain torch ops on the inputs' device, not a fused kernel, and holds one [Sq-chunk, Sk] score
block per head in memory):
  * flash_attn_func: Sq == Sk and causal -> sbops.swa_attn; otherwise the torch path.
  * flash_attn_varlen_func: causal with the same cu_seqlens for q and k (the same tensor, or
    equal values: comparing them reads them back, one sync) -> sbops.swa_attn(cu_seqlens=...);
    otherwise the torch path, one sequence at a time (reads cu_seqlens to the host).
  * flash_attn_with_kvcache: k/v (if given) are written into the cache at positions
    cache_seqlens .. + Sk_new with sbops.swa_cache_write (a contiguous cache of C rows is a ring
    buffer in which position p < C lives at row p); one query per sequence and no lse ->
    sbops.swa_decode; otherwise the torch path over the cache.
"""
from __future__ import annotations

import operator
from typing import Optional, Tuple

import torch

import sbops

_Q_CHUNK = 512


def _refuse(fn: str, dropout_p=0.0, softcap=0.0, alibi_slopes=None, **others):
    if dropout_p:
        raise NotImplementedError(f"{fn}: dropout_p={dropout_p} is not supported (sbops attention has no dropout); "
                                  f"pass dropout_p=0.0")
    if softcap:
        raise NotImplementedError(f"{fn}: softcap={softcap} is not supported; pass softcap=0.0")
    if alibi_slopes is not None:
        raise NotImplementedError(f"{fn}: alibi_slopes is not supported; pass alibi_slopes=None")
    for name, value in others.items():
        if value is not None:
            raise NotImplementedError(f"{fn}: {name} is not supported; pass {name}=None")


def _window(fn: str, causal: bool, window_size) -> Tuple[bool, int]:
    """(causal, left) from flash-attn's (causal, window_size); left = -1 means unbounded."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: window_size must be a pair of ints (left, right), got {window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"{fn}: window_size entries must be >= -1, got {window_size!r}")
    if causal or right == 0:
        return True, left
    if left == -1 and right == -1:
        return False, -1
    raise NotImplementedError(f"{fn}: window_size={tuple(window_size)} with causal={causal} has a right-hand window; "
                              f"only causal windows (right = 0) or full bidirectional attention (-1, -1) are supported")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _heads(fn: str, q, k, v, k_name: str = "k", v_name: str = "v", same_dtype: bool = True):
    H, HKV = q.shape[-2], k.shape[-2]
    if (k.shape != v.shape or H % HKV or q.shape[-1] != k.shape[-1]):
        raise ValueError(f"{fn}: q [.., H, D] and {k_name}, {v_name} [.., HKV, D] need H % HKV == 0 and the same "
                         f"head dim D; got q {tuple(q.shape)}, {k_name} {tuple(k.shape)}, {v_name} {tuple(v.shape)}")
    for name, t in (("q", q), (k_name, k), (v_name, v)):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{fn}: {name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                            f"got {t.dtype}")
    if k.dtype != v.dtype or (same_dtype and q.dtype != k.dtype):
        raise TypeError(f"{fn}: q, {k_name} and {v_name} must have the same dtype, got {q.dtype}, {k.dtype} and "
                        f"{v.dtype}")


def _attention_torch(q, k, v, scale: float, q_pos, k_len, causal: bool, left: int):
    """Exact masked attention in plain torch.

    q [B, Sq, H, D]; k, v [B, Sk, HKV, D]; q_pos [B, Sq] int64: each query's position in key
    coordinates; k_len [B] int64: keys j < k_len[b] exist.  Returns o [B, Sq, H, D] in q's dtype
    and lse [B, H, Sq] float32 (+inf where a row attends nothing, with o = 0 there).
    """
    B, Sq, H, D = q.shape
    Sk, HKV = k.shape[1], k.shape[2]
    G = H // HKV
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    j = torch.arange(Sk, device=q.device)
    present = (j[None, :] < k_len[:, None])[:, :, None, None]  # rows past k_len may hold garbage (NaN)
    kf, vf = k.to(ct).masked_fill(~present, 0.0), v.to(ct).masked_fill(~present, 0.0)
    outs, lses = [], []
    for s in range(0, Sq, _Q_CHUNK):
        c = min(_Q_CHUNK, Sq - s)
        qc = q[:, s:s + c].to(ct).reshape(B, c, HKV, G, D)
        scores = torch.einsum("bqhgd,bkhd->bhgqk", qc, kf) * scale
        pos = q_pos[:, s:s + c, None]
        valid = j[None, None, :] < k_len[:, None, None]
        if causal:
            valid = valid & (j[None, None, :] <= pos)
        if left >= 0:
            valid = valid & (j[None, None, :] >= pos - left)
        valid = valid[:, None, None]  # [B, 1, 1, c, Sk]
        scores = scores.masked_fill(~valid, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf on empty rows
        finite = torch.isfinite(lse)
        p = torch.exp(scores - torch.where(finite, lse, torch.zeros_like(lse))[..., None]).masked_fill(~valid, 0.0)
        outs.append(torch.einsum("bhgqk,bkhd->bqhgd", p, vf).reshape(B, c, H, D))
        lses.append(torch.where(finite, lse, torch.full_like(lse, float("inf"))).reshape(B, H, c))
    o = torch.cat(outs, dim=1) if outs else q.new_zeros((B, 0, H, D), dtype=ct)
    lse = torch.cat(lses, dim=2) if lses else q.new_zeros((B, H, 0), dtype=ct)
    return o.to(q.dtype), lse.float()


def _scale(softmax_scale, D):
    return D ** -0.5 if softmax_scale is None else float(softmax_scale)


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None, deterministic: bool = False,
                    return_attn_probs: bool = False):
    """flash_attn.flash_attn_func: q [B, Sq, H, D], k, v [B, Sk, HKV, D] -> out [B, Sq, H, D]
    (return_attn_probs: (out, softmax_lse [B, H, Sq], None))."""
    fn = "flash_attn_func"
    _refuse(fn, dropout_p, softcap, alibi_slopes)
    causal, left = _window(fn, causal, window_size)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[1] != v.shape[1]:
        raise ValueError(f"{fn}: q must be [B, Sq, H, D] and k, v [B, Sk, HKV, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    _heads(fn, q, k, v)
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    scale = _scale(softmax_scale, D)
    if causal and Sq == Sk:
        res = sbops.swa_attn(q, k, v, left, scale=scale, return_lse=return_attn_probs)
        if not return_attn_probs:
            return res
        o, lse = res
        return o, lse.transpose(1, 2).contiguous(), None
    q_pos = (torch.arange(Sq, device=q.device) + (Sk - Sq)).expand(B, Sq)
    k_len = torch.full((B,), Sk, device=q.device, dtype=torch.int64)
    o, lse = _attention_torch(q, k, v, scale, q_pos, k_len, causal, left)
    return (o, lse, None) if return_attn_probs else o


def _check_offsets(fn: str, name: str, c, what: str, total: int) -> None:
    if c[0] != 0 or c[-1] != total or any(b < a for a, b in zip(c, c[1:])):
        raise ValueError(f"{fn}: {name} must start at 0, be non-decreasing and end at {what}={total}; "
                         f"got {c[:4]}{'...' if len(c) > 4 else ''} ending at {c[-1]}")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                           dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None,
                           deterministic: bool = False, return_attn_probs: bool = False, block_table=None):
    """flash_attn.flash_attn_varlen_func: q [total_q, H, D], k, v [total_k, HKV, D], cu_seqlens_q/k
    int32 [B + 1] -> out [total_q, H, D] (return_attn_probs: (out, softmax_lse [H, total_q], None))."""
    fn = "flash_attn_varlen_func"
    _refuse(fn, dropout_p, softcap, alibi_slopes, block_table=block_table)
    causal, left = _window(fn, causal, window_size)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or k.shape[0] != v.shape[0]:
        raise ValueError(f"{fn}: q must be [total_q, H, D] and k, v [total_k, HKV, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    _heads(fn, q, k, v)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 1 or cu.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{fn}: {name} must be a 1-D int32 tensor [B + 1]")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"{fn}: cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    scale = _scale(softmax_scale, q.shape[-1])
    same = cu_seqlens_q is cu_seqlens_k or (
        max_seqlen_q == max_seqlen_k and q.shape[0] == k.shape[0] and torch.equal(cu_seqlens_q, cu_seqlens_k))
    if causal and same and cu_seqlens_q.numel() >= 2:
        # validated here, so that an error names this function and its argument, not sbops.swa_attn
        name = "cu_seqlens_q" if cu_seqlens_q is cu_seqlens_k else "cu_seqlens_q (= cu_seqlens_k)"
        if cu_seqlens_q.device != q.device:
            raise ValueError(f"{fn}: {name} must be on q's device {q.device}, got {cu_seqlens_q.device}")
        if sbops._validate.checking_data(cu_seqlens_q):   # CPU by default: reads the offsets back
            _check_offsets(fn, name, cu_seqlens_q.tolist(), "total_q", q.shape[0])
        res = sbops.swa_attn(q[None], k[None], v[None], left, scale=scale, cu_seqlens=cu_seqlens_q,
                             return_lse=return_attn_probs)
        if not return_attn_probs:
            return res[0]
        o, lse = res
        return o[0], lse[0].transpose(0, 1).contiguous(), None
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    _check_offsets(fn, "cu_seqlens_q", cq, "total_q", q.shape[0])
    _check_offsets(fn, "cu_seqlens_k", ck, "total_k", k.shape[0])
    outs, lses = [], []
    for b in range(len(cq) - 1):
        lq, lk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        q_pos = (torch.arange(lq, device=q.device) + (lk - lq))[None]
        k_len = torch.full((1,), lk, device=q.device, dtype=torch.int64)
        o, lse = _attention_torch(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]], v[None, ck[b]:ck[b + 1]],
                                  scale, q_pos, k_len, causal, left)
        outs.append(o[0])
        lses.append(lse[0])
    o = torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)
    lse = torch.cat(lses, dim=1) if lses else q.new_zeros((q.shape[1], 0), dtype=torch.float32)
    return (o, lse, None) if return_attn_probs else o


def _device_assert(cond: torch.Tensor, msg: str):
    """A range check that reads nothing back on a GPU: there a failure is a device-side assertion,
    as an out-of-bounds index in torch is, and like it ends the process's CUDA context (flash-attn's
    own kernel would read out of bounds instead); CPU tensors raise ValueError."""
    if cond.device.type == "cpu":
        if not bool(cond):
            raise ValueError(msg)
    else:
        torch._assert_async(cond, msg)


def _bound(C: int, Sn: int) -> str:
    """The upper bound of cache_seqlens, as session 17's contract writes it: C=<rows> without new tokens."""
    return f"C={C}" if not Sn else f"C - {Sn} = {C - Sn}"


def _room(C: int, Sn: int) -> str:
    if Sn:
        return (f" (k_cache holds C={C} rows and the {Sn} new tokens in k, v are written at positions "
                f"cache_seqlens .. cache_seqlens + {Sn - 1}, which must be < C)")
    return f" (k_cache holds C={C} rows)"


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale: Optional[float] = None, causal: bool = False, window_size=(-1, -1),
                            softcap: float = 0.0, rotary_interleaved: bool = True, alibi_slopes=None,
                            num_splits: int = 0, return_softmax_lse: bool = False):
    """flash_attn.flash_attn_with_kvcache (decode): q [B, Sq, H, D]; k_cache, v_cache [B_c, C, HKV, D]
    contiguous caches where a sequence's position p lives at row p; optional new k, v
    [B, Sn, HKV, D] are written in place at positions cache_seqlens[b] .. + Sn - 1 (which must be
    < C), then q attends the first cache_seqlens[b] + Sn rows of its cache row cache_batch_idx[b].
    cache_seqlens: an int32 tensor [B], or an int (every sequence has that length; 0 = empty
    caches), or None (every sequence holds all C rows; no new k, v then).  A sequence with no key
    at all gives out = 0 and lse = +inf, as flash-attn does.
    Returns out [B, Sq, H, D] (return_softmax_lse: (out, lse [B, H, Sq]))."""
    fn = "flash_attn_with_kvcache"
    _refuse(fn, 0.0, softcap, alibi_slopes, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
            cache_leftpad=cache_leftpad, block_table=block_table)
    causal, left = _window(fn, causal, window_size)
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"{fn}: q must be [B, Sq, H, D] and k_cache, v_cache [B_c, C, HKV, D] alike; got q "
                         f"{tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    _heads(fn, q, k_cache, v_cache, "k_cache", "v_cache", same_dtype=False)
    B, Sq, H, D = q.shape
    Bc, C = k_cache.shape[:2]
    dev = q.device
    slots = None
    if cache_batch_idx is not None:
        if (not isinstance(cache_batch_idx, torch.Tensor) or cache_batch_idx.shape != (B,)
                or cache_batch_idx.dtype not in (torch.int32, torch.int64)):
            raise ValueError(f"{fn}: cache_batch_idx must be an int32/int64 tensor [B] = [{B}]")
        _device_assert(((cache_batch_idx >= 0) & (cache_batch_idx < Bc)).all(),
                       f"{fn}: cache_batch_idx must lie in [0, {Bc}) (the k_cache rows)")
        slots = cache_batch_idx
    elif B > Bc:
        raise ValueError(f"{fn}: without cache_batch_idx batch row b uses cache row b, but k_cache has {Bc} rows "
                         f"for a batch of B={B}")
    if (k is None) != (v is None):
        raise ValueError(f"{fn}: pass both k and v (new tokens) or neither")
    if k is not None and (k.dim() != 4 or k.shape[0] != B or k.shape[2:] != k_cache.shape[2:] or v.shape != k.shape):
        raise ValueError(f"{fn}: k, v must be [B, Sn, HKV, D] = [{B}, Sn, {k_cache.shape[2]}, {D}], got "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    Sn = 0 if k is None else k.shape[1]
    if cache_seqlens is None:
        if k is not None:
            raise ValueError(f"{fn}: writing new k/v needs cache_seqlens (where to write them)")
        lens = torch.full((B,), C, device=dev, dtype=torch.int64)
        may_be_empty = C == 0
    elif isinstance(cache_seqlens, torch.Tensor):
        if cache_seqlens.shape != (B,) or cache_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{fn}: cache_seqlens must be an int or an int32 tensor [B] = [{B}], got a "
                             f"{cache_seqlens.dtype} tensor of shape {tuple(cache_seqlens.shape)}")
        lens = cache_seqlens.to(torch.int64)
        _device_assert(((lens >= 0) & (lens + Sn <= C)).all(),
                       f"{fn}: cache_seqlens must lie in [0, {_bound(C, Sn)}]" + _room(C, Sn))
        may_be_empty = Sn == 0
    else:
        # flash-attn: an int means every sequence holds that many tokens (0: an empty cache)
        try:
            n = operator.index(cache_seqlens)
        except TypeError:
            raise TypeError(f"{fn}: cache_seqlens must be None, an int or an int32 tensor [B] = [{B}], got "
                            f"{type(cache_seqlens).__name__}") from None
        if n < 0 or n + Sn > C:
            raise ValueError(f"{fn}: cache_seqlens={n} must lie in [0, {_bound(C, Sn)}]" + _room(C, Sn))
        lens = torch.full((B,), n, device=dev, dtype=torch.int64)
        may_be_empty = n + Sn == 0
    for t in range(Sn):
        sbops.swa_cache_write(k[:, t].detach().to(k_cache.dtype), v[:, t].detach().to(v_cache.dtype), k_cache, v_cache,
                              lens + t, slot_indices=slots)
    lens = lens + Sn
    scale = _scale(softmax_scale, D)
    if Sq == 1 and not return_softmax_lse and q.dtype == k_cache.dtype and C > 0:
        # One query at position L-1: causal or not, it sees keys L-1-left .. L-1 (all with left = -1).
        win = -1 if left < 0 or left >= C - 1 else left
        if may_be_empty:
            # a row may have no key (length 0): out = 0 there, as on the torch path and in flash-attn
            # (which writes out = 0, lse = +inf for an empty key set)
            o = sbops.swa_decode(q[:, 0], k_cache, v_cache, lens.clamp_min(1), win, scale=scale, slot_indices=slots)
            return torch.where(lens[:, None, None] > 0, o, 0)[:, None]
        return sbops.swa_decode(q[:, 0], k_cache, v_cache, lens, win, scale=scale, slot_indices=slots)[:, None]
    kc = k_cache if slots is None else k_cache.index_select(0, slots.to(torch.int64))
    vc = v_cache if slots is None else v_cache.index_select(0, slots.to(torch.int64))
    if slots is None:
        kc, vc = kc[:B], vc[:B]
    q_pos = lens[:, None] - Sq + torch.arange(Sq, device=dev)[None]
    o, lse = _attention_torch(q, kc, vc, scale, q_pos, lens, causal, left)
    return (o, lse) if return_softmax_lse else o


__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]
