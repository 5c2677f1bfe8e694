"""Configs of the spike_linear Triton kernels, per path and shape (the launcher's lookup table).

GEMM entries (prefill, M > 32): key (weight, scales, N, K, M bucket) with weight "i8" | "f8", scales
"ch" (per channel) | "g" (per group), M bucket "mid" (M <= 16384) | "big"; value (BM, BN, BK, GROUP_M,
num_warps, num_stages).  DECODE entries (M <= 32): key (weight, scales, N, K, M bucket "m16" | "m32");
value (BN, BK, SPLIT or 0 for auto, num_warps, num_stages).

GEMM: measured on the H200 (torch 2.11, Triton 3.6; session 11, benchmarks/runs/h200_2026-12-04_s11/
b_bench_spike_linear_M8192_cut.log) by `benchmarks/gpu/bench_spike_linear.py`, which prints both dicts: the
winners at M = 8192 ("mid") of the 7B shapes qkv 4608 x 3584 and gate/up 37888 x 3584.  DECODE: winners at
M = 1 / 8 / 32 (a "m16" entry keeps M = 8's winner); the per-channel entries: session 29's winners at M = 16 / 32.  Shapes not listed fall back to the defaults in
spike_linear.py.
"""
# the GEMM of the fp8 (float8_e4m3fn weight) prefill where spike_linear.scaled_mm_applies: "scaled_mm"
# (torch._scaled_mm over one or two exact e4m3 count planes + the sparse fix-up) or "triton" (_gemm_kernel).
# "scaled_mm": faster on every measured shape (H200, session 12, M = 8192, random bf16 x, x bf16 matmul):
# 0.74 / 0.99 / 0.71x vs Triton 0.41 / 0.51 / 0.35x (N x K = 4608x3584 / 37888x3584 / 3584x18944); with 8
# outlier channels 0.56 / 0.71 / 0.55x vs 0.28 / 0.34 / 0.21x.  Its GEMM alone runs at 1.7-2.05x bf16;
# the encode (0.13-0.54 ms) and the fix-up of rows with counts past 16 (0.14-1.3 ms) take the rest.
FP8_PREFILL = "scaled_mm"
# the "scaled_mm" path's GEMM with Hopper's fast fp8 accumulation (no float32 promotion inside its MMA chains)
# (measured: no faster there, 0.71 / 0.98 / 0.63x, and 2.6e-3 vs 1.8e-3 relative error at K = 18944)
FP8_FAST_ACCUM = False
# the "scaled_mm" path with two e4m3 count planes (two vendor GEMMs) where K > N, taken to be a SwiGLU down
# projection: its input's counts past 16 (~2.6% at k = 3) made the one-plane fix-up a dense GEMM, 0.11x bf16
# on the H200 (session 13, M = 8192, 3584x18944: 12.8 ms at best vs 1.38 ms)
FP8_TWO_PLANES = True
# the "scaled_mm" fix-up kernel: "grouped" (a program per (row block, group of tiles), up to 128 columns of listed
# chunks at a time, r computed once per group, the tiles' weight loads pipelined) or "tiles" (one program per
# (64-row block, 256-column tile); the default of sessions 13-20).  Measured on an H100 (session 21, same run,
# benchmarks/runs/h100_2026-12-05_s21/c_fp8split.log, bit-identical outputs), whole path vs bf16 at M = 65536:
# gate_up 1.09x (grouped) vs 1.03x (tiles), qkv 0.95x vs 0.92x, down 0.58x vs 0.59x; M = 8192 gate_up 1.14x vs
# 1.05x; the fp8 model's TTFT at 1M 26.11 s vs 26.34 s.  Not yet measured on the H200.
FP8_FIX = "grouped"

# the prefill of int8 weights with per-channel scales: "int_mm" (our encode of one int8 count plane, torch._int_mm,
# an epilogue, the sparse fix-up of counts past 127; spike_linear_intmm.py) or "triton" (_gemm_kernel), and
# whether "int_mm" serves only width-reducing projections (K > N, a SwiGLU down projection).  Vendor GEMMs alone
# (H100, session 28, benchmarks/gpu/probes/int8_vs_fp8_gemm.py): torch._int_mm at 3584 x 18944 is 1.15x bf16 at
# M = 16384 and 1.28x at 65536, but 0.84-0.96x at the K = 3584 shapes.  Where the sm_90a int8 GEMM runs
# (spike_linear.INT8_GEMM_SM90_ALL), "int_mm" serves every shape (session 31: as fast as the Triton GEMM on gate_up
# at M = 16384, faster on every other 7B shape)
INT8_PREFILL = "int_mm"
INT8_INT_MM_ONLY_K_GT_N = True

GEMM = {
    ('f8', 'ch', 4608, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
    ('f8', 'ch', 37888, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
    ('f8', 'g', 4608, 3584, 'mid'): (128, 128, 128, 8, 8, 3),
    ('f8', 'g', 37888, 3584, 'mid'): (128, 128, 128, 8, 8, 3),
    ('i8', 'ch', 4608, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
    ('i8', 'ch', 37888, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
    ('i8', 'g', 4608, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
    ('i8', 'g', 37888, 3584, 'mid'): (128, 128, 128, 8, 8, 4),
}
# the decode kernel of session 13 (two 8-bit count planes, swap-AB): winners under CUDA graphs with the weights
# rotated over > 200 MB (benchmarks/runs/h200_2026-12-04_s13/c_bench_spike_linear.log; measured with the
# one-program-per-row pre-pass that was then split into 4096-column chunks); per group ('g'): those.  The per-channel
# entries ('f8' / 'i8', 'ch') are session 29's sweep of 15 configs at M = 16 ('m16') and M = 32 ('m32') on an H100
# (benchmarks/gpu/probes/decode_m32_sweep.py, benchmarks/runs/h100_2026-12-06_s29/b_decode_m32_sweep_model.log; M <= 8
# takes the CUDA C++ decode): against session 14's H200 entries 1.00-1.33x per shape, and the fp8 model with int8 down
# projections decoded B = 32 at 6.50 instead of 7.01 ms per step, B = 16 at 5.15 instead of 5.35 (H100, alternated).
# Not re-measured on the H200
DECODE = {
    ('f8', 'ch', 3584, 3584, 'm16'): (64, 128, 4, 4, 4),
    ('f8', 'ch', 3584, 3584, 'm32'): (64, 128, 2, 4, 4),
    ('f8', 'ch', 3584, 18944, 'm16'): (64, 128, 4, 4, 4),
    ('f8', 'ch', 3584, 18944, 'm32'): (64, 128, 4, 4, 3),
    ('f8', 'ch', 4608, 3584, 'm16'): (64, 128, 3, 4, 4),
    ('f8', 'ch', 4608, 3584, 'm32'): (128, 128, 2, 8, 4),
    ('f8', 'ch', 37888, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('f8', 'ch', 37888, 3584, 'm32'): (64, 128, 1, 4, 4),
    ('f8', 'g', 3584, 18944, 'm16'): (64, 128, 0, 4, 4),
    ('f8', 'g', 3584, 18944, 'm32'): (128, 128, 0, 8, 4),
    ('f8', 'g', 4608, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('f8', 'g', 4608, 3584, 'm32'): (128, 128, 0, 8, 4),
    ('f8', 'g', 37888, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('f8', 'g', 37888, 3584, 'm32'): (64, 128, 0, 4, 4),
    ('i8', 'ch', 3584, 3584, 'm16'): (64, 128, 4, 4, 4),
    ('i8', 'ch', 3584, 3584, 'm32'): (64, 128, 2, 4, 4),
    ('i8', 'ch', 3584, 18944, 'm16'): (64, 128, 4, 4, 4),
    ('i8', 'ch', 3584, 18944, 'm32'): (64, 128, 4, 4, 3),
    ('i8', 'ch', 4608, 3584, 'm16'): (64, 128, 3, 4, 4),
    ('i8', 'ch', 4608, 3584, 'm32'): (128, 128, 2, 8, 4),
    ('i8', 'ch', 37888, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('i8', 'ch', 37888, 3584, 'm32'): (64, 128, 0, 4, 4),
    ('i8', 'g', 3584, 18944, 'm16'): (64, 128, 0, 4, 4),
    ('i8', 'g', 3584, 18944, 'm32'): (128, 128, 0, 8, 4),
    ('i8', 'g', 4608, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('i8', 'g', 4608, 3584, 'm32'): (128, 128, 0, 8, 4),
    ('i8', 'g', 37888, 3584, 'm16'): (64, 128, 0, 4, 4),
    ('i8', 'g', 37888, 3584, 'm32'): (64, 128, 0, 4, 4),
}
