"""SwiGLU's gate / up at the 7B shape with int8 per-channel weights (K = 3584, I = 18944): h = silu(g) * u from
the Hopper int8 GEMM's epilogue (spike_linear_swiglu.int8_swiglu) against what it replaces -- spike_linear's int_mm
path writing [g | u], then silu_mul -- and against bf16 (x @ Wgu^T, then silu_mul) and the fp8 model's path (e4m3
weights, scaled_mm_raw + silu_mul_scaled).  The GEMMs alone too (int8_gemm_sm90 vs int8_gemm_swiglu_sm90).
Alternated rounds, medians of CUDA-event times; outputs against a float64 reference on 64 rows.  Then the encode of
down's input (K = 18944, one int8 plane): encode_lo's launch (4096-column blocks, the row read twice) against the
whole row in registers, read once (BLOCK = 32768 at 16 / 32 warps), outputs compared.
    python3 benchmarks/gpu/probes/int8_swiglu_ab.py [M ...]
"""
import os
import sys

import torch
import triton

import sbops
from sbops._backends.cuda.triton import fused_rope_swiglu as fr
from sbops._backends.cuda.triton import spike_linear as sl
from sbops._backends.cuda.triton import spike_linear_swiglu as sw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_vs_fp8_gemm import alternated_medians  # noqa: E402  (the same timer)

K, I = 3584, 18944


def reference(x, wq, sc, k=3.0):
    """float64 silu(g) * u of spike_linear's exact outputs, on CPU."""
    y = sbops.spike_linear(x.float().cpu(), wq.cpu(), sc.cpu(), k).double()
    g, u = y[:, :I], y[:, I:]
    return g / (1 + torch.exp(-g)) * u


def main():
    Ms = [int(v) for v in sys.argv[1:]] or [16384]
    dev = "cuda"
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for M in Ms:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(M, K, device=dev, generator=g).bfloat16()        # an RMSNorm output
        w = torch.randn(2 * I, K, device=dev, generator=g) * 0.02
        w16 = w.bfloat16()
        wq, sc = sbops.quantize_weight(w)
        w8, sc8 = sbops.quantize_weight(w, dtype=torch.float8_e4m3fn)
        s, _, vth, _ = sl.encode_lo(x, 3.0, 16, 16, 1, fp8=False)
        op, op_sw = torch.ops.sbops_native.int8_gemm_sm90, torch.ops.sbops_native.int8_gemm_swiglu_sm90
        flags = torch.zeros((M + 15) // 16, device=dev, dtype=torch.int32)

        def unfused():
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="int_mm")
            return fr.silu_mul(y[:, :I], y[:, I:])

        def fp8():
            y_raw, v = sl.scaled_mm_raw(x, w8, sc8, 3.0)
            return fr.silu_mul_scaled(y_raw, v, sc8)

        def bf16():
            y = x @ w16.t()
            return fr.silu_mul(y[:, :I], y[:, I:])

        fns = {"int8 swiglu": lambda: sw.int8_swiglu(x, wq, sc, 3.0), "int8 int_mm + silu_mul": unfused,
               "fp8 scaled_mm_raw + silu_mul_scaled": fp8, "bf16 + silu_mul": bf16,
               "GEMM: int8_gemm_swiglu_sm90": lambda: op_sw(s, wq, vth, sc, None, torch.bfloat16, flags),
               "GEMM: int8_gemm_sm90 [g | u]": lambda: op(s, wq, vth, sc, None, torch.bfloat16)}
        r = reference(x[:64], wq, sc)
        errs = {k: ((fns[k]()[:64].double().cpu() - r).norm() / r.norm()).item() for k in list(fns)[:2]}
        med = alternated_medians(fns)
        fl = 2 * M * 2 * I * K
        base = med["int8 int_mm + silu_mul"]
        print(f"M={M} gate/up {2 * I}x{K} + silu_mul: " + ", ".join(
            f"{k} {v:.3f} ms ({fl / v / 1e9:.0f} T/s, {base / v:.2f}x unfused int8)" for k, v in med.items())
            + "; rel. error vs float64 (64 rows): " + ", ".join(f"{k} {e:.2e}" for k, e in errs.items()), flush=True)
        del x, w, w16, wq, sc, w8, sc8, s
        torch.cuda.empty_cache()
        down_encode(M)


def down_encode(M, K=I):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    x = (torch.randn(M, K, device=dev, generator=g) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
    BM, FC = 16, 16
    n_fc = K // FC

    def run(rows, block, one_pass, warps):
        s = torch.empty((M, K), device=dev, dtype=torch.int8)
        vth = torch.empty((M,), device=dev, dtype=torch.float32)
        flags = torch.zeros(((M + BM - 1) // BM, n_fc), device=dev, dtype=torch.int8)
        sl._encode_lo_kernel[(triton.cdiv(M, rows),)](x, s, s, vth, flags, M, K, n_fc, x.stride(0), 3.0, R=rows,
                                                      BLOCK=block, ONE_PASS=one_pass, BM=BM, FC=FC, PLANES=1, HW=True,
                                                      FP8=False, num_warps=warps)
        return s, vth, flags

    variants = {"shipped (4096-column blocks, two reads)": sl.encode_lo_launch(K),
                "one read, BLOCK 32768, 16 warps": (1, 32768, True, 16),
                "one read, BLOCK 32768, 32 warps": (1, 32768, True, 32)}
    base = run(*variants["shipped (4096-column blocks, two reads)"])
    same = {}
    for k, v in variants.items():
        out = run(*v)
        same[k] = (f"vth equal {(out[1] == base[1]).float().mean().item():.4f}, counts equal "
                   f"{(out[0] == base[0]).float().mean().item():.6f}, flags equal {torch.equal(out[2], base[2])}")
    med = alternated_medians({k: (lambda v=v: run(*v)) for k, v in variants.items()})
    gb = M * K * 3 / 1e9   # bf16 read once + int8 written
    for k, v in med.items():
        print(f"M={M} encode of down's input K={K}: {k} {v:.3f} ms ({gb / v * 1e3:.0f} GB/s at one read); {same[k]}",
              flush=True)


if __name__ == "__main__":
    main()
