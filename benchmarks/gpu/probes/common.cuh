// Shared pieces of the standalone GPU probes (swa_fwd_time_split.cu, swa_bwd_time_split.cu): deterministic fills and an
// error check that stops the probe.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace probe {
namespace {  // internal linkage: each probe is one translation unit
// p[i] = scale * a hash of (i, seed) spread over [-1, 1)
__global__ void fill_bf16(__nv_bfloat16* p, int64_t n, uint32_t seed, float scale = 1.f) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = __float2bfloat16(((h & 0xFFFF) / 32768.f - 1.f) * scale);
  }
}
__global__ void fill_f32(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) p[i] = v;
}
}  // namespace
}  // namespace probe

#define PROBE_CHECK(x)                                                                       \
  do {                                                                                 \
    cudaError_t e = (x);                                                               \
    if (e != cudaSuccess) {                                                            \
      std::printf("%s failed: %s\n", #x, cudaGetErrorString(e));                       \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)
