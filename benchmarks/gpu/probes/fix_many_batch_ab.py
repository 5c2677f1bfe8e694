"""Session 37: the fp8 fix-up's row blocks that list more chunks than a batch, taken a batch at a time per tile
(spike_linear.FIX_MANY_BATCH, the default) against one chunk a dot (the session 36 order): the fp8 W8ASpike model
(int8 down projections, random weights, one model) TTFT at T (default 1M), alternated, ROUNDS rounds (default 2).
usage: python benchmarks/gpu/probes/fix_many_batch_ab.py [T [ROUNDS]]"""
import sys
import time

import torch
from sbops.bench.model import Run, build_ours
from sbops.bench.model_args import parse_args, parse_len
from sbops.models import generate
from sbops._backends.cuda.triton import spike_linear as sl

T = parse_len(sys.argv[1]) if len(sys.argv) > 1 else 1 << 20
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
run = Run(parse_args(["--weight-quant", "fp8", "--down-quant", "int8_channel", "--no-peer", "--out",
                      "/tmp/fix_many_batch_ab"], ""))
model, _ = build_ours(run)


def ttft(L):
    ids = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    int(generate(model, ids, 1, cuda_graphs=False)[0, -1])
    return time.perf_counter() - t


times = {False: [], True: []}
for on in times:   # warm-up: each variant's kernels compiled once
    sl.FIX_MANY_BATCH = on
    ttft(40000)
for r in range(ROUNDS):
    for on in times:
        sl.FIX_MANY_BATCH = on
        times[on].append(ttft(T))
        print(f"round {r + 1} FIX_MANY_BATCH={on}: TTFT T={T}: {times[on][-1]:.3f} s", flush=True)
print(" | ".join(f"FIX_MANY_BATCH={on}: {' / '.join(f'{v:.3f}' for v in ts)} s" for on, ts in times.items()))
