// Launcher of the Hopper sliding-window attention forward (swa_fwd_sm90.cu; an even number of query heads runs
// 2-CTA clusters that multicast the K/V tiles a head pair shares).  Torch-free: raw pointers,
// sizes, a stream.  NVIDIA sm_90a only; other builds and devices report "not available" and callers use
// the portable Triton forward.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Head dim of the sm_90a forward (the only one it is built for).
constexpr int kSwaFwdSm90HeadDim = 128;

// o[b,i,h] = softmax_j(scale q[b,i,h] . k[b,j,hkv]) v[b,j,hkv] over keys i - window <= j <= i, with
// hkv = h / (H / HKV), and lse[b,i,h] = log(sum_j exp(scale q.k)) (natural log, float32).
// q [B,Tq,H,128], k and v [B,T,HKV,128], o [B,Tq,H,128] contiguous in dtype (F16 or BF16), q, k, v 16-byte aligned
// (TMA); lse [B,Tq,H].  1 <= Tq <= T: q holds the last Tq positions of each batch row (Tq < T: a prefill chunk after
// T - Tq cached keys; query row r is position i = T - Tq + r in the formula above).
// window >= 0 (window >= T - 1 is full causal attention).
cudaError_t launch_swa_fwd_sm90(const void* q, const void* k, const void* v, DType dtype, void* o, float* lse,
                                int B, int Tq, int T, int H, int HKV, int window, float scale, cudaStream_t stream);

// True when the current device is sm_90 and this build holds sm_90a code for the kernel.
bool swa_fwd_sm90_available();

}  // namespace sbops
