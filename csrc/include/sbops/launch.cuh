// Launch helpers shared by the torch-free CUDA kernels: grid sizing, error propagation, the dtype
// tags that launchers take instead of torch ScalarTypes, and small device helpers for index
// tensors that may be int32 or int64.  Torch-free: includes only CUDA headers (and, under
// USE_MACA, the MACA compatibility header: the same code builds with cu-bridge for MetaX GPUs and,
// with SBOPS_MACA_SIM, with nvcc for NVIDIA GPUs; see backends/maca/README.md).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/maca_compat.h"

#if defined(__CUDACC__)
#define SBOPS_HOST_DEVICE __host__ __device__
#else
#define SBOPS_HOST_DEVICE
#endif

namespace sbops {

// Element types a launcher can be asked to handle (the bindings map at::ScalarType to these).
enum class DType : int { F32, F16, BF16, F64, I8, I16, I32, I64 };

SBOPS_HOST_DEVICE inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest gridDim.y / gridDim.z (gridDim.x goes to 2^31 - 1).  Launchers that put a batch-sized
// count in y launch it in slices of at most this many, with the slice's first index as a kernel
// argument, so no batch size fails to launch.
constexpr int64_t kMaxGridYZ = 65535;

// Dynamic shared memory a block may use without opting in (cudaFuncSetAttribute).
constexpr size_t kDefaultDynamicSmem = 48 * 1024;

// Streaming multiprocessors of the current device, cached per device (the attribute query is not
// free and launchers run on the hot path).
inline int num_sms() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 1;
  if (cache[dev] == 0) {
    int n = 0;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    cache[dev] = n > 0 ? n : 1;
  }
  return cache[dev];
}

// Blocks for a grid-stride loop over `work` items with `per_block` items per block-iteration:
// enough to fill the device `waves` times over, never more than the work needs, at least 1.
inline unsigned grid_for(int64_t work, int64_t per_block, int waves = 8) {
  int64_t need = ceil_div(work, per_block);
  int64_t cap = static_cast<int64_t>(num_sms()) * waves;
  int64_t g = need < cap ? need : cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

// Result of the last launch on this thread (launchers return it; bindings turn it into an error).
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

// Propagate a CUDA error out of a launcher.
#define SBOPS_RETURN_IF_ERROR(expr)            \
  do {                                         \
    cudaError_t sbops_err_ = (expr);           \
    if (sbops_err_ != cudaSuccess) return sbops_err_; \
  } while (0)

// Launch a grid whose y extent is `total` (a batch-sized count) in slices of at most kMaxGridYZ:
// launch(first, count) launches rows [first, first + count) (the kernel adds `first` to
// blockIdx.y) and returns the launch's error; stops at the first one.
template <typename Launch>
inline cudaError_t launch_y_slices(int64_t total, Launch&& launch) {
  for (int64_t first = 0; first < total; first += kMaxGridYZ) {
    const unsigned rows = static_cast<unsigned>(total - first < kMaxGridYZ ? total - first : kMaxGridYZ);
    SBOPS_RETURN_IF_ERROR(launch(first, rows));
  }
  return cudaSuccess;
}

#if defined(__CUDACC__)
// Index tensors (ids, positions, slot/state indices, seq_lens) arrive as int32 or int64.
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}
#endif

}  // namespace sbops
