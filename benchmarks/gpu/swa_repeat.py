"""Run-to-run spread of the SWA forward timings (a diagnosis script, not a test): the sm_90 forward and the
Triton forward at T=32k and 128k (SpikingBrain shapes), alternated, N rounds of triton.testing.do_bench
medians; prints every round and the median / min / max per kernel, and the GPU clock seen by nvidia-smi."""
import statistics
import subprocess
import sys

import torch
from triton.testing import do_bench

import sbops  # noqa: F401
from sbops._backends.cuda import sm90
from sbops._backends.cuda.triton import swa

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5
B, H, HKV, D, W = 1, 28, 4, 128, 4096


def clock():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                               "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


for T in (32768, 131072):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    runs = {"sm90": [], "triton": []}
    for i in range(N):
        runs["sm90"].append(do_bench(lambda: sm90.swa_fwd(q, k, v, W, None), warmup=25, rep=250,
                                     return_mode="median"))
        runs["triton"].append(do_bench(lambda: swa.swa_attn_fwd(q, k, v, W, None, None, None, None), warmup=25,
                                       rep=250, return_mode="median"))
        print(f"T={T} round {i}: sm90 {runs['sm90'][-1]:.3f} ms  triton {runs['triton'][-1]:.3f} ms  [{clock()}]",
              flush=True)
    for name, xs in runs.items():
        print(f"T={T} {name}: median {statistics.median(xs):.3f}  min {min(xs):.3f}  max {max(xs):.3f} ms")
