"""Next-token selection: greedy, or sampling with temperature / top-k / top-p and a torch.Generator."""
from __future__ import annotations

import numbers
import warnings
from typing import Optional

import torch


def check_sampling(do_sample: bool, temperature: float, top_k: int, top_p: float):
    """-> (temperature, top_k, top_p) checked, with None meaning "unset" as in Hugging Face's GenerationConfig
    (1.0, 0, 1.0) and one-element tensors read as numbers.  Their types are always checked; their values
    only when sampling (Hugging Face's warpers: temperature > 0, top_k >= 0 with 0 = off, top_p in [0, 1]
    with 1 = off and 0 = the most likely token only).  Greedy decoding ignores them, with a warning when
    one is set to something else than off (as Hugging Face's GenerationConfig.validate)."""
    vals = []
    for v, unset in ((temperature, 1.0), (top_k, 0), (top_p, 1.0)):
        if v is None:
            v = unset
        elif isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype == torch.bool:
            v = v.item()
        vals.append(v)
    temperature, top_k, top_p = vals
    for name, v, kind in (("temperature", temperature, numbers.Real), ("top_p", top_p, numbers.Real),
                          ("top_k", top_k, numbers.Integral)):   # numpy scalars register as these
        if isinstance(v, bool) or not isinstance(v, kind):
            raise TypeError(f"{name} must be {'an int' if kind is numbers.Integral else 'a number'}, got {v!r}")
    if not do_sample:
        set_ = [f"{n}={v!r}" for n, v, off in (("temperature", temperature, 1.0), ("top_k", top_k, 0),
                                                ("top_p", top_p, 1.0)) if v != off]
        if set_:
            warnings.warn(f"generate: do_sample=False (greedy decoding) ignores {', '.join(set_)}; pass "
                          f"do_sample=True to sample with them", UserWarning, stacklevel=4)
        return 1.0, 0, 1.0
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature} (for greedy decoding pass "
                         f"do_sample=False)")
    if int(top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 <= float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in [0, 1] (1 = off), got {top_p}")
    return float(temperature), int(top_k), float(top_p)


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                   ) -> torch.Tensor:
    """float32 scores [N, V]: logits / temperature, then everything outside the top_k tokens and
    outside the smallest set whose probability reaches top_p (the most likely token always stays)
    set to -inf (Hugging Face's warpers, in that order)."""
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs          # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def select_next(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [N, V] -> next tokens [N] int64: argmax (greedy), or one draw from the processed
    distribution with torch.multinomial(generator=...) (the generator must live on logits' device)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(process_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
