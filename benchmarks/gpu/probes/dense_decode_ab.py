"""The dense decode GEMV (sbops_native::dense_decode, kernels/dense_decode.cu) against cuBLAS (F.linear) at the bf16
7B shapes and M = 1, 8, 16, 32 (a decode step's rows): every block layout, GPU time per call under a CUDA graph of
20 calls over weight copies of > 200 MB (so the weights stream from HBM as in a decode step), medians of 3 alternated
rounds; each layout's output checked against float64 (relative error).  Prints the best layout per shape and M.
PROBE_LAYOUTS (comma-separated, -1 = the default layout; default 0-5) narrows or widens the sweep: each layout is a
column "L<layout>".
usage: python benchmarks/gpu/probes/dense_decode_ab.py [M ...]"""
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import sbops  # noqa: F401  (registers sbops_native)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_vs_fp8_gemm import alternated_medians  # noqa: E402

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944),
          "lm_head": (152064, 3584)}
LAYOUTS = [int(v) for v in os.environ.get("PROBE_LAYOUTS", "0,1,2,3,4,5").split(",") if v.strip()]


def graph_us(call, copies, n=20, rounds=1):
    call(0)
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for i in range(n):
            call(i % copies)
    out = []
    for _ in range(rounds):
        gr.replay()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        gr.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / n)
    return statistics.median(out)


def main():
    Ms = [int(v) for v in sys.argv[1:]] or [1, 8, 16, 32]
    dev = "cuda"
    op = torch.ops.sbops_native.dense_decode
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    g = torch.Generator(device=dev).manual_seed(0)
    best = {}
    for name, (N, K) in SHAPES.items():
        copies = max(2, (200 << 20) // (2 * N * K) + 1)
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02 for _ in range(copies)]
        for M in Ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
            ref = x[:4].double() @ ws[0][:, :].double().t()
            fns = {"cublas": lambda i: F.linear(x, ws[i])}
            errs = {}
            for lay in LAYOUTS:
                fns[f"L{lay}"] = (lambda lay: lambda i: op(x, ws[i], None, lay))(lay)
                y = op(x, ws[0], None, lay)[:4].double()
                errs[f"L{lay}"] = ((y - ref).norm() / ref.norm()).item()
            errs["cublas"] = ((F.linear(x, ws[0])[:4].double() - ref).norm() / ref.norm()).item()
            med = alternated_medians(fns, lambda f: graph_us(f, copies))
            mb = 2 * N * K / 1e6
            k_best = min((k for k in med if k != "cublas"), key=med.get)
            best[(name, M)] = (k_best, med[k_best], med["cublas"])
            print(f"{name} {N}x{K} M={M}: " + ", ".join(
                f"{k} {v:.2f} us ({mb / v:.2f} TB/s, err {errs[k]:.1e})" for k, v in med.items())
                + f" | best {k_best} {med['cublas'] / med[k_best]:.3f}x cublas", flush=True)
        del ws
        torch.cuda.empty_cache()
    print("best layouts:", {f"{n}/{m}": (k, round(v, 2), round(c, 2)) for (n, m), (k, v, c) in best.items()})


if __name__ == "__main__":
    main()
