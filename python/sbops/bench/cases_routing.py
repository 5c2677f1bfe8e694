"""Cases of the spike-coding and MoE-routing families: correctness checks against the float64
references and speed cases at the SpikingBrain hidden size."""
from __future__ import annotations

import torch

import sbops

from . import peers as P
from . import reference as R
from .casebase import (HIDDEN7, PROBE_T, Compared, Prepared, SpeedCase, _dev_randn, _elt, _grads, _k, _randn,
                       _routing)
from .harness import cycling, rotating


# --------------------------------------------------------------------------- spike coding
def _tie_tolerant(counts_out: torch.Tensor, ratio: torch.Tensor, ref_counts: torch.Tensor) -> torch.Tensor:
    """The reference counts, except where x / vth is within 1e-4 (relative) of a rounding tie and
    ours took the other rounding: there ours is accepted."""
    frac = ratio - ratio.floor()
    tie = (frac - 0.5).abs() < 1e-4 * ratio.abs().clamp(min=1.0)
    other = (counts_out - ref_counts).abs() == 1
    return torch.where(tie & other, counts_out, ref_counts)


def _check_spike_encode(shape, out_dtype):
    def run(env, gen):
        x = _randn(gen, env, *shape, scale=2.0)
        # a few large outliers so that int8 saturates
        x.view(-1)[:: max(1, x.numel() // 7)] *= 400
        counts, vth = sbops.spike_encode(x, 3.0, out_dtype)
        (x64,) = R.upcast(x)
        rvth = R.spike_vth(x64, 3.0)
        ratio = x64 / rvth
        rc = R.spike_counts(x64, rvth, out_dtype)
        rc = _tie_tolerant(counts.cpu().to(torch.float64), ratio, rc)
        return [Compared("counts", counts, rc, exact=True), Compared("vth", vth, rvth)]
    return run, f"x={list(shape)} out={str(out_dtype).replace('torch.', '')}"


def _check_spike_quant(shape):
    def run(env, gen):
        x = _randn(gen, env, *shape, scale=2.0)
        xq = sbops.spike_quant(x, 3.0)
        (x64,) = R.upcast(x)
        rvth = R.spike_vth(x64, 3.0)
        ours_counts = torch.round(xq.cpu().to(torch.float64) / rvth)
        rc = _tie_tolerant(ours_counts, x64 / rvth, R.spike_counts(x64, rvth))
        return [Compared("x_hat", xq, rc * rvth)]
    return run, f"x={list(shape)}"


def _check_spike_trains(shape, mode, op):
    def run(env, gen):
        c = torch.round(torch.randn(*shape, generator=gen) * 5).clamp(-127, 127).to(torch.int8)
        if mode == "binary":
            c = c.abs()
        # bitwise: 7 bits hold |c| <= 127; binary/ternary: one step per unit of the largest count
        T = 7 if mode == "bitwise" else max(1, int(c.abs().max()))
        c = c.to(env.device)
        if op == "spike_expand":
            return [Compared("trains", sbops.spike_expand(c, mode, T), R.spike_expand(c, mode, T), exact=True)]
        trains = R.spike_expand(c, mode, T).to(env.device)
        return [Compared("counts", sbops.spike_collapse(trains, mode), R.spike_collapse(trains, mode), exact=True)]
    return run, f"counts={list(shape)} mode={mode}"


def _check_spike_linear(M, K, N, group_size, wdtype, bias):
    def run(env, gen):
        x = _randn(gen, env, M, K, scale=2.0)
        x[0, 3] *= 300                                   # a count far past one 8-bit digit
        w = torch.randn(N, K, generator=gen) * 0.05
        wq, sc = sbops.quantize_weight(w, group_size=group_size, dtype=wdtype)
        b = _randn(gen, env, N) if bias else None
        y = sbops.spike_linear(x, wq.to(env.device), sc.to(env.device), 3.0, b, group_size)
        return [Compared("y", y, R.spike_linear(x, wq, sc, 3.0, b, group_size))]
    w = "int8" if wdtype == torch.int8 else "e4m3"
    return run, f"x=[{M}, {K}] N={N} {w}" + (f" group={group_size}" if group_size else " per-channel") + (
        " bias" if bias else "")


# --------------------------------------------------------------------------- MoE routing
def _check_topk(T, E, k, scoring="softmax", renormalize=True, bias=False, groups=None, scaling=1.0,
                grad=False):
    def run(env, gen):
        logits = _randn(gen, env, T, E, scale=2.0)
        b = _randn(gen, env, E, scale=0.1, dtype=torch.float32) if bias else None
        ng, tg = groups if groups else (None, None)
        logits.requires_grad_(grad)
        w, ids = sbops.topk_gating(logits, k, scoring, renormalize, b, ng, tg, scaling)
        rl, rb = R.upcast(logits, b)
        rw, rids = R.topk_gating(rl, k, scoring, renormalize, rb, ng, tg, scaling)
        if not grad:
            return [Compared("weights", w, rw), Compared("ids", ids, rids, exact=True)]
        dw = _randn(gen, env, T, k, dtype=torch.float32)
        (dl,) = _grads((w,), (dw,), [logits])
        (rdl,) = _grads((rw,), R.upcast(dw), [rl])
        return [Compared("dlogits", dl, rdl), Compared("ids", ids, rids, exact=True)]

    shape = (f"T={T} E={E} k={k} {scoring}" + (" bias" if bias else "")
             + (f" groups={groups[0]}/{groups[1]}" if groups else "") + ("" if renormalize else " no-renorm")
             + (f" scaling={scaling}" if scaling != 1.0 else ""))
    return run, shape


def _check_permute(T, Hd, E, k, drop, op):
    def run(env, gen):
        x = _randn(gen, env, T, Hd)
        ids = _routing(gen, T, E, k, drop).to(env.device)
        rx, roff, rmap = R.moe_permute(x.cpu(), ids.cpu(), E)
        if op == "moe_permute":
            xp, off, rm = sbops.moe_permute(x, ids, E)
            return [Compared("x_perm", xp, rx, exact=True), Compared("expert_offsets", off, roff, exact=True),
                    Compared("row_map", rm, rmap, exact=True)]
        y_perm = _randn(gen, env, T * k, Hd)
        w = torch.rand(T, k, generator=gen).to(env.device)
        y = sbops.moe_unpermute(y_perm, rmap.to(device=env.device, dtype=torch.int32), w)
        ry_perm, rw = R.upcast(y_perm, w)
        return [Compared("y", y, R.moe_unpermute(ry_perm, rmap, rw))]
    return run, f"T={T} Hd={Hd} E={E} k={k}" + (f" dropped={drop:.0%}" if drop else "")


def _check_align(T, E, k, block, drop):
    def run(env, gen):
        ids = _routing(gen, T, E, k, drop).to(env.device)
        sid, bexp, npad = sbops.moe_align_block_size(ids, E, block)
        rs, rb, rn = R.moe_align_block_size(ids, E, block)
        return [Compared("sorted_ids", sid, rs, exact=True), Compared("block_expert_ids", bexp, rb, exact=True),
                Compared("num_tokens_post_pad", npad, rn, exact=True)]
    return run, f"T={T} E={E} k={k} block={block}"


def _check_counts(T, E, k, drop):
    def run(env, gen):
        ids = _routing(gen, T, E, k, drop).to(env.device)
        return [Compared("counts", sbops.expert_counts(ids, E), R.expert_counts(ids, E), exact=True)]
    return run, f"T={T} E={E} k={k}"


# =========================================================================== speed
def _speed_spike_encode(T, C=HIDDEN7):
    def setup(env):
        e = _elt(env.dtype)
        sets = rotating(lambda: _dev_randn(env, T, C), T * C * e)
        nbytes = T * C * (e + 1) + T * 4
        peers = {"torch.eager": lambda: cycling(P.spike_encode_torch, sets),
                 "torch.compile": lambda: cycling(P.compiled(P.spike_encode_torch), sets)}
        return Prepared(cycling(sbops.spike_encode, sets), nbytes, 0.0, peers)
    def probe(env):
        x = _dev_randn(env, PROBE_T, C)
        return lambda: sbops.spike_encode(x)
    return SpeedCase(f"spike_encode [{T},{C}]", "spike_encode", dict(T=T, C=C, out="int8"), setup, probe)


def _speed_spike_linear(M, N, K, group_size=None):
    """W8ASpike layer (int8 weights, encode included) vs the bf16/fp16 matmul with the same weights
    dequantised (the issue's peer)."""
    def weights(env):
        w = torch.randn(N, K, device=env.device) * 0.02
        wq, sc = sbops.quantize_weight(w, group_size=group_size)
        full = sc[:, None] if group_size is None else sc.repeat_interleave(group_size, 1)
        return wq, sc, (wq.float() * full).to(env.dtype)

    def setup(env):
        e = _elt(env.dtype)
        wq, sc, wd = weights(env)
        sets = rotating(lambda: _dev_randn(env, M, K), M * K * e)
        nbytes = M * K * e + N * K + M * N * e
        peers = {"torch.matmul": lambda: cycling(lambda x: x @ wd.T, sets)}
        return Prepared(cycling(lambda x: sbops.spike_linear(x, wq, sc, 3.0, None, group_size), sets),
                        nbytes, 2.0 * M * N * K, peers)
    def probe(env):
        wq, sc, _ = weights(env)
        x = _dev_randn(env, PROBE_T, K)
        return lambda: sbops.spike_linear(x, wq, sc, 3.0, None, group_size)
    name = f"spike_linear M={_k(M)} {N}x{K} int8" + (f" g{group_size}" if group_size else "")
    return SpeedCase(name, "spike_linear", dict(M=M, N=N, K=K, weight="int8", group=group_size or 0), setup, probe)


def _speed_topk(T, E, k):
    def setup(env):
        e = _elt(env.dtype)
        sets = rotating(lambda: _dev_randn(env, T, E), T * E * e)
        nbytes = T * E * e + T * k * 8
        peers = {"torch.eager": lambda: cycling(lambda x: P.topk_gating_torch(x, k), sets),
                 "torch.compile": lambda: _compiled_topk(sets, k)}
        return Prepared(cycling(lambda x: sbops.topk_gating(x, k), sets), nbytes, 0.0, peers)
    def probe(env):
        x = _dev_randn(env, PROBE_T, E)
        return lambda: sbops.topk_gating(x, k)
    return SpeedCase(f"topk_gating T={_k(T)} E={E} k={k}", "topk_gating", dict(T=T, E=E, k=k, scoring="softmax"),
                     setup, probe)


def _compiled_topk(sets, k):
    f = P.compiled(P.topk_gating_torch)
    return cycling(lambda x: f(x, k), sets)


def _speed_permute(T, Hd, E, k, op):
    def setup(env):
        e = _elt(env.dtype)
        ids = _routing(torch.Generator().manual_seed(env.seed), T, E, k).to(env.device)
        if op == "moe_permute":
            sets = rotating(lambda: _dev_randn(env, T, Hd), T * Hd * e)
            nbytes = (T * Hd + T * k * Hd) * e + T * k * 8
            peers = {"torch.eager": lambda: cycling(lambda x: P.moe_permute_torch(x, ids.long(), E), sets),
                     "torch.compile": lambda: _compiled_permute(sets, ids.long(), E)}
            return Prepared(cycling(lambda x: sbops.moe_permute(x, ids, E), sets), nbytes, 0.0, peers)
        _, _, row_map = sbops.moe_permute(torch.zeros(T, 1, device=env.device, dtype=env.dtype), ids, E)
        w = torch.rand(T, k, device=env.device)
        sets = rotating(lambda: _dev_randn(env, T * k, Hd), T * k * Hd * e)
        nbytes = (T * k * Hd + T * Hd) * e + T * k * 8
        peers = {"torch.eager": lambda: cycling(lambda y: P.moe_unpermute_torch(y, row_map, w), sets),
                 "torch.compile": lambda: _compiled_unpermute(sets, row_map, w)}
        return Prepared(cycling(lambda y: sbops.moe_unpermute(y, row_map, w), sets), nbytes, 0.0, peers)
    def probe(env):
        ids = _routing(torch.Generator().manual_seed(env.seed), PROBE_T, E, k).to(env.device)
        if op == "moe_permute":
            x = _dev_randn(env, PROBE_T, Hd)
            return lambda: sbops.moe_permute(x, ids, E)
        _, _, row_map = sbops.moe_permute(torch.zeros(PROBE_T, 1, device=env.device, dtype=env.dtype), ids, E)
        y, w = _dev_randn(env, PROBE_T * k, Hd), torch.rand(PROBE_T, k, device=env.device)
        return lambda: sbops.moe_unpermute(y, row_map, w)
    return SpeedCase(f"{op} T={_k(T)} Hd={Hd} E={E} k={k}", op, dict(T=T, Hd=Hd, E=E, k=k), setup, probe)


def _compiled_permute(sets, ids, E):
    f = P.compiled(P.moe_permute_torch)
    return cycling(lambda x: f(x, ids, E), sets)


def _compiled_unpermute(sets, row_map, w):
    f = P.compiled(P.moe_unpermute_torch)
    return cycling(lambda y: f(y, row_map, w), sets)

