"""Float64 references for every sbops op, written from docs/SPEC.md with plain torch ops.

Independent of every kernel: no sbops import. Each function upcasts its inputs to float64
(keeping autograd), so gradients of these references are the reference gradients.
"""
from __future__ import annotations

import math

import torch

f64 = torch.float64


def _seq_bounds(B, T, cu_seqlens):
    """[(batch index, start, end)] for each sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    cu = [int(c) for c in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


# --------------------------------------------------------------------------- linear attention
def ref_linear_attn(q, k, v, g=None, scale=None, initial_state=None, cu_seqlens=None):
    """Step-by-step recurrence S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t."""
    B, T, H, K = q.shape
    HKV, V = k.shape[2], v.shape[-1]
    G = H // HKV
    scale = K ** -0.5 if scale is None else scale
    q, k, v = q.to(f64), k.to(f64), v.to(f64)
    g = None if g is None else g.to(f64)
    outs = [None] * T * B
    finals = []
    for n, (b, s, e) in enumerate(_seq_bounds(B, T, cu_seqlens)):
        S = (initial_state[n].to(f64) if initial_state is not None
             else q.new_zeros(HKV, K, V))
        for t in range(s, e):
            if g is not None:
                decay = g[b, t].exp()
                decay = decay[:, :, None] if decay.dim() == 2 else decay[:, None, None]
                S = S * decay
            S = S + k[b, t][:, :, None] * v[b, t][:, None, :]
            Sh = S.repeat_interleave(G, dim=0)  # [H, K, V]
            outs[b * T + t] = scale * torch.einsum("hk,hkv->hv", q[b, t], Sh)
        finals.append(S)
    o = torch.stack(outs).view(B, T, H, V)
    return o, torch.stack(finals)


def ref_linear_attn_decode(q, k, v, g, state, state_indices=None, scale=None):
    """One recurrence step per sequence. Returns (o, new_state) without touching `state`."""
    N, H, K = q.shape
    HKV = k.shape[1]
    idx = torch.arange(N) if state_indices is None else state_indices.long().cpu()
    new_state = state.to(f64).clone()
    S = new_state[idx]
    if g is not None:
        decay = g.to(f64).exp()
        S = S * (decay[..., None] if decay.dim() == 3 else decay[..., None, None])
    S = S + k.to(f64)[..., :, None] * v.to(f64)[..., None, :]
    new_state[idx] = S
    scale = K ** -0.5 if scale is None else scale
    o = scale * torch.einsum("nhk,nhkv->nhv", q.to(f64), S.repeat_interleave(H // HKV, dim=1))
    return o, new_state


# --------------------------------------------------------------------------- sliding window
def _window_mask(Tq, window):
    i = torch.arange(Tq)[:, None]
    j = torch.arange(Tq)[None, :]
    m = j <= i
    if window >= 0:
        m &= j >= i - window
    return m


def ref_swa_attn(q, k, v, window, scale=None, cu_seqlens=None, sink_k=None, sink_v=None):
    """Dense masked softmax attention per sequence, sinks as extra always-visible keys."""
    B, T, H, D = q.shape
    HKV = k.shape[2]
    G = H // HKV
    scale = D ** -0.5 if scale is None else scale
    q, k, v = q.to(f64), k.to(f64), v.to(f64)
    o_rows, lse_rows = [], []
    for b, s, e in _seq_bounds(B, T, cu_seqlens):
        qs = q[b, s:e].transpose(0, 1)                              # [H, L, D]
        ks = k[b, s:e].transpose(0, 1).repeat_interleave(G, 0)      # [H, L, D]
        vs = v[b, s:e].transpose(0, 1).repeat_interleave(G, 0)
        scores = scale * qs @ ks.transpose(1, 2)                   # [H, L, L]
        scores = scores.masked_fill(~_window_mask(e - s, window), float("-inf"))
        if sink_k is not None:
            sk = sink_k.to(f64).transpose(0, 1).repeat_interleave(G, 0)  # [H, M, D]
            sv = sink_v.to(f64).transpose(0, 1).repeat_interleave(G, 0)
            scores = torch.cat([scale * qs @ sk.transpose(1, 2), scores], dim=-1)
            vs = torch.cat([sv, vs], dim=1)
        l = torch.logsumexp(scores, dim=-1)                          # [H, L]
        p = (scores - l[..., None]).exp()
        o_rows.append((b, s, e, (p @ vs).transpose(0, 1)))
        lse_rows.append((b, s, e, l.transpose(0, 1)))
    # assemble without in-place writes into leaf-dependent tensors (keeps autograd simple)
    o = torch.cat([torch.cat([r[3] for r in o_rows if r[0] == b], 0)[None] for b in range(B)], 0)
    lse = torch.cat([torch.cat([r[3] for r in lse_rows if r[0] == b], 0)[None] for b in range(B)], 0)
    return o, lse


def ref_swa_decode(q, k_cache, v_cache, seq_lens, window, scale=None, slot_indices=None, sink_k=None, sink_v=None):
    """float64: one query per sequence over its cached window (and the M sink keys, one softmax).
    Positions before L - C were overwritten in the ring buffer and are not attended."""
    N, H, D = q.shape
    C, HKV = k_cache.shape[1], k_cache.shape[2]
    G = H // HKV
    scale = D ** -0.5 if scale is None else scale
    slots = range(N) if slot_indices is None else slot_indices.tolist()
    outs = []
    for i, slot in enumerate(slots):
        L = int(seq_lens[i])
        lo = 0 if window < 0 else max(0, L - 1 - window)
        rows = [p % C for p in range(max(lo, L - C), L)]
        ks, vs = k_cache[slot, rows].to(f64), v_cache[slot, rows].to(f64)     # [n, HKV, D]
        if sink_k is not None:
            ks, vs = torch.cat([sink_k.to(f64), ks]), torch.cat([sink_v.to(f64), vs])
        ks = ks.transpose(0, 1).repeat_interleave(G, 0)                      # [H, M + n, D]
        vs = vs.transpose(0, 1).repeat_interleave(G, 0)
        s = scale * torch.einsum("hd,hnd->hn", q[i].to(f64), ks)
        outs.append(torch.einsum("hn,hnd->hd", s.softmax(-1), vs))
    return torch.stack(outs)


# --------------------------------------------------------------------------- spike coding
_INT_RANGE = {torch.int8: (-128, 127), torch.int16: (-32768, 32767),
              torch.int32: (-2**31, 2**31 - 1)}


def ref_spike_vth(x, k=3.0):
    return (x.to(f64).abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)


def ref_spike_encode(x, k=3.0, out_dtype=torch.int8):
    # vth in float32 exactly as the kernels do: mean(|x|) in float32 then / k then clamp
    xf = x.float()
    vth = (xf.abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)
    counts = torch.round(xf / vth)  # torch.round is round-half-to-even
    lo, hi = _INT_RANGE[out_dtype]
    return counts.double().clamp(lo, hi).to(out_dtype), vth   # clamped in float64: int32 max is not a float32


def ref_spike_quant(x, k=3.0):
    vth = ref_spike_vth(x, k)
    xd = x.to(f64)
    # straight-through: value of the quantizer, gradient of the identity
    return xd + (torch.round(xd / vth) * vth - xd).detach()


def ref_spike_expand(counts, mode, T):
    c = counts.long()
    t = torch.arange(T).view(T, *([1] * c.dim()))
    if mode == "binary":
        assert (c >= 0).all()
        s = (t < c).long()
    elif mode == "ternary":
        s = c.sign() * (t < c.abs()).long()
    elif mode == "bitwise":
        s = c.sign() * ((c.abs()[None] >> (T - 1 - t)) & 1)
    else:
        raise ValueError(mode)
    return s.to(torch.int8)


def ref_spike_collapse(trains, mode):
    s = trains.long()
    T = s.shape[0]
    if mode == "bitwise":
        w = (2 ** torch.arange(T - 1, -1, -1)).view(T, *([1] * (s.dim() - 1)))
        return (s * w).sum(0)
    return s.sum(0)


# --------------------------------------------------------------------------- MoE routing
def ref_topk_gating(logits, k, scoring="softmax", renormalize=True, bias=None,
                    num_groups=None, topk_groups=None, scaling=1.0):
    x = logits.to(f64)
    s = x.softmax(-1) if scoring == "softmax" else x.sigmoid()
    choice = s.detach().clone()
    if bias is not None:
        choice = choice + bias.to(f64)
    Tn, E = x.shape
    if num_groups:
        gs = choice.view(Tn, num_groups, E // num_groups).amax(-1)
        # stable sort keeps the lower index first among equal scores
        keep = torch.sort(-gs, dim=-1, stable=True).indices[:, :topk_groups]
        gmask = torch.zeros(Tn, num_groups, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~gmask.repeat_interleave(E // num_groups, 1), float("-inf"))
    ids = torch.sort(-choice, dim=-1, stable=True).indices[:, :k]
    w = s.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w * scaling, ids.to(torch.int32)


def ref_moe_permute(x, ids, num_experts):
    Tn, k = ids.shape
    flat = ids.reshape(-1).long()
    order = [i for e in range(num_experts) for i in range(Tn * k) if flat[i] == e]
    counts = torch.tensor([int((flat == e).sum()) for e in range(num_experts)])
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    row_map = torch.full((Tn * k,), -1, dtype=torch.int32)
    for r, i in enumerate(order):
        row_map[i] = r
    x_perm = x.new_zeros(Tn * k, x.shape[1])
    if order:
        x_perm[: len(order)] = x[torch.tensor(order) // k]
    return x_perm, offsets, row_map.view(Tn, k)


def ref_moe_unpermute(y_perm, row_map, weights):
    Tn, k = row_map.shape
    y = y_perm.to(f64)
    w = weights.to(f64)
    rm = row_map.long()
    gathered = y[rm.clamp(min=0)]                       # [T, k, Hd]
    mask = (rm >= 0).to(f64)[..., None]
    return (gathered * w[..., None] * mask).sum(1)


def ref_expert_counts(ids, num_experts):
    flat = ids.reshape(-1).long()
    flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=num_experts).to(torch.int64)


def ref_moe_align_block_size(ids, num_experts, block_size):
    flat = ids.reshape(-1).long()
    n = flat.numel()
    max_padded = n + num_experts * (block_size - 1)
    sorted_ids = torch.full((max_padded,), n, dtype=torch.int32)
    n_blocks = math.ceil(max_padded / block_size)
    block_expert = torch.full((n_blocks,), -1, dtype=torch.int32)
    pos = 0
    for e in range(num_experts):
        members = [i for i in range(n) if flat[i] == e]
        padded = math.ceil(len(members) / block_size) * block_size
        for j, i in enumerate(members):
            sorted_ids[pos + j] = i
        block_expert[pos // block_size:(pos + padded) // block_size] = e
        pos += padded
    return sorted_ids, block_expert, torch.tensor([pos], dtype=torch.int32)


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 (NaN propagates, so NaN never passes a bound)."""
    out = out.detach().to(f64).cpu()
    ref = ref.detach().to(f64).cpu()
    den = ref.norm()
    num = (out - ref).norm()
    if den == 0:
        return float(num)
    return float(num / den)
