"""Cases shared by the sbops.distributed tests: the same global inputs are built on every (real or
simulated) rank from a seed, the single-process op runs on the concatenation, and each rank's
distributed result and gradients are compared with its slice of it.

A case's loss is the sum over ranks of <output_r, W_r> (plus <final_state, Wf_r> for every rank), so
the single-process reference loss is the same sum over the whole sequence / batch.
"""
from __future__ import annotations

import torch

import sbops
import sbops.distributed as sbd

# (kind, config) per world size: uneven shards, shards shorter than the window, GQA, gate kinds,
# initial / final states, sinks, dropped MoE slots, an expert receiving nothing, a rank with no tokens.
LENS = {1: [7], 2: [5, 3], 3: [1, 6, 2], 4: [3, 1, 1, 5]}


def cases(P):
    lens = LENS[P]
    return [
        ("gla", dict(lens=lens, H=4, HKV=2, K=5, V=3, gate=None, init=False, final=False)),
        ("gla", dict(lens=lens, H=4, HKV=2, K=5, V=3, gate="head", init=True, final=True)),
        ("gla", dict(lens=lens, H=3, HKV=1, K=4, V=6, gate="key", init=True, final=True)),
        ("gla", dict(lens=lens[::-1], H=2, HKV=2, K=3, V=2, gate="key", init=False, final=True)),
        ("swa", dict(lens=lens, H=4, HKV=2, D=6, window=4, sinks=False)),
        ("swa", dict(lens=lens, H=4, HKV=1, D=5, window=2, sinks=True)),
        ("swa", dict(lens=lens[::-1], H=2, HKV=2, D=4, window=-1, sinks=True)),
        ("moe", dict(T=[4, 0, 5, 3][:P] if P > 1 else [6], E=2 * P, k=2, Hd=5, Ho=3, empty_expert=True)),
        ("moe", dict(T=[3, 6, 1, 2][:P], E=P, k=1, Hd=4, Ho=4, empty_expert=False)),
    ]


def build(kind, cfg, seed, device, dtype):
    """Global inputs (leaves requiring grad), cotangent weights; identical on every rank for a seed."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, requires_grad=True, dt=dtype, fn=torch.randn):
        t = fn(*shape, generator=gen, dtype=torch.float64).to(dt).to(device)
        return t.requires_grad_(requires_grad)

    B = 2
    if kind == "gla":
        T, H, HKV, K, V = sum(cfg["lens"]), cfg["H"], cfg["HKV"], cfg["K"], cfg["V"]
        x = dict(q=rnd(B, T, H, K), k=rnd(B, T, HKV, K), v=rnd(B, T, HKV, V))
        if cfg["gate"]:
            shape = (B, T, HKV) + ((K,) if cfg["gate"] == "key" else ())
            x["g"] = (-0.5 * rnd(*shape, requires_grad=False, fn=torch.rand)).requires_grad_()
        if cfg["init"]:
            x["init"] = rnd(B, HKV, K, V, dt=torch.float32)
        P = len(cfg["lens"])
        # d final_state weights are multiples of 1/8: their sum over ranks is exact in float32 whatever
        # the order (the reference sums them in one order, the ranks' gradients in another)
        wf = (8 * rnd(P, B, HKV, K, V, requires_grad=False)).round() / 8
        return x, dict(o=rnd(B, T, H, V, requires_grad=False), f=wf.float())
    if kind == "swa":
        T, H, HKV, D = sum(cfg["lens"]), cfg["H"], cfg["HKV"], cfg["D"]
        x = dict(q=rnd(B, T, H, D), k=rnd(B, T, HKV, D), v=rnd(B, T, HKV, D))
        if cfg["sinks"]:
            x["sink_k"], x["sink_v"] = rnd(3, HKV, D), rnd(3, HKV, D)
        return x, dict(o=rnd(B, T, H, D, requires_grad=False))
    T, E, k = sum(cfg["T"]), cfg["E"], cfg["k"]
    logits = torch.randn(T, E, generator=gen)
    ids = logits.topk(k, dim=1).indices.to(torch.int32)
    ids[torch.rand(T, k, generator=gen) < 0.25] = -1                  # dropped slots
    if cfg["empty_expert"]:
        ids[ids == E - 1] = -1                                       # the last expert receives nothing
    x = dict(x=rnd(T, cfg["Hd"]), w=rnd(T, k, fn=torch.rand), W=rnd(E, cfg["Hd"], cfg["Ho"]))
    return dict(x, ids=ids.to(device)), dict(o=rnd(T, cfg["Ho"], requires_grad=False))


def _experts(x_rows, offsets, W, first):
    b = offsets.tolist()
    outs = [x_rows[b[e]:b[e + 1]] @ W[first + e] for e in range(len(b) - 1)]
    return torch.cat(outs) if outs else x_rows.new_zeros(0, W.shape[-1])


def single(kind, cfg, x, w):
    """Reference (loss, o, final_state or None) of the whole problem with the single-process ops."""
    if kind == "gla":
        o, f = sbops.linear_attn(x["q"], x["k"], x["v"], x.get("g"), initial_state=x.get("init"),
                                 output_final_state=True)
        loss = (o * w["o"]).sum()
        return (loss + (f * w["f"].sum(0)).sum(), o, f) if cfg["final"] else (loss, o, None)
    if kind == "swa":
        o = sbops.swa_attn(x["q"], x["k"], x["v"], cfg["window"], sink_k=x.get("sink_k"), sink_v=x.get("sink_v"))
        return (o * w["o"]).sum(), o, None
    xp, offs, rm = sbops.moe_permute(x["x"], x["ids"], cfg["E"])
    n = int(offs[-1])
    yp = torch.cat([_experts(xp, offs, x["W"], 0), xp.new_zeros(xp.shape[0] - n, cfg["Ho"])])
    o = sbops.moe_unpermute(yp, rm, x["w"])
    return (o * w["o"]).sum(), o, None


def _lens(kind, cfg):
    return cfg["T"] if kind == "moe" else cfg["lens"]


def shard(kind, cfg, x, r):
    """Rank r's shard of the inputs (views of the global leaves: their gradients land in the leaves)."""
    lens = _lens(kind, cfg)
    lo, hi = sum(lens[:r]), sum(lens[:r + 1])
    dim = 0 if kind == "moe" else 1
    rep = ("init", "sink_k", "sink_v", "W")
    return {n: (t if n in rep else t.narrow(dim, lo, hi - lo)) for n, t in x.items()}


def rank_loss(kind, cfg, s, w, r, out):
    lens = _lens(kind, cfg)
    lo, hi = sum(lens[:r]), sum(lens[:r + 1])
    dim = 0 if kind == "moe" else 1
    o, f = out
    loss = (o * w["o"].narrow(dim, lo, hi - lo)).sum()
    return loss + (f * w["f"][r]).sum() if f is not None else loss


def distributed(kind, cfg, s, group):
    """This rank's distributed result (o, final_state or None)."""
    if kind == "gla":
        return sbd.linear_attn(s["q"], s["k"], s["v"], s.get("g"), initial_state=s.get("init"),
                               output_final_state=cfg["final"], group=group)
    if kind == "swa":
        return sbd.swa_attn(s["q"], s["k"], s["v"], cfg["window"], sink_k=s.get("sink_k"), sink_v=s.get("sink_v"),
                            group=group), None
    x_local, offs, h = sbd.moe_dispatch(s["x"], s["ids"], s["w"], cfg["E"], group=group)
    first = sbd.ExpertParallel(group).local_experts(cfg["E"]).start
    return sbd.moe_combine(_experts(x_local, offs, s["W"], first), h), None


def simulated(kind, cfg, shards):
    """All ranks' results [(o_r, final or None)] from the simulate_* functions."""
    P = len(shards)
    col = lambda n: [s[n] for s in shards]          # noqa: E731
    if kind == "gla":
        os_, f = sbd.simulate_linear_attn(col("q"), col("k"), col("v"), col("g") if "g" in shards[0] else None,
                                          initial_state=shards[0].get("init"), output_final_state=cfg["final"])
        return [(o, f) for o in os_]
    if kind == "swa":
        os_ = sbd.simulate_swa_attn(col("q"), col("k"), col("v"), cfg["window"], sink_k=shards[0].get("sink_k"),
                                    sink_v=shards[0].get("sink_v"))
        return [(o, None) for o in os_]
    El = cfg["E"] // P
    disp = sbd.simulate_moe_dispatch(col("x"), col("ids"), col("w"), cfg["E"])
    ys = sbd.simulate_moe_combine([_experts(xl, offs, shards[0]["W"], r * El) for r, (xl, offs, _) in enumerate(disp)],
                                  [h for _, _, h in disp])
    return [(y, None) for y in ys]


def grads(x, loss):
    names = [n for n, t in x.items() if t.requires_grad]
    gs = torch.autograd.grad(loss, [x[n] for n in names], allow_unused=True)
    return {n: (torch.zeros_like(x[n]) if g is None else g) for n, g in zip(names, gs)}


def rel(a, b):
    """max |a - b| / max(|b|, 1e-30), in float64 (NaN fails any bound)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(kind, cfg, out, got, ref_o, ref_f, ref, r, tol, tol32, gtol=None, err=rel):
    """Failures (strings) of one rank: its output (and final state), its slice of every
    sequence-sharded gradient, the full gradient of replicated tensors (sinks, initial state: summed
    over ranks), the gradient of the experts it owns. tol32: for float32 tensors (states); gtol: for
    the gradients (default tol); err(out, ref): the error measure (default rel)."""
    gtol = tol if gtol is None else gtol
    bad = []
    lens = _lens(kind, cfg)
    lo, hi = sum(lens[:r]), sum(lens[:r + 1])
    dim = 0 if kind == "moe" else 1
    e = err(out[0], ref_o.narrow(dim, lo, hi - lo))
    if not e <= tol:
        bad.append(f"{kind} {cfg} rank {r}: o rel err {e:.3g}")
    if (out[1] is None) != (ref_f is None) or (ref_f is not None and not err(out[1], ref_f) <= max(tol, tol32)):
        bad.append(f"{kind} {cfg} rank {r}: final_state differs")
    for n, g in got.items():
        want = ref[n]
        if n == "W":
            El = cfg["E"] // len(lens)
            g, want = g[r * El:(r + 1) * El], want[r * El:(r + 1) * El]
        elif n not in ("init", "sink_k", "sink_v"):
            g, want = g.narrow(dim, lo, hi - lo), want.narrow(dim, lo, hi - lo)
        e = err(g, want)
        if not e <= (max(gtol, tol32) if want.dtype == torch.float32 else gtol):
            bad.append(f"{kind} {cfg} rank {r}: d{n} rel err {e:.3g}")
    return bad


def _float64(x, w):
    """The float64 CPU copies of build()'s inputs (initial state float32 by contract) and weights."""
    x64 = {n: (t.detach().float() if n == "init" else t.detach().double()).cpu().requires_grad_(t.requires_grad)
           if t.is_floating_point() else t.cpu() for n, t in x.items()}
    return x64, {n: (t.double().cpu() if n != "f" else t.cpu()) for n, t in w.items()}


def check_against_float64(kind, cfg, rank, seed, device, dtype, tol, gtol, group=None):
    """Failures of this rank's shard (``rank``: its rank in ``group``, None = the default group) run
    through sbops.distributed in ``dtype`` on
    ``device`` against the float64 single-process reference on the cpu backend (SPEC section 6's
    ||out - ref|| / ||ref||): forward under no_grad, then forward + backward."""
    from reference import rel_err
    x, w = build(kind, cfg, seed, device, dtype)
    x64, w64 = _float64(x, w)
    with sbops.use_backend("cpu"):
        loss64, o64, f64 = single(kind, cfg, x64, w64)
        g64 = grads(x64, loss64)
    s = shard(kind, cfg, x, rank)
    with torch.no_grad():
        out = distributed(kind, cfg, s, group)
    bad = [f"(no_grad) {b}" for b in compare(kind, cfg, out, {}, o64, f64, g64, rank, tol, tol, err=rel_err)]
    out = distributed(kind, cfg, s, group)
    got = grads(x, rank_loss(kind, cfg, s, w, rank, out))
    return bad + compare(kind, cfg, out, got, o64, f64, g64, rank, tol, tol, gtol=gtol, err=rel_err)


# ----------------------------------------------------------------------------- a tiny model's training step
# GLA layer -> SWA layer (RoPE at global positions, sinks) -> top-1 MoE FFN -> LM head, float64. Under
# sequence parallelism each rank runs its contiguous shard; the MoE runs expert-parallel (each rank holds
# only its experts). `sp` / `ep` are None for the single-process model: these are the few lines a model's
# layers need (sbd.* with group=... instead of sbops.*, global positions for RoPE, experts of this rank).
def tiny_params(seed, E=4, Hd=16, H=2, HKV=1, D=8, V=11):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()   # noqa: E731
    return dict(emb=r(V, Hd), wq=r(Hd, H * D), wk=r(Hd, HKV * D), wv=r(Hd, HKV * D), wg=r(Hd, HKV * D),
                wo=r(H * D, Hd), sq=r(Hd, H * D), sk=r(Hd, HKV * D), sv=r(Hd, HKV * D), so=r(H * D, Hd),
                sink_k=r(2, HKV, D), sink_v=r(2, HKV, D), router=r(Hd, E), experts=r(E, Hd, Hd), head=r(Hd, V))


def _rope(x, pos):
    D = x.shape[-1]
    ang = pos.double()[:, None] * (10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D))
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    a, b = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


def tiny_loss(p, tokens, labels, sp=None, ep=None, H=2, HKV=1, D=8, window=3):
    B, T = tokens.shape
    x = p["emb"][tokens]
    q = torch.relu(x @ p["wq"]).view(B, T, H, D)
    k = torch.relu(x @ p["wk"]).view(B, T, HKV, D)
    v = (x @ p["wv"]).view(B, T, HKV, D)
    g = torch.nn.functional.logsigmoid(x @ p["wg"]).view(B, T, HKV, D) / 16
    o, _ = (sbd.linear_attn(q, k, v, g, group=sp.group) if sp else sbops.linear_attn(q, k, v, g))
    x = x + o.reshape(B, T, H * D) @ p["wo"]
    pos = sp.positions(T, x.device) if sp else torch.arange(T)
    q = _rope((x @ p["sq"]).view(B, T, H, D), pos)
    k = _rope((x @ p["sk"]).view(B, T, HKV, D), pos)
    v = (x @ p["sv"]).view(B, T, HKV, D)
    kw = dict(sink_k=p["sink_k"], sink_v=p["sink_v"])
    o = sbd.swa_attn(q, k, v, window, group=sp.group, **kw) if sp else sbops.swa_attn(q, k, v, window, **kw)
    x = x + o.reshape(B, T, H * D) @ p["so"]
    x2 = x.reshape(B * T, -1)
    E = p["experts"].shape[0]
    logits = x2 @ p["router"]
    ids = sbops.topk_gating(logits, 1)[1]
    weights = torch.softmax(logits, -1).gather(1, ids.long())     # float64 router weights (not renormalised)
    if ep:
        x_local, offs, handle = sbd.moe_dispatch(x2, ids, weights, E, group=ep.group)
        y = sbd.moe_combine(_experts(x_local, offs, p["experts"], ep.local_experts(E).start), handle)
    else:
        xp, offs, rm = sbops.moe_permute(x2, ids, E)
        n = int(offs[-1])
        y = sbops.moe_unpermute(torch.cat([_experts(xp, offs, p["experts"], 0), xp.new_zeros(xp.shape[0] - n,
                                                                                             xp.shape[1])]),
                                rm, weights)
    x = x + y.view(B, T, -1)
    logits = x @ p["head"]
    return torch.nn.functional.cross_entropy(logits.reshape(B * T, -1), labels.reshape(-1), reduction="sum")


def train_step_check(group, lr=0.1):
    """One SGD step of the tiny model under SP = EP = `group` (all ranks) equals the single-process step.
    Non-expert gradients are all-reduced over the SP group except the sinks (sbd.swa_attn already sums
    them); each rank updates only the experts it owns (their gradients are already complete)."""
    import torch.distributed as dist
    sp, ep = sbd.SequenceParallel(group), sbd.ExpertParallel(group)
    P, r = sp.world_size, sp.rank
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 11, (2, 9), generator=gen)
    labels = torch.randint(0, 11, (2, 9), generator=gen)
    ref_p, p = tiny_params(3), tiny_params(3)
    ref_g = dict(zip(ref_p, torch.autograd.grad(tiny_loss(ref_p, tokens, labels), list(ref_p.values()))))
    loss = tiny_loss(p, sp.shard(tokens), sp.shard(labels), sp=sp, ep=ep)
    got = dict(zip(p, torch.autograd.grad(loss, list(p.values()), allow_unused=True)))
    bad = []
    mine = ep.local_experts(p["experts"].shape[0])
    for n in p:
        gn = torch.zeros_like(p[n]) if got[n] is None else got[n]
        if n not in ("sink_k", "sink_v", "experts"):
            dist.all_reduce(gn, group=group)
        want, w0, p0 = ref_g[n], ref_p[n].detach(), p[n].detach()
        if n == "experts":
            gn, want, w0, p0 = (t[mine.start:mine.stop] for t in (gn, want, w0, p0))
        if not (rel(gn, want) <= 1e-10 and rel(p0 - lr * gn, w0 - lr * want) <= 1e-10):
            bad.append(f"train step rank {r} (P={P}): parameter {n}: gradient rel err {rel(gn, want):.3g}")
    return bad
