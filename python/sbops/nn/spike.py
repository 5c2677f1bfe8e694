"""SpikeLinear: a linear layer whose input is spike-coded (SpikingBrain's adaptive-threshold scheme)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import sbops

WEIGHT_QUANTS = ("int8",)


def quantize_weight_int8(weight: torch.Tensor, group_size: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of `weight` [out, in] in groups of `group_size` input channels.

    Each (row, group) gets scale = max|w| / 127 (a last, shorter group when in % group_size != 0).
    Returns (q int8 [out, in], scales float32 [out, ceil(in / group_size)]); w ~= q * scale.
    """
    out_f, in_f = weight.shape
    groups = -(-in_f // group_size)
    w = F.pad(weight.detach().float(), (0, groups * group_size - in_f)).view(out_f, groups, group_size)
    scales = (w.abs().amax(dim=-1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.view(out_f, groups * group_size)[:, :in_f].contiguous(), scales


def dequantize_weight_int8(q: torch.Tensor, scales: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Inverse of quantize_weight_int8: float32 [out, in]."""
    out_f, in_f = q.shape
    groups = scales.shape[1]
    w = F.pad(q.float(), (0, groups * group_size - in_f)).view(out_f, groups, group_size) * scales[..., None]
    return w.view(out_f, groups * group_size)[:, :in_f]


class SpikeLinear(nn.Linear):
    """y = vth * (s @ W^T) + b, with s = round(x / vth) the integer spike counts of the input.

    The input is coded with `sbops.spike_quant(x, k)`: per token (over the channel dim)
    vth = clamp(mean|x| / k, 1e-5, 1e4) and x_hat = round(x / vth) * vth, so F.linear(x_hat, W)
    equals vth * (s @ W^T) exactly; training passes the gradient straight through the rounding.
    `k=None` leaves the input uncoded (then only weight quantisation applies).

    weight_quant="int8": the weight is fake-quantised on the fly to symmetric int8 with one scale
    per `group_size` input channels of each output row (quantize_weight_int8); the gradient passes
    straight through to the float weight, so the layer stays trainable. `int8_weight()` gives the
    int8 tensor and scales for export.

    Subclasses nn.Linear: same parameters (`weight`, `bias`), so checkpoints load either way.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, k: Optional[float] = 3.0,
                 weight_quant: Optional[str] = None, group_size: int = 128, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if weight_quant is not None and weight_quant not in WEIGHT_QUANTS:
            raise ValueError(f"SpikeLinear: weight_quant must be None or one of {WEIGHT_QUANTS}, got {weight_quant!r}")
        if k is not None and not k > 0:
            raise ValueError(f"SpikeLinear: k must be positive (or None to disable spike coding), got {k!r}")
        self.k = k
        self.weight_quant = weight_quant
        self.group_size = group_size

    def int8_weight(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(q int8 [out, in], scales float32 [out, groups]) of the current weight."""
        return quantize_weight_int8(self.weight, self.group_size)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses: the float weight, or its int8 round trip (straight-through)."""
        if self.weight_quant is None:
            return self.weight
        w_q = dequantize_weight_int8(*self.int8_weight(), self.group_size).to(self.weight.dtype)
        return self.weight + (w_q - self.weight).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k is not None:
            x = sbops.spike_quant(x.contiguous(), self.k)
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, weight_quant={self.weight_quant}"
