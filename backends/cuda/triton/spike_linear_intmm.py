"""spike_linear's "int_mm" prefill path: int8 weights with per-channel scales on the vendor int8 GEMM.

The counts of a SwiGLU down projection's input (k = 3) pass e4m3's exact 16 in ~2.6% of the elements, so
the e4m3 "scaled_mm" path runs two fp8 GEMMs there (spike_linear_fp8.py); int8 holds counts to 127 in one
plane (~2e-7 of them past it).  So, for int8 weights with one scale per output channel:

    s  = clamp(c, -127, 127) as int8   [_encode_lo_kernel with FP8 = False: vth, s, and a flag per
                                        (BM-row block, FC-column chunk) holding a count past 127]
    acc = s @ W^T                      [torch._int_mm: cuBLASLt int8, int32 accumulation, exact while
                                        127 * 128 * K < 2^31, i.e. K <= INT_MM_MAX_K]
    y  = vth * scale * acc + bias      [_int_mm_epilogue_kernel, in x's dtype]
                                       (on sm_90 with 16-bit x: both in one wgmma kernel, sbops_native::
                                        int8_gemm_sm90, backends/cuda/kernels/int8_gemm_sm90.cu)
      + vth * scale * (r @ W^T)        [the grouped fix-up of spike_linear_fp8.py, r = c - s, only over the
                                        flagged chunks; every count exact, NaN rows NaN]

Measured (H100, session 28, M = 16384, N x K = 3584 x 18944, vendor GEMMs alone): bf16 3.27 ms, torch._int_mm
2.85 ms, torch._scaled_mm e4m3 1.71 ms per plane (two planes 3.42 ms).  Torch-free: the launcher is
spike_linear._prefill_int_mm.
"""
from __future__ import annotations

import triton
import triton.language as tl

INT_MM_MAX_K = (2**31 - 1) // (127 * 128)  # int32 accumulation of |s| <= 127, |w| <= 128 stays exact


@triton.jit
def _int_mm_epilogue_kernel(acc_ptr, vth_ptr, scale_ptr, bias_ptr, y_ptr, M, N, HAS_BIAS: tl.constexpr,
                            BR: tl.constexpr, BC: tl.constexpr):
    # y = acc * vth[row] * scale[col] (+ bias[col]), float32 math rounded once to y's dtype
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rm = rows < M
    cm = cols < N
    m = rm[:, None] & cm[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    acc = tl.load(acc_ptr + offs, mask=m, other=0).to(tl.float32)
    vth = tl.load(vth_ptr + rows, mask=rm, other=0.0)
    sc = tl.load(scale_ptr + cols, mask=cm, other=0.0)
    y = acc * sc[None, :] * vth[:, None]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)
