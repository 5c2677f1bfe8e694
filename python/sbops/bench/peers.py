"""Peer implementations that sbops is timed against.  All optional: a peer that is not installed
(or cannot run on this device) raises `PeerUnavailable`, which the benchmark records as skipped.

- fla (flash-linear-attention): `chunk_gla` for prefill, `fused_recurrent_gla` for one decode
  step, with k/v/g repeated to the H query heads inside the timed call, as SpikingBrain calls it.
- PyTorch SDPA: causal attention (the flash backend on GPU), the full-attention baseline.
- FlexAttention: `torch.compile`d `flex_attention` with a sliding-window causal block mask.
- torch eager and `torch.compile` versions of spike_encode, topk_gating, moe_permute,
  moe_unpermute and a linear-attention decode step, written here from docs/SPEC.md.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
import torch.nn.functional as F


class PeerUnavailable(Exception):
    """The peer is not installed or does not support this device / input."""


# --------------------------------------------------------------------------- fla
def _fla_gla():
    """fla's (chunk_gla, fused_recurrent_gla), bound to the [B, T, H, K] layout.

    Older fla releases default to head_first=True ([B, H, T, K]); pass head_first=False wherever
    the argument exists (newer releases dropped it and are sequence-first)."""
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
    except Exception as e:  # ImportError, or fla failing to initialise on this device
        raise PeerUnavailable(f"fla not importable ({type(e).__name__}: {e})") from e

    def seq_first(fn):
        try:
            takes = "head_first" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes = False
        return functools.partial(fn, head_first=False) if takes else fn
    return seq_first(chunk_gla), seq_first(fused_recurrent_gla)


def _repeat_heads(x: torch.Tensor, H: int, dim: int = 2) -> torch.Tensor:
    return x.repeat_interleave(H // x.shape[dim], dim=dim)


def fla_chunk_gla(q, k, v, g, scale, backward: bool = False) -> Callable[[], object]:
    """fla's chunked GLA on [B, T, H, K] inputs; k, v, g repeated from HKV to H heads per call."""
    if q.device.type != "cuda":
        raise PeerUnavailable("fla runs on GPU only")
    chunk_gla, _ = _fla_gla()
    H = q.shape[2]

    def fwd():
        return chunk_gla(q, _repeat_heads(k, H), _repeat_heads(v, H), _repeat_heads(g, H), scale=scale,
                         output_final_state=True)[0]
    if not backward:
        return fwd
    do = torch.randn_like(q)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v, g)]

    def fwd_bwd():
        ql, kl, vl, gl = leaves
        o = chunk_gla(ql, _repeat_heads(kl, H), _repeat_heads(vl, H), _repeat_heads(gl, H), scale=scale,
                      output_final_state=True)[0]
        return torch.autograd.grad(o, leaves, do)
    return fwd_bwd


def fla_decode(q, k, v, g, state, scale) -> Callable[[], object]:
    """One fused_recurrent_gla step (T = 1) from a per-query-head state [N, H, K, V] float32."""
    if q.device.type != "cuda":
        raise PeerUnavailable("fla runs on GPU only")
    _, fused_recurrent_gla = _fla_gla()
    H = q.shape[1]
    state_h = _repeat_heads(state.float(), H, dim=1).contiguous()

    def step():
        return fused_recurrent_gla(q[:, None], _repeat_heads(k[:, None], H), _repeat_heads(v[:, None], H),
                                   _repeat_heads(g[:, None], H), scale=scale, initial_state=state_h,
                                   output_final_state=True)[0]
    return step


def torch_linear_attn_decode(q, k, v, g, state, scale) -> Callable[[], object]:
    """Eager torch decode step on a GQA state [N, HKV, K, V] (state updated in place)."""
    H, HKV = q.shape[1], k.shape[1]

    def step():
        S = state * g.float().exp()[..., None] + k.float()[..., :, None] * v.float()[..., None, :]
        state.copy_(S)
        qg = q.float().view(q.shape[0], HKV, H // HKV, q.shape[-1])
        return (scale * torch.einsum("nhgk,nhkv->nhgv", qg, S)).reshape(q.shape[0], H, -1).to(q.dtype)
    return step


# --------------------------------------------------------------------------- attention
def _sdpa_flash_ctx(device_type: str):
    """The flash SDPA backend on GPU; the default choice on CPU."""
    import contextlib
    if device_type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _to_bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()


def sdpa_causal(q, k, v, backward: bool = False) -> Callable[[], object]:
    """Full causal SDPA on [B, T, H, D] inputs (transposed to [B, H, T, D] once, outside the timing).

    K/V are repeated to H heads once, outside the timing: the flash backend's cost does not
    depend on it and not every build supports enable_gqa with flash."""
    H = q.shape[2]
    qt, kt, vt = _to_bhtd(q), _to_bhtd(_repeat_heads(k, H)), _to_bhtd(_repeat_heads(v, H))
    ctx = functools.partial(_sdpa_flash_ctx, q.device.type)

    def fwd():
        with ctx():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    if not backward:
        return fwd
    leaves = [t.detach().requires_grad_(True) for t in (qt, kt, vt)]
    do = torch.randn_like(qt)

    def fwd_bwd():
        with ctx():
            o = F.scaled_dot_product_attention(*leaves, is_causal=True)
        return torch.autograd.grad(o, leaves, do)
    return fwd_bwd


def sdpa_decode_window(q, k_win, v_win) -> Callable[[], object]:
    """Decode peer: SDPA of q [N, H, D] over a contiguous (not ring-buffered) window
    k_win, v_win [N, W, HKV, D], K/V repeated to H heads outside the timing."""
    H = q.shape[1]
    qt = q[:, :, None, :]
    kt, vt = _to_bhtd(_repeat_heads(k_win, H)), _to_bhtd(_repeat_heads(v_win, H))

    def step():
        return F.scaled_dot_product_attention(qt, kt, vt)
    return step


@functools.lru_cache(None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_swa(q, k, v, window: int, backward: bool = False) -> Callable[[], object]:
    """Compiled FlexAttention with a sliding-window causal block mask (GQA native)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as e:
        raise PeerUnavailable(f"FlexAttention not in this torch ({e})") from e
    T = q.shape[1]

    def swa_mask(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)
    # _compile=True builds the block mask blockwise (the eager path materialises [T, T])
    mask = create_block_mask(swa_mask, None, None, T, T, device=q.device.type, _compile=True)
    flex = _compiled_flex()
    qt, kt, vt = _to_bhtd(q), _to_bhtd(k), _to_bhtd(v)

    def fwd():
        return flex(qt, kt, vt, block_mask=mask, enable_gqa=True)
    if not backward:
        return fwd
    leaves = [t.detach().requires_grad_(True) for t in (qt, kt, vt)]
    do = torch.randn_like(qt)

    def fwd_bwd():
        o = flex(*leaves, block_mask=mask, enable_gqa=True)
        return torch.autograd.grad(o, leaves, do)
    return fwd_bwd


# --------------------------------------------------------------------------- spike / MoE in torch
_INT_MAX = {torch.int8: 127, torch.int16: 32767, torch.int32: 2**31 - 1}


def spike_encode_torch(x: torch.Tensor, k: float = 3.0, out_dtype: torch.dtype = torch.int8):
    xf = x.float()
    vth = (xf.abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)
    hi = _INT_MAX[out_dtype]
    return torch.round(xf / vth).clamp(-hi - 1, hi).to(out_dtype), vth


def topk_gating_torch(logits: torch.Tensor, k: int, scoring: str = "softmax", renormalize: bool = True):
    lf = logits.float()
    scores = lf.softmax(-1) if scoring == "softmax" else lf.sigmoid()
    w, ids = scores.topk(k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids.to(torch.int32)


def moe_permute_torch(x: torch.Tensor, ids: torch.Tensor, num_experts: int):
    """Stable sort of the flat expert ids, then a row gather (no dropped slots in the benchmark)."""
    k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    x_perm = x.index_select(0, order // k)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.bincount(flat, minlength=num_experts).cumsum(0)
    row_map = torch.empty_like(order)
    row_map[order] = torch.arange(order.numel(), device=x.device)
    return x_perm, offsets, row_map.view(ids.shape).to(torch.int32)


def moe_unpermute_torch(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor):
    gathered = y_perm[row_map.long()].float()                       # [T, k, Hd]
    return (gathered * weights.float()[..., None]).sum(1).to(y_perm.dtype)


@functools.lru_cache(None)
def compiled(fn: Callable) -> Callable:
    """torch.compile(fn) (static shapes), built once per function."""
    return torch.compile(fn, dynamic=False)


def installed() -> dict:
    """Which optional peers import here (for the report's meta)."""
    out = {}
    try:
        import fla  # noqa: F401
        out["fla"] = getattr(fla, "__version__", "installed")
    except Exception as e:
        out["fla"] = None if isinstance(e, ImportError) else f"broken: {e}"
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
        out["flex_attention"] = torch.__version__
    except ImportError:
        out["flex_attention"] = None
    return out
