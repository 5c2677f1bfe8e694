"""Session 30: spike_linear's CUDA C++ wide decode GEMV (kernels/spike_decode_wide.cu, M = 9 .. 32) against the Triton
decode it replaces and bf16 cuBLAS, at the 7B shapes for e4m3 and int8 per-channel weights, M = 16 and 32: its
layouts 8-10 x splits over K (0 = the default); then (`model`) the fp8 model's decode step (int8 down projections
with `int8down`) at B = 16 / 32 with M > 8 on the Triton decode (NATIVE_DECODE_MAX_M = 8, as shipped before) against
the wide GEMV, alternated.
Kernel times: GPU time per call under CUDA graphs of 20 calls over weight copies of > 200 MB (medians of 3); every
output is checked against float64 (relative error < 1e-2).  Inputs: Gaussian rows for the K = 3584 shapes, a SwiGLU
product for down.
usage: python benchmarks/gpu/probes/decode_wide_ab.py [model] [int8down]"""
import statistics
import sys
import time

import torch
import sbops
from sbops._backends.cuda.triton import spike_linear as sl
from triton.testing import do_bench

dev = "cuda"
FP8 = torch.float8_e4m3fn
SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
WIDE = [(layout, splits) for layout in (8, 9, 10) for splits in (0, 1, 2, 4, 6)]


def ref_rows(x, wq, sc):
    xf = x.float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    s = torch.round(xf / vth).double()
    return vth.double() * (s @ (wq.double() * sc.double()[:, None]).T)


def rel(y, r):
    return ((y.double() - r).norm() / r.norm()).item()


def graph_us(call, copies, n=20):
    """GPU microseconds per call(i) under a CUDA graph of n calls (i: the weight copy)."""
    call(0)
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for i in range(n):
            call(i % copies)
    return statistics.median(do_bench(gr.replay, warmup=5, rep=40) for _ in range(3)) / n * 1e3


g = torch.Generator(device=dev).manual_seed(0)
best = {}
for name, (N, K) in SHAPES.items():
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    copies = max(2, (200 << 20) // (N * K) + 1)
    fmts = {"f8": [sbops.quantize_weight(w * (1 + 1e-3 * i), None, dtype=FP8) for i in range(copies)],
            "i8": [sbops.quantize_weight(w * (1 + 1e-3 * i), None) for i in range(copies)]}
    wb = [w * (1 + 1e-3 * i) for i in range(copies)]
    for M in (16, 32):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
        if K > N:
            x = (torch.nn.functional.silu(x.float()) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
        floor_us = N * K / 3.35e6  # 8-bit weight bytes at an H100's 3.35 TB/s (H200: x 3.35 / 4.8)
        line = [f"M={M} {name} {N}x{K}: bf16 {graph_us(lambda i: x @ wb[i].T, copies):.2f} us, 8-bit bytes at 3.35 TB/s "
                f"{floor_us:.2f} us"]
        for fmt, ws in fmts.items():
            r = ref_rows(x, *ws[0])
            tri = lambda i: sl.spike_linear_fwd(x, *ws[i], 3.0, None, None, path="decode")  # noqa: E731
            t_tri = graph_us(tri, copies)
            res = []
            for layout, splits in WIDE:
                fn = lambda i, l=layout, s=splits: torch.ops.sbops_native.spike_linear_decode(  # noqa: E731
                    x, ws[i][0], ws[i][1], 3.0, None, l, s)
                try:
                    y0 = fn(0)
                    e = rel(y0, r)
                    same = torch.equal(y0, fn(0))
                    res.append((graph_us(fn, copies) if e < 1e-2 and same else float("inf"), (layout, splits), e, same))
                except Exception as ex:
                    res.append((float("inf"), (layout, splits), type(ex).__name__, False))
            dflt = next(v for v in res if v[1] == (8, 0))
            res.sort(key=lambda v: v[0])
            best[(fmt, name, M)] = res[0][1]
            line.append(f"{fmt}: Triton {t_tri:.2f} us (err {rel(tri(0), r):.1e}); wide default (8, 0) {dflt[0]:.2f} us "
                        f"({t_tri / dflt[0]:.3f}x, err {dflt[2]:.1e}); best {res[0][1]} {res[0][0]:.2f} us "
                        f"({t_tri / res[0][0]:.3f}x); next " + ", ".join(f"{c} {us:.2f}" for us, c, _, _ in res[1:5]))
            bad = [f"{c}: {e}" for _, c, e, s in res if not (isinstance(e, float) and e < 1e-2 and s)]
            if bad:
                line.append(f"{fmt}: FAILED " + "; ".join(bad))
        print("\n  ".join(line), flush=True)
    del fmts, w, wb
    torch.cuda.empty_cache()
print("best (layout, splits):", best)

if "model" in sys.argv[1:]:
    from sbops.bench.model import qwen2_config
    from sbops.models import DecodeGraphs, SpikingBrainConfig, SpikingBrainForCausalLM
    cfg = SpikingBrainConfig.from_qwen2(qwen2_config(False), "7b").replace(
        spike_k=3.0, weight_quant="fp8", down_weight_quant="int8_channel" if "int8down" in sys.argv[1:] else None)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = SpikingBrainForCausalLM(cfg).eval()
    torch.set_default_dtype(prev)
    times, toks = {}, {}
    with torch.inference_mode():
        for rnd in range(2):
            for label, max_m in (("triton", 8), ("wide", 32)):
                sl.NATIVE_DECODE_MAX_M = max_m
                for B in (16, 32):
                    cache = model.new_cache(B + 1)
                    for t in cache.tensors():
                        t.normal_(0, 0.02)
                    cache.seq_lens.fill_(4096)
                    cache.seq_lens[B] = 0
                    graphs = DecodeGraphs(model, cache, B, B)  # captured with this routing
                    slots = torch.arange(B, device=dev)
                    ids = torch.randint(0, cfg.vocab_size, (B,), device=dev, generator=torch.Generator(dev).manual_seed(1))
                    first = graphs.step(ids, slots).float()
                    for _ in range(3):
                        ids = graphs.step(ids, slots).argmax(-1)
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    for _ in range(50):
                        ids = graphs.step(ids, slots).argmax(-1)
                    torch.cuda.synchronize()
                    ms = (time.perf_counter() - t) / 50 * 1e3
                    times.setdefault((label, B), []).append(ms)
                    if rnd == 0:
                        toks[(label, B)] = first
                    print(f"model {'fp8+int8down' if cfg.down_weight_quant else 'fp8'} round {rnd} {label} B={B}: "
                          f"{ms:.3f} ms/step", flush=True)
                    del graphs, cache
                    torch.cuda.empty_cache()
    sl.NATIVE_DECODE_MAX_M = 32
    for B in (16, 32):
        a, b = times[("triton", B)], times[("wide", B)]
        la, lb = toks[("triton", B)], toks[("wide", B)]
        print(f"B={B}: triton {' / '.join(f'{v:.3f}' for v in a)} ms, wide {' / '.join(f'{v:.3f}' for v in b)} ms "
              f"({statistics.median(a) / statistics.median(b):.3f}x); first-step logits rel diff "
              f"{((la - lb).norm() / la.norm()).item():.2e}, argmax agree {(la.argmax(-1) == lb.argmax(-1)).float().mean().item():.3f}")
