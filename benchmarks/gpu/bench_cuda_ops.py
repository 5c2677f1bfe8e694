"""Benchmark of the CUDA C++ memory-bound ops against their byte floor and a peer.

    python benchmarks/gpu/bench_cuda_ops.py            # table + JSON ($OUT/bench_cuda_ops.json if OUT is set)
    python benchmarks/gpu/bench_cuda_ops.py --smoke    # every op once on tiny inputs (for compute-sanitizer)

Medians of CUDA-event timings (triton.testing.do_bench, return_mode="median").  The floor is the
op's compulsory bytes at the copy bandwidth measured in the same run (a large device copy).
Uses the installed sbops if importable, else builds the dev module (cuda_dev_build.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_ops():
    try:
        import sbops  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("cuda_dev_build", os.path.join(HERE, "cuda_dev_build.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.load()
    return torch.ops.sbops


def bench(fn, graph=False):
    from triton.testing import do_bench, do_bench_cudagraph
    if graph:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.numel() / (ms * 1e-3)


def smoke(ops):
    d = "cuda"
    x = torch.randn(5, 40, device=d, dtype=torch.bfloat16)
    c, _ = ops.spike_encode(x, 3.0, torch.int8)
    ops.spike_quant(x, 3.0)
    for cols in (1024, 8192):  # the block-per-row kernels (128 and 256 threads)
        ops.spike_encode(torch.randn(3, cols, device=d, dtype=torch.bfloat16), 3.0, torch.int8)
    for mode in ("binary", "ternary", "bitwise"):
        cc = c.abs() if mode == "binary" else c
        T = max(1, int(cc.abs().max()).bit_length()) if mode == "bitwise" else max(1, int(cc.abs().max()))
        ops.spike_collapse(ops.spike_expand(cc, mode, T), mode)
    ops.spike_stats(c, int(c.abs().max()))
    logits = torch.randn(9, 64, device=d)
    w, ids = ops.topk_gating(logits, 4, "softmax", True, torch.randn(64, device=d), 8, 2, 1.0)
    ops.topk_gating_bwd(torch.randn_like(w), logits, ids, "softmax", True, 1.0)
    ids[0, 0] = -1
    xp, off, rm = ops.moe_permute(torch.randn(9, 24, device=d, dtype=torch.bfloat16), ids, 64)
    ops.moe_unpermute(xp, rm, w)
    ops.moe_permute_bwd(xp, rm)
    ops.moe_unpermute_bwd(torch.randn(9, 24, device=d, dtype=torch.bfloat16), xp, rm, w)
    ops.moe_align_block_size(ids, 64, 8)
    ops.expert_counts(ids, 64)
    st = torch.randn(3, 2, 64, 64, device=d)
    ops.linear_attn_decode(torch.randn(2, 4, 64, device=d), torch.randn(2, 2, 64, device=d),
                           torch.randn(2, 2, 64, device=d), -torch.rand(2, 2, 64, device=d), st,
                           torch.tensor([2, 0], device=d), 0.125)
    kc = torch.randn(3, 33, 2, 64, device=d, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    ops.swa_cache_write(torch.randn(2, 2, 64, device=d, dtype=torch.bfloat16),
                        torch.randn(2, 2, 64, device=d, dtype=torch.bfloat16), kc, vc,
                        torch.tensor([40, 5], device=d), torch.tensor([1, 2], device=d))
    ops.swa_decode(torch.randn(2, 4, 64, device=d, dtype=torch.bfloat16), kc, vc, torch.tensor([41, 6], device=d),
                   32, 0.125, torch.tensor([1, 2], device=d))
    torch.cuda.synchronize()
    print("smoke ok")


def main():
    ops = load_ops()
    if "--smoke" in sys.argv:
        smoke(ops)
        return
    torch.manual_seed(0)
    d = "cuda"
    bw = copy_bandwidth()
    rows = []

    def row(op, shape, ours_ms, bytes_, peer_name, peer_ms, target_ms=None):
        floor = bytes_ / bw * 1e3
        rows.append(dict(op=op, shape=shape, ours_ms=ours_ms, floor_ms=floor, peer=peer_name, peer_ms=peer_ms,
                         ours_over_floor=ours_ms / floor, speedup_vs_peer=(peer_ms / ours_ms) if peer_ms else None,
                         target_ms=target_ms))
        print(f"{op:20s} {shape:40s} ours {ours_ms*1e3:9.1f} us  floor {floor*1e3:8.1f} us  "
              f"{peer_name} {peer_ms*1e3 if peer_ms else float('nan'):9.1f} us", flush=True)

    # ---- spike_encode
    x = torch.randn(16384, 3584, device=d, dtype=torch.bfloat16)

    def eager_encode(x):
        xf = x.float()
        vth = (xf.abs().mean(-1, keepdim=True) / 3.0).clamp(1e-5, 1e4)
        return torch.round(xf / vth).clamp(-128, 127).to(torch.int8), vth
    ours = bench(lambda: ops.spike_encode(x, 3.0, torch.int8))
    peer = bench(lambda: eager_encode(x))
    try:
        comp = torch.compile(eager_encode)
        comp(x)
        peer_c = bench(lambda: comp(x))
    except Exception as e:  # noqa: BLE001
        print("torch.compile peer failed:", type(e).__name__, e)
        peer_c = None
    nbytes = x.numel() * 2 + x.numel() + 16384 * 4
    row("spike_encode", "x[16384,3584] bf16->int8", ours, nbytes, "torch eager", peer, 0.075)
    if peer_c:
        rows[-1]["peer_compile_ms"] = peer_c
        print(f"{'':20s} torch.compile peer {peer_c*1e3:.1f} us")
    del x

    # ---- topk_gating
    for E, k in ((16, 1), (128, 8)):
        logits = torch.randn(16384, E, device=d, dtype=torch.bfloat16)

        def peer_gate(l=logits, k=k):
            s = l.float().softmax(-1)
            w, i = s.topk(k, -1)
            return w / w.sum(-1, keepdim=True), i.int()
        ours = bench(lambda: ops.topk_gating(logits, k, "softmax", True, None, 0, 0, 1.0))
        row("topk_gating", f"T=16384 E={E} k={k} bf16", ours, logits.numel() * 2 + 16384 * k * 8,
            "torch softmax+topk+renorm", bench(peer_gate), 0.015)

    # ---- moe_permute / moe_unpermute
    for Hd, E, k in ((3584, 16, 1), (4096, 128, 8)):
        T = 16384
        xx = torch.randn(T, Hd, device=d, dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(E, device=d)[:k] for _ in range(64)]).repeat(T // 64, 1).int()
        ids = ids[torch.randperm(T, device=d)]
        w = torch.rand(T, k, device=d)

        def peer_permute(xx=xx, ids=ids, k=k):
            order = torch.argsort(ids.view(-1), stable=True)
            return xx.index_select(0, order // k), order
        ours = bench(lambda: ops.moe_permute(xx, ids, E))
        row("moe_permute", f"T={T} Hd={Hd} E={E} k={k} bf16", ours, (T + T * k) * Hd * 2,
            "torch argsort+index_select", bench(peer_permute))
        yp, _, rm = ops.moe_permute(xx, ids, E)
        order = peer_permute()[1]

        def peer_unpermute(yp=yp, order=order, w=w, k=k, T=T, Hd=Hd):
            y = torch.zeros(T, Hd, device=d, dtype=torch.float32)
            y.index_add_(0, order // k, yp.float() * w.view(-1)[order, None])
            return y.to(torch.bfloat16)
        ours = bench(lambda: ops.moe_unpermute(yp, rm, w))
        row("moe_unpermute", f"T={T} Hd={Hd} E={E} k={k} bf16", ours, (T + T * k) * Hd * 2,
            "torch index_add", bench(peer_unpermute))
        del xx, yp

    # ---- linear_attn_decode
    try:
        from fla.ops.gla import fused_recurrent_gla
    except Exception:  # noqa: BLE001
        fused_recurrent_gla = None
    H, HKV, K = 28, 4, 128
    for B in (1, 64):
        q = torch.randn(B, H, K, device=d, dtype=torch.bfloat16)
        kk = torch.randn(B, HKV, K, device=d, dtype=torch.bfloat16)
        vv = torch.randn(B, HKV, K, device=d, dtype=torch.bfloat16)
        g = -torch.rand(B, HKV, K, device=d) / 16
        state = torch.zeros(B, HKV, K, K, device=d)
        f = lambda: ops.linear_attn_decode(q, kk, vv, g, state, None, K ** -0.5)  # noqa: E731
        ours = bench(f)
        ours_g = bench(f, graph=True)
        G = H // HKV
        if fused_recurrent_gla is not None:
            rep = lambda t: t.repeat_interleave(G, dim=1)[:, None]  # noqa: E731
            st28 = torch.zeros(B, H, K, K, device=d)
            qq, k2, v2, g2 = q[:, None], rep(kk), rep(vv), rep(g)
            pf = lambda: fused_recurrent_gla(qq, k2, v2, gk=g2, scale=K ** -0.5, initial_state=st28,  # noqa: E731
                                             output_final_state=True)
            peer_name = "fla fused_recurrent_gla (28 heads)"
        else:
            def pf():
                S = state * g.exp()[..., None] + kk.float()[..., None] * vv.float()[..., None, :]
                return torch.einsum("bhk,bhkv->bhv", q.float(), S.repeat_interleave(G, 1)) * K ** -0.5
            peer_name = "torch eager recurrence"
        nbytes = 2 * B * HKV * K * K * 4 + B * (H * K + 2 * HKV * K + H * K) * 2 + B * HKV * K * 4
        row("linear_attn_decode", f"B={B} H=28/4 K=V=128 state f32", ours, nbytes, peer_name, bench(pf),
            0.010 if B == 1 else 0.025)
        rows[-1]["ours_cudagraph_ms"] = ours_g
        print(f"{'':20s} with CUDA graph {ours_g*1e3:.1f} us")

    # ---- swa_decode
    B, H, HKV, D, W = 64, 28, 4, 128, 4096
    C = W + 1
    kc = torch.randn(B, C, HKV, D, device=d, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    lens = torch.full((B,), 10000, device=d, dtype=torch.int32)
    q = torch.randn(B, H, D, device=d, dtype=torch.bfloat16)
    ours = bench(lambda: ops.swa_decode(q, kc, vc, lens, W, D ** -0.5, None))
    rows_idx = (torch.arange(10000 - 1 - W, 10000, device=d) % C)

    def peer_swa():
        ks = kc[:, rows_idx].transpose(1, 2)  # [B, HKV, W+1, D]
        vs = vc[:, rows_idx].transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], ks, vs, enable_gqa=True)
    kv_bytes = B * HKV * (W + 1) * D * 2 * 2
    row("swa_decode", "B=64 H=28/4 D=128 W=4096 bf16", ours, kv_bytes, "SDPA over gathered window", bench(peer_swa))
    rows[-1]["fraction_of_copy_bw"] = rows[-1]["floor_ms"] / ours
    del kc, vc

    info = dict(device=torch.cuda.get_device_name(), copy_bw_TBps=bw / 1e12, rows=rows)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_cuda_ops.json"), "w") as fh:
            json.dump(info, fh, indent=1)
    print(f"\ndevice {info['device']}  copy bandwidth {bw/1e12:.2f} TB/s")
    print(f"{'op':20s} {'shape':36s} {'ours us':>9s} {'floor us':>9s} {'peer us':>9s} {'ours/floor':>10s} {'peer/ours':>9s}")
    for r in rows:
        print(f"{r['op']:20s} {r['shape']:36s} {r['ours_ms']*1e3:9.1f} {r['floor_ms']*1e3:9.1f} "
              f"{r['peer_ms']*1e3:9.1f} {r['ours_over_floor']:10.2f} {r['speedup_vs_peer']:9.2f}"
              + (f"  ({r['fraction_of_copy_bw']:.0%} of copy bandwidth)" if "fraction_of_copy_bw" in r else "")
              + (f"  (graph {r['ours_cudagraph_ms']*1e3:.1f} us)" if "ours_cudagraph_ms" in r else ""))


if __name__ == "__main__":
    main()
