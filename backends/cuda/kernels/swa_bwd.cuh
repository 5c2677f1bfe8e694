// Launchers of the Hopper sliding-window attention backward (swa_bwd_sm90.cu).  Torch-free: raw pointers,
// sizes, a stream.  NVIDIA sm_90a only (available exactly where the sm_90a forward is, swa_fwd.cuh); other
// builds and devices report "not available" and callers use the portable Triton backward.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Row length of the per-(batch, head) lse / delta rows of the backward: T rounded up to the 64-query block.
inline int64_t swa_bwd_sm90_padded_len(int64_t T) { return (T + 63) / 64 * 64; }

// Step 1.  lse2[b,h,t] = lse[b,t,h] * log2(e) and delta[b,h,t] = sum_d o[b,t,h,d] do[b,t,h,d] - glse[b,t,h]
// (glse may be null: zero) for t < T, both 0 for T <= t < Tpad = swa_bwd_sm90_padded_len(T).
// o, do [B,T,H,128] contiguous in dtype; lse, glse [B,T,H] float32; lse2, delta [B,H,Tpad] float32.
cudaError_t launch_swa_bwd_sm90_prep(const void* o, const void* dout, DType dtype, const float* lse, const float* glse,
                                     float* lse2, float* delta, int B, int T, int H, cudaStream_t stream);

// Step 2.  dk, dv [B,T,HKV,128] (dtype, every element written) and, when dq_acc is not null, dq_acc [B,T,H,128]
// float32 (zeroed by the caller) += scale * dS K, for attention over keys i - window <= j <= i (window >= 0) with
// hkv = h / (H / HKV).  q, k, v, do contiguous and 16-byte aligned (TMA); lse2 and delta from step 1.  With
// dq_acc null dQ is left to the caller.
cudaError_t launch_swa_bwd_sm90(const void* q, const void* k, const void* v, const void* dout, DType dtype,
                                const float* lse2, const float* delta, float* dq_acc, void* dk, void* dv, int B, int T,
                                int H, int HKV, int window, float scale, cudaStream_t stream);

}  // namespace sbops
