"""generate()'s argument checks: each error names the argument and what was expected."""
from __future__ import annotations

import operator
from typing import List, Optional, Tuple

import torch


def as_int(v, name: str, minimum: int, what: str = "") -> int:
    """An int (numpy ints and one-element integer tensors too; not a bool or a float) >= minimum."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not (v.is_floating_point() or v.dtype == torch.bool):
        v = v.item()
    try:
        if isinstance(v, bool):
            raise TypeError
        n = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}{what}, got {v!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}{what}, got {n}")
    return n


def as_flag(v, name: str) -> bool:
    """True / False (numpy bools too); None means False, as in Hugging Face's GenerationConfig."""
    if v is None:
        return False
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r}")


def token_ids(ids, name: str) -> List[int]:
    """None, an int, a sequence / set of ints, or an integer tensor / numpy value -> a list of ints."""
    if ids is None:
        return []
    if isinstance(ids, (set, frozenset)):
        ids = sorted(ids)
    if isinstance(ids, (list, tuple)) and not ids:
        return []
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
        raise TypeError(f"{name} must be an int or a list of ints, got {ids!r}")
    return [int(v) for v in t.flatten().tolist()]


def _integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def prompts(input_ids, attention_mask, device: torch.device) -> Tuple[List[torch.Tensor], bool]:
    """-> (list of 1-D prompts, whether the input was a list).  The prompts must be integer tensors on
    the model's `device` (nothing is moved); with attention_mask the masked-out tokens are dropped."""
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a [B, T] tensor; a list of prompts needs none")
        out = []
        for i, p in enumerate(input_ids):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"input_ids[{i}] must be a 1-D integer tensor, got {type(p).__name__}")
            if not _integer(p):
                raise TypeError(f"input_ids[{i}] must hold integer token ids, got {p.dtype}")
            if p.dim() != 1 or p.numel() == 0:
                raise ValueError(f"input_ids[{i}] must be a non-empty 1-D tensor, got shape {tuple(p.shape)}")
            if p.device != device:
                raise ValueError(f"input_ids[{i}] is on {p.device} but the model is on {device}: pass input_ids "
                                 f"on {device} (generate moves no tensors)")
            out.append(p)
        return out, True
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a [B, T] integer tensor or a list of 1-D tensors, got "
                        f"{type(input_ids).__name__}")
    if not _integer(input_ids):
        raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a [B, T] tensor (T >= 1) or a list of 1-D tensors, got shape "
                         f"{tuple(input_ids.shape)}")
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device} but the model is on {device}: pass input_ids on "
                         f"{device} (generate moves no tensors)")
    if attention_mask is None:
        return list(input_ids.unbind(0)), False
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a [B, T] tensor of 0 / 1 like input_ids, got "
                        f"{type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must be shaped like input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids are on {input_ids.device}")
    out = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]  # padding dropped, left or right
    if any(p.numel() == 0 for p in out):
        raise ValueError("every row of attention_mask needs at least one 1")
    return out, False


def default_token_ids(model, eos_token_id, pad_token_id) -> Tuple[List[int], int]:
    """(eos ids, pad id): the arguments, else model.config's (Hugging Face's generation_config
    defaults); the pad id falls back to the first eos id, then 0."""
    cfg = getattr(model, "config", None)
    if eos_token_id is None:
        eos_token_id = getattr(cfg, "eos_token_id", None)
    eos = token_ids(eos_token_id, "eos_token_id")
    if pad_token_id is None:
        pad_token_id = getattr(cfg, "pad_token_id", None)
    neg = [e for e in eos if e < 0]
    if neg:   # a negative id can never be sampled: generation would never stop on it
        raise ValueError(f"eos_token_id must hold token ids >= 0, got {neg}"
                         + (" (from model.config)" if eos_token_id is getattr(cfg, "eos_token_id", None) else ""))
    if pad_token_id is None:
        return eos, eos[0] if eos else 0
    from_cfg = pad_token_id is getattr(cfg, "pad_token_id", None)
    if isinstance(pad_token_id, torch.Tensor) and pad_token_id.numel() == 1 and _integer(pad_token_id):
        pad_token_id = pad_token_id.item()
    try:
        if isinstance(pad_token_id, bool):
            raise TypeError
        pad = operator.index(pad_token_id)
    except TypeError:
        raise TypeError(f"pad_token_id must be an int (or None: the first eos id), got {pad_token_id!r}") from None
    if pad < 0:   # it fills the stopped rows of the returned sequences, which are token ids
        raise ValueError(f"pad_token_id must be a token id >= 0, got {pad}"
                         + (" (from model.config: pass pad_token_id=)" if from_cfg else ""))
    return eos, pad


def optional_int(v, name: str, minimum: int, what: str = "") -> Optional[int]:
    return None if v is None else as_int(v, name, minimum, what)
