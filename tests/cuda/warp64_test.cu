// Executes the warp.cuh group helpers on a GPU and returns their results to the host, so that
// tests/test_maca_gpu.py can compare them with a CPU computation.
//
// Built by the test as a shared library (nvcc -shared, loaded with ctypes), in two flavours:
//   -DUSE_MACA -DSBOPS_MACA_SIM : the MACA simulation.  64-bit lane masks, the portable (PTX-free)
//                                 paths, and WIDTH 64 groups -- a MetaX warp -- emulated as two
//                                 32-lane NVIDIA warps cooperating through shared memory.
//   (no flags)                  : plain NVIDIA, WIDTH <= 32 only (native __match_any_sync).
// Torch-free: only warp.cuh and the CUDA runtime.
#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/warp.cuh"

namespace {

using sbops::lane_mask_t;

struct Inputs {
  const float* x;           // values for sum/max/min
  const float* xq;          // quantised values (many ties) for arg-max
  const int* xi;            // small integers for the exact sum and the scan
  const int* key;           // small integers for match_any
  const unsigned char* pred;
  const unsigned long long* mask;  // random 64-bit masks for popc / lowest_lane
};

// Per thread: kF floats, kI ints, kM masks.
constexpr int kF = 5, kI = 8, kM = 2;

struct Outputs {
  float* f;                 // sum, max, min, argmax value, argmax payload
  int* i;                   // int sum, argmax index, scan, popc(ballot), lowest(ballot),
                            // rank among ballot, popc(mask), lowest(mask)
  unsigned long long* m;    // ballot, match_any
};

// Every helper at group width W; every thread of the block calls each one (convergent).
template <int W>
__global__ void group_helpers_kernel(Inputs in, Outputs out) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int gl = sbops::group_lane<W>();

  out.f[t * kF + 0] = sbops::warp_reduce_sum<W>(in.x[t]);
  out.f[t * kF + 1] = sbops::warp_reduce_max<W>(in.x[t]);
  out.f[t * kF + 2] = sbops::warp_reduce_min<W>(in.x[t]);
  float v = in.xq[t], p = static_cast<float>(t) + 0.25f;
  int idx = gl;
  sbops::warp_argmax<W>(v, idx, p);
  out.f[t * kF + 3] = v;
  out.f[t * kF + 4] = p;

  out.i[t * kI + 0] = sbops::warp_reduce_sum<W>(in.xi[t]);
  out.i[t * kI + 1] = idx;
  out.i[t * kI + 2] = sbops::warp_inclusive_scan<W>(in.xi[t]);
  const lane_mask_t b = sbops::group_ballot<W>(in.pred[t] != 0);
  out.i[t * kI + 3] = sbops::popc(b);
  out.i[t * kI + 4] = sbops::lowest_lane(b);  // -1 when no lane voted
  out.i[t * kI + 5] = sbops::popc(b & sbops::group_lanes_below<W>());
  const lane_mask_t rm = static_cast<lane_mask_t>(in.mask[t]);
  out.i[t * kI + 6] = sbops::popc(rm);
  out.i[t * kI + 7] = rm ? sbops::lowest_lane(rm) : -1;

  out.m[t * kM + 0] = b;
  out.m[t * kM + 1] = sbops::match_any<W>(in.key[t]);
}

template <int W>
cudaError_t launch(int blocks, int threads, Inputs in, Outputs out) {
  group_helpers_kernel<W><<<blocks, threads>>>(in, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t upload(const T* host, size_t n, T** dev) {
  cudaError_t e = cudaMalloc(reinterpret_cast<void**>(dev), n * sizeof(T));
  if (e != cudaSuccess) return e;
  return host ? cudaMemcpy(*dev, host, n * sizeof(T), cudaMemcpyHostToDevice) : cudaSuccess;
}

}  // namespace

extern "C" {

// How this library was built: hardware warp size, lane-mask bits, 1 when it is the MACA simulation.
int sbops_warp_test_info(int* warp_size, int* lane_mask_bits, int* maca_sim) {
  *warp_size = sbops::kWarpSize;
  *lane_mask_bits = sbops::kLaneMaskBits;
#if defined(SBOPS_MACA_SIM)
  *maca_sim = 1;
#else
  *maca_sim = 0;
#endif
  return 0;
}

// Runs group_helpers_kernel<width> over blocks x threads threads (n = blocks * threads inputs);
// outputs are [n, 5] float, [n, 8] int32, [n, 2] uint64.  Returns a cudaError_t (0 = success;
// cudaErrorInvalidValue for a width this build does not provide).
int sbops_warp_test_run(int width, int blocks, int threads, const float* x, const float* xq, const int* xi,
                        const int* key, const unsigned char* pred, const unsigned long long* mask, float* out_f,
                        int* out_i, unsigned long long* out_m) {
  const size_t n = static_cast<size_t>(blocks) * threads;
  Inputs in{};
  Outputs out{};
  float *dx = nullptr, *dxq = nullptr, *df = nullptr;
  int *dxi = nullptr, *dkey = nullptr, *di = nullptr;
  unsigned char* dpred = nullptr;
  unsigned long long *dmask = nullptr, *dm = nullptr;
  cudaError_t e = cudaSuccess;
  do {
    if ((e = upload(x, n, &dx)) != cudaSuccess) break;
    if ((e = upload(xq, n, &dxq)) != cudaSuccess) break;
    if ((e = upload(xi, n, &dxi)) != cudaSuccess) break;
    if ((e = upload(key, n, &dkey)) != cudaSuccess) break;
    if ((e = upload(pred, n, &dpred)) != cudaSuccess) break;
    if ((e = upload(mask, n, &dmask)) != cudaSuccess) break;
    if ((e = upload<float>(nullptr, n * kF, &df)) != cudaSuccess) break;
    if ((e = upload<int>(nullptr, n * kI, &di)) != cudaSuccess) break;
    if ((e = upload<unsigned long long>(nullptr, n * kM, &dm)) != cudaSuccess) break;
    in = Inputs{dx, dxq, dxi, dkey, dpred, dmask};
    out = Outputs{df, di, dm};
    switch (width) {
      case 8: e = launch<8>(blocks, threads, in, out); break;
      case 16: e = launch<16>(blocks, threads, in, out); break;
      case 32: e = launch<32>(blocks, threads, in, out); break;
#if defined(SBOPS_MACA_SIM)
      case 64: e = launch<64>(blocks, threads, in, out); break;
#endif
      default: e = cudaErrorInvalidValue; break;
    }
    if (e != cudaSuccess) break;
    if ((e = cudaDeviceSynchronize()) != cudaSuccess) break;
    if ((e = cudaMemcpy(out_f, df, n * kF * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess) break;
    if ((e = cudaMemcpy(out_i, di, n * kI * sizeof(int), cudaMemcpyDeviceToHost)) != cudaSuccess) break;
    e = cudaMemcpy(out_m, dm, n * kM * sizeof(unsigned long long), cudaMemcpyDeviceToHost);
  } while (false);
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(dxq), static_cast<void*>(dxi),
                  static_cast<void*>(dkey), static_cast<void*>(dpred), static_cast<void*>(dmask),
                  static_cast<void*>(df), static_cast<void*>(di), static_cast<void*>(dm)})
    if (p) cudaFree(p);
  return static_cast<int>(e);
}

}  // extern "C"
