// swa_cache_write: the new token's k / v rows into the ring-buffer caches.  Torch-free.  With SBOPS_DECODE_PDL=all
// it launches on sm_90 as a programmatic dependent of the kernel before it (pdl_launch.cuh).
#include <cstdint>

#include "common.cuh"
#include "decode.cuh"
#include "pdl_launch.cuh"

namespace sbops {
namespace {

// One thread per element of k / v [N, HKV, D], read and written through strides.
// Bad-data guard: a row whose position is < 0 or whose slot lies outside [0, num_slots) is skipped.
template <typename T>
__global__ void swa_cache_write_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc,
                                       T* __restrict__ vc, const void* __restrict__ pos, bool pos64,
                                       const void* __restrict__ slots, bool slots64, int64_t N, int HKV, int D,
                                       int64_t C, int64_t num_slots, int64_t k0, int64_t k1, int64_t v0, int64_t v1,
                                       SwaCacheStrides cs) {
  grid_dependency_wait();    // launched as a programmatic dependent (pdl_launch.cuh): the kernels before are done
  grid_dependents_launch();  // what follows may launch now; it waits for this grid
  const int64_t total = N * HKV * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / (static_cast<int64_t>(HKV) * D);
    const int64_t rest = i % (static_cast<int64_t>(HKV) * D);
    const int64_t hk = rest / D, d = rest % D;
    const int64_t slot = slots ? load_index(slots, slots64, n) : n;
    const int64_t p = load_index(pos, pos64, n);
    if (p < 0 || slot < 0 || slot >= num_slots) continue;
    const int64_t row = p % C;
    kc[slot * cs.k0 + row * cs.k1 + hk * cs.k2 + d] = k[n * k0 + hk * k1 + d];
    vc[slot * cs.v0 + row * cs.v1 + hk * cs.v2 + d] = v[n * v0 + hk * v1 + d];
  }
}

}  // namespace

cudaError_t launch_swa_cache_write(const void* k, const void* v, void* kc, void* vc, DType dtype, const void* pos,
                                   bool pos64, const void* slots, bool slots64, int64_t N, int HKV, int D, int64_t C,
                                   int64_t num_slots, int64_t k0, int64_t k1, int64_t v0, int64_t v1,
                                   const SwaCacheStrides& cs, cudaStream_t stream) {
  const int64_t total = N * HKV * D;
  if (total == 0) return cudaSuccess;
  if (C < 1) return cudaErrorInvalidValue;
  constexpr int kBlock = 256;
  const unsigned grid = grid_for(total, kBlock);
  switch (dtype) {
#define SBOPS_CACHE_WRITE(T)                                                                                    \
  return launch_kernel(swa_cache_write_kernel<T>, grid, kBlock, 0, stream,                                      \
                       pdl_plan(swa_cache_write_kernel<T>, kPdlAll), static_cast<const T*>(k),                 \
                       static_cast<const T*>(v), static_cast<T*>(kc), static_cast<T*>(vc), pos, pos64, slots,  \
                       slots64, N, HKV, D, C, num_slots, k0, k1, v0, v1, cs);
    case DType::F32: { SBOPS_CACHE_WRITE(float) }
    case DType::F16: { SBOPS_CACHE_WRITE(__half) }
    case DType::BF16: { SBOPS_CACHE_WRITE(__nv_bfloat16) }
#undef SBOPS_CACHE_WRITE
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sbops
