// Helpers shared by the MoE kernel sources (moe_gating.cu, moe_route.cu, moe_unpermute.cu):
// the row-mover block shape, dtype dispatch and the 16-byte row test.  Torch-free, internal.
#pragma once

#include <initializer_list>

#include "common.cuh"
#include "moe.cuh"

namespace sbops {
namespace moe_detail {

// ------------------------------------------------------------------------------ row movers
constexpr int kRowBlock = 256;
constexpr int kRowWarps = kRowBlock / kWarpSize;
constexpr int kRowUnroll = 8;  // vectors per lane in flight

// Row kernels take 16-byte vectors when every row start is 16-byte aligned, else scalars.
template <typename T, template <typename, int> class K, typename... Args>
cudaError_t launch_rows_vec(bool vec_ok, int64_t rows, cudaStream_t st, Args... args) {
  if (rows == 0) return cudaSuccess;
  const unsigned grid = grid_for(rows, kRowWarps, 16);
  if (vec_ok) K<T, vec16<T>()>::run(grid, st, args...);
  else K<T, 1>::run(grid, st, args...);
  return last_launch_error();
}

template <template <typename> class F, typename... Args>
cudaError_t dispatch_float(DType t, Args... args) {
  switch (t) {
    case DType::F32: return F<float>::run(args...);
    case DType::F16: return F<__half>::run(args...);
    case DType::BF16: return F<__nv_bfloat16>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

inline bool rows_vec_ok(int64_t Hd, DType t, std::initializer_list<const void*> ptrs) {
  const int elem = t == DType::F32 ? 4 : 2;
  if ((Hd * elem) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (!aligned_to(p, 16)) return false;
  return true;
}

}  // namespace moe_detail
}  // namespace sbops
