"""Building blocks shared by the attention and FFN layers: RMSNorm, rotary embeddings, SwiGLU."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .spike import SpikeLinear


def make_linear(in_features: int, out_features: int, bias: bool, spike_k: Optional[float] = None,
                weight_quant: Optional[str] = None) -> nn.Linear:
    """A plain nn.Linear, or a SpikeLinear when spiking or weight quantisation is asked for.

    Both keep the parameter names `weight` / `bias`, so state dicts (and Qwen2 conversion) are the
    same whichever is chosen.
    """
    if spike_k is None and weight_quant is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return SpikeLinear(in_features, out_features, bias=bias, k=spike_k, weight_quant=weight_quant)


class RMSNorm(nn.Module):
    """Qwen2-style RMSNorm over the last dim, computed in float32: w * x / sqrt(mean(x^2) + eps)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding as in Qwen2 (non-interleaved halves, inv_freq = theta^(-2i/D))."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

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


class SwiGLU(nn.Module):
    """Qwen2's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None):
        super().__init__()
        self.gate_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        self.up_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        self.down_proj = make_linear(intermediate_size, hidden_size, False, spike_k, weight_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
