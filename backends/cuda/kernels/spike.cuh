// Launchers for the spike-coding kernels (spike.cu).  Torch-free: raw pointers, sizes, a stream.
// "rows x cols" views put the reduced (channel) dimension last.  encode / quant read x's rows
// through a row stride xs (elements; rows are contiguous): views whose outer dimensions collapse to
// one stride (x[:, t], a split of a fused projection) are read in place.  Other tensors are dense.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Spike-train modes, in the order the bindings map the strings "binary", "ternary", "bitwise".
enum class SpikeMode : int { Binary = 0, Ternary = 1, Bitwise = 2 };

// vth[r] = clamp(mean|x[r,:]| / k, 1e-5, 1e4); counts[r,c] = saturate(rint(x[r,c] / vth[r])).
// x: F32/F16/BF16; counts: I8/I16/I32.  One read of x.
cudaError_t launch_spike_encode(const void* x, int64_t xs, DType x_dtype, void* counts, DType counts_dtype,
                                float* vth, int64_t rows, int64_t cols, float k, cudaStream_t stream);

// x_hat[r,c] = rint(x[r,c] / vth[r]) * vth[r] in x's dtype (no saturation).
cudaError_t launch_spike_quant(const void* x, int64_t xs, DType x_dtype, void* x_hat, int64_t rows,
                               int64_t cols, float k, cudaStream_t stream);

// trains[t, i] (int8, [T, n]) from counts[i] (I8/I16/I32/I64).  Counts must be representable
// in T steps (the caller checks; the kernel never writes outside trains).
cudaError_t launch_spike_expand(const void* counts, DType counts_dtype, int8_t* trains, int64_t n,
                                SpikeMode mode, int T, cudaStream_t stream);

// counts[i] (int32) = sum_t s[t,i] (binary/ternary) or sum_t 2^(T-1-t) s[t,i] (bitwise).
cudaError_t launch_spike_collapse(const void* trains, DType trains_dtype, int32_t* counts,
                                  int64_t n, int T, SpikeMode mode, cudaStream_t stream);

// hist[a] (int64, [max_abs + 1], zeroed here) counts the |counts[i]| == a.  Values above
// max_abs are not counted (the caller checks them beforehand).
cudaError_t launch_spike_hist(const void* counts, DType counts_dtype, int64_t* hist, int64_t n,
                              int64_t max_abs, cudaStream_t stream);

// spike_linear at decode (spike_decode.cu): y[m, n] = vth[m] * scale[n] * (s[m, :] . w[n, :]) + bias[n] with
// s = rint(x / vth) as spike_encode (never saturated, any count), e4m3 weights w [N, K] with float32
// per-channel scales, x [M, K] and y [M, N] float16 / bfloat16, a bias in float32 or in x's dtype (read as
// is: no conversion launch per call), float32 accumulation.  Two
// launches (encode, GEMV) through a workspace of spike_decode_workspace_bytes(M, K), or one GEMV computing the
// counts itself (layouts 4-7; e4m3 only).  Rows of x and w: unit
// column stride and 16-byte aligned starts; K % 16 == 0.  Not on MACA (no fp8 weights there).
constexpr int kSpikeDecodeMaxRows = 8;
struct SpikeDecodeArgs {
  const void* x;       // [M, K], row stride ldx
  const void* w;       // [N, K] e4m3 bytes, row stride ldw
  const float* scale;  // [N]
  const void* bias;    // [N] or null: float32, or x's dtype where bias_x_dtype
  void* y;             // [M, N], row stride ldy
  int64_t ldx, ldw, ldy;
  int M, N, K;
  float k;
  // workspace (spike_decode_workspace): count planes lo / hi [M, K] float16, the residual plane res [M, K]
  // float32 (written and read only for rows with a count of 2048^2 or more), vth [M], flags [M]
  __half* lo;
  __half* hi;
  float* res;
  float* vth;
  int* flags;
  bool bias_x_dtype = false;
  bool w_int8 = false;  // w holds int8 weights instead of e4m3 (the encode + GEMV layouts 0-3, 8 only)
};
// Bytes of the workspace; lo, hi and res start 16-byte aligned (K % 16 == 0), vth and flags 4-byte aligned.
inline int64_t spike_decode_workspace_bytes(int64_t M, int64_t K) { return 8 * M * K + 8 * M; }
inline void spike_decode_workspace(SpikeDecodeArgs& a, void* base) {
  char* p = static_cast<char*>(base);
  const int64_t MK = int64_t{a.M} * a.K;
  a.lo = reinterpret_cast<__half*>(p);
  a.hi = reinterpret_cast<__half*>(p + 2 * MK);
  a.res = reinterpret_cast<float*>(p + 4 * MK);
  a.vth = reinterpret_cast<float*>(p + 8 * MK);
  a.flags = reinterpret_cast<int*>(p + 8 * MK + 4 * int64_t{a.M});
}
bool spike_decode_supports(int64_t M, int64_t N, int64_t K);
// Layouts 0-3: the encode kernel, then the GEMV (needs the workspace); 4-7: the same GEMVs computing the counts
// themselves (no workspace); 8: the encode, then a GEMV whose warps take 32 weight rows each (two m16 tiles sharing
// each load of the counts).  The default takes 4-7 where spike_decode_fused_encode() (SBOPS_DECODE_ENCODE=fused), else
// 8 for N >= 16384 unless spike_decode_row_tiles() == 1 (SBOPS_SPIKE_DECODE_MT=1).
constexpr int kSpikeDecodeLayouts = 9;
inline bool spike_decode_layout_fused(int layout) { return layout >= 4 && layout < 8; }
bool spike_decode_fused_encode();
int spike_decode_row_tiles();
int spike_decode_default_layout(int64_t M, int64_t N, int64_t K, bool w_int8 = false);
cudaError_t launch_spike_decode(const SpikeDecodeArgs& args, DType x_dtype, int layout, cudaStream_t stream);

}  // namespace sbops
