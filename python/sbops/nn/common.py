"""Building blocks shared by the attention and FFN layers: RMSNorm (fla order), rotary embeddings, SwiGLU."""
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
    """RMSNorm over the last dim in fla's order (fla.modules.RMSNorm, SpikingBrain's released code).

    forward(x, residual=None, prenorm=False, residual_in_fp32=False):
      h = float32(x) (+ float32(residual));  y = h / sqrt(mean(h^2) + eps) * float32(weight) (+ bias),
      computed in float32 and cast to x's dtype once at the end (Qwen2/HF casts before the weight
      multiply; in bfloat16 that differs by an ulp on about a quarter of the elements).
      prenorm=True returns (y, h) with h in residual's dtype (float32 if residual is None and
      residual_in_fp32, else x's dtype): the pre-norm residual stream of a block.  y is normalised
      from the float32 sum, not from its rounded copy.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, prenorm: bool = False,
                residual_in_fp32: bool = False):
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # float32, or float64 for references
        h = x.to(ct)
        if residual is not None:
            if residual.shape != x.shape:
                raise ValueError(f"RMSNorm: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
            h = h + residual.to(ct)
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(ct)
        if self.bias is not None:
            y = y + self.bias.to(ct)
        y = y.to(x.dtype)
        if not prenorm:
            return y
        res_dtype = residual.dtype if residual is not None else (ct if residual_in_fp32 else x.dtype)
        return y, h.to(res_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0] if self.weight is not None else ''}, eps={self.eps}"


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
    """Qwen2's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases.

    down_quant=False keeps down_proj a plain nn.Linear even when spike_k / weight_quant apply to
    gate/up (SpikingBrain's W8ASpike: its swiglu_linear reads down_proj's float weight directly).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None, down_quant: bool = True):
        super().__init__()
        self.gate_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        self.up_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        self.down_proj = (make_linear(intermediate_size, hidden_size, False, spike_k, weight_quant) if down_quant
                          else nn.Linear(intermediate_size, hidden_size, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
