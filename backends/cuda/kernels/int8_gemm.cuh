// Launcher of the Hopper int8 GEMM with spike_linear's int_mm epilogue (int8_gemm_sm90.cu).  Torch-free:
// raw pointers, sizes, a stream.  NVIDIA sm_90a only; other builds and devices report "not available" and the
// caller keeps torch._int_mm (cuBLASLt) and the Triton epilogue.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// y[m, n] = float(sum_k a[m, k] * b[n, k]) * scale[n] * vth[m] (+ bias[n]), float32 math rounded once to y's dtype
// (F16 or BF16): the int32 sum of int8 products (exact while 127 * 128 * K < 2^31), converted to float32, times
// the channel scale, times the row's threshold, plus the bias (bias_dtype F32 or y's dtype).
// a [M, K] and b [N, K] int8 with row strides lda / ldb (elements, multiples of 16, 16-byte aligned bases: TMA),
// unit column stride; y [M, N] with row stride ldy.  Needs K % 16 == 0 and N % 2 == 0.  cluster: 2 (pairs of row
// tiles share their B tile by TMA multicast) or 1 (every block loads its own).  The schedule (int8_gemm_sm90.cu):
// `workers` persistent blocks or clusters (0: as many as the device holds at once; < 0: one per work item) over the
// items numbered in groups of `group` row units (0: kInt8GemmGroup).
constexpr int64_t kInt8GemmGroup = 8;
// SwiGLU's gate / up projection (the launcher's `swiglu`): b's N = 2 half_n rows are the gate rows, then the up rows
// of the same features (half_n a multiple of 128), and y [M, half_n] receives h = silu(g) * u (float32, rounded once),
// g and u the outputs above for gate row n and up row half_n + n.  Where row_flags ([ceil(M / 16)] int32) is given,
// the rows of each 16-row block with a flag > 0 also receive g and u, rounded to y's dtype, in side [M, N] (row stride
// ld_side), for the caller to correct.  y's rows must suit TMA (ldy % 8 == 0, 16-byte aligned base).  Where row_sums
// is given, row_sums[m * ld_sums + n / 128] = the sum of |h[m, n .. n + 127]| as stored (rounded to y's dtype), float32:
// the down projection's encode takes its thresholds from them instead of a pass over h (ld_sums >= half_n / 128).
struct Int8GemmSwiglu {
  int64_t half_n;
  const int* row_flags;
  void* side;
  int64_t ld_side;
  float* row_sums = nullptr;
  int64_t ld_sums = 0;
};
cudaError_t launch_int8_gemm_sm90(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* vth,
                                  const float* scale, const void* bias, DType bias_dtype, void* y, int64_t ldy,
                                  DType y_dtype, int64_t M, int64_t N, int64_t K, int cluster, int64_t workers,
                                  int64_t group, cudaStream_t stream, const Int8GemmSwiglu* swiglu = nullptr);

// The same kernel with bfloat16 operands and float32 accumulators (session 41): y[m, n] = sum_k a[m, k] * b[n, k]
// (+ bias[n]) rounded once to bfloat16, or with swiglu_half_n > 0 (b = [gate; up], N = 2 swiglu_half_n, a multiple of
// 256) h[m, n] = silu(g) * u into y [M, swiglu_half_n].  a [M, K], b [N, K], y bfloat16; K, N, the row strides
// (elements) multiples of 8 and the bases 16-byte aligned (TMA); bias F32 or BF16.  The schedule as above.
cudaError_t launch_bf16_gemm_sm90(const void* a, int64_t lda, const void* b, int64_t ldb, const void* bias,
                                  DType bias_dtype, void* y, int64_t ldy, int64_t M, int64_t N, int64_t K, int cluster,
                                  int64_t workers, int64_t group, int64_t swiglu_half_n, cudaStream_t stream);

// True when the current device is sm_90 and this build holds sm_90a code for the kernel.
bool int8_gemm_sm90_available();

}  // namespace sbops
