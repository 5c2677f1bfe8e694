// Device helpers shared by the sbops CUDA kernels: float conversion for every element type and a
// 16-byte vector of elements for vectorised loads/stores.  Torch-free.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"
#include "sbops/warp.cuh"

namespace sbops {

// log2(e) and ln(2): softmax kernels work in exp2 / log2 units.
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double to_double(double x) { return x; }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements of T loaded/stored as one aligned access (16 bytes when sizeof(T) * N == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Number of T per 16-byte vector.
template <typename T>
SBOPS_HOST_DEVICE constexpr int vec16() { return static_cast<int>(16 / sizeof(T)); }

inline bool aligned_to(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

}  // namespace sbops

namespace sbops {
#if defined(__CUDACC__)
// Inclusive prefix sum of `v` over a 1-D block (blockDim.x a multiple of the warp size, at most
// kWarpSize warps); `scratch` holds kWarpSize ints of shared memory.  All threads must call it.
__device__ __forceinline__ int block_inclusive_scan(int v, int* scratch, int& total) {
  const int lane = lane_id(), warp = warp_id();
  const int nwarps = static_cast<int>(blockDim.x) / kWarpSize;
  const int incl = warp_inclusive_scan(v);
  if (lane == kWarpSize - 1) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int s = lane < nwarps ? scratch[lane] : 0;
    s = warp_inclusive_scan(s);
    if (lane < nwarps) scratch[lane] = s;
  }
  __syncthreads();
  const int before = warp > 0 ? scratch[warp - 1] : 0;
  total = scratch[nwarps - 1];
  __syncthreads();  // scratch may be reused right after
  return before + incl;
}
#endif
}  // namespace sbops

namespace sbops {
#if defined(__CUDACC__)
// Scalar access to a float tensor whose dtype is only known at run time (small operands such as
// decode-time q/k/v/g, where a uniform switch is cheaper than more template instantiations).
__device__ __forceinline__ float load_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_float(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case DType::BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}
#endif
}  // namespace sbops
