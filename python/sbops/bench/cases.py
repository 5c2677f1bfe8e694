"""The benchmark's cases: correctness checks against the float64 references and speed cases.

Everything goes through the public API (`sbops.<op>`); the runner forces the backend with
`sbops.use_backend(name)` around each case.

A correctness `Check` builds fresh random inputs, runs the op and the float64 reference, and
returns the outputs to compare (`Compared`).  Integer outputs (ids, offsets, spike trains) must
match exactly; float outputs must meet the dtype's bound (SPEC section 6).  Spike counts are
compared exactly except where x / vth lies within 1e-4 of a rounding tie, where either rounding is
accepted (vth differs from the reference in its last bits, which may legitimately flip a tie).

A `SpeedCase` builds its inputs and returns a `Prepared`: the call to time, the bytes it must
move and the FLOPs it must do (for GB/s, TFLOP/s and the roofline floor), and peer factories.
FLOP conventions: attention counts 4*D per (query, key) pair inside the window per query head
(backward 2.5x forward); chunked linear attention counts, per token, 2*C*(K+V) + 2*K*V per query
head (intra-chunk scores, scores x values, queries x state, C = 64) plus 2*K*V per KV head (state
update), backward 2x forward.  Bytes count each input read once and each output written once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import sbops

from . import peers as P
from . import reference as R
from .harness import cycling, rotating

FAMILIES = {
    "linear_attn": ("linear_attn", "linear_attn_decode"),
    "swa": ("swa_attn", "swa_decode", "swa_cache_write"),
    "spike": ("spike_encode", "spike_quant", "spike_expand", "spike_collapse"),
    "moe": ("topk_gating", "moe_permute", "moe_unpermute", "moe_align_block_size", "expert_counts"),
}
FAMILY_OF = {op: fam for fam, ops in FAMILIES.items() for op in ops}

# SpikingBrain-7B attention heads
H7, HKV7, D7, WINDOW7, HIDDEN7 = 28, 4, 128, 4096, 3584


@dataclass
class Env:
    """Where a case runs: backend name, torch device, floating dtype of the inputs."""
    backend: str
    device: str
    dtype: torch.dtype
    seed: int = 0


def bound_for(dtype: torch.dtype, grad: bool) -> float:
    """SPEC section 6: 1e-5 for float32/float64 results, 1e-2 (gradients 2e-2) for 16-bit."""
    if dtype in (torch.float32, torch.float64):
        return 1e-5
    return 2e-2 if grad else 1e-2


@dataclass
class Compared:
    name: str
    out: torch.Tensor
    ref: torch.Tensor
    exact: bool = False          # integer result: must match exactly


@dataclass
class Check:
    op: str                      # reported op name; gradient checks end in ".grad"
    shape: str
    run: Callable[[Env, torch.Generator], List[Compared]]
    full_only: bool = False      # only with --full (larger shapes)

    @property
    def family(self) -> str:
        return FAMILY_OF[self.op.split(".")[0]]

    @property
    def grad(self) -> bool:
        return self.op.endswith(".grad")


# --------------------------------------------------------------------------- input helpers
def _randn(gen: torch.Generator, env: Env, *shape, scale: float = 1.0, dtype=None) -> torch.Tensor:
    """Seeded CPU draw moved to the case's device and dtype (reproducible across devices)."""
    x = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
    return x.to(device=env.device, dtype=dtype or env.dtype)


def _gate(gen, env, *shape) -> torch.Tensor:
    """SpikingBrain's gate: logsigmoid(x) / 16 (log-decays in about [-0.3, 0])."""
    return (F.logsigmoid(torch.randn(*shape, generator=gen) * 2) / 16).to(env.device, env.dtype)


def _routing(gen, T: int, E: int, k: int, drop: float = 0.0) -> torch.Tensor:
    """[T, k] int32 distinct random experts per token; a `drop` fraction of slots set to -1."""
    ids = torch.rand(T, E, generator=gen).topk(k, dim=-1).indices.to(torch.int32)
    if drop:
        ids[torch.rand(T, k, generator=gen) < drop] = -1
    return ids


def _grads(outputs, grad_outputs, leaves):
    return torch.autograd.grad(outputs, leaves, grad_outputs)


# --------------------------------------------------------------------------- linear attention
def _check_linear_attn(B, T, H, HKV, D, gate, init, seqs=None, grad=False):
    def run(env, gen):
        q = _randn(gen, env, B, T, H, D)
        k = _randn(gen, env, B, T, HKV, D)
        v = _randn(gen, env, B, T, HKV, D)
        g = None if gate is None else _gate(gen, env, *((B, T, HKV, D) if gate == "key" else (B, T, HKV)))
        N = B if seqs is None else len(seqs)
        h0 = _randn(gen, env, N, HKV, D, D, dtype=torch.float32) if init else None
        cu = None
        if seqs is not None:
            cu = torch.tensor([0] + list(torch.tensor(seqs).cumsum(0)), dtype=torch.int32, device=env.device)
        leaves = [t for t in (q, k, v, g, h0) if t is not None]
        names = [n for n, t in zip(("dq", "dk", "dv", "dg", "dh0"), (q, k, v, g, h0)) if t is not None]
        for t in leaves:
            t.requires_grad_(grad)
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
        cu = None
        if seqs is not None:
            cu = torch.tensor([0] + list(torch.tensor(seqs).cumsum(0)), dtype=torch.int32, device=env.device)
        leaves = [t for t in (q, k, v, sk, sv) if t is not None]
        names = [n for n, t in zip(("dq", "dk", "dv", "dsink_k", "dsink_v"), (q, k, v, sk, sv)) if t is not None]
        for t in leaves:
            t.requires_grad_(grad)
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


def checks() -> List[Check]:
    """Every correctness check (odd sizes, GQA, both head dims; `full_only` adds 7B-sized ones)."""
    out: List[Check] = []

    def add(op, made, full_only=False):
        run, shape = made
        out.append(Check(op, shape, run, full_only))

    add("linear_attn", _check_linear_attn(2, 63, 4, 2, 64, "key", False))
    add("linear_attn", _check_linear_attn(1, 1, 4, 4, 128, None, False))
    add("linear_attn", _check_linear_attn(1, 300, 6, 2, 64, "head", True))
    add("linear_attn", _check_linear_attn(1, 300, 4, 1, 128, "key", True, seqs=(37, 200, 63)))
    add("linear_attn", _check_linear_attn(1, 1000, H7, HKV7, D7, "key", False), full_only=True)
    add("linear_attn.grad", _check_linear_attn(2, 63, 4, 2, 64, "key", True, grad=True))
    add("linear_attn.grad", _check_linear_attn(1, 300, H7, HKV7, D7, "key", False, grad=True), full_only=True)
    add("linear_attn_decode", _check_linear_attn_decode(3, 5, 4, 2, 64, "key", True))
    add("linear_attn_decode", _check_linear_attn_decode(2, 2, 8, 8, 128, "head", False))
    add("linear_attn_decode", _check_linear_attn_decode(4, 4, 4, 1, 64, None, False))
    add("linear_attn_decode", _check_linear_attn_decode(64, 64, H7, HKV7, D7, "key", False), full_only=True)

    add("swa_attn", _check_swa(2, 63, 4, 2, 64, 16))
    add("swa_attn", _check_swa(1, 1, 4, 1, 128, 0))
    add("swa_attn", _check_swa(1, 300, 4, 1, 128, -1))
    add("swa_attn", _check_swa(1, 300, 4, 2, 64, 31, sinks=5, seqs=(100, 1, 199)))
    add("swa_attn", _check_swa(1, 1000, H7, HKV7, D7, 256), full_only=True)
    add("swa_attn.grad", _check_swa(1, 63, 4, 2, 64, 7, sinks=3, grad=True))
    add("swa_attn.grad", _check_swa(1, 300, H7, HKV7, D7, 64, grad=True), full_only=True)
    add("swa_decode", _check_swa_decode(3, 4, 17, 4, 2, 64, 16, (1, 17, 40), True))
    add("swa_decode", _check_swa_decode(2, 2, 64, 8, 1, 128, -1, (64, 5), False))
    add("swa_decode", _check_swa_decode(8, 8, 4097, H7, HKV7, D7, 4096, (1, 4096, 4097, 4098, 6000, 8191, 8192, 9000),
                                        False), full_only=True)
    add("swa_cache_write", _check_swa_cache_write(3, 4, 17, 2, 64))

    add("spike_encode", _check_spike_encode((63, HIDDEN7), torch.int8))
    add("spike_encode", _check_spike_encode((2, 37, 128), torch.int16))
    add("spike_encode", _check_spike_encode((4096, HIDDEN7), torch.int8), full_only=True)
    add("spike_quant", _check_spike_quant((63, HIDDEN7)))
    for mode in ("bitwise", "ternary", "binary"):
        add("spike_expand", _check_spike_trains((63, 257), mode, "spike_expand"))
        add("spike_collapse", _check_spike_trains((63, 257), mode, "spike_collapse"))

    add("topk_gating", _check_topk(63, 16, 1))
    add("topk_gating", _check_topk(300, 128, 8, "sigmoid", bias=True, groups=(8, 4), scaling=2.5))
    add("topk_gating", _check_topk(4096, 128, 8), full_only=True)
    add("topk_gating.grad", _check_topk(63, 16, 2, grad=True))
    add("moe_permute", _check_permute(63, 64, 16, 1, 0.0, "moe_permute"))
    add("moe_permute", _check_permute(300, 128, 128, 8, 0.05, "moe_permute"))
    add("moe_unpermute", _check_permute(63, 64, 16, 1, 0.0, "moe_unpermute"))
    add("moe_unpermute", _check_permute(300, 128, 128, 8, 0.05, "moe_unpermute"))
    add("moe_align_block_size", _check_align(300, 128, 8, 64, 0.05))
    add("expert_counts", _check_counts(300, 128, 8, 0.05))
    return out


# =========================================================================== speed
@dataclass
class Prepared:
    """One speed case, ready to time."""
    ours: Callable[[], Any]
    bytes: float = 0.0
    flops: float = 0.0
    # peer name -> factory returning the callable to time (may raise peers.PeerUnavailable)
    peers: Dict[str, Callable[[], Callable[[], Any]]] = field(default_factory=dict)


@dataclass
class SpeedCase:
    name: str
    op: str
    shape: Dict[str, Any]
    setup: Callable[[Env], Prepared]

    @property
    def family(self) -> str:
        return FAMILY_OF[self.op]


def _elt(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _dev_randn(env: Env, *shape, dtype=None) -> torch.Tensor:
    return torch.randn(*shape, device=env.device, dtype=dtype or env.dtype)


def _dev_gate(env: Env, *shape) -> torch.Tensor:
    return (F.logsigmoid(torch.randn(*shape, device=env.device) * 2) / 16).to(env.dtype)


def window_pairs(T: int, window: int) -> int:
    """(query, key) pairs inside the causal window of one head: sum_i min(i + 1, window + 1)."""
    if window < 0 or window >= T:
        return T * (T + 1) // 2
    w = window + 1
    return w * (w + 1) // 2 + (T - w) * w


def linear_attn_flops(T: int, H: int, HKV: int, K: int, V: int, chunk: int = 64) -> float:
    return T * (H * (2 * chunk * (K + V) + 2 * K * V) + HKV * 2 * K * V)


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
    name = f"linear_attn {'fwd+bwd' if backward else 'fwd'} T={_k(T)}"
    return SpeedCase(name, "linear_attn", dict(B=B, T=T, H=H, HKV=HKV, D=D, gate="key", backward=backward), setup)


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
    return SpeedCase(f"linear_attn_decode B={N}", "linear_attn_decode",
                     dict(N=N, H=H, HKV=HKV, D=D, gate="key", state="float32"), setup)


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
    kind = ("fwd+bwd" if backward else "fwd") + (" causal" if window < 0 else "")
    return SpeedCase(f"swa {kind} T={_k(T)}" + ("" if window < 0 else f" w={window}"), "swa_attn",
                     dict(B=B, T=T, H=H, HKV=HKV, D=D, window=window, backward=backward), setup)


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
    return SpeedCase(f"swa_decode B={N} w={window}", "swa_decode",
                     dict(N=N, H=H, HKV=HKV, D=D, window=window, cache=C, seq_len=L), setup)


def _speed_spike_encode(T, C=HIDDEN7):
    def setup(env):
        e = _elt(env.dtype)
        sets = rotating(lambda: _dev_randn(env, T, C), T * C * e)
        nbytes = T * C * (e + 1) + T * 4
        peers = {"torch.eager": lambda: cycling(P.spike_encode_torch, sets),
                 "torch.compile": lambda: cycling(P.compiled(P.spike_encode_torch), sets)}
        return Prepared(cycling(sbops.spike_encode, sets), nbytes, 0.0, peers)
    return SpeedCase(f"spike_encode [{T},{C}]", "spike_encode", dict(T=T, C=C, out="int8"), setup)


def _speed_topk(T, E, k):
    def setup(env):
        e = _elt(env.dtype)
        sets = rotating(lambda: _dev_randn(env, T, E), T * E * e)
        nbytes = T * E * e + T * k * 8
        peers = {"torch.eager": lambda: cycling(lambda x: P.topk_gating_torch(x, k), sets),
                 "torch.compile": lambda: _compiled_topk(sets, k)}
        return Prepared(cycling(lambda x: sbops.topk_gating(x, k), sets), nbytes, 0.0, peers)
    return SpeedCase(f"topk_gating T={_k(T)} E={E} k={k}", "topk_gating", dict(T=T, E=E, k=k, scoring="softmax"),
                     setup)


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
    return SpeedCase(f"{op} T={_k(T)} Hd={Hd} E={E} k={k}", op, dict(T=T, Hd=Hd, E=E, k=k), setup)


def _compiled_permute(sets, ids, E):
    f = P.compiled(P.moe_permute_torch)
    return cycling(lambda x: f(x, ids, E), sets)


def _compiled_unpermute(sets, row_map, w):
    f = P.compiled(P.moe_unpermute_torch)
    return cycling(lambda y: f(y, row_map, w), sets)


def _k(T: int) -> str:
    """32768 -> '32k', 1048576 -> '1M'."""
    if T >= 2**20 and T % 2**20 == 0:
        return f"{T >> 20}M"
    if T >= 1024 and T % 1024 == 0:
        return f"{T >> 10}k"
    return str(T)


def speed_cases(mode: str, long: bool = False) -> List[SpeedCase]:
    """The issue's shapes in `full` mode; small ones with the same head layout in `quick` mode."""
    if mode == "full":
        cases = [_speed_linear_attn(32768), _speed_linear_attn(131072)]
        if long:
            cases.append(_speed_linear_attn(1 << 20))
        cases += [_speed_linear_attn(32768, backward=True)]
        if long:
            cases.append(_speed_linear_attn(131072, backward=True))
        cases += [
            _speed_linear_attn_decode(1), _speed_linear_attn_decode(64),
            _speed_swa(32768, WINDOW7), _speed_swa(131072, WINDOW7),
            _speed_swa(32768, WINDOW7, backward=True), _speed_swa(32768, -1),
            _speed_swa_decode(1, WINDOW7, 8192), _speed_swa_decode(64, WINDOW7, 8192),
            _speed_spike_encode(16384),
            _speed_topk(16384, 16, 1), _speed_topk(16384, 128, 8),
            _speed_permute(16384, 3584, 16, 1, "moe_permute"), _speed_permute(16384, 4096, 128, 8, "moe_permute"),
            _speed_permute(16384, 3584, 16, 1, "moe_unpermute"), _speed_permute(16384, 4096, 128, 8, "moe_unpermute"),
        ]
        return cases
    # quick: SpikingBrain-7B heads and hidden size, short sequences and few tokens (the C++
    # reference is a plain loop nest: these keep the whole quick run under 2 minutes on 2 cores)
    return [
        _speed_linear_attn(256), _speed_linear_attn(128, backward=True),
        _speed_linear_attn_decode(1), _speed_linear_attn_decode(8),
        _speed_swa(256, 64), _speed_swa(128, 32, backward=True),
        _speed_swa(256, -1),
        _speed_swa_decode(1, 512, 1024), _speed_swa_decode(8, 512, 1024),
        _speed_spike_encode(512),
        _speed_topk(1024, 16, 1), _speed_topk(1024, 128, 8),
        _speed_permute(1024, 3584, 16, 1, "moe_permute"), _speed_permute(256, 4096, 128, 8, "moe_permute"),
        _speed_permute(1024, 3584, 16, 1, "moe_unpermute"), _speed_permute(256, 4096, 128, 8, "moe_unpermute"),
    ]


def select(items: Sequence, ops: Optional[Sequence[str]], shapes: Optional[Sequence[str]]) -> list:
    """Filter checks or speed cases by family/op names and by shape/name substrings."""
    out = []
    for it in items:
        op = it.op.split(".")[0]
        if ops and not any(o in (it.family, op, it.op) for o in ops):
            continue
        shape = " ".join(f"{k}={v}" for k, v in it.shape.items()) if isinstance(it.shape, dict) else it.shape
        text = f"{getattr(it, 'name', '')} {shape}".lower()
        if shapes and not any(s.lower() in text for s in shapes):
            continue
        out.append(it)
    return out
