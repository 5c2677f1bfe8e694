"""Per-layer decode caches. Their sizes are fixed when allocated and never grow while decoding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LinearAttnCache:
    """Recurrent state of a linear-attention layer: one [K, V] matrix per sequence and KV head.

    state: [N, HKV, K, V] float32, updated in place by sbops.linear_attn_decode. Constant size.
    """
    state: torch.Tensor

    @classmethod
    def empty(cls, batch_size, num_kv_heads, head_dim, device=None) -> "LinearAttnCache":
        return cls(torch.zeros(batch_size, num_kv_heads, head_dim, head_dim, dtype=torch.float32, device=device))

    def nbytes(self) -> int:
        return self.state.numel() * self.state.element_size()


@dataclass
class SWACache:
    """Ring buffer of keys/values: the token at position p lives at row p % C.

    k, v: [N, C, HKV, D] with C = window + 1 for sliding-window layers (constant size), or the
    longest length the cache must hold for full-attention layers (window < 0).
    """
    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, batch_size, window: int, num_kv_heads, head_dim, max_length: Optional[int] = None,
              device=None, dtype=torch.float32) -> "SWACache":
        if window >= 0:
            rows = window + 1
        elif max_length is None:
            raise ValueError("a full-attention layer (window < 0) needs max_length to size its cache")
        else:
            rows = max_length
        shape = (batch_size, rows, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass
class HybridCache:
    """Cache of a HybridAttention layer: the linear branch's state and the softmax branch's ring buffer."""
    linear: LinearAttnCache
    softmax: SWACache

    def nbytes(self) -> int:
        return self.linear.nbytes() + self.softmax.nbytes()
