"""Session 28: spike_linear's "int_mm" prefill (int8 per-channel weights: one int8 count plane, torch._int_mm, the
epilogue, the sparse fix-up) against the fp8 "scaled_mm" path (e4m3 per-channel weights; two planes where K > N),
the Triton int8 GEMM (path="prefill") and bf16 x @ W^T, alternated, at the 7B shapes, M = 16384 and 65536; relative
error of each against the float64 reference on 64 rows.  Then the CUDA C++ decode with int8 against e4m3 weights
(M = 1 and 8, CUDA graphs of 20 calls over weight copies of > 200 MB).
usage: python benchmarks/gpu/probes/spike_linear_int_mm_ab.py [prefill] [decode]   (default: both)
PROBE_DRY=1 runs the logic on the CPU (Triton interpreter, tiny shapes)."""
import statistics
import sys

from fp8_probe_common import DRY, SZ, dev, bench_ms  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import sbops
from sbops._backends.cuda.triton import spike_linear as sl

what = sys.argv[1:] or ["prefill", "decode"]
ROUNDS = 1 if DRY else 3
FP8 = torch.float8_e4m3fn


def ref_rows(x, wq, sc, rows=64):
    xf = x[:rows].float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    s = torch.round(xf / vth).double()
    return vth.double() * (s @ (wq.double() * sc.double()[:, None]).T)


def rel(y, r):
    return ((y[: r.shape[0]].double() - r).norm() / r.norm()).item()


g = torch.Generator(device=dev).manual_seed(0)
if "prefill" in what:
    for M in (16384, 65536):
        for N, K in ((3584, 18944), (37888, 3584), (4608, 3584), (3584, 3584)):
            N, K, Mm = SZ(N), SZ(K), SZ(M)
            w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
            x = torch.randn(Mm, K, device=dev, dtype=torch.bfloat16, generator=g)
            if K > N:  # a SwiGLU product, as a down projection sees
                x = (torch.nn.functional.silu(x.float()) * torch.randn(Mm, K, device=dev, generator=g)).bfloat16()
            w8, s8 = sbops.quantize_weight(w, None, dtype=FP8)
            wi, si = sbops.quantize_weight(w, None)
            fns = {"bf16": lambda: x @ w.T,
                   "fp8_scaled_mm": lambda: sl.spike_linear_fwd(x, w8, s8, 3.0, None, None, path="scaled_mm"),
                   "int8_int_mm": lambda: sl.spike_linear_fwd(x, wi, si, 3.0, None, None, path="int_mm"),
                   "int8_triton": lambda: sl.spike_linear_fwd(x, wi, si, 3.0, None, None, path="prefill")}
            err = {"fp8_scaled_mm": rel(fns["fp8_scaled_mm"](), ref_rows(x, w8, s8)),
                   "int8_int_mm": rel(fns["int8_int_mm"](), ref_rows(x, wi, si)),
                   "int8_triton": rel(fns["int8_triton"](), ref_rows(x, wi, si))}
            calls, real = [], sl._prefill_int_mm
            sl._prefill_int_mm = lambda *a, **kw: calls.append(1) or real(*a, **kw)
            sl.spike_linear_fwd(x, wi, si, 3.0, None, None)  # the default route of int8 per-channel weights
            sl._prefill_int_mm = real
            t = {n: [] for n in fns}
            for _ in range(ROUNDS):
                for n, fn in fns.items():
                    t[n].append(bench_ms(fn))
            b = statistics.median(t["bf16"])
            print(f"M={Mm} {N}x{K}: " + " | ".join(
                f"{n} {' / '.join(f'{v:.3f}' for v in ts)} ms ({b / statistics.median(ts):.2f}x bf16"
                + (f", rel err {err[n]:.1e})" if n in err else ")") for n, ts in t.items())
                + f"; int8's default route: {'int_mm' if calls else 'triton'}", flush=True)
            del w, x, w8, s8, wi, si
            if not DRY:
                torch.cuda.empty_cache()

if "decode" in what and not DRY:
    for N, K in ((3584, 18944), (37888, 3584), (4608, 3584), (3584, 3584)):
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
        copies = max(2, (200 << 20) // (N * K) + 1)
        fmts = {"e4m3": [sbops.quantize_weight(w * (1 + 1e-3 * i), None, dtype=FP8) for i in range(copies)],
                "int8": [sbops.quantize_weight(w * (1 + 1e-3 * i), None) for i in range(copies)]}
        for M in (1, 8):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
            if K > N:
                x = (torch.nn.functional.silu(x.float()) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
            res = {}
            for name, ws in fmts.items():
                y = sl.spike_linear_fwd(x, *ws[0], 3.0, None, None, path="cuda_decode")
                e = rel(y, ref_rows(x, *ws[0]))
                gr = torch.cuda.CUDAGraph()
                with torch.cuda.graph(gr):
                    for i in range(20):
                        sl.spike_linear_fwd(x, *ws[i % copies], 3.0, None, None, path="cuda_decode")
                ms = statistics.median(bench_ms(gr.replay) for _ in range(ROUNDS)) / 20
                res[name] = (ms * 1e3, e)
            print(f"decode M={M} {N}x{K}: " + " | ".join(f"{n} {us:.2f} us (rel err {e:.1e})" for n, (us, e) in res.items())
                  + f"; int8 / e4m3 time {res['int8'][0] / res['e4m3'][0]:.3f}", flush=True)
        del fmts, w
        torch.cuda.empty_cache()
