"""Compact float64 references for the benchmark's correctness checks (docs/SPEC.md sections 1-4).

Plain torch ops written from the contract, independent of every sbops kernel (adapted from the
test suite's tests/reference.py, which is not installed with the package).  Every function
upcasts to float64 and stays differentiable, so autograd on them gives the reference gradients.
Inputs may live on any device; the references compute on the CPU.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

f64 = torch.float64


def _cpu64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().cpu().to(f64).requires_grad_(t.requires_grad)


def _sequences(B: int, T: int, cu_seqlens) -> List[Tuple[int, int, int]]:
    """[(batch index, start, end)] of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    cu = [int(c) for c in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


# --------------------------------------------------------------------------- linear attention
def linear_attn(q, k, v, g=None, scale=None, initial_state=None, cu_seqlens=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t;  o_t[h] = scale * q_t[h] S_t (per KV head state).

    Float64 tensors in, (o [B,T,H,V], final_state [N,HKV,K,V]) out; the caller upcasts
    (see `upcast`) so that gradients flow to its own leaves.
    """
    B, T, H, K = q.shape
    HKV, Vd = k.shape[2], v.shape[-1]
    G = H // HKV
    scale = K ** -0.5 if scale is None else scale
    rows, finals = {}, []
    for n, (b, s, e) in enumerate(_sequences(B, T, cu_seqlens)):
        S = initial_state[n] if initial_state is not None else q.new_zeros(HKV, K, Vd)
        for t in range(s, e):
            if g is not None:
                decay = g[b, t].exp()
                S = S * (decay[:, :, None] if decay.dim() == 2 else decay[:, None, None])
            S = S + k[b, t][:, :, None] * v[b, t][:, None, :]
            # query heads h = j*G .. j*G+G-1 read KV head j: [HKV, G, K] @ [HKV, K, V]
            rows[b, t] = scale * torch.bmm(q[b, t].view(HKV, G, K), S).reshape(H, Vd)
        finals.append(S)
    o = torch.stack([torch.stack([rows[b, t] for t in range(T)]) for b in range(B)])
    return o, torch.stack(finals)


def linear_attn_decode(q, k, v, g, state, state_indices=None, scale=None):
    """One recurrence step per sequence; returns (o, new_state) and leaves `state` untouched."""
    N, H, K = q.shape
    HKV = k.shape[1]
    idx = torch.arange(N) if state_indices is None else state_indices.long().cpu()
    new_state = state.clone()
    S = new_state[idx]
    if g is not None:
        decay = g.exp()
        S = S * (decay[..., None] if decay.dim() == 3 else decay[..., None, None])
    S = S + k[..., :, None] * v[..., None, :]
    new_state[idx] = S
    scale = K ** -0.5 if scale is None else scale
    o = scale * torch.einsum("nhk,nhkv->nhv", q, S.repeat_interleave(H // HKV, dim=1))
    return o, new_state


# --------------------------------------------------------------------------- sliding window
def _window_mask(L: int, window: int) -> torch.Tensor:
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    m = j <= i
    if window >= 0:
        m &= j >= i - window
    return m


def swa_attn(q, k, v, window, scale=None, cu_seqlens=None, sink_k=None, sink_v=None):
    """Dense masked softmax per sequence; sinks are extra keys every query sees. -> (o, lse)."""
    B, T, H, D = q.shape
    G = H // k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    o_parts = [[] for _ in range(B)]
    lse_parts = [[] for _ in range(B)]
    for b, s, e in _sequences(B, T, cu_seqlens):
        qs = q[b, s:e].transpose(0, 1)                                  # [H, L, D]
        ks = k[b, s:e].transpose(0, 1).repeat_interleave(G, 0)          # [H, L, D]
        vs = v[b, s:e].transpose(0, 1).repeat_interleave(G, 0)
        scores = (scale * qs @ ks.transpose(1, 2)).masked_fill(~_window_mask(e - s, window), -math.inf)
        if sink_k is not None:
            sk = sink_k.transpose(0, 1).repeat_interleave(G, 0)        # [H, M, D]
            sv = sink_v.transpose(0, 1).repeat_interleave(G, 0)
            scores = torch.cat([scale * qs @ sk.transpose(1, 2), scores], dim=-1)
            vs = torch.cat([sv, vs], dim=1)
        lse = torch.logsumexp(scores, dim=-1)                           # [H, L]
        o_parts[b].append(((scores - lse[..., None]).exp() @ vs).transpose(0, 1))
        lse_parts[b].append(lse.transpose(0, 1))
    o = torch.stack([torch.cat(p, 0) for p in o_parts])
    lse = torch.stack([torch.cat(p, 0) for p in lse_parts])
    return o, lse


def swa_decode(q, k_cache, v_cache, seq_lens, window, scale=None, slot_indices=None):
    """Attention of each new token over its cached positions max(0, L-1-window) .. L-1."""
    N, H, D = q.shape
    C, HKV = k_cache.shape[1], k_cache.shape[2]
    G = H // HKV
    scale = D ** -0.5 if scale is None else scale
    slots = range(N) if slot_indices is None else slot_indices.tolist()
    outs = []
    for i, slot in enumerate(slots):
        L = int(seq_lens[i])
        lo = 0 if window < 0 else max(0, L - 1 - window)
        rows = [p % C for p in range(lo, L)]
        ks = k_cache[slot, rows].transpose(0, 1).repeat_interleave(G, 0)   # [H, n, D]
        vs = v_cache[slot, rows].transpose(0, 1).repeat_interleave(G, 0)
        p = (scale * torch.einsum("hd,hnd->hn", q[i], ks)).softmax(-1)
        outs.append(torch.einsum("hn,hnd->hd", p, vs))
    return torch.stack(outs)


def swa_cache_write(k, v, k_cache, v_cache, positions, slot_indices=None):
    """Copies of the caches with k, v stored at row positions[i] % C of slot slot_indices[i]."""
    kc, vc = k_cache.clone(), v_cache.clone()
    C = kc.shape[1]
    slots = range(k.shape[0]) if slot_indices is None else slot_indices.tolist()
    for i, slot in enumerate(slots):
        row = int(positions[i]) % C
        kc[slot, row] = k[i]
        vc[slot, row] = v[i]
    return kc, vc


# --------------------------------------------------------------------------- spike coding
_INT_RANGE = {torch.int8: (-128, 127), torch.int16: (-32768, 32767), torch.int32: (-2**31, 2**31 - 1)}


def spike_vth(x, k=3.0):
    """vth = clamp(mean(|x|) / k, 1e-5, 1e4) over the last dim, float64."""
    return (x.abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)


def spike_counts(x, vth, out_dtype=None):
    """round_half_to_even(x / vth), saturated to out_dtype's range when given (float64 values)."""
    c = torch.round(x / vth)
    if out_dtype is not None:
        lo, hi = _INT_RANGE[out_dtype]
        c = c.clamp(lo, hi)
    return c


def spike_linear(x, weight_q, weight_scale, k, bias, group_size):
    """float64 W8ASpike layer: vth and counts exactly as spike_encode makes them (float32 threshold and
    quotient, never saturated), then vth * (s @ dequant(weight_q, weight_scale)^T) + bias in float64."""
    xf = x.detach().cpu().float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
    s = torch.round(xf / vth).double()
    w = weight_q.detach().cpu().double()
    sc = weight_scale.detach().cpu().double()
    w = w * sc[:, None] if group_size is None else (w.view(w.shape[0], -1, group_size) * sc[:, :, None]).view_as(w)
    y = vth.double() * (s @ w.T)
    return y if bias is None else y + bias.detach().cpu().double()


def spike_expand(counts, mode, T):
    c = counts.long().cpu()
    t = torch.arange(T).view(T, *([1] * c.dim()))
    if mode == "binary":
        s = (t < c).long()
    elif mode == "ternary":
        s = c.sign() * (t < c.abs()).long()
    elif mode == "bitwise":
        s = c.sign() * ((c.abs()[None] >> (T - 1 - t)) & 1)
    else:
        raise ValueError(mode)
    return s.to(torch.int8)


def spike_collapse(trains, mode):
    s = trains.long().cpu()
    T = s.shape[0]
    if mode == "bitwise":
        w = (2 ** torch.arange(T - 1, -1, -1)).view(T, *([1] * (s.dim() - 1)))
        return (s * w).sum(0)
    return s.sum(0)


# --------------------------------------------------------------------------- MoE routing
def topk_gating(logits, k, scoring="softmax", renormalize=True, bias=None, num_groups=None,
                topk_groups=None, scaling=1.0):
    """-> (weights [T,k] float64, ids [T,k] int64); ties go to the lower index (stable sorts)."""
    s = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    choice = s.detach().clone()
    if bias is not None:
        choice = choice + bias
    Tn, E = logits.shape
    if num_groups:
        group_score = choice.view(Tn, num_groups, E // num_groups).amax(-1)
        keep = torch.sort(-group_score, dim=-1, stable=True).indices[:, :topk_groups]
        eligible = torch.zeros(Tn, num_groups, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~eligible.repeat_interleave(E // num_groups, 1), -math.inf)
    ids = torch.sort(-choice, dim=-1, stable=True).indices[:, :k]
    w = s.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w * scaling, ids


def moe_permute(x, ids, num_experts):
    """-> (x_perm [T*k, Hd], expert_offsets [E+1], row_map [T, k]); stable sort by expert."""
    Tn, k = ids.shape
    flat = ids.reshape(-1).long().cpu()
    routed = (flat >= 0).nonzero().flatten()
    order = routed[torch.sort(flat[routed], stable=True).indices]      # flat (t*k+j) indices
    counts = torch.bincount(flat[routed], minlength=num_experts)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    row_map = torch.full((Tn * k,), -1, dtype=torch.int64)
    row_map[order] = torch.arange(order.numel())
    x_perm = x.new_zeros(Tn * k, x.shape[1])
    x_perm[: order.numel()] = x[order // k]
    return x_perm, offsets, row_map.view(Tn, k)


def moe_unpermute(y_perm, row_map, weights):
    """y[t] = sum_j weights[t, j] * y_perm[row_map[t, j]] over routed slots."""
    rm = row_map.long().cpu()
    gathered = y_perm[rm.clamp(min=0)]                                 # [T, k, Hd]
    mask = (rm >= 0).to(y_perm.dtype)[..., None]
    return (gathered * weights[..., None] * mask).sum(1)


def expert_counts(ids, num_experts):
    flat = ids.reshape(-1).long().cpu()
    return torch.bincount(flat[flat >= 0], minlength=num_experts)


def moe_align_block_size(ids, num_experts, block_size):
    """vLLM's moe_align_block_size: each expert's flat indices padded to a multiple of block_size."""
    flat = ids.reshape(-1).long().cpu()
    n = flat.numel()
    max_padded = n + num_experts * (block_size - 1)
    sorted_ids = torch.full((max_padded,), n, dtype=torch.int64)
    block_expert = torch.full((math.ceil(max_padded / block_size),), -1, dtype=torch.int64)
    pos = 0
    for e in range(num_experts):
        members = (flat == e).nonzero().flatten()
        padded = math.ceil(members.numel() / block_size) * block_size
        sorted_ids[pos: pos + members.numel()] = members
        block_expert[pos // block_size:(pos + padded) // block_size] = e
        pos += padded
    return sorted_ids, block_expert, torch.tensor([pos])


def upcast(*tensors):
    """float64 CPU copies (integer tensors: CPU copies) that keep requires_grad as fresh leaves."""
    out = []
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            out.append(t)
        elif t.is_floating_point():
            out.append(_cpu64(t))
        else:
            out.append(t.detach().cpu())
    return out
