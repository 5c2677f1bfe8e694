"""Run-to-run spread of the SWA timings (a diagnosis script, not a test): the sm_90 kernels and the Triton ones
(forward at T=32k and 128k, forward + backward at T=32k; SpikingBrain shapes), alternated, N rounds of
triton.testing.do_bench medians; prints every round and the median / min / max per kernel, and the GPU clock
and power seen by nvidia-smi."""
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


def fwd_bwd(fwd, bwd, q, k, v, do):
    o, lse = fwd(q, k, v, W, None)
    bwd(q, k, v, o, lse, do, None, W, None)


def triton_fwd(q, k, v, window, scale):
    return swa.swa_attn_fwd(q, k, v, window, scale, None, None, None)


def triton_bwd(q, k, v, o, lse, do, glse, window, scale):
    return swa.swa_attn_bwd(q, k, v, o, lse, do, glse, window, scale, None, None, None)


for case, T in (("fwd", 32768), ("fwd", 131072), ("fwd+bwd", 32768)):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn_like(q)
    if case == "fwd":
        fns = {"sm90": lambda: sm90.swa_fwd(q, k, v, W, None), "triton": lambda: triton_fwd(q, k, v, W, None)}
    else:
        fns = {"sm90": lambda: fwd_bwd(sm90.swa_fwd, sm90.swa_bwd, q, k, v, do),
               "triton": lambda: fwd_bwd(triton_fwd, triton_bwd, q, k, v, do)}
    runs = {name: [] for name in fns}
    for i in range(N):
        for name, fn in fns.items():
            runs[name].append(do_bench(fn, warmup=25, rep=250, return_mode="median"))
        print(f"{case} T={T} round {i}: sm90 {runs['sm90'][-1]:.3f} ms  triton {runs['triton'][-1]:.3f} ms  "
              f"[{clock()}]", flush=True)
    for name, xs in runs.items():
        print(f"{case} T={T} {name}: median {statistics.median(xs):.3f}  min {min(xs):.3f}  max {max(xs):.3f} ms")
