"""Configs of the spike_linear Triton kernels, per path and shape (the launcher's lookup table).

GEMM entries (prefill, M > 32): key (weight, scales, N, K, M bucket) with weight "i8" | "f8", scales
"ch" (per channel) | "g" (per group), M bucket "mid" (M <= 16384) | "big"; value (BM, BN, BK, GROUP_M,
num_warps, num_stages).  DECODE entries (M <= 32): key (weight, scales, N, K, M bucket "m16" | "m32");
value (BN, BK, SPLIT or 0 for auto, FUSED_VTH, num_warps, num_stages).

`.gpu/sl_bench.py` measures every candidate on the H200 and prints a replacement for the two dicts
below (the winners per shape); shapes not listed fall back to the defaults in spike_linear.py.
Current entries: none measured yet (the defaults are first-principles choices, see spike_linear.py).
"""
GEMM: dict = {}
DECODE: dict = {}
