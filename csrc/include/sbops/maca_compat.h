// MACA (MetaX) compatibility names, torch-free.
//
// Three build flavours include this header (warp.cuh and launch.cuh include it, so every kernel
// sees it):
//   * NVIDIA (no USE_MACA)            : nothing here is used.
//   * MACA (USE_MACA, compiled by cu-bridge's `cucc`, installed as `nvcc`):
//       cu-bridge accepts the CUDA spellings (cuda_runtime.h, cudaStream_t, __shfl_xor_sync ...),
//       so the kernels keep them; the MetaX runtime header <mc_runtime.h> is included so that
//       code may also use the native mc* names.  Device passes define __MACA_ARCH__ (cu-bridge
//       may define __CUDA_ARCH__ as well).
//   * MACA simulation (USE_MACA + SBOPS_MACA_SIM, compiled by NVIDIA's nvcc for NVIDIA GPUs):
//       the few mc* names sbops may spell are mapped to their CUDA twins, so the MACA code paths
//       compile and run on NVIDIA.  See backends/maca/README.md for what the simulation proves.
//
// What every flavour gets:
//   SBOPS_DEVICE_PASS       defined while compiling device code (CUDA or MACA device pass).
//   sbops::kMacaSharedMemPerBlock  shared memory of a C500-class block (64 KB).
#pragma once

#if defined(SBOPS_MACA_SIM) && !defined(USE_MACA)
#error "SBOPS_MACA_SIM requires USE_MACA (the simulation compiles the MACA code paths)"
#endif

#include <cuda_runtime.h>

#if defined(USE_MACA) && !defined(SBOPS_MACA_SIM)
#include <mc_runtime.h>  // MetaX runtime: mcStream_t, mcError_t, mcSuccess, ...
#endif

#if defined(__CUDA_ARCH__) || defined(__MACA_ARCH__)
#define SBOPS_DEVICE_PASS 1
#endif

#if defined(SBOPS_MACA_SIM)
// The mc* runtime names with a CUDA twin (types, error codes, the calls sbops could need).
using mcStream_t = cudaStream_t;
using mcError_t = cudaError_t;
using mcDeviceAttr = cudaDeviceAttr;
constexpr mcError_t mcSuccess = cudaSuccess;
constexpr mcError_t mcErrorInvalidValue = cudaErrorInvalidValue;
constexpr mcDeviceAttr mcDevAttrMultiProcessorCount = cudaDevAttrMultiProcessorCount;
constexpr mcDeviceAttr mcDevAttrMaxSharedMemoryPerBlock = cudaDevAttrMaxSharedMemoryPerBlock;
inline mcError_t mcGetLastError() { return cudaGetLastError(); }
inline const char* mcGetErrorString(mcError_t e) { return cudaGetErrorString(e); }
inline mcError_t mcGetDevice(int* dev) { return cudaGetDevice(dev); }
inline mcError_t mcDeviceGetAttribute(int* value, mcDeviceAttr attr, int dev) {
  return cudaDeviceGetAttribute(value, attr, dev);
}
#endif

namespace sbops {
// Shared memory one block may use on MetaX C500-class GPUs (the Triton configs in
// backends/maca/tuning are sized for it; the C++ kernels stay well below it).
constexpr int kMacaSharedMemPerBlock = 64 * 1024;
}  // namespace sbops
