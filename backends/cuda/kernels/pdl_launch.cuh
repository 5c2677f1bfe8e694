// Programmatic dependent launch (sm_90+) for the decode step's kernels (dense_decode.cu, spike_decode.cu,
// swa_decode.cu, swa_cache_write.cu, linear_attn_decode.cu): the device side (griddepcontrol.wait /
// launch_dependents), whether a kernel may launch as a programmatic dependent of the work before it on its stream,
// and that launch.  Torch-free.  MACA has no programmatic launch: there the device calls are no-ops, pdl_plan is
// false and launch_kernel launches plainly, so kernels and launch sites are the same source for both targets.
#pragma once

#include <cctype>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

constexpr int kPdlAll = 2;  // pdl_mode() of SBOPS_DECODE_PDL=all or unset (below)

// Device side (no-ops below sm_90 and on MACA; the wait returns at once in a grid launched plainly): a grid lets
// the programmatic dependent after it start early (once all its blocks have called grid_dependents_launch or
// exited), and a grid launched as a dependent calls grid_dependency_wait before it reads or writes anything the
// grid before it may touch (that grid is then complete and its writes visible).
__device__ __forceinline__ void grid_dependents_launch() {
#if !defined(USE_MACA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependency_wait() {
#if !defined(USE_MACA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

#if !defined(USE_MACA)
// SBOPS_DECODE_PDL (read once; backends/cuda/triton/_common.PDL reads it for the Triton kernels, the same way):
// "0" / "off" / "false" / "no" / "" (any case, blanks ignored) no early launch (0); unset or "all" (kPdlAll, the
// default since session 36) the decode GEMVs (dense_decode, spike_decode) and the decode step's other kernels --
// swa_cache_write, swa_decode and its combine, la_decode, the Triton RMSNorm / silu_mul / RoPE / GLA activation
// kernels -- and spike_decode's encode (2); anything else ("1") the decode GEMVs only (1).  Measured on an H100
// (session 36, bf16 7B, 4k context, CUDA graphs): B = 1 5.415 -> 5.230 ms per step with all, B = 32 7.350 -> 7.413.
inline int pdl_mode() {
  static const int mode = [] {
    const char* v = std::getenv("SBOPS_DECODE_PDL");
    if (v == nullptr) return kPdlAll;
    std::string s;
    for (const char* c = v; *c; ++c)
      if (*c != ' ' && *c != '\t') s += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
    for (const char* off : {"0", "off", "false", "no", ""})
      if (s == off) return 0;
    return s == "all" ? kPdlAll : 1;
  }();
  return mode;
}

// Whether `kernel` launches as a programmatic dependent: pdl_mode() >= need, the current device is sm_90 or newer, and
// so are both the kernel's loaded binary and the virtual architecture it was compiled for (cudaFuncAttributes::
// ptxVersion), so it holds the wait: code JIT-compiled from compute_80 PTX (a build with SBOPS_CUDA_ARCHS=80 and
// PTX 80, run on an H100) has an sm_90 binary but no wait, and launched early it could read before the kernel
// before it is done.  (Added after session 32's review; run in session 33 on an H100, where the decode steps kept
// session 32's times; were ptxVersion reported otherwise on some driver, the early launch would only be lost.)
// Queried once per (kernel, device).
template <typename Kernel>
bool pdl_plan(Kernel kernel, int need) {
  int dev = 0;
  if (pdl_mode() < need || cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> plans;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), dev);
  const auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  int major = 0;
  cudaFuncAttributes fa{};
  const bool on = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  major >= 9 && cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90 &&
                  fa.ptxVersion >= 90;
  if (!on) (void)cudaGetLastError();  // a failed query only turns the early launch off
  plans.emplace(key, on);
  return on;
}

// kernel<<<grid, block, smem, st>>>(args...), as a programmatic dependent of the work before it on the stream where
// `pdl` (the kernel must then call grid_dependency_wait before it touches memory).
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, bool pdl,
                          A&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

// One launch of kernel(args) (one argument struct), as a programmatic dependent of the work before it where `pdl`.
template <typename Kernel, typename Args>
cudaError_t launch_one(Kernel kernel, unsigned grid, unsigned block, bool pdl, const Args& args, cudaStream_t st,
                       size_t smem = 0) {
  return launch_kernel(kernel, dim3(grid), dim3(block), smem, st, pdl, args);
}

#else  // MACA: plain launches

template <typename Kernel>
bool pdl_plan(Kernel, int) {
  return false;
}

template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, bool,
                          A&&... args) {
  kernel<<<grid, block, smem, st>>>(std::forward<A>(args)...);
  return last_launch_error();
}

#endif  // !USE_MACA
}  // namespace sbops
