// Launchers for the decode-time attention kernels (linear_attn_decode.cu, swa_decode.cu).
// Torch-free: raw pointers, sizes, a stream.  All tensors contiguous.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Gate layouts of linear_attn_decode.
enum class GateMode : int { None = 0, PerHead = 1, PerKey = 2 };

// One recurrence step per sequence on state slot idx[n] (n when idx is null):
//   S = diag(exp(g)) S + k^T v;  o[h] = scale * q[h] S  for the H/HKV query heads of each KV head.
// q [N,H,K], k [N,HKV,K], v [N,HKV,V] in qkv_dtype (F32/F16/BF16); g [N,HKV] or [N,HKV,K] in
// g_dtype; state [S,HKV,K,V] F32 or BF16, updated in place; o [N,H,V] in qkv_dtype.
// K must be 64 or 128; V a multiple of 8.  A slot outside [0, num_slots) is not touched and its
// sequence's output is NaN.
cudaError_t launch_linear_attn_decode(const void* q, const void* k, const void* v, DType qkv_dtype, const void* g,
                                      DType g_dtype, GateMode gate_mode, void* state, DType state_dtype, int64_t num_slots,
                                      const void* idx, bool idx64, void* o, int64_t N, int H, int HKV, int K, int V,
                                      float scale, cudaStream_t stream);
bool linear_attn_decode_supports(int K, int V);

// k/v [N,HKV,D] -> row positions[i] % C of slot slots[i] (i when slots is null) of the caches
// [S,C,HKV,D].  dtype F32/F16/BF16.
// Rows with a negative position or a slot outside [0, num_slots) are skipped.
cudaError_t launch_swa_cache_write(const void* k, const void* v, void* k_cache, void* v_cache, DType dtype,
                                   const void* positions, bool pos64, const void* slots, bool slots64, int64_t N,
                                   int HKV, int D, int64_t C, int64_t num_slots, cudaStream_t stream);

// Split-window ("flash-decoding") plan: how many blocks share one (sequence, KV head).
int swa_decode_num_splits(int64_t N, int H, int HKV, int window, int64_t C);
// Float workspace the split path needs (0 when num_splits == 1).
int64_t swa_decode_workspace_floats(int64_t N, int H, int D, int num_splits);
bool swa_decode_supports(int D, DType dtype);

// o [N,H,D] = softmax(scale q k^T) v over positions max(0, L-1-window) .. L-1 (all when
// window < 0) of each sequence, L = seq_lens[i], position p at row p % C.  q and caches share dtype.
// At most the last C positions are read (older ones are overwritten in the ring); a slot outside
// [0, num_slots) gives a NaN output; L <= 0 gives zeros.
cudaError_t launch_swa_decode(const void* q, const void* k_cache, const void* v_cache, DType dtype,
                              const void* seq_lens, bool lens64, const void* slots, bool slots64, void* o, int64_t N,
                              int H, int HKV, int D, int64_t C, int64_t num_slots, int window, float scale, int num_splits,
                              float* workspace, cudaStream_t stream);

}  // namespace sbops
