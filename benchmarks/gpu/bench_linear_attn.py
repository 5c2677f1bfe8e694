"""Triton chunked GLA (sbops) vs flash-linear-attention's chunk_gla on one GPU.

SpikingBrain-7B GLA layer: B=1, H=28 query heads, HKV=4 KV heads, K=V=128, per-key gate
g = logsigmoid(randn) / 16, bfloat16. fla is fed k/v/g repeated to 28 heads (repeat outside the
timed region, as SpikingBrain calls it). Timings: medians of CUDA-event timings (do_bench).

    python benchmarks/gpu/bench_linear_attn.py --check            # GPU correctness vs float64 reference
    python benchmarks/gpu/bench_linear_attn.py --bench [--sweep]  # timing table (+ small config sweep)

Writes bench_linear_attn.json (and check results) to $OUT when set.
"""
import argparse
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

HBM_BYTES_PER_S = 3.35e12     # H100 SXM HBM3
TENSOR_FLOPS = 700e12         # ~dense bf16 tensor-core rate used for the floor


import triton_kernels  # noqa: E402  (tests/: the installed kernel module, else the source tree)

LA = triton_kernels.load("linear_attn")


def floor_ms(T, H, HKV, K, V, BT, bwd):
    """Lower bound: q, k, v, g (per key), o read/written once (bwd: + dO read, dq/dk/dv/dg written,
    q/k/v/g/dO read again) vs the chunked algorithm's matmul FLOPs at TENSOR_FLOPS."""
    per_tok = 2 * (H * K + HKV * K + HKV * V + HKV * K + H * V)       # fwd bytes (bf16)
    # fwd FLOPs per token: state pass k^T v per KV head; per query head q h, q k^T (chunk), A v
    fl = 2 * HKV * K * V + 2 * H * (K * V + BT * K + BT * V)
    if bwd:
        per_tok += 2 * (H * K + HKV * K + HKV * V + HKV * K + H * V)  # read q, k, v, g, dO
        per_tok += 2 * (H * K + HKV * K + HKV * V + HKV * K)          # write dq, dk, dv, dg
        # bwd: recompute h, dh pass (q^T dO), dq (dO h^T, dA k), dk/dv (v dh^T, k dh, A^T dO, dA^T q), dA, A
        fl += 2 * HKV * K * V + 2 * H * (K * V) + 2 * H * (K * V + BT * K) + 2 * HKV * 2 * K * V \
            + 2 * H * (2 * BT * V + 2 * BT * K)
    t_mem = T * per_tok / HBM_BYTES_PER_S
    t_flop = T * fl / TENSOR_FLOPS
    return 1e3 * max(t_mem, t_flop), 1e3 * t_mem, 1e3 * t_flop


# ------------------------------------------------------------------------------ correctness
def check(gates, log):
    import reference as R

    def rel(a, b):
        if torch.isnan(a).any():
            return float("nan")
        return ((a.double().cpu() - b.cpu()).norm() / b.norm().clamp_min(1e-30)).item()

    cases = []
    for gate in gates:
        for T in (1, 63, 1000):
            for D in (64, 128):
                cases.append(dict(gate=gate, T=T, D=D, B=2 if T < 1000 else 1, H=6, HKV=2, nseq=None, strong=False))
        if gate != "none":
            cases.append(dict(gate=gate, T=1000, D=128, B=1, H=8, HKV=2, nseq=4, strong=True))
    ok = True
    results = []
    for cs in cases:
        torch.manual_seed(0)
        B, T, H, HKV, D = cs["B"], cs["T"], cs["H"], cs["HKV"], cs["D"]
        q = torch.randn(B, T, H, D)
        k = torch.randn(B, T, HKV, D)
        v = torch.randn(B, T, HKV, D)
        gshape = None if cs["gate"] == "none" else ((B, T, HKV) if cs["gate"] == "head" else (B, T, HKV, D))
        if gshape is None:
            g = None
        elif cs["strong"]:
            g = -20 * torch.rand(gshape)
        else:
            g = torch.nn.functional.logsigmoid(torch.randn(gshape)) / 4
        cu = None
        N = B
        if cs["nseq"]:
            cu = torch.tensor([0, 100, 433, 434, T], dtype=torch.int32)
            N = 4
        h0 = torch.randn(N, HKV, D, D)
        dev = lambda x, dt=torch.bfloat16: None if x is None else x.to("cuda", dt)  # noqa: E731
        qd, kd, vd, gd, h0d = dev(q), dev(k), dev(v), dev(g, torch.float32), dev(h0, torch.float32)
        cud = None if cu is None else cu.cuda()
        scale = D ** -0.5
        o, ht = LA.linear_attn_fwd(qd, kd, vd, gd, scale, h0d, cud)
        do = torch.randn(o.shape, device="cuda").to(o.dtype)
        dF = torch.randn(ht.shape, device="cuda")
        grads = LA.linear_attn_bwd(qd, kd, vd, gd, scale, h0d, cud, do, dF)
        torch.cuda.synchronize()
        leaves = [None if x is None else x.detach().cpu().double().requires_grad_() for x in (qd, kd, vd, gd, h0d)]
        ro, rht = R.ref_linear_attn(*leaves[:4], scale, leaves[4], cu)
        loss = (ro * do.cpu().double()).sum() + (rht * dF.cpu().double()).sum()
        used = [x for x in leaves if x is not None]
        rg = iter(torch.autograd.grad(loss, used))
        errs = {"o": rel(o, ro), "final_state": rel(ht, rht)}
        for name, x, got in zip(["dq", "dk", "dv", "dg", "dh0"], leaves, grads):
            if x is not None:
                errs[name] = rel(got, next(rg))
        passed = all(e == e and e <= (1e-2 if n in ("o", "final_state") else 2e-2) for n, e in errs.items())
        ok &= passed
        results.append(dict(case=cs, errs=errs, passed=passed))
        log(f"check {cs['gate']:4s} T={T:4d} D={D} B={B} H={H}/{HKV} varlen={bool(cs['nseq'])} "
            f"strong={cs['strong']}: {'PASS' if passed else 'FAIL'} " +
            " ".join(f"{n}={e:.1e}" for n, e in errs.items()))
    return ok, results


# -------------------------------------------------------------------------------- benchmark
def bench(args, log):
    from triton.testing import do_bench

    try:
        from fla.ops.gla import chunk_gla
    except Exception as e:  # the peer is optional: report ours alone
        log(f"fla not importable ({e!r}); peer columns empty")
        chunk_gla = None
    B, H, HKV, K, V = 1, 28, 4, 128, 128
    dt = torch.bfloat16
    scale = K ** -0.5
    t_start = time.time()
    base_cfg = LA.load_config(K, V, "key", dt)

    def inputs(T, grad=False):
        torch.manual_seed(0)
        q = torch.randn(B, T, H, K, device="cuda", dtype=dt)
        k = torch.randn(B, T, HKV, K, device="cuda", dtype=dt)
        v = torch.randn(B, T, HKV, V, device="cuda", dtype=dt)
        g = (torch.nn.functional.logsigmoid(torch.randn(B, T, HKV, K, device="cuda")) / 16).to(dt)
        return q, k, v, g

    def ms(fn):
        return do_bench(fn, warmup=5, rep=args.rep, return_mode="median")

    rows = []
    cfg = dict(base_cfg)
    if args.sweep:
        # coordinate search at T=32k over a small space, fwd then bwd
        T = 32768
        q, k, v, g = inputs(T)
        do = torch.randn(B, T, H, V, device="cuda", dtype=dt)
        for group in ([{"h_seg": 0}, {"h_seg": 8}, {"h_seg": 16}, {"h_seg": 32}],  # sequential vs two-level
                      [{"h_BK": 64, "h_BV": 64, "h_warps": 4}, {"h_BK": 32, "h_BV": 64, "h_warps": 4},
                       {"h_BK": 32, "h_BV": 32, "h_warps": 4}, {"h_BK": 64, "h_BV": 64, "h_warps": 8}],
                      [{"o_warps": 4}, {"o_warps": 8}],
                      [{"num_stages": 2}, {"num_stages": 1}, {"num_stages": 3}]):
            best = None
            for opt in group:
                c = dict(cfg, **opt)
                try:
                    t = ms(lambda: LA.linear_attn_fwd(q, k, v, g, scale, None, None, config=c))
                except Exception as e:
                    log(f"sweep fwd {opt}: failed {type(e).__name__}: {str(e)[:120]}")
                    continue
                log(f"sweep fwd {opt}: {t:.3f} ms")
                if best is None or t < best[0]:
                    best = (t, opt)
            cfg.update(best[1])
        best_bwd = None
        for opt in ({"bwd_warps": 4}, {"bwd_warps": 8}, {"bwd_warps": 4, "h_seg": 0}, {"bwd_warps": 4, "h_seg": 16}):
            c = dict(cfg, **opt)
            try:
                t = ms(lambda: LA.linear_attn_bwd(q, k, v, g, scale, None, None, do, None, config=c))
            except Exception as e:
                log(f"sweep bwd {opt}: failed {type(e).__name__}: {str(e)[:120]}")
                continue
            log(f"sweep bwd {opt}: {t:.3f} ms")
            if best_bwd is None or t < best_bwd[0]:
                best_bwd = (t, opt)
        if best_bwd is not None:
            cfg.update(best_bwd[1])
        log(f"chosen config: {json.dumps(cfg)}")
        del q, k, v, g, do

    def peak_extra(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            out = fn()
        torch.cuda.synchronize()
        del out
        return (torch.cuda.max_memory_allocated() - base) / 2**30

    # shortest first, forward before forward+backward, so a time budget cuts the longest runs
    shapes = sorted([("fwd", t) for t in args.fwd_T] + [("fwd+bwd", t) for t in args.bwd_T],
                    key=lambda mt: (mt[1], mt[0] != "fwd"))
    for mode, T in shapes:
        if time.time() - t_start > args.budget:
            log(f"time budget reached, skipping {mode} T={T}")
            continue
        try:
            q, k, v, g = inputs(T)
            fl_floor = floor_ms(T, H, HKV, K, V, cfg["BT"], mode != "fwd")[0]
            row = dict(mode=mode, T=T, floor_ms=fl_floor)
            G = H // HKV
            if mode == "fwd":
                ours = lambda: LA.linear_attn_fwd(q, k, v, g, scale, None, None, config=cfg)  # noqa: E731
                row["ours_ms"] = ms(ours)
                row["ours_peak_extra_GiB"] = peak_extra(ours)
            else:
                do = torch.randn(B, T, H, V, device="cuda", dtype=dt)

                def ours():
                    LA.linear_attn_fwd(q, k, v, g, scale, None, None, config=cfg)
                    return LA.linear_attn_bwd(q, k, v, g, scale, None, None, do, None, config=cfg)
                row["ours_ms"] = ms(ours)
            if chunk_gla is not None:
                try:
                    # SpikingBrain materialises k/v/g repeated to H heads: outside the timing, but
                    # memory the layer needs beside fla's own peak
                    kr, vr, gr = (x.repeat_interleave(G, dim=2) for x in (k, v, g))
                    row["fla_repeated_inputs_GiB"] = sum(x.numel() * x.element_size() for x in (kr, vr, gr)) / 2**30
                    if mode == "fwd":
                        peer = lambda: chunk_gla(q, kr, vr, gr, scale=scale)  # noqa: E731
                        row["fla_ms"] = ms(peer)
                        row["fla_peak_extra_GiB"] = peak_extra(peer)
                    else:
                        qg, kg, vg, gg = (x.detach().requires_grad_() for x in (q, kr, vr, gr))

                        def peer():
                            o, _ = chunk_gla(qg, kg, vg, gg, scale=scale)
                            o.backward(do)
                        row["fla_ms"] = ms(peer)
                        del qg, kg, vg, gg
                    row["ratio"] = row["fla_ms"] / row["ours_ms"]
                except torch.cuda.OutOfMemoryError as e:
                    row["fla"] = f"OOM ({str(e)[:80]})"
                kr = vr = gr = peer = None
                torch.cuda.empty_cache()
            rows.append(row)
            log(f"{mode} T={T}: " + " ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}"
                                             for a, b in row.items()))
            del q, k, v, g
            torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as e:
            log(f"{mode} T={T}: OOM ({str(e)[:100]})")
            torch.cuda.empty_cache()
    return rows, cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--gates", default="none,head,key")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--fwd-T", type=int, nargs="*", default=[32768, 131072, 1048576])
    ap.add_argument("--bwd-T", type=int, nargs="*", default=[32768, 131072])
    ap.add_argument("--rep", type=int, default=50, help="do_bench rep (ms)")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; skip later shapes past it")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    out = os.environ.get("OUT")
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    result = {}
    if args.check:
        ok, res = check(args.gates.split(","), log)
        result["check"] = dict(ok=ok, cases=res)
        log(f"CHECK {'ALL PASS' if ok else 'FAILURES'}")
    if args.bench:
        rows, cfg = bench(args, log)
        result["bench"] = rows
        result["config"] = cfg
        log("")
        log(f"{'shape (B=1,H=28,HKV=4,K=V=128,bf16)':38s} {'ours ms':>9s} {'fla ms':>9s} {'ratio':>6s} {'floor ms':>9s}")
        for r in rows:
            log(f"{r['mode'] + ' T=' + str(r['T']):38s} {r['ours_ms']:9.3f} {r.get('fla_ms', float('nan')):9.3f} "
                f"{r.get('ratio', float('nan')):6.2f} {r['floor_ms']:9.3f}")
        for r in rows:
            if "ours_peak_extra_GiB" in r:
                log(f"peak extra memory fwd T={r['T']}: ours {r['ours_peak_extra_GiB']:.2f} GiB, "
                    f"fla {r.get('fla_peak_extra_GiB', float('nan')):.2f} GiB")
    if out:
        with open(os.path.join(out, f"bench_linear_attn{args.tag}.json"), "w") as f:
            json.dump(dict(result, device=torch.cuda.get_device_name()), f, indent=1, default=str)


if __name__ == "__main__":
    main()
