"""Greedy generation with a constant-memory per-sequence cache."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .spikingbrain import ModelCache


class GenerateOutput(NamedTuple):
    sequences: torch.Tensor   # [B, T + n] prompt followed by the generated tokens
    scores: torch.Tensor      # [B, n, vocab] logits that chose each generated token


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: Optional[int] = None,
             cache: Optional[ModelCache] = None, output_scores: bool = False):
    """Greedy decoding: prefill the prompt once, then one decode step per new token.

    input_ids: [B, T] prompts of equal length (no padding).  The cache (allocated here unless one
    is passed, e.g. to inspect it afterwards) must be fresh; GLA layers keep a constant-size state
    and SWA layers a ring buffer of window + 1 rows, so memory does not grow with the length
    (full-attention layers, if any, are sized for T + max_new_tokens).  After a sequence emits
    eos_token_id it keeps emitting it; generation stops early when all have.
    Returns the sequences [B, T + n], or GenerateOutput(sequences, scores) with output_scores.
    """
    B, T = input_ids.shape
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return GenerateOutput(input_ids, input_ids.new_zeros(B, 0, 0)) if output_scores else input_ids
    if cache is None:
        cache = model.new_cache(B, max_length=T + max_new_tokens)
    logits = model(input_ids, cache=cache).logits[:, -1]
    tokens, scores = [], []
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    while True:
        nxt = logits.argmax(dim=-1)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
            finished |= nxt == eos_token_id
        tokens.append(nxt)
        scores.append(logits)
        if len(tokens) == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            break
        logits = model(nxt[:, None], cache=cache).logits[:, -1]
    sequences = torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
    return GenerateOutput(sequences, torch.stack(scores, dim=1)) if output_scores else sequences
