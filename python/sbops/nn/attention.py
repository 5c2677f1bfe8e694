"""Attention layers of SpikingBrain-style models, on top of the sbops ops.

All layers take x [B, T, hidden] (or [1, total, hidden] packed by cu_seqlens) and return the same
shape, called as layer(x, cache=None, positions=None).  With `cache=None` and no positions they
run whole sequences from position 0 (training / full recompute).  The model passes a CacheBatch
(sbops.nn.cache) as `positions`: which cache slots, positions and packed sequences the call covers,
  * prefill chunk: any T on a cache that may already hold tokens; linear attention continues from
    each slot's state, softmax attention sees the cached window plus the chunk; the caches are updated;
  * decode: one token per sequence, device tensors only (CUDA-graph capturable).
The older convention still works: layer(x, cache) prefills from position 0; layer(x[:, t:t+1],
cache, positions [B, 1]) decodes one token.

Sequence parallelism (training / prefill without a cache): inside `sbops.distributed.sequence_parallel(
group)` x is this rank's contiguous shard of every sequence; linear attention runs
sbops.distributed.linear_attn (state passing), softmax attention sbops.distributed.swa_attn (halo
exchange), RoPE uses the shard's global positions.  A cache or cu_seqlens under SP is an error.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import sbops
import sbops.distributed as sbd
from sbops import _dispatch, _platform

from .cache import CacheBatch, HybridCache, LinearAttnCache, SWACache
from .common import (RMSNorm, RotaryEmbedding, apply_rope_qk, check_arg, fused_kernels, fused_linears,
                     getstate_without_fused, linear_module, make_linear)
from .spike import int8_fake_quant_per_row, spike_fake_quant_released


class _QKVOProjections(nn.Module):
    """q/k/v/o projections shared by every attention layer here (Qwen2 naming: q_proj, k_proj, v_proj, o_proj)."""

    __getstate__ = getstate_without_fused

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 spike_k: Optional[float], weight_quant: Optional[str]):
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= 1, got {v!r}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim = hidden_size, num_heads, num_kv_heads, head_dim
        self._linear = functools.partial(make_linear, spike_k=spike_k, weight_quant=weight_quant)
        self.q_proj = self._linear(hidden_size, num_heads * head_dim, qkv_bias)
        self.k_proj = self._linear(hidden_size, num_kv_heads * head_dim, qkv_bias)
        self.v_proj = self._linear(hidden_size, num_kv_heads * head_dim, qkv_bias)
        self.o_proj = self._linear(num_heads * head_dim, hidden_size, False)

    def _qkv(self, x, extra: tuple = ()):
        """q [B,T,H,D], k, v [B,T,HKV,D], then each extra linear's output on x.  At inference, plain
        nn.Linear projections run as one fused GEMM (common.fused_linears); outputs are views."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"{type(self).__name__}: x must be [B, T, hidden_size={self.hidden_size}], "
                             f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, T, _ = x.shape
        mods = (self.q_proj, self.k_proj, self.v_proj) + tuple(extra)
        outs = fused_linears(self, mods, x)
        if outs is None:
            outs = [m(x) for m in mods]
        q, k, v = outs[:3]
        return (q.view(B, T, self.num_heads, self.head_dim), k.view(B, T, self.num_kv_heads, self.head_dim),
                v.view(B, T, self.num_kv_heads, self.head_dim)) + tuple(outs[3:])

    def _out(self, o):
        B, T = o.shape[:2]
        return linear_module(self.o_proj, o.reshape(B, T, self.num_heads * self.head_dim))

    def _rope(self, rotary, q, k, batch: Optional[CacheBatch], theta: float):
        if batch is None:
            sp = sbd.current_sp()
            pos = sp.positions(q.shape[1], q.device) if sp else torch.arange(q.shape[1], device=q.device)
            cos, sin = rotary(pos[None])  # [1, T, D]
            cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        else:
            cos, sin = batch.rope(rotary, self.head_dim, theta)  # shared by the layers of one call
        return apply_rope_qk(q, k, cos, sin)


def _device_dtype(proj: nn.Module):
    """(device, dtype) of a projection's float weight; for a SpikeLinear whose float weight was dropped
    (sbops.nn.drop_float_weights), its 8-bit weight's device and the dropped weight's dtype."""
    if getattr(proj, "weight", None) is not None:
        return proj.weight.device, proj.weight.dtype
    return proj.weight_q.device, proj.float_dtype


def _last(t):
    """[N, 1, ...] -> [N, ...] (a strided view: the ops accept it)."""
    return t[:, 0]


def _sp(cache, batch: Optional[CacheBatch]):
    """The active sequence-parallel context (sbops.distributed.sequence_parallel), or None; SP runs
    whole shards without a cache (training / prefill), so a cache or packed input under SP is an error."""
    sp = sbd.current_sp()
    if sp is not None and (cache is not None or (batch is not None and (batch.decode or batch.cu_seqlens is not None))):
        raise NotImplementedError("sequence parallelism (sbops.distributed.sequence_parallel) runs without a "
                                  "cache and without cu_seqlens: x must be this rank's [B, T_r] shard")
    return sp


def _batch(x, cache, positions) -> Optional[CacheBatch]:
    """The layer's third argument: a CacheBatch (from the model), a legacy positions tensor, or None."""
    if isinstance(positions, CacheBatch):
        return positions
    if cache is None and positions is None:
        return None
    return CacheBatch.from_legacy(x, cache, positions)


def _linear_branch(q, k, v, g, cache: Optional[LinearAttnCache], batch: Optional[CacheBatch]):
    """sbops.linear_attn over the call's tokens, continuing each slot's state; or one decode step."""
    if batch is not None and batch.decode:
        return sbops.linear_attn_decode(_last(q), _last(k), _last(v), _last(g), cache.state,
                                        state_indices=batch.slots).unsqueeze(1)
    sp = _sp(cache, batch)
    if sp is not None:
        return sbd.linear_attn(q, k, v, g, group=sp.group)[0]
    cu = None if batch is None else batch.cu_seqlens
    init = None
    if cache is not None and batch.has_history:
        init = cache.state.index_select(0, batch.slots).float()
        mask = batch.fresh_mask(init.device)
        if mask is not None:
            init = init * mask  # a sequence without history starts from zero, whatever its slot held
    o, final_state = sbops.linear_attn(q, k, v, g, initial_state=init, output_final_state=cache is not None,
                                       cu_seqlens=cu)
    if cache is not None:
        cache.state.index_copy_(0, batch.slots, final_state.detach().to(cache.state.dtype))
    return o


def _probe_decode_sinks() -> bool:
    """Whether sbops.swa_decode takes sink_k / sink_v (both the Python function and the registered op schema)."""
    try:
        schema = torch.ops.sbops.swa_decode.default._schema
        return ("sink_k" in inspect.signature(sbops.swa_decode).parameters
                and any(a.name == "sink_k" for a in schema.arguments))
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return False


# probed once, at import: a plain constant to torch.compile (Dynamo cannot trace the schema's argument loop, so
# probing lazily made a compiled decode step depend on whether an eager one had run first)
_DECODE_SINKS = _probe_decode_sinks()


def _swa_decode_has_sinks() -> bool:
    return _DECODE_SINKS


def _attend_cache_with_sinks(q, cache: SWACache, seq_lens, slots, sink_k, sink_v, scale):
    """Fallback while sbops.swa_decode has no sinks: one decode query per sequence over its ring
    buffer plus the M sink tokens, one softmax, in plain torch (float32).  Softmax ignores row order,
    so the ring buffer is used as is: with C = window + 1 rows (or C >= L for full attention) the
    rows holding the attended positions are exactly rows < min(L, C).
    q [N, H, D]; cache [S, C, HKV, D]; seq_lens [N] (current token included); sinks [M, HKV, D]."""
    N, H, D = q.shape
    kc, vc = cache.k.index_select(0, slots).float(), cache.v.index_select(0, slots).float()
    C, HKV = kc.shape[1], kc.shape[2]
    qg = q.float().view(N, HKV, H // HKV, D)
    s_cache = torch.einsum("nhgd,nchd->nhgc", qg, kc) * scale
    valid = torch.arange(C, device=q.device)[None, :] < seq_lens.clamp(max=C)[:, None]
    s_cache = s_cache.masked_fill(~valid[:, None, None, :], float("-inf"))
    s_sink = torch.einsum("nhgd,mhd->nhgm", qg, sink_k.float()) * scale
    p = torch.softmax(torch.cat([s_cache, s_sink], dim=-1), dim=-1)
    o = (torch.einsum("nhgc,nchd->nhgd", p[..., :C], vc)
         + torch.einsum("nhgm,mhd->nhgd", p[..., C:], sink_v.float()))
    return o.reshape(N, H, D).to(q.dtype)


# A prefill chunk after cached keys, one sequence: on Hopper the sm_90 SWA forward takes the chunk's queries alone
# over [cached window; chunk] (sbops_native.swa_attn_fwd_sm90 with q shorter than k: q holds the last positions), so
# no zero query rows are computed for the cached window and q is not copied into a packed buffer.  Elsewhere, and with
# SBOPS_SWA_CHUNK_QUERIES=0 (an A/B switch), swa_attn runs over the packed layout with zero queries for the cached rows.
SWA_CHUNK_QUERIES = _platform.env_switch("SBOPS_SWA_CHUNK_QUERIES")


def _swa_chunk_op(q, k, v, sink_k):
    """sbops_native.swa_attn_fwd_sm90 where it serves q [1, T, H, 128] over longer k, v: the cases the cuda backend's
    swa_attn routes to that kernel (its tuning's sm90 routes, backends/cuda/sm90.swa_applies: bf16 / fp16, head dim
    128, no sinks, a CUDA sm_90 device and an sm_90a build), with no gradient asked, not compiling and no backend
    other than cuda forced; else None."""
    if not SWA_CHUNK_QUERIES or not q.is_cuda or sink_k is not None or not q.dtype == k.dtype == v.dtype:
        return None
    if torch.compiler.is_compiling() or _dispatch._forced_name() not in (None, "cuda"):
        return None
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    try:
        from sbops._backends.cuda import sm90, sm90_routes
    except ImportError:
        return None
    if not (sm90_routes().get("swa_fwd", False) and sm90.swa_applies(q, k, v, None, None)):
        return None
    return _platform.native_op("swa_attn_fwd_sm90")


def _softmax_branch(q, k, v, window: int, cache: Optional[SWACache], batch: Optional[CacheBatch],
                    sink_k=None, sink_v=None):
    """Sliding-window (or full causal) attention of the call's queries over the cached window plus
    the new keys; the cache's ring buffer receives the new keys/values.  q, k already rotated."""
    if batch is not None and batch.decode:
        pos = batch.positions[:, 0]
        sbops.swa_cache_write(_last(k).detach(), _last(v).detach(), cache.k, cache.v, pos, batch.slots)
        q0 = _last(q)
        if sink_k is None:
            o = sbops.swa_decode(q0, cache.k, cache.v, batch.seq_lens, window, slot_indices=batch.slots)
        elif _swa_decode_has_sinks():
            o = sbops.swa_decode(q0, cache.k, cache.v, batch.seq_lens, window, slot_indices=batch.slots,
                                 sink_k=sink_k, sink_v=sink_v)
        else:
            o = _attend_cache_with_sinks(q0, cache, batch.seq_lens, batch.slots, sink_k, sink_v,
                                         q.shape[-1] ** -0.5)
        return o.unsqueeze(1)
    sp = _sp(cache, batch)
    if sp is not None:
        return sbd.swa_attn(q, k, v, window, sink_k=sink_k, sink_v=sink_v, group=sp.group)
    cu = None if batch is None else batch.cu_seqlens
    if cache is not None and window < 0:
        batch.check_full_cache(cache.rows)
    if cache is None or not batch.has_history:
        o = sbops.swa_attn(q, k, v, window, cu_seqlens=cu, sink_k=sink_k, sink_v=sink_v)
    else:
        # [cached window; chunk] per sequence, packed; the cached rows get zero queries whose outputs
        # are dropped, so each new query sees exactly the keys a one-piece prefill would show it.
        B, T, H, D = q.shape
        HKV = k.shape[2]
        plan = batch.window_plan(window, cache.rows, q.device)
        kk = k.new_empty(plan.total, HKV, D)
        vv = v.new_empty(plan.total, HKV, D)
        chunk_op = _swa_chunk_op(q, k, v, sink_k) if plan.single is not None else None
        if plan.single is not None:   # one sequence: slice copies (no index kernels)
            old, slot, r0 = plan.single
            kk[old:].copy_(k.reshape(-1, HKV, D))
            vv[old:].copy_(v.reshape(-1, HKV, D))
            _copy_ring(kk, cache.k[slot], r0, old)
            _copy_ring(vv, cache.v[slot], r0, old)
            if chunk_op is None:
                qq = q.new_empty(plan.total, H, D)
                qq[:old].zero_()
                qq[old:].copy_(q.reshape(-1, H, D))
        else:
            qq = q.new_zeros(plan.total, H, D)
            qq[plan.dst_new] = q.reshape(-1, H, D)
            kk[plan.dst_new] = k.reshape(-1, HKV, D)
            vv[plan.dst_new] = v.reshape(-1, HKV, D)
            kk[plan.dst_old] = cache.k[plan.src_slot, plan.src_row]
            vv[plan.dst_old] = cache.v[plan.src_slot, plan.src_row]
        if chunk_op is not None:   # the chunk's queries over [cached window; chunk] (window < 0: full causal)
            w = window if 0 <= window < plan.total else plan.total - 1
            o, _ = chunk_op(q.reshape(1, T, H, D), kk[None], vv[None], w, D ** -0.5)
            return _write_window(o.view(B, T, H, D), k, v, cache, batch)
        # one sequence packs to a single row of length plan.total: no cu_seqlens, so the call can take
        # the dense kernels (sm90 wgmma SWA on Hopper: ~630 TFLOP/s vs ~440 for the varlen Triton kernel)
        o = sbops.swa_attn(qq[None], kk[None], vv[None], window,
                           cu_seqlens=None if plan.single is not None else plan.cu_seqlens,
                           sink_k=sink_k, sink_v=sink_v)
        if plan.single is not None:
            o = o[0, plan.single[0]:].view(B, T, H, D)
        else:
            o = o[0].index_select(0, plan.dst_new).view(B, T, H, D)
    return _write_window(o, k, v, cache, batch)


def _write_window(o, k, v, cache: Optional[SWACache], batch: Optional[CacheBatch]):
    """The call's keys / values into the cache's ring buffers (prefill; decode writes its own); returns o."""
    if cache is not None:
        w = batch.write_plan(cache.rows, o.device)
        HKV, D = k.shape[2], k.shape[3]
        kf, vf = k.detach().reshape(-1, HKV, D), v.detach().reshape(-1, HKV, D)
        if w.row_range is not None:   # contiguous rows: views (swa_cache_write reads them in place)
            kw, vw = kf[w.row_range[0]:w.row_range[1]], vf[w.row_range[0]:w.row_range[1]]
        else:
            kw, vw = kf.index_select(0, w.rows), vf.index_select(0, w.rows)
        sbops.swa_cache_write(kw, vw, cache.k, cache.v, w.positions, w.slots)
    return o


def _copy_ring(dst: torch.Tensor, ring: torch.Tensor, r0: int, n: int) -> None:
    """dst[:n] = ring rows r0, r0 + 1, ... (mod ring rows): the n cached tokens in position order."""
    if n <= 0:
        return
    rows = ring.shape[0]
    first = min(n, rows - r0)
    dst[:first].copy_(ring[r0:r0 + first])
    if first < n:
        dst[first:n].copy_(ring[:n - first])


class GatedLinearAttention(_QKVOProjections):
    """SpikingBrain-7B's gated linear attention (GLA) layer, GQA-native.

    q = relu(q_proj(x)) [H heads], k = relu(k_proj(x)), v = v_proj(x) [HKV heads],
    g = logsigmoid(gk_proj(x)) / gate_logit_normalizer, one log-decay per KV head and key channel,
    with the low-rank gk_proj = Linear(hidden, 16, bias=False) -> Linear(16, HKV * K), or with
    gate_low_rank_dim=0 one full-rank Linear(hidden, HKV * K) with bias (SpikingBrain's W8ASpike).
    Per KV head: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t; o_t = K^-0.5 q_t S_t (sbops.linear_attn,
    k/v/g stay at HKV heads: no repeat). The output is RMS-normed per head, then o_proj.
    The cache keeps one [HKV, K, V] float32 state per slot: a prefill chunk starts from it
    (initial_state) and stores its final state; decode uses sbops.linear_attn_decode.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0, norm_eps: float = 1e-6,
                 qkv_bias: bool = True, spike_k: Optional[float] = None, weight_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        name = type(self).__name__
        self.gate_logit_normalizer = check_arg(name, "gate_logit_normalizer", gate_logit_normalizer, lo=0, lo_open=True)
        gate_low_rank_dim = check_arg(name, "gate_low_rank_dim", gate_low_rank_dim, integer=True, lo=0)
        if gate_low_rank_dim == 0:
            self.gk_proj = self._linear(hidden_size, num_kv_heads * head_dim, True)
        else:
            self.gk_proj = nn.Sequential(self._linear(hidden_size, gate_low_rank_dim, False),
                                         self._linear(gate_low_rank_dim, num_kv_heads * head_dim, True))
        self.o_norm = RMSNorm(head_dim, norm_eps)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> LinearAttnCache:
        return LinearAttnCache.empty(batch_size, self.num_kv_heads, self.head_dim,
                                     device=device or _device_dtype(self.q_proj)[0])

    def forward(self, x: torch.Tensor, cache: Optional[LinearAttnCache] = None, positions=None) -> torch.Tensor:
        """positions: a CacheBatch (what the model passes), or the legacy [B, 1] decode positions."""
        batch = _batch(x, cache, positions)
        first = self.gk_proj[0] if isinstance(self.gk_proj, nn.Sequential) else self.gk_proj
        q, k, v, gk = self._qkv(x, (first,))  # the gate's first stage shares q/k/v's input and GEMM (x checked there)
        B, T = x.shape[:2]
        if isinstance(self.gk_proj, nn.Sequential):
            gk = linear_module(self.gk_proj[1], gk)  # K = 16: the dense decode GEMV at decode
        fz = fused_kernels(q, k, gk)
        if fz is not None and fz[2].supports(q, k, gk):  # one launch at inference on a GPU
            q, k, g = fz[2].gla_act(q, k, gk, self.gate_logit_normalizer)
        else:
            q, k = F.relu(q), F.relu(k)
            g = F.logsigmoid(gk).view(B, T, self.num_kv_heads, self.head_dim) / self.gate_logit_normalizer
        o = _linear_branch(q, k, v, g, cache, batch)
        del q, k, v, gk, g  # a long prefill frees the projections before the output norm and o_proj
        return self._out(self.o_norm(o))


class SlidingWindowAttention(_QKVOProjections):
    """Qwen2 attention restricted to a causal sliding window (SpikingBrain-7B's odd layers).

    q/k/v projections with bias, RoPE (rope_theta), each query attends itself and the `window`
    keys before it (window < 0: full causal). Prefill: sbops.swa_attn (a chunk on a cache that holds
    tokens attends the cached window too). Decode: the new key/value go into a ring buffer of
    window + 1 rows (sbops.swa_cache_write), then sbops.swa_decode.

    SpikingBrain's W8ASpike options, applied after RoPE and before attention and any cache write:
    q_spike_k spike-codes the queries per head (spike_fake_quant_released); kv_quant="int8" fake-
    quantises keys and values to int8 per token and head (int8_fake_quant_per_row).  Both act per
    row, so quantising at cache-write time equals the release's quantising of the whole window.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, window: int = 4096,
                 rope_theta: float = 10000.0, qkv_bias: bool = True, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None, q_spike_k: Optional[float] = None,
                 kv_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        if kv_quant not in (None, "int8"):
            raise ValueError(f"SlidingWindowAttention: kv_quant must be None or 'int8', got {kv_quant!r}")
        if q_spike_k is not None and not q_spike_k > 0:
            raise ValueError(f"SlidingWindowAttention: q_spike_k must be positive or None, got {q_spike_k!r}")
        self.q_spike_k, self.kv_quant = q_spike_k, kv_quant
        self.window = check_arg(type(self).__name__, "window", window, integer=True)  # < 0: full causal
        self.rope_theta = float(rope_theta)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> SWACache:
        own_device, own_dtype = _device_dtype(self.q_proj)
        return SWACache.empty(batch_size, self.window, self.num_kv_heads, self.head_dim, max_length,
                              device=device or own_device, dtype=dtype or own_dtype)

    def forward(self, x: torch.Tensor, cache: Optional[SWACache] = None, positions=None) -> torch.Tensor:
        batch = _batch(x, cache, positions)
        q, k, v = self._qkv(x)
        q, k = self._rope(self.rotary, q, k, batch, self.rope_theta)
        if self.q_spike_k is not None:
            q = spike_fake_quant_released(q, self.q_spike_k)
        if self.kv_quant == "int8":
            k, v = int8_fake_quant_per_row(k), int8_fake_quant_per_row(v)
        return self._out(_softmax_branch(q, k, v, self.window, cache, batch))


class HybridAttention(_QKVOProjections):
    """SpikingBrain-76B's intra-layer hybrid: linear attention and softmax attention in parallel.

    Both branches share the q/k/v projections (the converted Qwen2 ones) and the value heads:
      * linear branch: q = relu(q), k = sigmoid(k) clamped to <= key_clamp (0.95), gate tied to the
        key g = log(1 - k) per key channel; sbops.linear_attn / linear_attn_decode (no RoPE).
      * softmax branch: RoPE(q), RoPE(k), causal attention over a sliding window (window < 0: full
        causal), plus M learnable meta tokens (sink keys/values [M, HKV, D], no position) attended
        by every query in the same softmax: sbops.swa_attn(..., sink_k, sink_v).
    Each branch's output is RMS-normed per head; the layer returns o_proj of their average.
    The cache keeps the linear state and a ring buffer of window + 1 rows. Decode with meta tokens
    calls sbops.swa_decode(..., sink_k=, sink_v=) where the op takes them, else a plain-torch softmax.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, window: int = 4096,
                 num_meta_tokens: int = 128, rope_theta: float = 10000.0, key_clamp: float = 0.95,
                 norm_eps: float = 1e-6, qkv_bias: bool = True, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, spike_k, weight_quant)
        self.window = check_arg(type(self).__name__, "window", window, integer=True)  # < 0: full causal
        self.key_clamp = check_arg(type(self).__name__, "key_clamp", key_clamp, lo=0, lo_open=True, hi_open=1)
        num_meta_tokens = check_arg(type(self).__name__, "num_meta_tokens", num_meta_tokens, integer=True, lo=0)
        self.rope_theta = float(rope_theta)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)
        self.linear_norm = RMSNorm(head_dim, norm_eps)
        self.softmax_norm = RMSNorm(head_dim, norm_eps)
        if num_meta_tokens > 0:
            self.meta_k = nn.Parameter(torch.randn(num_meta_tokens, num_kv_heads, head_dim) * 0.02)
            self.meta_v = nn.Parameter(torch.randn(num_meta_tokens, num_kv_heads, head_dim) * 0.02)
        else:
            self.meta_k = self.meta_v = None

    def reset_parameters(self) -> None:
        """meta_k, meta_v ~ N(0, 0.02^2) as built (e.g. after to_empty() of a model made on the meta device;
        the projections and norms reset themselves)."""
        if self.meta_k is not None:
            with torch.no_grad():
                self.meta_k.normal_(0.0, 0.02)
                self.meta_v.normal_(0.0, 0.02)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None, device=None, dtype=None) -> HybridCache:
        own_device, own_dtype = _device_dtype(self.q_proj)
        device = device or own_device
        return HybridCache(
            LinearAttnCache.empty(batch_size, self.num_kv_heads, self.head_dim, device=device),
            SWACache.empty(batch_size, self.window, self.num_kv_heads, self.head_dim, max_length,
                           device=device, dtype=dtype or own_dtype))

    def forward(self, x: torch.Tensor, cache: Optional[HybridCache] = None, positions=None) -> torch.Tensor:
        batch = _batch(x, cache, positions)
        q, k, v = self._qkv(x)
        q_lin = F.relu(q)
        k_lin = torch.sigmoid(k).clamp(max=self.key_clamp)
        g = torch.log1p(-k_lin)  # log(1 - k) <= 0: the key's own forget gate
        q_rot, k_rot = self._rope(self.rotary, q, k, batch, self.rope_theta)
        o_lin = _linear_branch(q_lin, k_lin, v, g, None if cache is None else cache.linear, batch)
        o_sm = _softmax_branch(q_rot, k_rot, v, self.window, None if cache is None else cache.softmax, batch,
                               self.meta_k, self.meta_v)
        return self._out(0.5 * (self.linear_norm(o_lin) + self.softmax_norm(o_sm)))
