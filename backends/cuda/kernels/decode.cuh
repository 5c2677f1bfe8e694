// Launchers for the decode-time attention kernels (linear_attn_decode.cu, swa_decode.cu).
// Torch-free: raw pointers, sizes, element strides, a stream.  Every operand's last dimension is
// contiguous (stride 1); its outer dimensions are addressed through the element strides given
// (views such as q[:, t] or splits of a fused projection are read in place).  Outputs are dense.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Gate layouts of linear_attn_decode.
enum class GateMode : int { None = 0, PerHead = 1, PerKey = 2 };

// Element strides of the outer dimensions of the decode operands.
struct LaDecodeStrides {
  int64_t q0, q1;      // q [N, H, K]
  int64_t k0, k1;      // k [N, HKV, K]
  int64_t v0, v1;      // v [N, HKV, V]
  int64_t g0, g1;      // g [N, HKV] or [N, HKV, K]
  int64_t s0, s1, s2;  // state [S, HKV, K, V]
};

// True when rows at `base` + multiples of the given element strides are all 16-byte aligned (the
// vectorised kernels need it of the state and the KV caches; the bindings copy otherwise).
inline bool rows_aligned16(const void* base, int64_t elem_bytes, int64_t a, int64_t b, int64_t c) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (a * elem_bytes) % 16 == 0 &&
         (b * elem_bytes) % 16 == 0 && (c * elem_bytes) % 16 == 0;
}

// One recurrence step per sequence on state slot idx[n] (n when idx is null):
//   S = diag(exp(g)) S + k^T v;  o[h] = scale * q[h] S  for the H/HKV query heads of each KV head.
// q, k, v in qkv_dtype (F32/F16/BF16); g in g_dtype; state F32 or BF16, updated in place, with
// rows_aligned16(state, ., s0, s1, s2); o [N,H,V] dense in qkv_dtype.  K must be 64 or 128; V a
// multiple of 8.  Bad-data guard: a slot outside [0, num_slots) is not touched and its sequence's
// output rows are NaN.
cudaError_t launch_linear_attn_decode(const void* q, const void* k, const void* v, DType qkv_dtype, const void* g,
                                      DType g_dtype, GateMode gate_mode, void* state, DType state_dtype, int64_t num_slots,
                                      const void* idx, bool idx64, void* o, int64_t N, int H, int HKV, int K, int V,
                                      float scale, const LaDecodeStrides& strides, cudaStream_t stream);
bool linear_attn_decode_supports(int K, int V);

// Element strides of the ring-buffer operands.
struct SwaCacheStrides {
  int64_t k0, k1, k2;  // k_cache [S, C, HKV, D]
  int64_t v0, v1, v2;  // v_cache [S, C, HKV, D]
};

// k/v [N,HKV,D] (strides k0,k1 / v0,v1) -> row positions[i] % C of slot slots[i] (i when slots is
// null) of the caches.  dtype F32/F16/BF16.  Bad-data guard: rows with a negative position or a
// slot outside [0, num_slots) are not written.
cudaError_t launch_swa_cache_write(const void* k, const void* v, void* k_cache, void* v_cache, DType dtype,
                                   const void* positions, bool pos64, const void* slots, bool slots64, int64_t N,
                                   int HKV, int D, int64_t C, int64_t num_slots, int64_t k0, int64_t k1, int64_t v0,
                                   int64_t v1, const SwaCacheStrides& cache, cudaStream_t stream);

// Split-window ("flash-decoding") plan: how many blocks share one (sequence, KV head); M sink keys;
// the caches' dtype (bf16 / fp16 take the tensor-core kernel on NVIDIA, planned for its occupancy).
int swa_decode_num_splits(int64_t N, int H, int HKV, int window, int64_t C, int64_t M, DType dtype);
// Float workspace the split path needs (0 when num_splits == 1).
int64_t swa_decode_workspace_floats(int64_t N, int H, int D, int num_splits);
bool swa_decode_supports(int D, DType dtype);

// Sink keys of swa_decode: sink_k / sink_v [M, HKV, D] (strides k0,k1 / v0,v1), or M = 0.
struct SwaSinks {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t M = 0, k0 = 0, k1 = 0, v0 = 0, v1 = 0;
};

// o [N,H,D] = softmax(scale q k^T) v over the M sink keys and the cached positions
// lo .. L-1, lo = max(0, L-1-window, L-C) (window < 0: no window limit), of each sequence,
// L = seq_lens[i], position p at row p % C: a sequence longer than the ring attends the positions
// it still holds.  q [N,H,D] (strides q0, q1), the caches and the sinks share dtype; the caches and
// sinks need 16-byte aligned rows (rows_aligned16).  Bad-data guard: a slot outside [0, num_slots)
// or L < 1 gives a NaN output row and reads nothing.
cudaError_t launch_swa_decode(const void* q, const void* k_cache, const void* v_cache, DType dtype,
                              const void* seq_lens, bool lens64, const void* slots, bool slots64, void* o, int64_t N,
                              int H, int HKV, int D, int64_t C, int64_t num_slots, int window, float scale, int num_splits,
                              float* workspace, int64_t q0, int64_t q1, const SwaCacheStrides& cache,
                              const SwaSinks& sinks, cudaStream_t stream);

}  // namespace sbops
