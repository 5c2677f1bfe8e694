// Launcher of the dense decode GEMV (dense_decode.cu): y = x @ w^T (+ bias) for a few rows of x, float16 or
// bfloat16 operands, float32 accumulation.  Torch-free: raw pointers, sizes, element strides, a stream.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

constexpr int kDenseDecodeMaxRows = 4 * 8;  // four n-tiles of 8 tokens
constexpr int kDenseDecodeLayouts = 6;

struct DenseDecodeArgs {
  const void* x;     // [M, K], row stride ldx (elements)
  const void* w;     // [N, K], row stride ldw (elements)
  const void* bias;  // [N] or null: float32, or x's dtype where bias_x_dtype
  void* y;           // [M, N], row stride ldy
  int64_t ldx, ldw, ldy;
  int M, N, K;
  bool bias_x_dtype = false;
};

// y[m, n] = sum_k x[m, k] w[n, k] (+ bias[n]) in float32, rounded once to x's dtype (F16 or BF16; w the same).
// Rows of x and w: unit column stride, 16-byte aligned starts (bases and row strides); K % 8 == 0; 1 <= M <=
// kDenseDecodeMaxRows.  layout: 0 .. kDenseDecodeLayouts - 1 (the block shapes of dense_decode.cu), or -1 for the
// default of (M, N, K).  cudaErrorNotSupported on MACA (no inline PTX: the caller keeps its GEMM there).
cudaError_t launch_dense_decode(const DenseDecodeArgs& args, DType dtype, int layout, cudaStream_t stream);
bool dense_decode_supports(int64_t M, int64_t N, int64_t K);
int dense_decode_default_layout(int64_t M, int64_t N, int64_t K);
// True when this build has the kernel (not MACA) and the current device is sm_80 or newer.
bool dense_decode_available();

}  // namespace sbops
