"""Cases of the attention families: linear attention (prefill, decode) and sliding-window attention
(prefill, decode, cache write) - correctness checks against the float64 references and speed cases
on the SpikingBrain-7B heads."""
from __future__ import annotations

import torch

import sbops

from . import peers as P
from . import reference as R
from .casebase import (D7, H7, HKV7, PROBE_T, Compared, Prepared, SpeedCase, _cu_seqlens, _dev_gate, _dev_randn,
                       _elt, _gate, _grads, _k, _leaves, _randn, linear_attn_flops, window_pairs)


# --------------------------------------------------------------------------- linear attention
def _check_linear_attn(B, T, H, HKV, D, gate, init, seqs=None, grad=False):
    def run(env, gen):
        q = _randn(gen, env, B, T, H, D)
        k = _randn(gen, env, B, T, HKV, D)
        v = _randn(gen, env, B, T, HKV, D)
        g = None if gate is None else _gate(gen, env, *((B, T, HKV, D) if gate == "key" else (B, T, HKV)))
        N = B if seqs is None else len(seqs)
        h0 = _randn(gen, env, N, HKV, D, D, dtype=torch.float32) if init else None
        cu = _cu_seqlens(env, seqs)
        leaves, names = _leaves(grad, zip(("dq", "dk", "dv", "dg", "dh0"), (q, k, v, g, h0)))
        o, fs = sbops.linear_attn(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        rq, rk, rv, rg, rh0 = R.upcast(q, k, v, g, h0)
        ro, rfs = R.linear_attn(rq, rk, rv, rg, initial_state=rh0, cu_seqlens=cu)
        if not grad:
            return [Compared("o", o, ro), Compared("final_state", fs, rfs)]
        do, dfs = _randn(gen, env, *o.shape), _randn(gen, env, *fs.shape, dtype=torch.float32)
        ours = _grads((o, fs), (do, dfs), leaves)
        ref_leaves = [t for t in (rq, rk, rv, rg, rh0) if t is not None]
        refs = _grads((ro, rfs), R.upcast(do, dfs), ref_leaves)
        return [Compared(n, a, b) for n, a, b in zip(names, ours, refs)]

    shape = (f"B={B} T={T} H={H} HKV={HKV} D={D} g={gate or 'none'}" + (" h0" if init else "")
             + (f" varlen N={len(seqs)}" if seqs else ""))
    return run, shape


def _check_linear_attn_decode(N, S, H, HKV, D, gate, indices):
    def run(env, gen):
        q = _randn(gen, env, N, H, D)
        k = _randn(gen, env, N, HKV, D)
        v = _randn(gen, env, N, HKV, D)
        g = None if gate is None else _gate(gen, env, *((N, HKV, D) if gate == "key" else (N, HKV)))
        state = _randn(gen, env, S, HKV, D, D, dtype=torch.float32)
        idx = torch.randperm(S, generator=gen)[:N].to(env.device) if indices else None
        rq, rk, rv, rg, rs = R.upcast(q, k, v, g, state)
        ro, rstate = R.linear_attn_decode(rq, rk, rv, rg, rs, idx)
        o = sbops.linear_attn_decode(q, k, v, g, state, state_indices=idx)
        return [Compared("o", o, ro), Compared("state", state, rstate)]

    shape = f"N={N} S={S} H={H} HKV={HKV} D={D} g={gate or 'none'}" + (" indices" if indices else "")
    return run, shape


# --------------------------------------------------------------------------- sliding window
def _check_swa(B, T, H, HKV, D, window, sinks=0, seqs=None, grad=False):
    def run(env, gen):
        q = _randn(gen, env, B, T, H, D)
        k = _randn(gen, env, B, T, HKV, D)
        v = _randn(gen, env, B, T, HKV, D)
        sk = _randn(gen, env, sinks, HKV, D) if sinks else None
        sv = _randn(gen, env, sinks, HKV, D) if sinks else None
        cu = _cu_seqlens(env, seqs)
        leaves, names = _leaves(grad, zip(("dq", "dk", "dv", "dsink_k", "dsink_v"), (q, k, v, sk, sv)))
        o, lse = sbops.swa_attn(q, k, v, window, cu_seqlens=cu, sink_k=sk, sink_v=sv, return_lse=True)
        rq, rk, rv, rsk, rsv = R.upcast(q, k, v, sk, sv)
        ro, rlse = R.swa_attn(rq, rk, rv, window, cu_seqlens=cu, sink_k=rsk, sink_v=rsv)
        if not grad:
            return [Compared("o", o, ro), Compared("lse", lse, rlse)]
        do = _randn(gen, env, *o.shape)
        ours = _grads((o,), (do,), leaves)
        refs = _grads((ro,), R.upcast(do), [t for t in (rq, rk, rv, rsk, rsv) if t is not None])
        return [Compared(n, a, b) for n, a, b in zip(names, ours, refs)]

    shape = (f"B={B} T={T} H={H} HKV={HKV} D={D} window={window}" + (f" sinks={sinks}" if sinks else "")
             + (f" varlen N={len(seqs)}" if seqs else ""))
    return run, shape


def _check_swa_decode(N, S, C, H, HKV, D, window, seq_lens, slots):
    def run(env, gen):
        q = _randn(gen, env, N, H, D)
        kc = _randn(gen, env, S, C, HKV, D)
        vc = _randn(gen, env, S, C, HKV, D)
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=env.device)
        idx = torch.randperm(S, generator=gen)[:N].to(env.device) if slots else None
        ro = R.swa_decode(*R.upcast(q, kc, vc), lens.cpu(), window, slot_indices=None if idx is None else idx.cpu())
        o = sbops.swa_decode(q, kc, vc, lens, window, slot_indices=idx)
        return [Compared("o", o, ro)]

    shape = f"N={N} S={S} C={C} H={H} HKV={HKV} D={D} window={window} lens={list(seq_lens)}"
    return run, shape


def _check_swa_cache_write(N, S, C, HKV, D):
    def run(env, gen):
        k, v = _randn(gen, env, N, HKV, D), _randn(gen, env, N, HKV, D)
        kc, vc = _randn(gen, env, S, C, HKV, D), _randn(gen, env, S, C, HKV, D)
        pos = torch.randint(0, 5 * C, (N,), generator=gen).to(env.device)
        idx = torch.randperm(S, generator=gen)[:N].to(env.device)
        rk, rv = R.swa_cache_write(k.cpu(), v.cpu(), kc.cpu(), vc.cpu(), pos.cpu(), idx.cpu())
        sbops.swa_cache_write(k, v, kc, vc, pos, slot_indices=idx)
        return [Compared("k_cache", kc, rk, exact=True), Compared("v_cache", vc, rv, exact=True)]
    return run, f"N={N} S={S} C={C} HKV={HKV} D={D}"


# =========================================================================== speed
def _speed_linear_attn(T, backward=False, B=1, H=H7, HKV=HKV7, D=D7):
    def setup(env):
        q = _dev_randn(env, B, T, H, D)
        k, v = _dev_randn(env, B, T, HKV, D), _dev_randn(env, B, T, HKV, D)
        g = _dev_gate(env, B, T, HKV, D)
        scale = D ** -0.5
        e = _elt(env.dtype)
        inputs = (q.numel() + k.numel() + v.numel() + g.numel()) * e
        out = B * T * H * D * e
        flops = B * linear_attn_flops(T, H, HKV, D, D)
        peers = {"fla.chunk_gla": lambda: P.fla_chunk_gla(q, k, v, g, scale, backward)}
        if not backward:
            return Prepared(lambda: sbops.linear_attn(q, k, v, g), inputs + out, flops, peers)
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v, g)]
        do = torch.randn_like(q)

        def fwd_bwd():
            o, _ = sbops.linear_attn(*leaves)
            return torch.autograd.grad(o, leaves, do)
        # forward (inputs, o) + backward (inputs, do; gradients the size of the inputs)
        return Prepared(fwd_bwd, 3 * inputs + 2 * out, 3 * flops, peers)
    def probe(env):
        q = _dev_randn(env, 1, PROBE_T, H, D)
        k, v = _dev_randn(env, 1, PROBE_T, HKV, D), _dev_randn(env, 1, PROBE_T, HKV, D)
        g = _dev_gate(env, 1, PROBE_T, HKV, D)
        return lambda: sbops.linear_attn(q, k, v, g)
    name = f"linear_attn {'fwd+bwd' if backward else 'fwd'} T={_k(T)}"
    return SpeedCase(name, "linear_attn", dict(B=B, T=T, H=H, HKV=HKV, D=D, gate="key", backward=backward), setup,
                     probe)


def _speed_linear_attn_decode(N, H=H7, HKV=HKV7, D=D7):
    def setup(env):
        q, k, v = _dev_randn(env, N, H, D), _dev_randn(env, N, HKV, D), _dev_randn(env, N, HKV, D)
        g = _dev_gate(env, N, HKV, D)
        state = torch.randn(N, HKV, D, D, device=env.device) * 0.1
        e = _elt(env.dtype)
        nbytes = 2 * state.numel() * 4 + (q.numel() * 2 + k.numel() + v.numel() + g.numel()) * e
        flops = N * (HKV * 4 * D * D + H * 2 * D * D)
        scale = D ** -0.5
        peers = {"fla.fused_recurrent_gla": lambda: P.fla_decode(q, k, v, g, state, scale),
                 "torch.eager": lambda: P.torch_linear_attn_decode(q, k, v, g, state.clone(), scale)}
        return Prepared(lambda: sbops.linear_attn_decode(q, k, v, g, state), nbytes, flops, peers)
    def probe(env):
        q, k, v = _dev_randn(env, 1, H, D), _dev_randn(env, 1, HKV, D), _dev_randn(env, 1, HKV, D)
        g, state = _dev_gate(env, 1, HKV, D), torch.randn(1, HKV, D, D, device=env.device) * 0.1
        return lambda: sbops.linear_attn_decode(q, k, v, g, state)
    return SpeedCase(f"linear_attn_decode B={N}", "linear_attn_decode",
                     dict(N=N, H=H, HKV=HKV, D=D, gate="key", state="float32"), setup, probe)


def _speed_swa(T, window, backward=False, B=1, H=H7, HKV=HKV7, D=D7):
    def setup(env):
        q = _dev_randn(env, B, T, H, D)
        k, v = _dev_randn(env, B, T, HKV, D), _dev_randn(env, B, T, HKV, D)
        e = _elt(env.dtype)
        io = (2 * q.numel() + k.numel() + v.numel()) * e
        flops = 4 * D * H * B * window_pairs(T, window)
        # full causal SDPA: the peer of the causal case, and what full attention would cost otherwise
        peers = {"sdpa.full_causal": lambda: P.sdpa_causal(q, k, v, backward)}
        if window >= 0:
            peers["flex"] = lambda: P.flex_swa(q, k, v, window, backward)
        if not backward:
            return Prepared(lambda: sbops.swa_attn(q, k, v, window), io, flops, peers)
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        do = torch.randn_like(q)

        def fwd_bwd():
            o = sbops.swa_attn(*leaves, window)
            return torch.autograd.grad(o, leaves, do)
        # forward reads q, k, v and writes o; backward reads q, k, v, o, do, writes dq, dk, dv
        return Prepared(fwd_bwd, io + io + (q.numel() + k.numel() + v.numel()) * e + q.numel() * e,
                        3.5 * flops, peers)
    def probe(env):
        q = _dev_randn(env, 1, PROBE_T, H, D)
        k, v = _dev_randn(env, 1, PROBE_T, HKV, D), _dev_randn(env, 1, PROBE_T, HKV, D)
        return lambda: sbops.swa_attn(q, k, v, window)
    kind = ("fwd+bwd" if backward else "fwd") + (" causal" if window < 0 else "")
    return SpeedCase(f"swa {kind} T={_k(T)}" + ("" if window < 0 else f" w={window}"), "swa_attn",
                     dict(B=B, T=T, H=H, HKV=HKV, D=D, window=window, backward=backward), setup, probe)


def _speed_swa_decode(N, window, L, H=H7, HKV=HKV7, D=D7):
    C = window + 1

    def setup(env):
        q = _dev_randn(env, N, H, D)
        kc, vc = _dev_randn(env, N, C, HKV, D), _dev_randn(env, N, C, HKV, D)
        lens = torch.full((N,), L, dtype=torch.int32, device=env.device)
        n = min(L, window + 1)
        e = _elt(env.dtype)
        nbytes = (2 * N * n * HKV * D + 2 * q.numel()) * e
        flops = 4 * D * H * N * n
        # attention does not depend on the order of the keys: with L >= C the ring holds exactly
        # the window, so SDPA over the whole (contiguous) cache computes the same result
        peers = {"sdpa.contiguous_window": lambda: P.sdpa_decode_window(q, kc, vc)} if L >= C else {}
        return Prepared(lambda: sbops.swa_decode(q, kc, vc, lens, window), nbytes, flops, peers)
    def probe(env):
        q = _dev_randn(env, 1, H, D)
        kc, vc = _dev_randn(env, 1, C, HKV, D), _dev_randn(env, 1, C, HKV, D)
        lens = torch.full((1,), min(L, PROBE_T), dtype=torch.int32, device=env.device)
        return lambda: sbops.swa_decode(q, kc, vc, lens, window)
    return SpeedCase(f"swa_decode B={N} w={window}", "swa_decode",
                     dict(N=N, H=H, HKV=HKV, D=D, window=window, cache=C, seq_len=L), setup, probe)

