"""Session 26 A/Bs of spike_linear's fp8 "scaled_mm" prefill at the 7B shapes (runs alternated in one process):
  fix   -- the grouped fix-up's launch (spike_linear.FIX_GROUPED_CONFIG, FIX_PROGRAMS_PER_SM) against session 26's
           ((64, 256, 16), 16 programs per SM) at every 7B shape (down: two planes) at M = 16384 and 65536; outputs
           compared bit for bit.  (Session 26's first run also timed the next y tile loaded before the dot: no gain,
           removed; see RESULTS.md.)
  enc   -- encode_lo's launch (spike_linear.encode_lo_launch) against the one before session 26; outputs compared
           (vth's sum runs in another order, so vth may differ in its last bit and a count at a rounding tie with it);
  sweep -- the grouped fix-up over (BM, BN, FC) and programs per SM at the model's prefill chunk (M = 16384, the
           default of generate()) and at 65536, gate_up, qkv and down (16384): the best 6 per shape with the shipped one's time
           (outputs compared bit for bit with the shipped config's);
  down  -- the down projection (K > N: a SwiGLU product, ~2.6% of its counts past 16, so two e4m3 planes and two
           fp8 GEMMs) against one float16 GEMM of the counts (exact in float16 up to 2048; e4m3 weights exact in
           float16) with float32 output and vth / channel scales after it, and against bf16 x @ W^T.
usage: python benchmarks/gpu/probes/spike_linear_fp8_fixup_ab.py [fix] [enc] [sweep] [down]   (default: fix enc down)
PROBE_DRY=1 runs the logic on the CPU (Triton interpreter, tiny shapes)."""
import sys, statistics
from fp8_probe_common import DRY, SZ, dev, bench_ms as _bench  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import triton
import sbops
from sbops._backends.cuda.triton import spike_linear as sl
from sbops._backends.cuda.triton.spike_linear_fp8 import _encode_lo_kernel

what = sys.argv[1:] or ["fix", "enc", "down"]
ROUNDS = 1 if DRY else 3


def bench_ms(fn):
    return _bench(fn, rep=60)


def alternate(variants):
    """{name: fn} -> {name: [ms per round]}, the variants timed in turn, ROUNDS rounds."""
    t = {n: [] for n in variants}
    for _ in range(ROUNDS):
        for n, fn in variants.items():
            t[n].append(bench_ms(fn))
    return t


def show(t, base):
    b = statistics.median(t[base])
    return " | ".join(f"{n} {' / '.join(f'{v:.3f}' for v in ts)} ms ({b / statistics.median(ts):.3f}x)"
                      for n, ts in t.items())


def data(N, K, M, g):
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    wq, sc = sbops.quantize_weight(w, None, dtype=torch.float8_e4m3fn)
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
    if K > N:  # a SwiGLU product, as a down projection sees
        x = (torch.nn.functional.silu(x.float()) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
    return w, wq, sc, x


def eq(a, b):  # bitwise, float8 by its bytes; None == None
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a.view(torch.int8), b.view(torch.int8)) if a.dtype == torch.float8_e4m3fn else torch.equal(a, b)


def path(x, wq, sc):
    return sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm")


g = torch.Generator(device=dev).manual_seed(0)
if "fix" in what:
    sl._tuning.FP8_FIX = "grouped"
    base = (sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM)
    shapes = [(N, K, M) for M in (16384, 65536) for N, K in ((37888, 3584), (4608, 3584), (3584, 3584), (3584, 18944))]
    for N, K, M in shapes:
        N, K, M = SZ(N), SZ(K), SZ(M)
        w, wq, sc, x = data(N, K, M, g)
        outs, variants = {}, {}
        for name, cfg, pps in (("s26", (64, 256, 16), 16), ("shipped", base[0], base[1])):
            def fn(cfg=cfg, pps=pps):
                sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = cfg, pps
                return path(x, wq, sc)
            outs[name] = fn()
            variants[name] = fn
        same = all(torch.equal(o, outs["s26"]) for o in outs.values())
        t = alternate(variants)
        t["bf16"] = [bench_ms(lambda: x @ w.T)]
        print(f"fix-up M={M} {N}x{K}: {show(t, 's26')}; outputs {'identical' if same else 'DIFFER'}", flush=True)
        sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = base
        del w, wq, sc, x, outs

if "enc" in what:
    def before(K):  # encode_lo's launch up to session 25
        one = K <= 4096
        blk = triton.next_power_of_2(K) if one else 2048
        rows = max(1, 4096 // blk) if one else 1
        return rows, blk, one, 8 if blk * rows >= 4096 else 4
    for K, planes in ((3584, 1), (18944, 2)):
        M, K = SZ(65536), SZ(K)
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
        n_fc = triton.cdiv(K, 16)
        outs, variants = {}, {}
        for name, launch in (("s25", before(K)), ("s26", sl.encode_lo_launch(K))):
            R, blk, one, warps = launch
            o = (torch.empty((M, K), device=dev, dtype=torch.int8),
                 torch.empty((M, K), device=dev, dtype=torch.float8_e4m3fn) if planes == 2 else None,
                 torch.empty((M,), device=dev, dtype=torch.float32),
                 torch.zeros((triton.cdiv(M, 64), n_fc), device=dev, dtype=torch.int8))
            outs[name] = o
            variants[name] = lambda o=o, R=R, blk=blk, one=one, warps=warps: _encode_lo_kernel[(triton.cdiv(M, R),)](
                x, o[0], o[1] if planes == 2 else o[0], o[2], o[3], M, K, n_fc, x.stride(0), 3.0, R=R, BLOCK=blk,
                ONE_PASS=one, BM=64, FC=16, PLANES=planes, HW=not DRY, num_warps=warps)
            variants[name]()
        same = all(eq(a, b) for a, b in zip(outs["s25"], outs["s26"]))
        a, b = outs["s25"], outs["s26"]
        ulps = (a[2].view(torch.int32) - b[2].view(torch.int32)).abs()
        lo_d = int((a[0] != b[0]).sum())
        hi_d = int((a[1].view(torch.int8) != b[1].view(torch.int8)).sum()) if planes == 2 else 0
        # vth as spike_encode's float64 reference: how far is each launch's from the correctly rounded mean / k?
        ref = (x.double().abs().sum(1) / K / 3.0).clamp(1e-5, 1e4).float().view(torch.int32)
        t = alternate(variants)
        print(f"encode_lo M={M} K={K} planes={planes}, launches {before(K)} -> {sl.encode_lo_launch(K)}: "
              f"{show(t, 's25')}; outputs {'identical' if same else 'DIFFER'}: vth rows differing {int((ulps > 0).sum())} "
              f"(max {int(ulps.max())} ulp), vth ulps from the float64 mean: s25 max {int((a[2].view(torch.int32) - ref).abs().max())}, "
              f"s26 max {int((b[2].view(torch.int32) - ref).abs().max())}; count bytes differing lo {lo_d} hi {hi_d}, "
              f"flags {int((a[3] != b[3]).sum())}", flush=True)
        del x, outs

if "sweep" in what:
    sl._tuning.FP8_FIX = "grouped"
    base = (sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM)
    for N, K, M in ((37888, 3584, 16384), (4608, 3584, 16384), (3584, 18944, 16384), (37888, 3584, 65536)):
        N, K, M = SZ(N), SZ(K), SZ(M)
        w, wq, sc, x = data(N, K, M, g)
        ref = path(x, wq, sc)
        res, differ = [], []
        for BM in (16, 32, 64):
            for BN in (128, 256):
                for FC in (16, 32):
                    for pps in (8, 16, 32):
                        sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = (BM, BN, FC), pps
                        try:
                            if not torch.equal(path(x, wq, sc), ref):
                                differ.append((BM, BN, FC, pps))
                            res.append((bench_ms(lambda: path(x, wq, sc)), BM, BN, FC, pps))
                        except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                            print(f"  failed {(BM, BN, FC, pps)}: {str(e)[:100]}")
        sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = base
        shipped = bench_ms(lambda: path(x, wq, sc))
        print(f"sweep M={M} {N}x{K}: shipped {base[0]} x {base[1]}/SM {shipped:.3f} ms; outputs differing from it: "
              f"{differ or 'none'}")
        for t, BM, BN, FC, pps in sorted(res)[:6]:
            print(f"  {t:.3f} ms ({shipped / t:.3f}x): (BM, BN, FC) = ({BM}, {BN}, {FC}), {pps} programs/SM", flush=True)
        del w, wq, sc, x, ref

if "down" in what:
    sl._tuning.FP8_FIX = "grouped"
    for M in (65536, 8192):
        N, K, M = SZ(3584), SZ(18944), SZ(M)
        w, wq, sc, x = data(N, K, M, g)
        ref = path(x, wq, sc)
        s, hi, vth, _ = sl.encode_lo(x, 3.0, 64, 16, planes=2)
        # the counts as float16 (exact: this input's counts are far below 2048; the probe checks it)
        cnt = s.view(torch.float8_e4m3fn).to(torch.float16) + hi.to(torch.float16)
        q = torch.round(x.float() / vth[:, None])
        exact = bool((cnt.float() == q).all())
        w16 = wq.to(torch.float16)
        has_dtype_mm = True
        try:
            torch.mm(cnt[:16], w16.t(), out_dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - torch without mm's out_dtype
            has_dtype_mm = False
            print("  torch.mm(out_dtype=float32) unavailable:", str(e)[:120])

        def f16_f32out():
            acc = torch.mm(cnt, w16.t(), out_dtype=torch.float32) if has_dtype_mm else torch.mm(cnt.float(), w16.float().t())
            return (acc * vth[:, None] * sc[None, :]).to(x.dtype)

        def f16_out():  # float16 out needs the weights scaled down by 2^-8 (exact) against overflow
            acc = torch.mm(cnt, w16s.t())
            return (acc.float() * (256.0 * vth)[:, None] * sc[None, :]).to(x.dtype)
        w16s = w16 * (1.0 / 256.0)
        variants = {"two e4m3 planes (shipped)": lambda: path(x, wq, sc), "f16 GEMM, f32 out": f16_f32out,
                    "f16 GEMM, f16 out": f16_out, "bf16 x @ W^T": lambda: x @ w.T}
        parts = {"mm f32 out only": lambda: torch.mm(cnt, w16.t(), out_dtype=torch.float32) if has_dtype_mm else None,
                 "mm f16 out only": lambda: torch.mm(cnt, w16s.t()), "weight e4m3 -> f16": lambda: wq.to(torch.float16),
                 "encode_lo, two planes": lambda: sl.encode_lo(x, 3.0, 64, 16, planes=2)}
        errs = {n: ((f().float() - ref.float()).norm() / ref.float().norm()).item() for n, f in list(variants.items())[1:3]}
        t = alternate(variants)
        print(f"down M={M} {N}x{K}: counts exact in f16 {exact}; {show(t, 'two e4m3 planes (shipped)')}; "
              f"rel. difference to shipped {errs}", flush=True)
        print("  parts: " + ", ".join(f"{n} {bench_ms(f):.3f} ms" for n, f in parts.items()), flush=True)
        del w, wq, sc, x, ref, s, hi, cnt, w16, w16s
