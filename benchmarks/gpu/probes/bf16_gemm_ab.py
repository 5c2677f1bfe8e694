"""The Hopper GEMM with bfloat16 operands (sbops_native.bf16_gemm_sm90, session 41) against cuBLAS (torch.matmul) at
the 7B prefill shapes, and SwiGLU's gate / up with silu(g) * u in its epilogue (bf16_gemm_swiglu_sm90) against cuBLAS
+ the model's silu_mul.  Alternated rounds, medians of CUDA-event times; the outputs against cuBLAS's (max relative
difference) and the fused h against float64 on 32 rows.
    python3 benchmarks/gpu/probes/bf16_gemm_ab.py [M ...]
"""
import os
import sys

import torch

import sbops  # noqa: F401  (registers sbops_native)
from sbops._backends.cuda.triton import fused_rope_swiglu as fr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_vs_fp8_gemm import alternated_medians  # noqa: E402  (the same timer)

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}


def main():
    Ms = [int(v) for v in sys.argv[1:]] or [16384]
    dev = "cuda"
    op, op_sw = torch.ops.sbops_native.bf16_gemm_sm90, torch.ops.sbops_native.bf16_gemm_swiglu_sm90
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for M in Ms:
        g = torch.Generator(device=dev).manual_seed(0)
        for name, (N, K) in SHAPES.items():
            x = torch.randn(M, K, device=dev, generator=g).bfloat16()
            w = (torch.randn(N, K, device=dev, generator=g) / K ** 0.5).bfloat16()
            fns = {"cuBLAS": lambda: x @ w.t(), "sbops": lambda: op(x, w)}
            ref = fns["cuBLAS"]()
            diff = ((op(x, w).float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            med = alternated_medians(fns, rounds=5)
            fl = 2 * M * N * K
            print(f"M={M} {name} {N}x{K}: " + ", ".join(f"{k} {v:.3f} ms ({fl / v / 1e9:.0f} T/s)" for k, v in med.items())
                  + f"; sbops / cuBLAS time {med['sbops'] / med['cuBLAS']:.3f}; max rel diff {diff:.2e}", flush=True)
            del x, w, ref
        N, K = SHAPES["gate_up"]
        I = N // 2
        x = torch.randn(M, K, device=dev, generator=g).bfloat16()
        w = (torch.randn(N, K, device=dev, generator=g) / K ** 0.5).bfloat16()

        def unfused():
            y = x @ w.t()
            return fr.silu_mul(y[:, :I], y[:, I:])

        fns = {"cuBLAS + silu_mul": unfused, "sbops fused": lambda: op_sw(x, w)}
        y64 = x[:32].double() @ w.double().t()
        r = y64[:, :I] / (1 + torch.exp(-y64[:, :I])) * y64[:, I:]
        errs = {k: ((f()[:32].double() - r).norm() / r.norm()).item() for k, f in fns.items()}
        med = alternated_medians(fns, rounds=5)
        fl = 2 * M * N * K
        print(f"M={M} gate/up + silu: " + ", ".join(f"{k} {v:.3f} ms ({fl / v / 1e9:.0f} T/s)" for k, v in med.items())
              + f"; fused / unfused time {med['sbops fused'] / med['cuBLAS + silu_mul']:.3f}; rel. error vs float64 "
              + ", ".join(f"{k} {e:.2e}" for k, e in errs.items()), flush=True)
        del x, w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
