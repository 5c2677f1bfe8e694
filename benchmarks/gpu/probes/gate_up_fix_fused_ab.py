"""Session 37: SwiGLU's e4m3 gate/up at prefill with the sparse fix-up fused into silu * up
(spike_linear_swiglu.silu_mul_scaled_mm) against scaled_mm_raw's own fix-up + silu_mul_scaled, gate_up 37888 x 3584:
  kernel -- M = 16384 (generate()'s prefill chunk) and 65536: both paths alternated (medians of 3 rounds of do_bench),
            h compared bit for bit, and a kernel profile of each (the fix-up / silu kernels' GPU time);
  model  -- the fp8 W8ASpike model (int8 down projections) on one set of random weights: TTFT at T (default 1M)
            with sbops.nn.common.FUSE_GATE_UP_FIX off / on, alternated, ROUNDS rounds (default 2).
usage: python benchmarks/gpu/probes/gate_up_fix_fused_ab.py [kernel] [model [T [ROUNDS]]]   (default: kernel model)
PROBE_DRY=1: the kernel part's logic on the CPU (interpreter, tiny shapes)."""
import statistics
import sys
import time

from fp8_probe_common import DRY, SZ, dev, bench_ms  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import sbops

args = sys.argv[1:] or ["kernel", "model"]


def kernel_part():
    from torch.profiler import profile, ProfilerActivity
    from sbops._backends.cuda.triton import fused_rope_swiglu as frs
    from sbops._backends.cuda.triton import spike_linear as sl
    from sbops._backends.cuda.triton import spike_linear_swiglu as sw
    g = torch.Generator(device=dev).manual_seed(0)
    for M in (16384, 65536):
        M, K, I = SZ(M), SZ(3584), SZ(18944)
        w = torch.randn(2 * I, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
        wq, sc = sbops.quantize_weight(w, None, dtype=torch.float8_e4m3fn)
        fns = {"raw + silu_mul_scaled": lambda: frs.silu_mul_scaled(*sl.scaled_mm_raw(x, wq, sc, 3.0), sc),
               "fused fix + silu": lambda: sw.silu_mul_scaled_mm(x, wq, sc, 3.0)}
        same = torch.equal(*(f() for f in fns.values()))
        res = {k: [] for k in fns}
        for _ in range(1 if DRY else 3):
            for k, f in fns.items():
                res[k].append(bench_ms(f))
        med = {k: statistics.median(v) for k, v in res.items()}
        a, b = med.values()
        print(f"M={M} gate_up {2 * I}x{K}: " + " | ".join(f"{k} {v:.3f} ms" for k, v in med.items())
              + f" | fused {a / b:.3f}x | h bit-identical: {same}", flush=True)
        if DRY:
            continue
        for k, f in fns.items():
            f()
            with profile(activities=[ProfilerActivity.CUDA]) as p:
                f()
                torch.cuda.synchronize()
            ev = {}
            for e in p.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    ev[e.name[:60]] = ev.get(e.name[:60], 0.0) + e.device_time
            print(f"  {k}: " + ", ".join(f"{n} {t / 1e3:.3f}" for n, t in sorted(ev.items(), key=lambda x: -x[1])),
                  flush=True)


def model_part(T, rounds):
    from sbops.bench.model import Run, build_ours
    from sbops.bench.model_args import parse_args
    from sbops.models import generate
    from sbops.nn import common
    run = Run(parse_args(["--weight-quant", "fp8", "--down-quant", "int8_channel", "--no-peer", "--out",
                          "/tmp/gate_up_fix_fused_ab"], ""))
    model, _ = build_ours(run)

    def ttft(L):
        ids = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        int(generate(model, ids, 1, cuda_graphs=False)[0, -1])
        return time.perf_counter() - t

    times = {False: [], True: []}
    for on in times:   # warm-up: every kernel compiled once
        common.FUSE_GATE_UP_FIX = on
        ttft(40000)
    for r in range(rounds):
        for on in times:
            common.FUSE_GATE_UP_FIX = on
            times[on].append(ttft(T))
            print(f"round {r + 1} FUSE_GATE_UP_FIX={on}: TTFT T={T}: {times[on][-1]:.3f} s", flush=True)
    print(" | ".join(f"fused={on}: {' / '.join(f'{v:.3f}' for v in ts)} s" for on, ts in times.items()), flush=True)


if "kernel" in args:
    kernel_part()
if "model" in args and not DRY:
    i = args.index("model")
    rest = [a for a in args[i + 1:] if a.isdigit() or a[:-1].isdigit()]
    from sbops.bench.model_args import parse_len
    model_part(parse_len(rest[0]) if rest else 1 << 20, int(rest[1]) if len(rest) > 1 else 2)
