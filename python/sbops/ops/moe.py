"""Mixture-of-experts routing: gating, permutation, block alignment, counts. SPEC section 4."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _validate as V
from ._common import run

SCORINGS = ("softmax", "sigmoid")


def _check_ids(op, ids, num_experts, T=None, name="ids"):
    V.tensor(op, name, ids, ndim=2, dtypes=V.INDEX_DTYPES, what="[T, k] expert ids (< 0: dropped)")
    if T is not None and ids.shape[0] != T:
        raise ValueError(f"sbops.{op}: {name} must have shape [T={T}, k], got {list(ids.shape)}")
    E = V.as_int(num_experts)
    if E is None or E < 1:
        raise ValueError(f"sbops.{op}: num_experts must be a positive int, got {num_experts!r}")
    if ids.numel() > 0 and V.checking_data(ids):
        hi = int(ids.max())
        if hi >= E:
            raise ValueError(f"sbops.{op}: {name} holds expert id {hi} but num_experts={E}")
    return E


_NO = ()


def topk_gating(logits: torch.Tensor, k: int, scoring: str = "softmax", renormalize: bool = True,
                bias: Optional[torch.Tensor] = None, num_groups: Optional[int] = None,
                topk_groups: Optional[int] = None, scaling: float = 1.0):
    """Top-k expert choice per token.

    scores = softmax or sigmoid(logits) in float32; `bias` [E] is added for the choice only; with
    num_groups, each group of E/num_groups experts is scored by its best expert and only the best
    topk_groups groups are eligible; the top k eligible experts are chosen (ties: lower index),
    in descending order. weights = their unbiased scores (/ sum if renormalize) * scaling.
    Returns (weights [T, k] float32, ids [T, k] int32); differentiable in logits.
    logits and bias may be strided views; they are read as they are or copied internally.
    """
    op = "topk_gating"
    V.tensor(op, "logits", logits, ndim=2, dtypes=V.FLOAT_DTYPES, what="[T, E]")
    E = logits.shape[1]
    ki = V.as_int(k)
    if ki is None or not 1 <= ki <= E:
        raise ValueError(f"sbops.{op}: k must be an int in [1, E={E}], got {k!r}")
    k = ki
    if scoring not in SCORINGS:
        raise ValueError(f"sbops.{op}: scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    if bias is not None:
        V.tensor(op, "bias", bias, dtypes=V.FLOAT_DTYPES, device=logits.device, shape=(E,), what="[E]")
    if num_groups is not None:
        ng, tg = V.as_int(num_groups), V.as_int(topk_groups)
        if ng is None or ng < 1 or E % ng:
            raise ValueError(f"sbops.{op}: num_groups must be a positive divisor of E={E}, got {num_groups!r}")
        if tg is None or not 1 <= tg <= ng:
            raise ValueError(f"sbops.{op}: with num_groups={ng}, topk_groups must be an int in "
                             f"[1, {ng}], got {topk_groups!r}")
        num_groups, topk_groups = ng, tg
        if topk_groups * (E // num_groups) < k:
            raise ValueError(f"sbops.{op}: topk_groups={topk_groups} groups of {E // num_groups} experts hold fewer "
                             f"than k={k} experts")
    elif topk_groups is not None:
        raise ValueError(f"sbops.{op}: topk_groups needs num_groups")
    if isinstance(scaling, torch.Tensor):   # float() of a CUDA tensor would be a silent device sync
        raise TypeError(f"sbops.{op}: scaling must be a Python float, got a tensor; pass scaling.item()")
    try:
        scaling = float(scaling)
    except (TypeError, ValueError):
        raise TypeError(f"sbops.{op}: scaling must be a Python float (the weights' factor), got "
                        f"{type(scaling).__name__} {scaling!r}") from None
    if not -math.inf < scaling < math.inf:
        raise ValueError(f"sbops.{op}: scaling must be a finite number (the weights' factor), got {scaling!r}")
    feats = ("bias" if bias is not None else None, "groups" if num_groups else None)
    return run(op, logits, _NO, feats, logits, k, scoring, bool(renormalize), bias,
               int(num_groups or 0), int(topk_groups or 0), scaling)


def moe_permute(x: torch.Tensor, ids: torch.Tensor, num_experts: int):
    """Group token rows by expert.

    Returns x_perm [T*k, Hd] (routed rows by expert ascending, then (token, slot); zero rows for
    dropped slots after them), expert_offsets [E+1] int64 and row_map [T, k] int32 (-1: dropped).
    Differentiable in x.  x and ids may be strided views (copied internally where needed).
    Data checks: ids < num_experts is checked on CPU tensors only by default (see
    sbops.set_data_checks).  Unchecked, an id >= num_experts is treated as dropped, like ids < 0.
    """
    op = "moe_permute"
    V.tensor(op, "x", x, ndim=2, dtypes=V.FLOAT_DTYPES, what="[T, Hd]")
    num_experts = _check_ids(op, ids, num_experts, T=x.shape[0])
    V.tensor(op, "ids", ids, device=x.device)
    return run(op, x, _NO, _NO, x, ids, num_experts)


def moe_unpermute(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * y_perm[row_map[t, j]] over routed slots (float32 accumulation).

    Returns y [T, Hd] in y_perm's dtype; differentiable in y_perm and weights.  Inputs may be
    strided views (copied internally where needed).
    Data checks: row_map in [-1, R) is checked on CPU tensors only by default (see
    sbops.set_data_checks).  Unchecked, an entry outside [-1, R) is treated as dropped (-1).
    """
    op = "moe_unpermute"
    V.tensor(op, "y_perm", y_perm, ndim=2, dtypes=V.FLOAT_DTYPES, what="[R, Hd]")
    dev = y_perm.device
    V.tensor(op, "row_map", row_map, ndim=2, dtypes=(torch.int32,), device=dev, what="[T, k] int32")
    V.tensor(op, "weights", weights, dtypes=V.FLOAT_DTYPES, device=dev, shape=tuple(row_map.shape), what="[T, k]")
    V.index_range(op, "row_map", row_map, -1, y_perm.shape[0])
    return run(op, y_perm, _NO, _NO, y_perm, row_map, weights)


def moe_align_block_size(ids: torch.Tensor, num_experts: int, block_size: int):
    """vLLM's moe_align_block_size: each expert's rows padded to a multiple of block_size.

    Returns sorted_ids int32 [n + E*(block_size-1)] (padding holds n = ids.numel()),
    block_expert_ids int32 [ceil(len/block_size)] (-1 for unused blocks) and
    num_tokens_post_pad int32 [1].
    Data checks: ids < num_experts is checked on CPU tensors only by default (see
    sbops.set_data_checks).  Unchecked, ids outside [0, num_experts) are ignored (not routed).
    """
    op = "moe_align_block_size"
    num_experts = _check_ids(op, ids, num_experts)
    bs = V.as_int(block_size)
    if bs is None or bs < 1:
        raise ValueError(f"sbops.{op}: block_size must be a positive int, got {block_size!r}")
    block_size = bs
    return run(op, ids, _NO, _NO, ids, num_experts, block_size)


def expert_counts(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Histogram [E] int64 of routed expert ids (ids < 0 are not counted).

    Data checks: ids < num_experts is checked on CPU tensors only by default (see
    sbops.set_data_checks).  Unchecked, ids outside [0, num_experts) are not counted.
    """
    op = "expert_counts"
    num_experts = _check_ids(op, ids, num_experts)
    return run(op, ids, _NO, _NO, ids, num_experts)
