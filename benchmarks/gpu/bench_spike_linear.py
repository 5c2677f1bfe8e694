"""spike_linear speed on the H200: every path and candidate config vs bf16 torch.matmul (same run).

Paths: int8 / e4m3 weights x per channel / per group 128, prefill (M = 8192, 65536) and decode
(M = 1, 8, 32; GPU time under CUDA graphs, weights rotated over > 200 MB of copies), encode included.  Peers: bf16 x @ W^T, torch._int_mm (int8 cuBLASLt),
torch._scaled_mm (fp8 e4m3).  Prints JSON lines, a summary table (ratio vs bf16, rel error vs
float64 on 256 rows) and a measured spike_linear_tuning.py (also written to $OUT).  ~150 s.
Run: python benchmarks/gpu/bench_spike_linear.py   (SL_MS=8192 to skip M=65536, SL_MS=0 for decode only;
SL_DEC_SWEEP=1: e4m3 per-channel weights only, the o_proj shape too, decode at M = 1, 8 and 32 over more configs; SL_QUICK=1: no
prefill config sweep; the fp8 per-channel "scaled_mm" path (torch._scaled_mm + sparse fix-up) is always timed, and so is
the CUDA C++ decode kernel where it applies: e4m3 per channel, M <= 8, row "f8_ch_cuda_decode")"""
import json, os, sys, time
import torch
DRY = not torch.cuda.is_available()  # a smoke run of this script's logic on a CPU (interpreter, tiny shapes)
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"
from triton.testing import do_bench
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import triton_kernels  # noqa: E402
import sbops  # noqa: E402
sl = triton_kernels.load("spike_linear")
torch.manual_seed(0)
dev, FP8, T0 = "cuda", torch.float8_e4m3fn, time.time()
SHAPES = [(4608, 3584), (37888, 3584), (3584, 18944)]   # qkv(+o), fused gate_up, down (N x K)
Ms = [int(m) for m in os.environ.get("SL_MS", "8192,65536").split(",") if int(m) > 0]  # SL_MS=0: decode only
QUICK = os.environ.get("SL_QUICK") == "1"  # prefill: only the launcher's config per path (no candidate sweep)
GEMM_CANDS = {"ch": [(128, 256, 128, 8, 8, 3), (128, 256, 128, 8, 8, 4), (256, 128, 128, 8, 8, 3), (128, 128, 128, 8, 8, 4)],
              "g": [(128, 128, 128, 8, 8, 3), (128, 128, 128, 8, 8, 4), (128, 256, 128, 8, 8, 3), (256, 128, 128, 8, 8, 3)]}
DEC_CANDS = [(128, 128, 0, 8, 4), (64, 128, 0, 4, 4)]
FIX_CANDS = [(64, 256, 16, 1), (64, 256, 64, 1), (64, 256, 16, 2), (64, 256, 64, 2)]
PATHS = [(torch.int8, None), (torch.int8, 128), (FP8, None), (FP8, 128)]
DEC_MS = (1, 8, 32)
if os.environ.get("SL_DEC_SWEEP") == "1":
    PATHS, DEC_MS = [(FP8, None)], (1, 8, 32)
    SHAPES = SHAPES + [(3584, 3584)]   # o_proj
    DEC_CANDS = DEC_CANDS + [(32, 128, 0, 4, 4), (64, 128, 2, 4, 4), (128, 128, 0, 4, 4), (64, 256, 0, 4, 3)]
res, table, tun_g, tun_d = [], [], {}, {}
if DRY:
    dev, SHAPES, Ms = "cpu", [(48, 256)], [64, 100]
    GEMM_CANDS = {k: [(32, 32, 128, 2, 4, 2), (16, 32, 128, 1, 4, 2)] for k in GEMM_CANDS}
    DEC_CANDS = [(16, 128, 0, 4, 2), (16, 128, 2, 4, 2)]
    FIX_CANDS = [(16, 32, 16, 1), (16, 32, 16, 2)]

    def do_bench(fn, warmup, rep):
        t = time.time(); fn(); return (time.time() - t) * 1e3


def quant(w, gs, dt):
    return sbops.quantize_weight(w, gs, dtype=dt)


def rel_err(y, x, wq, sc, gs, rows=256):
    x = x[:rows]
    vth = (x.float().abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    s = torch.round(x.float() / vth).double()
    w = wq.double()
    w = w * sc.double()[:, None] if gs is None else (w.view(w.shape[0], -1, gs) * sc.double()[..., None]).view_as(w)
    r = vth.double() * (s @ w.T)
    return ((y[:rows].double() - r).norm() / r.norm()).item()


def bench(fn, rep):
    try:
        return do_bench(fn, warmup=10, rep=rep)
    except Exception as e:  # a config that does not compile / fit: reported, skipped
        print(json.dumps({"failed": str(e)[:160]}), flush=True)
        return None


def gbench(fns, reps=10):
    """ms per call of fns (called in turn) replayed as one CUDA graph (median of reps); None if it fails."""
    if DRY:
        return bench(fns[0], 1)
    try:
        st = torch.cuda.Stream()
        st.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(st):
            for _ in range(2):
                for f in fns:
                    f()
        torch.cuda.current_stream().wait_stream(st)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            for f in fns:
                f()
        ts = []
        for _ in range(reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(); g.replay(); e1.record(); e1.synchronize()
            ts.append(e0.elapsed_time(e1) / len(fns))
        return sorted(ts)[len(ts) // 2]
    except Exception as e:
        print(json.dumps({"failed": str(e)[:160]}), flush=True)
        return None


def name(dt, gs):
    return ("i8" if dt == torch.int8 else "f8") + ("_ch" if gs is None else "_g")


def emit(row):
    print(json.dumps(row), flush=True)
    res.append(row)


for (N, K) in SHAPES:
    w = torch.randn(N, K, device=dev) * 0.02
    wb = w.to(torch.bfloat16)
    qs = {(dt, gs): quant(w, gs, dt) for dt, gs in PATHS}
    w8t = qs[(FP8, None)][0].t()
    one = torch.ones((), device=dev)
    for M in Ms:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        rep = 40 if M <= 8192 else 120
        fl = 2 * M * N * K
        tb = bench(lambda: x @ wb.T, rep)
        xi = torch.randint(-8, 8, (M, K), device=dev, dtype=torch.int8)
        # the int8 cuBLASLt peer needs the int8 weights (not quantised in SL_DEC_SWEEP's fp8-only run)
        ti = bench(lambda: torch._int_mm(xi, qs[(torch.int8, None)][0].T), rep) if (torch.int8, None) in qs else None
        xf = xi.to(FP8)
        tf = bench(lambda: torch._scaled_mm(xf, w8t, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), rep)
        row = {"M": M, "N": N, "K": K, "bf16_ms": tb, "bf16_tflops": fl / tb / 1e9, "int_mm_x": tb / ti if ti else None,
               "scaled_mm_fp8_x": tb / tf if tf else None}
        for dt, gs in PATHS:
            wq, sc = qs[(dt, gs)]
            key = name(dt, gs)
            cands = GEMM_CANDS["ch" if gs is None else "g"]
            prev = tun_g.get((key, N, K, "mid"))  # at M=65536 only the two best of M=8192
            if M > Ms[0] and prev is not None:
                cands = prev["top2"]
            if QUICK:  # the launcher's own choice only
                cands = [sl.gemm_config(M, N, K, gs, dt == FP8)]
            times = []
            for cfg in cands:
                t = bench(lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, gs, config=cfg, path="prefill"), rep)
                if t is not None:
                    times.append((t, cfg))
                    row[f"{key}_{'x'.join(map(str, cfg))}_x"] = round(tb / t, 3)
            times.sort()
            t, cfg = times[0]
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, gs, config=cfg, path="prefill")
            err = rel_err(y, x, wq, sc, gs)
            row[f"{key}_best"] = {"cfg": cfg, "ms": t, "x_bf16": tb / t, "rel_err": err}
            table.append((f"M={M} {N}x{K}", key, tb / t, err, cfg))
            tun_g[(key, N, K, "mid" if M <= 16384 else "big")] = {"cfg": cfg, "top2": [c for _, c in times[:2]]}
        # e4m3 per channel through torch._scaled_mm + the sparse fix-up (the "scaled_mm" path)
        wq, sc = qs[(FP8, None)]
        t = bench(lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm"), rep)
        if t is not None:
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm")
            err = rel_err(y, x, wq, sc, None)
            # where the time goes: the encode alone, the vendor GEMM alone; then fast accumulation
            s8, _, vth, _ = sl.encode_lo(x, 3.0, 64)
            s8 = s8.view(FP8)
            t_enc = bench(lambda: sl.encode_lo(x, 3.0, 64), rep)
            t_mm = bench(lambda: torch._scaled_mm(s8, wq.t(), scale_a=vth[:, None], scale_b=sc[None, :],
                                                  out_dtype=torch.bfloat16), rep)
            # a SwiGLU product (the down projection's input): ~2.6% of its counts at k = 3 are past 16
            g = torch.Generator(device=dev).manual_seed(1)
            xs = (torch.nn.functional.silu(torch.randn(x.shape, device=dev, generator=g))
                  * torch.randn(x.shape, device=dev, generator=g)).to(x.dtype)
            # the fix-up's (BM, BN, FC, PLANES): row block and FC-column chunk of the flags, columns per program
            for tag, xin in (("", x), ("swiglu_", xs)):
                for fc in FIX_CANDS:
                    tc = bench(lambda: sl.spike_linear_fwd(xin, wq, sc, 3.0, None, None, config=fc, path="scaled_mm"), rep)
                    row[f"f8_ch_scaled_mm_{tag}fix_{'x'.join(map(str, fc))}_ms"] = tc
            ys = sl.spike_linear_fwd(xs, wq, sc, 3.0, None, None, path="scaled_mm")
            ts = min(v for k2, v in row.items() if k2.startswith("f8_ch_scaled_mm_swiglu_fix_") and v)
            table.append((f"M={M} {N}x{K}", "f8_ch_scaled_mm swiglu x", tb / ts, rel_err(ys, xs, wq, sc, None),
                          "best fix config"))
            # the "grouped" fix-up kernel (spike_linear_tuning.FP8_FIX) on the same inputs
            fix0, sl._tuning.FP8_FIX = sl._tuning.FP8_FIX, "grouped"
            t_grp = bench(lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm"), rep)
            err_grp = rel_err(sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm"), x, wq, sc, None)
            sl._tuning.FP8_FIX = fix0
            if t_grp:
                table.append((f"M={M} {N}x{K}", "f8_ch_scaled_mm grouped fix-up", tb / t_grp, err_grp, "FP8_FIX='grouped'"))
            sl._tuning.FP8_FAST_ACCUM = True
            t_fast = bench(lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm"), rep)
            err_fast = rel_err(sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm"), x, wq, sc, None)
            sl._tuning.FP8_FAST_ACCUM = False
            row["f8_ch_scaled_mm"] = {"ms": t, "x_bf16": tb / t, "rel_err": err, "encode_ms": t_enc,
                                      "scaled_mm_only_ms": t_mm, "fast_accum_ms": t_fast, "fast_accum_rel_err": err_fast,
                                      "grouped_fix_ms": t_grp}
            table.append((f"M={M} {N}x{K}", "f8_ch_scaled_mm", tb / t, err,
                          f"encode {t_enc:.3f} ms, GEMM {t_mm:.3f} ms, total {t:.3f} ms"))
            if t_fast:
                table.append((f"M={M} {N}x{K}", "f8_ch_scaled_mm_fast", tb / t_fast, err_fast, "use_fast_accum=True"))
        if M == Ms[0]:  # e4m3 with LLM-like outlier channels: every row has counts past 16 in 8 channels
            xo = x.clone()
            xo[:, 1000:1008] *= 25
            for gs in [g for g in (None, 128) if (FP8, g) in qs]:
                wq, sc = qs[(FP8, gs)]
                cfg = tun_g[(name(FP8, gs), N, K, "mid")]["cfg"]
                t = bench(lambda: sl.spike_linear_fwd(xo, wq, sc, 3.0, None, gs, config=cfg, path="prefill"), rep)
                y = sl.spike_linear_fwd(xo, wq, sc, 3.0, None, gs, config=cfg, path="prefill")
                row[f"{name(FP8, gs)}_outlier_channels_x"] = tb / t if t else None
                table.append((f"M={M} {N}x{K}", name(FP8, gs) + "+outl", tb / t if t else 0, rel_err(y, xo, wq, sc, gs), cfg))
            wq, sc = qs[(FP8, None)]
            t = bench(lambda: sl.spike_linear_fwd(xo, wq, sc, 3.0, None, None, path="scaled_mm"), rep)
            if t is not None:
                y = sl.spike_linear_fwd(xo, wq, sc, 3.0, None, None, path="scaled_mm")
                row["f8_ch_scaled_mm_outlier_channels_x"] = tb / t
                table.append((f"M={M} {N}x{K}", "f8_ch_scaled_mm+outl", tb / t, rel_err(y, xo, wq, sc, None),
                              "torch._scaled_mm + fix-up"))
        emit(row)
    # decode: GPU time under a CUDA graph (a model decodes so; eager timing would time the host), the weights
    # rotated over copies of > 200 MB so every call reads them from HBM as a model's layers do
    nrot = 1 if DRY else max(2, -(-200_000_000 // (N * K)))
    wbr = [wb] + [wb.clone() for _ in range(nrot // 2)]
    rot = {p: [qs[p][0]] + [qs[p][0].clone() for _ in range(nrot - 1)] for p in PATHS}
    for M in DEC_MS:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        tb = gbench([lambda W=W: x @ W.T for W in wbr])
        row = {"decode_M": M, "N": N, "K": K, "bf16_us": tb * 1e3, "bf16_GBs": N * K * 2 / tb / 1e6}
        for dt, gs in PATHS:
            wq, sc = qs[(dt, gs)]
            key = name(dt, gs)
            times = []
            for cfg in DEC_CANDS:
                t = gbench([lambda W=W: sl.spike_linear_fwd(x, W, sc, 3.0, None, gs, config=cfg, path="decode")
                            for W in rot[(dt, gs)]])
                if t is not None:
                    times.append((t, cfg))
                    row[f"{key}_{'x'.join(map(str, cfg))}_us"] = round(t * 1e3, 2)
            times.sort()
            t, cfg = times[0]
            tdef = gbench([lambda W=W: sl.spike_linear_fwd(x, W, sc, 3.0, None, gs, path="decode") for W in rot[(dt, gs)]])
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, gs, config=cfg, path="decode")
            err = rel_err(y, x, wq, sc, gs)
            row[f"{key}_best"] = {"cfg": cfg, "us": t * 1e3, "default_us": tdef * 1e3 if tdef else None,
                                  "GBs": N * K / t / 1e6, "x_bf16": tb / t, "rel_err": err}
            table.append((f"decode M={M} {N}x{K}", key, tb / t, err, cfg))
            tun_d[(key[:2], key[3:], N, K, "m16" if M <= 16 else "m32")] = cfg  # m16 keeps M=8's winner
        if (FP8, None) in qs and sl.native_decode_applies(x, qs[(FP8, None)][0], None, 3.0):
            wq, sc = qs[(FP8, None)]   # the CUDA C++ decode kernel (e4m3 per channel, M <= 8), same rotation
            t = gbench([lambda W=W: sl.spike_linear_fwd(x, W, sc, 3.0, None, None, path="cuda_decode")
                        for W in rot[(FP8, None)]])
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode")
            err = rel_err(y, x, wq, sc, None)
            row["f8_ch_cuda_decode"] = {"us": t * 1e3, "GBs": N * K / t / 1e6, "x_bf16": tb / t, "rel_err": err}
            table.append((f"decode M={M} {N}x{K}", "f8_ch_cuda_decode", tb / t, err, "CUDA C++ (spike_decode.cu)"))
        emit(row)
    del wbr, rot
    print(f"# {N}x{K} done at {time.time() - T0:.0f} s", flush=True)

print("\n| shape | path | x bf16 | rel err | config |\n| --- | --- | --- | --- | --- |")
for s, p, r, e, c in table:
    print(f"| {s} | {p} | {r:.2f} | {e:.1e} | {c} |")
g = {}
for (key, N, K, b), v in tun_g.items():
    g[(key[:2], key[3:], N, K, b)] = tuple(v["cfg"])
text = "GEMM = {\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in sorted(g.items())) + "}\n"
text += "DECODE = {\n" + "".join(f"    {k!r}: {tuple(v)!r},\n" for k, v in sorted(tun_d.items())) + "}\n"
print("\n# measured tables for backends/cuda/triton/spike_linear_tuning.py:\n" + text)
out = os.environ.get("OUT", "/tmp")
os.makedirs(out, exist_ok=True)
json.dump(res, open(os.path.join(out, "sl_bench.json"), "w"), indent=1, default=str)
open(os.path.join(out, "spike_linear_tuning_measured.txt"), "w").write(text)
print(f"total {time.time() - T0:.0f} s")
