"""Session 28: SwiGLU's e4m3 gate/up at prefill, the scaled fused product (spike_linear "scaled_mm": row-wise scaled
vendor fp8 GEMM) + silu_mul against the unscaled product (scaled_mm_raw: unit tensor-wise scales) + silu_mul_scaled,
alternated, M = 16384 and 65536, gate_up 37888 x 3584 (and qkv's shape as a second data point of the GEMM alone);
h compared between the two and against float64 on 64 rows; bf16 x @ W^T + silu_mul as the bf16 model runs it.
usage: python benchmarks/gpu/probes/gate_up_raw_ab.py     PROBE_DRY=1: the logic on the CPU (interpreter, tiny)."""
import statistics

from fp8_probe_common import DRY, SZ, dev, bench_ms  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import sbops
from sbops._backends.cuda.triton import fused_rope_swiglu as frs
from sbops._backends.cuda.triton import spike_linear as sl

ROUNDS = 1 if DRY else 3
g = torch.Generator(device=dev).manual_seed(0)
for M in (16384, 65536):
    M, K, I = SZ(M), SZ(3584), SZ(18944)
    w = torch.randn(2 * I, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
    wq, sc = sbops.quantize_weight(w, None, dtype=torch.float8_e4m3fn)

    def scaled():
        y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm")
        return frs.silu_mul(y[:, :I], y[:, I:])

    def raw():
        y_raw, vth = sl.scaled_mm_raw(x, wq, sc, 3.0)
        return frs.silu_mul_scaled(y_raw, vth, sc)

    def bf16():
        y = x @ w.T
        return frs.silu_mul(y[:, :I], y[:, I:])

    hs, hr = scaled(), raw()
    xf = x[:64].float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    gu = vth.double() * (torch.round(xf / vth).double() @ (wq.double() * sc.double()[:, None]).T)
    ref = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
    err = lambda h: ((h[:64].double() - ref).norm() / ref.norm()).item()  # noqa: E731
    diff = ((hs.double() - hr.double()).norm() / hs.double().norm()).item()
    t = {"scaled+silu_mul": [], "raw+silu_mul_scaled": [], "bf16+silu_mul": []}
    for _ in range(ROUNDS):
        for n, fn in zip(t, (scaled, raw, bf16)):
            t[n].append(bench_ms(fn))
    b = statistics.median(t["scaled+silu_mul"])
    print(f"M={M} gate_up {2 * I}x{K}: " + " | ".join(f"{n} {' / '.join(f'{v:.3f}' for v in ts)} ms "
                                                   f"({b / statistics.median(ts):.3f}x)" for n, ts in t.items())
          + f"; h rel diff {diff:.1e}, vs float64: scaled {err(hs):.1e}, raw {err(hr):.1e}", flush=True)
    del w, x, wq, sc, hs, hr
    if not DRY:
        torch.cuda.empty_cache()
