// The ONE place that knows the hardware warp width and spells warp-level primitives.
//
// SBOPS_WARP_SIZE is 32 on NVIDIA and 64 under USE_MACA (MetaX, 64-lane warps); lane masks are
// sbops::lane_mask_t (64-bit under MACA).  Every shuffle, ballot, lane mask and warp reduction in
// the CUDA kernels goes through the helpers below, so the kernels carry no literal warp width.
//
// Reductions take a *logical* group width WIDTH (a power of two <= SBOPS_WARP_SIZE): a group is
// WIDTH consecutive lanes and the helpers only exchange data inside it.  Kernels written over a
// group width (e.g. "16 lanes per key row") therefore run unchanged on 32- and 64-lane hardware,
// and logic tuned for 64-lane MACA groups can be exercised on NVIDIA as two 32-lane halves by the
// kernel choosing WIDTH = SBOPS_WARP_SIZE there.  WIDTH > SBOPS_WARP_SIZE is rejected at compile
// time (it would need shared memory, i.e. a block-level helper).
//
// Torch-free: includes only CUDA headers.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#if defined(USE_MACA)
#define SBOPS_WARP_SIZE 64
#else
#define SBOPS_WARP_SIZE 32
#endif

namespace sbops {

#if defined(USE_MACA)
using lane_mask_t = unsigned long long;
#else
using lane_mask_t = unsigned int;
#endif

constexpr int kWarpSize = SBOPS_WARP_SIZE;
// All lanes of the warp.
constexpr lane_mask_t kFullLaneMask = ~lane_mask_t(0);

static_assert(sizeof(lane_mask_t) * 8 == SBOPS_WARP_SIZE, "lane_mask_t must have one bit per lane");

#if defined(__CUDACC__)

// Lane index for 1-D thread blocks (all sbops kernels use 1-D blocks).
__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) % kWarpSize; }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) / kWarpSize; }

// Bits of the lanes strictly below this one.
__device__ __forceinline__ lane_mask_t lanes_below_mask() {
  return (lane_mask_t(1) << lane_id()) - 1;
}

__device__ __forceinline__ int popc(lane_mask_t m) {
#if defined(USE_MACA)
  return __popcll(m);
#else
  return __popc(m);
#endif
}

// Index of the lowest set bit (m != 0).
__device__ __forceinline__ int lowest_lane(lane_mask_t m) {
#if defined(USE_MACA)
  return __ffsll(static_cast<long long>(m)) - 1;
#else
  return __ffs(static_cast<int>(m)) - 1;
#endif
}

__device__ __forceinline__ lane_mask_t ballot(bool pred) {
  return static_cast<lane_mask_t>(__ballot_sync(kFullLaneMask, pred));
}

template <typename T>
__device__ __forceinline__ T shfl(T v, int src_lane, int width = kWarpSize) {
  return __shfl_sync(kFullLaneMask, v, src_lane, width);
}

template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask, int width = kWarpSize) {
  return __shfl_xor_sync(kFullLaneMask, v, lane_mask, width);
}

__device__ __forceinline__ void warp_sync() { __syncwarp(kFullLaneMask); }

template <int WIDTH>
__device__ __forceinline__ void check_width() {
  static_assert(WIDTH >= 1 && WIDTH <= kWarpSize && (WIDTH & (WIDTH - 1)) == 0,
                "logical group width must be a power of two <= SBOPS_WARP_SIZE");
}

// Butterfly reductions inside groups of WIDTH lanes; every lane of the group gets the result.
template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v += shfl_xor(v, o, WIDTH);
  return v;
}

template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_max(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = max(v, shfl_xor(v, o, WIDTH));
  return v;
}

template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_min(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = min(v, shfl_xor(v, o, WIDTH));
  return v;
}

// Arg-max inside groups of WIDTH lanes: the largest value wins, ties go to the lower index.
// `payload` travels with the winner.  Every lane of the group gets the winner's triple.
template <int WIDTH>
__device__ __forceinline__ void warp_argmax(float& value, int& index, float& payload) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) {
    const float ov = shfl_xor(value, o, WIDTH);
    const int oi = shfl_xor(index, o, WIDTH);
    const float op = shfl_xor(payload, o, WIDTH);
    if (ov > value || (ov == value && oi < index)) {
      value = ov;
      index = oi;
      payload = op;
    }
  }
}

// Inclusive prefix sum over the whole warp (Hillis-Steele with shfl_up emulated by shfl).
template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  const int lane = lane_id();
#pragma unroll
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const T n = shfl(v, lane >= o ? lane - o : lane);
    if (lane >= o) v += n;
  }
  return v;
}

// Mask of the lanes whose `v` equals this lane's (all lanes must call it).
// Native __match_any_sync on sm_70+ NVIDIA; the portable twin peels one distinct value per round
// with ballots (at most kWarpSize rounds, usually a handful).
__device__ __forceinline__ lane_mask_t match_any(int v) {
#if !defined(USE_MACA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700 && !defined(SBOPS_PORTABLE_MATCH)
  return static_cast<lane_mask_t>(__match_any_sync(kFullLaneMask, v));
#else
  lane_mask_t todo = kFullLaneMask;
  lane_mask_t mine = 0;
  while (todo) {
    const int leader = lowest_lane(todo);
    const int lv = shfl(v, leader);
    const lane_mask_t same = ballot(v == lv);
    if (v == lv) mine = same;
    todo &= ~same;
  }
  return mine;
#endif
}

#endif  // __CUDACC__

}  // namespace sbops
