"""Rotary position embedding as in Qwen2: the frequencies module and the rotation in torch (the fused GPU launch of q
and k together is common.apply_rope_qk)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .common import check_arg


class RotaryEmbedding(nn.Module):
    """Rotary position embedding as in Qwen2 (non-interleaved halves, inv_freq = theta^(-2i/D)).

    inv_freq stays float32 when the module is cast to a 16-bit dtype (model.to(torch.bfloat16)), as in
    Hugging Face's Qwen2: bfloat16 frequencies would misplace positions past a few thousand tokens."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even (RoPE rotates pairs of channels), got {head_dim}")
        check_arg("RotaryEmbedding", "theta (rope_theta)", theta, lo=0, lo_open=True)
        self.head_dim, self.theta = head_dim, theta
        f = self._freqs()
        if torch.get_default_dtype() == torch.float64:   # a model built in float64, as model.double() makes it
            f = f.double()
        self.register_buffer("inv_freq", f, persistent=False)

    def _freqs(self) -> torch.Tensor:
        """float32, on the default device (as at construction; _apply moves it)."""
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.theta ** exps)

    def _apply(self, fn, recurse=True):
        # after any cast or move (to_empty too) the frequencies are computed again as at construction,
        # in float32 (float64 if asked for), then moved: never rounded to 16 bits, never uninitialised
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = self._freqs().to(self.inv_freq.device, dtype)
        return self

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """positions: integer tensor of any shape -> (cos, sin) of shape positions.shape + (D,), float32."""
        angles = positions.float()[..., None] * self.inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated by (cos, sin) broadcastable to x: x * cos + rotate_half(x) * sin."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
