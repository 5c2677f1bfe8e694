"""Host time per call of the Triton linear_attn / swa_attn launchers (issue 18, "cheap wrappers").

    python benchmarks/gpu/probes/triton_launcher_host_time.py [--iters 300] [--profile CASE]

For each case: host us/call (wall time of the Python call, no synchronize, averaged after a
warm-up, queue drained every 50 calls), GPU us/call (CUDA events over the same loop, so max(host,
GPU) is the throughput), Triton launches per call, and an estimate of the wrapper overhead:
host time - launches x (host time of one launch of a trivial Triton kernel with ~20 arguments).
Also runs each case once under torch.cuda.set_sync_debug_mode("error") and reports a sync.
Shapes as measured in issue 18: B=1, T=64, H=4, HKV=2, K=V=D=128, bf16, per-key gate.
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "tests"))
import triton_kernels  # noqa: E402

LA = triton_kernels.load("linear_attn")
SWA = triton_kernels.load("swa")


@triton.jit
def _noop(p0, p1, p2, p3, p4, p5, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11,
          C0: tl.constexpr, C1: tl.constexpr):
    pass


def cases():
    dev, dt = "cuda", torch.bfloat16
    B, T, H, HKV, D = 1, 64, 4, 2, 128
    q = torch.randn(B, T, H, D, device=dev, dtype=dt)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=dt)
    v = torch.randn(B, T, HKV, D, device=dev, dtype=dt)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HKV, D, device=dev)) / 16
    cu = torch.tensor([0, 20, 64], dtype=torch.int32, device=dev)
    h0_1, h0_2 = (torch.zeros(n, HKV, D, D, device=dev) for n in (1, 2))
    do = torch.randn_like(q)
    o1, ht1 = LA.linear_attn_fwd(q, k, v, g, D ** -0.5, h0_1, None)
    o2, ht2 = LA.linear_attn_fwd(q, k, v, g, D ** -0.5, h0_2, cu)
    so1, sl1 = SWA.swa_attn_fwd(q, k, v, 32, None, None, None, None)
    so2, sl2 = SWA.swa_attn_fwd(q, k, v, 32, None, cu, None, None)
    s = D ** -0.5
    return {
        "la_fwd": lambda: LA.linear_attn_fwd(q, k, v, g, s, h0_1, None),
        "la_fwd_cu": lambda: LA.linear_attn_fwd(q, k, v, g, s, h0_2, cu),
        "la_bwd": lambda: LA.linear_attn_bwd(q, k, v, g, s, h0_1, None, do, ht1),
        "la_bwd_cu": lambda: LA.linear_attn_bwd(q, k, v, g, s, h0_2, cu, do, ht2),
        "swa_fwd": lambda: SWA.swa_attn_fwd(q, k, v, 32, None, None, None, None),
        "swa_fwd_cu": lambda: SWA.swa_attn_fwd(q, k, v, 32, None, cu, None, None),
        "swa_bwd": lambda: SWA.swa_attn_bwd(q, k, v, so1, sl1, do, None, 32, None, None, None, None),
        "swa_bwd_cu": lambda: SWA.swa_attn_bwd(q, k, v, so2, sl2, do, None, 32, None, cu, None, None),
    }


def count_launches(fn):
    n = [0]
    orig = triton.runtime.jit.JITFunction.run

    def run(self, *a, **kw):
        n[0] += 1
        return orig(self, *a, **kw)
    triton.runtime.jit.JITFunction.run = run
    try:
        fn()
    finally:
        triton.runtime.jit.JITFunction.run = orig
    return n[0]


def host_and_gpu_us(fn, iters):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    host = 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    done = 0
    while done < iters:
        n = min(50, iters - done)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        host += time.perf_counter() - t0
        done += n
        torch.cuda.synchronize()         # drain the queue: the next batch times the host, not a full queue
    end.record()
    torch.cuda.synchronize()
    return host / iters * 1e6, start.elapsed_time(end) / iters * 1e3


def syncs(fn):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as e:
        return f"SYNC: {str(e).splitlines()[0][:60]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--profile", help="cProfile one case (name as printed)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    x = torch.zeros(16, device="cuda")
    noop = lambda: _noop[(1,)](x, x, x, x, x, x, *range(1, 13), C0=1, C1=2)  # noqa: E731
    launch_us, _ = host_and_gpu_us(noop, args.iters)
    print(f"one trivial Triton launch (6 tensors, 12 ints): {launch_us:.1f} us host")
    with torch.inference_mode():
        cs = cases()
        print(f"{'case':<12} {'host us':>8} {'gpu us':>8} {'launches':>8} {'wrapper us':>10}  sync")
        for name, fn in cs.items():
            n = count_launches(fn)
            h, g = host_and_gpu_us(fn, args.iters)
            print(f"{name:<12} {h:8.1f} {g:8.1f} {n:8d} {h - n * launch_us:10.1f}  {syncs(fn)}")
        if args.profile:
            fn = cs[args.profile]
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(200):
                fn()
            pr.disable()
            torch.cuda.synchronize()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
