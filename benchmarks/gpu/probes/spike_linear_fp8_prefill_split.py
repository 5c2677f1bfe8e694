"""Where spike_linear's fp8 "scaled_mm" prefill spends its time at the 7B shapes (M = 65536, 8192):
  fix   -- the whole path with each fix-up kernel (spike_linear_tuning.FP8_FIX "tiles" / "grouped") against bf16
           x @ W^T in the same run, their max difference, a sweep of the grouped kernel's launch parameters on
           gate_up, and a kernel-by-kernel profile of both;
  enc   -- the encode pre-pass (_encode_lo_kernel) over its (rows per program, BLOCK, one / two passes, warps),
           in GB/s of its minimum traffic (x read once, one byte per plane written), and against the session 23
           encode (OLD=True) with the shipped launch, alternated, outputs compared; and the Triton
           int8 / fp8 GEMM's pre-pass (_encode_kernel) with its reciprocal quotient against its division (DIV=True).
usage: python benchmarks/gpu/probes/spike_linear_fp8_prefill_split.py [fix] [enc]   (default both; installed sbops)
PROBE_DRY=1 runs the logic on the CPU (Triton interpreter, tiny shapes)."""
import sys
from fp8_probe_common import DRY, SZ, dev, bench_ms as _bench  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import triton
from torch.profiler import profile, ProfilerActivity
import sbops
from sbops._backends.cuda.triton import spike_linear as sl
from sbops._backends.cuda.triton.spike_linear_fp8 import _encode_lo_kernel

what = sys.argv[1:] or ["fix", "enc"]


def bench_ms(fn):
    return _bench(fn, rep=40)


def profile_table(fn, title, reps=3, n=12):
    fn()
    with profile(activities=[ProfilerActivity.CPU if DRY else ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            fn()
        None if DRY else torch.cuda.synchronize()
    ka = sorted(p.key_averages(), key=lambda e: -e.self_device_time_total)
    print(f"--- {title} ({reps} calls): GPU {sum(e.self_device_time_total for e in ka) / 1e3 / reps:.3f} ms per call")
    for e in ka[:n]:
        if e.self_device_time_total > 0:
            print(f"  {e.self_device_time_total / 1e3 / reps:9.3f} ms/call {e.count // reps:4d}x  {e.key[:100]}")
    sys.stdout.flush()


def path(x, wq, sc, fix):
    sl._tuning.FP8_FIX = fix
    return sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="scaled_mm")


if "fix" in what:
    g = torch.Generator(device=dev).manual_seed(0)
    for N, K, Ms in ((37888, 3584, (65536, 8192)), (4608, 3584, (65536,)), (3584, 18944, (65536,))):
        N, K, Ms = SZ(N), SZ(K), tuple(SZ(m) for m in Ms)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
        wq, sc = sbops.quantize_weight(w, None, dtype=torch.float8_e4m3fn)
        for M in Ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
            if K > N:  # a SwiGLU product, as a down projection sees
                x = (torch.nn.functional.silu(x.float()) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
            flags = sl.encode_lo(x, 3.0, 64)[3]
            print(f"M={M} N={N} K={K}: flagged chunks {int(flags.sum())}, row blocks with one "
                  f"{int((flags.sum(1) > 0).sum())} / {flags.shape[0]}")
            d = (path(x, wq, sc, "grouped").float() - path(x, wq, sc, "tiles").float()).abs().max().item()
            tb = bench_ms(lambda: x @ w.T)
            tt = bench_ms(lambda: path(x, wq, sc, "tiles"))
            tg = bench_ms(lambda: path(x, wq, sc, "grouped"))
            print(f"  bf16 {tb:.3f} ms | tiles {tt:.3f} ms ({tb / tt:.2f}x) | grouped {tg:.3f} ms ({tb / tg:.2f}x) | "
                  f"max |grouped - tiles| {d:.3g}", flush=True)
            if M == SZ(65536) and N == SZ(37888):
                base = (sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM, sl.FIX_WARPS, sl.FIX_STAGES)
                res = []
                for BN in (64, 128, 256):
                    for pps in (4, 8, 16):
                        for ws in ((4, 1), (4, 3), (8, 3)):
                            sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = (64, BN, 16), pps
                            sl.FIX_WARPS, sl.FIX_STAGES = ws
                            try:
                                res.append((bench_ms(lambda: path(x, wq, sc, "grouped")), BN, pps, ws))
                            except Exception as e:  # noqa: BLE001 - a config that does not compile
                                print("  failed", BN, pps, ws, str(e)[:100])
                for r in sorted(res)[:6]:
                    print("  grouped %.3f ms: BN=%d programs/SM=%d (warps, stages)=%s" % r)
                for tw in (4, 8):  # the tiles kernel's warps (spike_linear.FIX_TILES_WARPS)
                    sl.FIX_TILES_WARPS = tw
                    print(f"  tiles, {tw} warps: {bench_ms(lambda: path(x, wq, sc, 'tiles')):.3f} ms", flush=True)
                sl.FIX_TILES_WARPS = 4
                sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM, sl.FIX_WARPS, sl.FIX_STAGES = base
                profile_table(lambda: path(x, wq, sc, "tiles"), f"tiles M={M} {N}x{K}")
                profile_table(lambda: path(x, wq, sc, "grouped"), f"grouped M={M} {N}x{K}")
            del x, flags
        del w, wq, sc
    sl._tuning.FP8_FIX = "tiles"

if "enc" in what:
    for K, planes in ((3584, 1), (18944, 2)):
        M, K = SZ(65536), SZ(K)
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        s8 = torch.empty((M, K), device=dev, dtype=torch.int8)
        hi = torch.empty((M, K), device=dev, dtype=torch.float8_e4m3fn) if planes == 2 else s8
        vth = torch.empty((M,), device=dev, dtype=torch.float32)
        n_fc = triton.cdiv(K, 16)
        flags = torch.zeros((triton.cdiv(M, 64), n_fc), device=dev, dtype=torch.int8)
        gb = M * K * (2 + planes) / 1e9
        p2 = triton.next_power_of_2(K)
        cands = [(R, p2, True, w) for R in (1, 2, 4) for w in (4, 8, 16) if p2 * R <= 32768]
        cands += [(1, blk, False, w) for blk in (1024, 2048, 4096) for w in (4, 8)]
        res = []
        for R, blk, one, w in cands:
            def fn():
                _encode_lo_kernel[(triton.cdiv(M, R),)](x, s8, hi, vth, flags, M, K, n_fc, x.stride(0), 3.0, R=R,
                                                        BLOCK=blk, ONE_PASS=one, BM=64, FC=16, PLANES=planes, HW=not DRY,
                                                        num_warps=w)
            try:
                res.append((bench_ms(fn), R, blk, one, w))
            except Exception as e:  # noqa: BLE001
                print("  failed", R, blk, one, w, str(e)[:120])
        cur = bench_ms(lambda: sl.encode_lo(x, 3.0, 64, 16, planes))
        print(f"encode M={M} K={K} planes={planes}: encode_lo {cur:.3f} ms ({gb / cur:.0f} GB/s of {gb:.2f} GB)")
        # the session 23 encode (integer e4m3 bytes, rint by adds, per-element flag stores: OLD=True, HW=False) against
        # the library's, with encode_lo's own launch (R, BLOCK, ONE_PASS, warps), alternated, outputs compared
        one = K <= 4096
        blk = triton.next_power_of_2(K) if one else 2048
        R0 = max(1, 4096 // blk) if one else 1
        w0 = 8 if blk * R0 >= 4096 else 4
        outs = {}
        for name, extra in (("s24", {"HW": not DRY}), ("s23", {"HW": False, "OLD": True})):
            o = (torch.empty_like(s8), torch.empty_like(hi) if planes == 2 else None, torch.empty_like(vth),
                 torch.zeros_like(flags))
            outs[name] = (o, lambda o=o, extra=extra: _encode_lo_kernel[(triton.cdiv(M, R0),)](
                x, o[0], o[1] if planes == 2 else o[0], o[2], o[3], M, K, n_fc, x.stride(0), 3.0, R=R0, BLOCK=blk,
                ONE_PASS=one, BM=64, FC=16, PLANES=planes, num_warps=w0, **extra))
        times = {n: [] for n in outs}
        for _ in range(3):
            for n, (o, fn) in outs.items():
                times[n].append(bench_ms(fn))
        same = all((a is None and b is None) or torch.equal(a.view(torch.int8) if a.dtype == torch.float8_e4m3fn else a,
                                                            b.view(torch.int8) if b.dtype == torch.float8_e4m3fn else b)
                   for a, b in zip(outs["s24"][0], outs["s23"][0]))
        print(f"  A/B, encode_lo's launch (R={R0} BLOCK={blk} ONE_PASS={one} warps={w0}), 3 alternated runs: "
              f"s23 {' / '.join(f'{t:.3f}' for t in times['s23'])} ms, s24 {' / '.join(f'{t:.3f}' for t in times['s24'])} ms; "
              f"outputs {'identical' if same else 'DIFFER'}")
        for t, R, blk, one, w in sorted(res)[:8]:
            print(f"  {t:.3f} ms ({gb / t:.0f} GB/s) R={R} BLOCK={blk} ONE_PASS={one} warps={w}")
        sys.stdout.flush()
        # the Triton int8 / fp8 GEMM's pre-pass (_encode_kernel): the quotient through the reciprocal with the
        # one-instruction rint (session 24) against a division per element and rint by adds (DIV=True, HW=False: the
        # earlier kernel), encode()'s launch, alternated, outputs compared
        from sbops._backends.cuda.triton.spike_linear_kernels import _encode_kernel
        for fp8 in (False, True):
            BK = 64
            n_ch = triton.cdiv(K, BK)
            blk = 1024 if K >= 1024 else 256
            bits = 4 if fp8 else 7
            outs8 = {}
            for name, extra in (("s24", {"HW": not DRY}), ("div", {"HW": False, "DIV": True})):
                o = (torch.empty((M, K), device=dev, dtype=torch.int8), torch.empty((M, K), device=dev, dtype=torch.int32),
                     torch.empty((M,), device=dev, dtype=torch.float32), torch.empty((M,), device=dev, dtype=torch.int32),
                     torch.empty((M, n_ch), device=dev, dtype=torch.int8))
                outs8[name] = (o, lambda o=o, extra=extra: _encode_kernel[(M,)](
                    x, o[0], o[1], o[2], o[3], o[4], K, n_ch, x.stride(0), 3.0, LIMIT=16 if fp8 else 127,
                    DIGIT_BITS=bits, MAX_DIGITS=triton.cdiv(31, bits), FP8=fp8, CHUNK=BK, ROWS=max(1, blk // BK),
                    num_warps=4, **extra))
            t8 = {n: [] for n in outs8}
            for _ in range(3):
                for n, (o, fn) in outs8.items():
                    t8[n].append(bench_ms(fn))
            a, b = outs8["s24"][0], outs8["div"][0]
            wide = b[3] > 1
            same = all(torch.equal(a[i], b[i]) for i in (0, 2, 3)) and torch.equal(a[1][wide], b[1][wide]) \
                and torch.equal(a[4][wide], b[4][wide])
            print(f"  _encode_kernel {'fp8' if fp8 else 'int8'} M={M} K={K}, 3 alternated runs: division "
                  f"{' / '.join(f'{t:.3f}' for t in t8['div'])} ms, reciprocal "
                  f"{' / '.join(f'{t:.3f}' for t in t8['s24'])} ms; outputs {'identical' if same else 'DIFFER'}")
            sys.stdout.flush()
        del x, s8, hi, vth, flags
