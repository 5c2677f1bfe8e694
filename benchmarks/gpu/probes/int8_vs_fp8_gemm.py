"""Vendor GEMMs at the 7B projection shapes (pure torch, no sbops): bf16 x @ W^T, torch._int_mm (cuBLASLt int8,
int32 out) and torch._scaled_mm (e4m3, one plane), alternated in one process, medians of CUDA-event times.
Question: is one int8 plane (counts exact to 127) faster than two e4m3 planes for the SwiGLU down projection?
    python3 benchmarks/gpu/probes/int8_vs_fp8_gemm.py [M ...]
"""
import statistics
import sys

import torch

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def alternated_medians(fns, time_one=timed, rounds=3):
    """{name: median of `rounds` timings time_one(fn)}, the fns timed one after another in each round."""
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            res[k].append(time_one(f))
    return {k: statistics.median(v) for k, v in res.items()}


def main():
    Ms = [int(v) for v in sys.argv[1:]] or [16384, 65536]
    dev = "cuda"
    print(torch.cuda.get_device_name(), torch.__version__)
    for M in Ms:
        for name, (N, K) in SHAPES.items():
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
            xi = torch.randint(-20, 21, (M, K), device=dev, dtype=torch.int8)
            wi = torch.randint(-127, 128, (N, K), device=dev, dtype=torch.int8)
            xf = xi.clamp(-16, 16).to(torch.float8_e4m3fn)
            wf = w.to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev)
            sa = torch.ones(M, 1, device=dev)
            sb = torch.ones(1, N, device=dev)
            fns = {
                "bf16": lambda: x @ w.t(),
                "int_mm": lambda: torch._int_mm(xi, wi.t()),
                "fp8_rowwise": lambda: torch._scaled_mm(xf, wf.t(), sa, sb, out_dtype=torch.bfloat16),
                "fp8_tensor": lambda: torch._scaled_mm(xf, wf.t(), one, one, out_dtype=torch.bfloat16),
            }
            if name == "down":  # exactness of the int8 GEMM on small counts (int32 accumulation)
                ref = (xi[:64].double() @ wi.double().t())
                got = torch._int_mm(xi, wi.t())[:64].double()
                print(f"  int_mm exact on 64 rows: {bool((ref == got).all())}")
            med = alternated_medians(fns)
            fl = 2 * M * N * K
            print(f"M={M} {name} {N}x{K}: " + ", ".join(
                f"{k} {v:.3f} ms ({fl / v / 1e9:.0f} TF/s, {med['bf16'] / v:.2f}x)" for k, v in med.items()), flush=True)
            del x, w, xi, wi, xf, wf
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
