"""Session 29: launch configs of spike_linear's Triton decode (BN, BK, SPLIT, warps, stages) at M = 16 and 32 (the rows
of a B = 16 / 32 decode step; M <= 8 takes the CUDA C++ decode) for e4m3 and int8 per-channel weights at the 7B
shapes, against the table's config (spike_linear_tuning.DECODE); then (`model`) the fp8 model's decode step at
B = 16 / 32 with the table as shipped against the table with the sweep's winners, alternated.
Kernel times: GPU time per call under CUDA graphs of 20 calls over weight copies of > 200 MB (medians of 3); every
config's output is checked against float64 (relative error < 1e-2).  Inputs: Gaussian rows (RMSNorm-like) for the
K = 3584 shapes, a SwiGLU product for down.  Prints the winners as DECODE entries.
usage: python benchmarks/gpu/probes/decode_m32_sweep.py [model] [int8down]   PROBE_DRY=1: the sweep's logic on the CPU."""
import statistics
import sys
import time

from fp8_probe_common import DRY, SZ, dev, bench_ms  # first: sets the Triton interpreter up under PROBE_DRY
import torch
import sbops
from sbops._backends.cuda.triton import spike_linear as sl

ROUNDS = 1 if DRY else 3
FP8 = torch.float8_e4m3fn
SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
CANDS = [(64, 128, 0, 4, 4), (64, 128, 1, 4, 4), (64, 128, 2, 4, 4), (64, 128, 3, 4, 4), (64, 128, 4, 4, 4),
         (64, 128, 6, 4, 4), (64, 128, 8, 4, 4), (32, 128, 2, 4, 4), (32, 128, 4, 4, 4), (64, 128, 4, 4, 3),
         (64, 128, 4, 4, 5), (64, 128, 2, 4, 3), (128, 128, 0, 8, 4), (128, 128, 2, 8, 4), (64, 64, 4, 4, 6)]
if DRY:
    CANDS = [(16, 128, 0, 4, 2), (16, 128, 2, 4, 2)]


def ref_rows(x, wq, sc):
    xf = x.float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    s = torch.round(xf / vth).double()
    return vth.double() * (s @ (wq.double() * sc.double()[:, None]).T)


def rel(y, r):
    return ((y.double() - r).norm() / r.norm()).item()


def graph_us(call, copies, n=20):
    """GPU microseconds per call(i) under a CUDA graph of n calls (i: the weight copy)."""
    if DRY:
        return bench_ms(lambda: call(0)) * 1e3
    call(0)
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for i in range(n):
            call(i % copies)
    return statistics.median(bench_ms(gr.replay) for _ in range(ROUNDS)) / n * 1e3


g = torch.Generator(device=dev).manual_seed(0)
winners = {}
for name, (N, K) in SHAPES.items():
    N, K = SZ(N), SZ(K)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    copies = 1 if DRY else max(2, (200 << 20) // (N * K) + 1)
    fmts = {"f8": [sbops.quantize_weight(w * (1 + 1e-3 * i), None, dtype=FP8) for i in range(copies)],
            "i8": [sbops.quantize_weight(w * (1 + 1e-3 * i), None) for i in range(copies)]}
    wb = [w * (1 + 1e-3 * i) for i in range(copies)]
    for M in (16, 32):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
        if K > N:
            x = (torch.nn.functional.silu(x.float()) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
        line = [f"M={M} {name} {N}x{K}: bf16 {graph_us(lambda i: x @ wb[i].T, copies):.2f} us"]
        for fmt, ws in fmts.items():
            default = sl.decode_config(M, N, K, None, fmt == "f8", x.device)
            res = []
            for cfg in [default] + [c for c in CANDS if c != default]:
                try:
                    fn = lambda i, cfg=cfg: sl.spike_linear_fwd(x, *ws[i], 3.0, None, None, config=cfg, path="decode")
                    e = rel(fn(0), ref_rows(x, *ws[0]))
                    res.append((graph_us(fn, copies) if e < 1e-2 else float("inf"), cfg, e))
                except Exception as ex:  # a config the shape or the GPU refuses
                    res.append((float("inf"), cfg, type(ex).__name__))
            t_def = res[0][0]
            res.sort(key=lambda r: r[0])
            best = res[0]
            winners[(fmt, "ch", N, K, "m16" if M <= 16 else "m32")] = best[1]
            line.append(f"{fmt}: table {default} {t_def:.2f} us, best {best[1]} {best[0]:.2f} us ({t_def / best[0]:.3f}x), "
                        f"next " + ", ".join(f"{c} {us:.2f}" for us, c, _ in res[1:5])
                        + f"; rel err {best[2]:.1e}" if isinstance(best[2], float) else "")
        print("\n  ".join(line), flush=True)
    del fmts, w, wb
    if not DRY:
        torch.cuda.empty_cache()
print("DECODE winners:")
for k, v in sorted(winners.items()):
    print(f"    {k!r}: {v!r},")

if "model" in sys.argv[1:] and not DRY:
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
    shipped, tuned = dict(sl._tuning.DECODE), dict(sl._tuning.DECODE)
    tuned.update(winners)
    times = {}
    with torch.inference_mode():
        for rnd in range(2):
            for label, table in (("shipped", shipped), ("sweep", tuned)):
                sl._tuning.DECODE.clear()
                sl._tuning.DECODE.update(table)
                for B in (16, 32):
                    cache = model.new_cache(B + 1)
                    for t in cache.tensors():
                        t.normal_(0, 0.02)
                    cache.seq_lens.fill_(4096)
                    cache.seq_lens[B] = 0
                    graphs = DecodeGraphs(model, cache, B, B)  # captured with this table's configs
                    slots = torch.arange(B, device=dev)
                    ids = torch.randint(0, cfg.vocab_size, (B,), device=dev)
                    for _ in range(3):
                        ids = graphs.step(ids, slots).argmax(-1)
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    for _ in range(50):
                        ids = graphs.step(ids, slots).argmax(-1)
                    torch.cuda.synchronize()
                    ms = (time.perf_counter() - t) / 50 * 1e3
                    times.setdefault((label, B), []).append(ms)
                    print(f"model {'fp8+int8down' if cfg.down_weight_quant else 'fp8'} round {rnd} {label} B={B}: "
                          f"{ms:.3f} ms/step", flush=True)
                    del graphs, cache
                    torch.cuda.empty_cache()
    for B in (16, 32):
        a, b = times[("shipped", B)], times[("sweep", B)]
        print(f"B={B}: shipped {' / '.join(f'{v:.3f}' for v in a)} ms, sweep {' / '.join(f'{v:.3f}' for v in b)} ms "
              f"({statistics.median(a) / statistics.median(b):.3f}x)")
