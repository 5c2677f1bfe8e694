"""The fp8 W8ASpike model's TTFT (7B shape, random weights, generate() with its default prefill chunk) with the
grouped fix-up at session 26's launch ((64, 256, 16), 16 programs per SM) against the shipped one
(spike_linear.FIX_GROUPED_CONFIG, FIX_PROGRAMS_PER_SM), alternated in one process on one model.
usage: python benchmarks/gpu/probes/fp8_model_fix_ab.py [T (default 1m)] [rounds (default 2)]"""
import sys
import time

import torch
from sbops.bench.model import build_ours, Run
from sbops.bench.model_args import parse_len, parse_args
from sbops.models import generate
from sbops._backends.cuda.triton import spike_linear as sl

T = parse_len(sys.argv[1]) if len(sys.argv) > 1 else 1 << 20
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
run = Run(parse_args(["--weight-quant", "fp8", "--no-peer", "--out", "/tmp/fp8_model_fix_ab"], ""))
model, _ = build_ours(run)
variants = {"s26": ((64, 256, 16), 16), "shipped": (sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM)}


def ttft(L):
    ids = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = generate(model, ids, 1, cuda_graphs=False)
    int(out[0, -1])
    return time.perf_counter() - t


times = {n: [] for n in variants}
for n, (cfg, pps) in variants.items():  # warm-up: each launch compiled once
    sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = cfg, pps
    ttft(40000)
for r in range(ROUNDS):
    for n, (cfg, pps) in variants.items():
        sl.FIX_GROUPED_CONFIG, sl.FIX_PROGRAMS_PER_SM = cfg, pps
        times[n].append(ttft(T))
        print(f"round {r + 1} {n} {cfg} x {pps}/SM: TTFT T={T}: {times[n][-1]:.3f} s", flush=True)
print(" | ".join(f"{n} {' / '.join(f'{v:.3f}' for v in ts)} s" for n, ts in times.items()))
