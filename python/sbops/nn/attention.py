"""Attention layers of SpikingBrain-style models, on top of the sbops ops.

All layers take x [B, T, hidden] and return [B, T, hidden]. With `cache=None` they run a whole
sequence (training / full recompute). With a cache:
  * T > 1  : prefill of a fresh cache (the prompt starts at position 0); the cache is filled.
  * T == 1 : one decode step; `positions` [B, 1] holds each sequence's current length (the new
             token's position) and the cache is updated in place.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import sbops

from .cache import HybridCache, LinearAttnCache, SWACache
from .common import RMSNorm, RotaryEmbedding, apply_rope, make_linear


class _QKVOProjections(nn.Module):
    """q/k/v/o projections shared by every attention layer here (Qwen2 naming: q_proj, k_proj, v_proj, o_proj)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 spike_k: Optional[float], weight_quant: Optional[str]):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim = hidden_size, num_heads, num_kv_heads, head_dim
        self._linear = functools.partial(make_linear, spike_k=spike_k, weight_quant=weight_quant)
        self.q_proj = self._linear(hidden_size, num_heads * head_dim, qkv_bias)
        self.k_proj = self._linear(hidden_size, num_kv_heads * head_dim, qkv_bias)
        self.v_proj = self._linear(hidden_size, num_kv_heads * head_dim, qkv_bias)
        self.o_proj = self._linear(num_heads * head_dim, hidden_size, False)

    def _qkv(self, x):
        B, T, _ = x.shape
        return (self.q_proj(x).view(B, T, self.num_heads, self.head_dim),
                self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim),
                self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim))

    def _out(self, o):
        B, T = o.shape[:2]
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

    def _rope(self, rotary, q, k, positions):
        T = q.shape[1]
        if positions is None:
            positions = torch.arange(T, device=q.device)[None]
        cos, sin = rotary(positions)  # [B or 1, T, D]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _last(t):
    """[B, 1, ...] -> [B, ...] contiguous (sbops ops demand contiguous inputs)."""
    return t[:, 0].contiguous()


def _fill_ring_buffer(cache: SWACache, k, v):
    """Prefill: store the last min(T, C) keys/values of every sequence at rows p % C."""
    B, T, HKV, D = k.shape
    C = cache.rows
    n = min(T, C)
    pos = torch.arange(T - n, T, device=k.device).repeat(B)
    slots = torch.arange(B, device=k.device).repeat_interleave(n)
    kk = k[:, T - n:].detach().reshape(B * n, HKV, D).contiguous()
    vv = v[:, T - n:].detach().reshape(B * n, HKV, D).contiguous()
    sbops.swa_cache_write(kk, vv, cache.k, cache.v, pos, slots)


def _check_full_cache_fits(cache: SWACache, window: int, length: int):
    if window < 0 and length > cache.rows:
        raise ValueError(f"full-attention cache holds {cache.rows} tokens but the sequence reaches {length}; "
                         f"allocate the cache with a larger max_length")


class GatedLinearAttention(_QKVOProjections):
    """SpikingBrain-7B's gated linear attention (GLA) layer, GQA-native.

    q = relu(q_proj(x)) [H heads], k = relu(k_proj(x)), v = v_proj(x) [HKV heads],
    g = logsigmoid(gk_proj(x)) / gate_logit_normalizer, one log-decay per KV head and key channel,
    with the low-rank gk_proj = Linear(hidden, 16, bias=False) -> Linear(16, HKV * K).
    Per KV head: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t; o_t = K^-0.5 q_t S_t (sbops.linear_attn,
    k/v/g stay at HKV heads: no repeat). The output is RMS-normed per head, then o_proj.
    Decode keeps one [HKV, K, V] float32 state per sequence (sbops.linear_attn_decode).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0, norm_eps: float = 1e-6,
                 qkv_bias: bool = True, spike_k: Optional[float] = None, weight_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        self.gate_logit_normalizer = gate_logit_normalizer
        self.gk_proj = nn.Sequential(self._linear(hidden_size, gate_low_rank_dim, False),
                                     self._linear(gate_low_rank_dim, num_kv_heads * head_dim, True))
        self.o_norm = RMSNorm(head_dim, norm_eps)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> LinearAttnCache:
        return LinearAttnCache.empty(batch_size, self.num_kv_heads, self.head_dim,
                                     device=device or self.q_proj.weight.device)

    def forward(self, x: torch.Tensor, cache: Optional[LinearAttnCache] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._qkv(x)
        q, k = F.relu(q), F.relu(k)
        g = F.logsigmoid(self.gk_proj(x)).view(B, T, self.num_kv_heads, self.head_dim) / self.gate_logit_normalizer
        if cache is not None and T == 1:
            o = sbops.linear_attn_decode(_last(q), _last(k), _last(v), _last(g), cache.state).unsqueeze(1)
        else:
            o, final_state = sbops.linear_attn(q, k, v, g, output_final_state=cache is not None)
            if cache is not None:
                cache.state.copy_(final_state.detach())
        return self._out(self.o_norm(o))


class SlidingWindowAttention(_QKVOProjections):
    """Qwen2 attention restricted to a causal sliding window (SpikingBrain-7B's odd layers).

    q/k/v projections with bias, RoPE (rope_theta), each query attends itself and the `window`
    keys before it (window < 0: full causal). Prefill: sbops.swa_attn. Decode: the new key/value
    go into a ring buffer of window + 1 rows (sbops.swa_cache_write), then sbops.swa_decode.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, window: int = 4096,
                 rope_theta: float = 10000.0, qkv_bias: bool = True, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        self.window = int(window)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> SWACache:
        return SWACache.empty(batch_size, self.window, self.num_kv_heads, self.head_dim, max_length,
                              device=device or self.q_proj.weight.device, dtype=dtype or self.q_proj.weight.dtype)

    def forward(self, x: torch.Tensor, cache: Optional[SWACache] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self._qkv(x)
        q, k = self._rope(self.rotary, q, k, positions)
        if cache is not None and T == 1:
            pos = positions[:, 0].contiguous()
            sbops.swa_cache_write(_last(k).detach(), _last(v).detach(), cache.k, cache.v, pos)
            o = sbops.swa_decode(_last(q), cache.k, cache.v, pos + 1, self.window).unsqueeze(1)
        else:
            o = sbops.swa_attn(q, k, v, self.window)
            if cache is not None:
                _check_full_cache_fits(cache, self.window, T)
                _fill_ring_buffer(cache, k, v)
        return self._out(o)


def _attend_cache_with_sinks(q, cache: SWACache, seq_lens, sink_k, sink_v, scale):
    """One decode query per sequence over its ring buffer plus the M sink tokens, one softmax.

    sbops.swa_decode has no sink arguments, so this step is plain torch (float32). Softmax does
    not care about row order, so the ring buffer is used as is: with C = window + 1 rows (or C >=
    L for full attention) the rows holding the attended positions are exactly rows < min(L, C).
    q [N, H, D]; cache [N, C, HKV, D]; seq_lens [N] (current token included); sinks [M, HKV, D].
    """
    N, H, D = q.shape
    C, HKV = cache.k.shape[1], cache.k.shape[2]
    qg = q.float().view(N, HKV, H // HKV, D)
    s_cache = torch.einsum("nhgd,nchd->nhgc", qg, cache.k.float()) * scale
    valid = torch.arange(C, device=q.device)[None, :] < seq_lens.clamp(max=C)[:, None]
    s_cache = s_cache.masked_fill(~valid[:, None, None, :], float("-inf"))
    s_sink = torch.einsum("nhgd,mhd->nhgm", qg, sink_k.float()) * scale
    p = torch.softmax(torch.cat([s_cache, s_sink], dim=-1), dim=-1)
    o = (torch.einsum("nhgc,nchd->nhgd", p[..., :C], cache.v.float())
         + torch.einsum("nhgm,mhd->nhgd", p[..., C:], sink_v.float()))
    return o.reshape(N, H, D).to(q.dtype)


class HybridAttention(_QKVOProjections):
    """SpikingBrain-76B's intra-layer hybrid: linear attention and softmax attention in parallel.

    Both branches share the q/k/v projections (the converted Qwen2 ones) and the value heads:
      * linear branch: q = relu(q), k = sigmoid(k) clamped to <= key_clamp (0.95), gate tied to the
        key g = log(1 - k) per key channel; sbops.linear_attn / linear_attn_decode (no RoPE).
      * softmax branch: RoPE(q), RoPE(k), causal attention over a sliding window (window < 0: full
        causal), plus M learnable meta tokens (sink keys/values [M, HKV, D], no position) attended
        by every query in the same softmax: sbops.swa_attn(..., sink_k, sink_v).
    Each branch's output is RMS-normed per head; the layer returns o_proj of their average.
    Decode keeps the linear state and a ring buffer of window + 1 rows. With meta tokens the
    decode softmax runs in plain torch over the ring buffer (sbops.swa_decode has no sinks).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, window: int = 4096,
                 num_meta_tokens: int = 128, rope_theta: float = 10000.0, key_clamp: float = 0.95,
                 norm_eps: float = 1e-6, qkv_bias: bool = True, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        self.window = int(window)
        self.key_clamp = key_clamp
        self.rotary = RotaryEmbedding(head_dim, rope_theta)
        self.linear_norm = RMSNorm(head_dim, norm_eps)
        self.softmax_norm = RMSNorm(head_dim, norm_eps)
        if num_meta_tokens > 0:
            self.meta_k = nn.Parameter(torch.randn(num_meta_tokens, num_kv_heads, head_dim) * 0.02)
            self.meta_v = nn.Parameter(torch.randn(num_meta_tokens, num_kv_heads, head_dim) * 0.02)
        else:
            self.meta_k = self.meta_v = None

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> HybridCache:
        device = device or self.q_proj.weight.device
        return HybridCache(
            LinearAttnCache.empty(batch_size, self.num_kv_heads, self.head_dim, device=device),
            SWACache.empty(batch_size, self.window, self.num_kv_heads, self.head_dim, max_length,
                           device=device, dtype=dtype or self.q_proj.weight.dtype))

    def forward(self, x: torch.Tensor, cache: Optional[HybridCache] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self._qkv(x)
        q_lin = F.relu(q)
        k_lin = torch.sigmoid(k).clamp(max=self.key_clamp)
        g = torch.log1p(-k_lin)  # log(1 - k) <= 0: the key's own forget gate
        q_rot, k_rot = self._rope(self.rotary, q, k, positions)
        if cache is not None and T == 1:
            o_lin = sbops.linear_attn_decode(_last(q_lin), _last(k_lin), _last(v), _last(g), cache.linear.state)
            pos = positions[:, 0].contiguous()
            sbops.swa_cache_write(_last(k_rot).detach(), _last(v).detach(), cache.softmax.k, cache.softmax.v, pos)
            if self.meta_k is None:
                o_sm = sbops.swa_decode(_last(q_rot), cache.softmax.k, cache.softmax.v, pos + 1, self.window)
            else:
                o_sm = _attend_cache_with_sinks(_last(q_rot), cache.softmax, pos + 1, self.meta_k, self.meta_v,
                                                self.head_dim ** -0.5)
            o_lin, o_sm = o_lin.unsqueeze(1), o_sm.unsqueeze(1)
        else:
            o_lin, final_state = sbops.linear_attn(q_lin, k_lin, v, g, output_final_state=cache is not None)
            o_sm = sbops.swa_attn(q_rot, k_rot, v, self.window, sink_k=self.meta_k, sink_v=self.meta_v)
            if cache is not None:
                cache.linear.state.copy_(final_state.detach())
                _check_full_cache_fits(cache.softmax, self.window, T)
                _fill_ring_buffer(cache.softmax, k_rot, v)
        return self._out(0.5 * (self.linear_norm(o_lin) + self.softmax_norm(o_sm)))
