"""SpikingBrainForCausalLM.forward's output (Hugging Face's ModelOutput conventions) and its argument checks."""
from __future__ import annotations

import operator
from typing import Optional

import torch

from sbops._validate import checking_data



class CausalLMOutput(tuple):
    """forward's result: attributes loss, logits, past_key_values and aux_loss, indexed as Hugging
    Face's ModelOutput (CausalLMOutputWithPast): the fields that are not None in the order
    (loss, logits, past_key_values, aux_loss), so out[0] is the loss when labels were given and the
    logits otherwise; out["logits"], to_tuple(), keys() / values() / items() as in Hugging Face.

      logits [B, T, vocab] (the kept positions); loss: next-token cross-entropy + router_aux_loss_coef *
      aux_loss (labels given, else None); past_key_values: the ModelCache the call used or made (None
      without one); aux_loss: the summed MoE load-balancing losses (0 without MoE), unscaled.

    Built as CausalLMOutput(logits, aux_loss, loss=None, past_key_values=None) (the old NamedTuple's
    argument order)."""

    _ORDER = ("loss", "logits", "past_key_values", "aux_loss")

    def __new__(cls, logits, aux_loss=None, loss=None, past_key_values=None):
        fields = dict(loss=loss, logits=logits, past_key_values=past_key_values, aux_loss=aux_loss)
        self = super().__new__(cls, tuple(fields[k] for k in cls._ORDER if fields[k] is not None))
        self._fields = fields
        return self

    def __reduce__(self):
        f = self._fields
        return (type(self), (f["logits"], f["aux_loss"], f["loss"], f["past_key_values"]))

    @property
    def loss(self) -> Optional[torch.Tensor]:
        return self._fields["loss"]

    @property
    def logits(self) -> torch.Tensor:
        return self._fields["logits"]

    @property
    def past_key_values(self):
        return self._fields["past_key_values"]

    @property
    def aux_loss(self) -> Optional[torch.Tensor]:
        return self._fields["aux_loss"]

    @property
    def hidden_states(self) -> None:
        """None, as in Hugging Face without output_hidden_states (which forward refuses)."""
        return None

    @property
    def attentions(self) -> None:
        """None, as in Hugging Face without output_attentions (which forward refuses)."""
        return None

    def __getitem__(self, key):
        if isinstance(key, str):
            if self._fields.get(key) is None:   # Hugging Face: a field left None is not a key
                raise KeyError(key)
            return self._fields[key]
        return super().__getitem__(key)

    def __contains__(self, key):   # Hugging Face's ModelOutput is a dict: `"logits" in out` tests a key
        if isinstance(key, str):
            return self._fields.get(key) is not None
        return super().__contains__(key)

    def get(self, key, default=None):
        return self[key] if key in self._fields and self._fields[key] is not None else default

    def keys(self):
        return [k for k in self._ORDER if self._fields[k] is not None]

    def values(self):
        return list(self)

    def items(self):
        return list(zip(self.keys(), self))

    def to_tuple(self) -> tuple:
        return tuple(self)

    def __repr__(self) -> str:
        return "CausalLMOutput(" + ", ".join(f"{k}={v!r}" for k, v in self.items()) + ")"


def check_input_ids(input_ids, device: torch.device, vocab_size: Optional[int] = None) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a [B, T] integer tensor, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids (int64 / int32), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T] (or [1, total] with cu_seqlens), got shape {tuple(input_ids.shape)}")
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device} but the model is on {device}: pass input_ids "
                         f"on {device} (the model moves no tensors)")
    if vocab_size is not None and input_ids.numel() and checking_data(input_ids):   # one host read; not on GPUs
        mn, mx = (int(v) for v in torch.aminmax(input_ids))                           # by default (no sync)
        if mn < 0 or mx >= vocab_size:
            raise IndexError(f"input_ids must be token ids in [0, vocab_size={vocab_size}), got values in [{mn}, {mx}]")


def check_labels(labels, input_ids: torch.Tensor) -> torch.Tensor:
    """labels as int64 (integer dtypes only), shaped and placed like input_ids."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a [B, T] integer tensor like input_ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer token ids (-100 = ignored), got {labels.dtype}")
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must be shaped like input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
    if labels.device != input_ids.device:
        raise ValueError(f"labels are on {labels.device} but input_ids and the model are on {input_ids.device}: "
                         f"pass labels on {input_ids.device}")
    return labels if labels.dtype == torch.int64 else labels.long()


def check_attention_mask(mask, input_ids: torch.Tensor, with_cache: bool) -> None:
    """forward takes an attention mask without padding only (all ones: Hugging Face's tokenizer output
    for unpadded text); with a cache it may cover the held tokens too ([B, held + T]).  The ones are
    checked on the host where data checks are on (CPU tensors by default; a GPU mask only under
    sbops.set_data_checks(True): the default call on GPU tensors never reads data back)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a [B, T] tensor of ones (or None), got {type(mask).__name__}")
    B, T = input_ids.shape
    if mask.dim() != 2 or mask.shape[0] != B or (mask.shape[1] < T if with_cache else mask.shape[1] != T):
        want = f"[{B}, {'>= ' if with_cache else ''}{T}]"
        raise ValueError(f"attention_mask must be {want} like input_ids, got shape {tuple(mask.shape)}")
    if mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {mask.device} but input_ids are on {input_ids.device}")
    read = checking_data(mask)   # a GPU mask is read only under sbops.set_data_checks(True): no sync by default
    if read and mask.numel() and not bool((mask == 1).all()):
        raise ValueError("attention_mask has padding (zeros): forward takes no padding. Pack sequences of different "
                         "lengths with cu_seqlens= (input_ids [1, total]), or let generate(input_ids, "
                         "attention_mask=...) drop the padding")


def check_logits_to_keep(logits_to_keep, device: torch.device):
    """int (numpy ints too), a 1-D index tensor, or a list / tuple of positions (made a tensor, as
    Hugging Face's hidden[:, logits_to_keep] accepts a list)."""
    if isinstance(logits_to_keep, torch.Tensor):
        return logits_to_keep
    if isinstance(logits_to_keep, (list, tuple)):
        try:
            idx = torch.tensor(logits_to_keep, dtype=None if len(logits_to_keep) else torch.int64)
        except (TypeError, ValueError, RuntimeError):
            idx = None
        if idx is None or idx.dim() != 1 or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"logits_to_keep as a list must hold ints (positions of dim 1), got {logits_to_keep!r}")
        return idx.to(device, non_blocking=True)
    try:
        if isinstance(logits_to_keep, bool):
            raise TypeError
        n = operator.index(logits_to_keep)
    except TypeError:
        raise TypeError(f"logits_to_keep must be an int (0 = every position, n = the last n), a 1-D tensor or a "
                        f"list of positions, got {logits_to_keep!r}") from None
    if n < 0:
        raise ValueError(f"logits_to_keep must be >= 0 (0 = every position), got {n}")
    return n


def check_flag(value, name: str) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")
    return value
