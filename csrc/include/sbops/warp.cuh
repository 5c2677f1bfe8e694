// The ONE place that knows the hardware warp width and spells warp-level primitives.
//
// Build flavours (see backends/maca/README.md):
//   NVIDIA                       SBOPS_WARP_SIZE 32, lane_mask_t 32-bit.
//   MACA (USE_MACA, cu-bridge)   SBOPS_WARP_SIZE 64, lane_mask_t 64-bit (MetaX warps have 64 lanes).
//   MACA simulation (USE_MACA + SBOPS_MACA_SIM, nvcc on NVIDIA):
//                                lane_mask_t 64-bit and every MACA code path (no PTX, no
//                                NVIDIA-only intrinsics, 64-bit popc/ffs), but SBOPS_WARP_SIZE stays
//                                32 -- the width of the hardware warp that executes the code -- so
//                                the kernels' launch geometry (lanes per warp, warps per block) is
//                                the hardware's.  64-lane *groups* are emulated (below).
//
// Every shuffle, ballot, lane mask and warp reduction in the CUDA kernels goes through the helpers
// below, so the kernels carry no literal warp width.
//
// Logical groups.  Reductions, scans, arg-max, ballot and match take a group width WIDTH (a power of
// two <= kMaxGroupWidth = 64): a group is WIDTH consecutive threads of a 1-D block (thread
// `threadIdx.x` is lane `threadIdx.x % WIDTH` of its group) and the helpers only exchange data
// inside it.  Group lane masks are group-relative (bit i = group lane i).
//   * WIDTH <= SBOPS_WARP_SIZE: register shuffles inside the hardware warp; the group's threads
//     must call convergently (as for any __shfl_sync).
//   * WIDTH > SBOPS_WARP_SIZE (only 64 on 32-lane NVIDIA, and only in the MACA simulation build):
//     EMULATION.  The group spans WIDTH / 32 hardware warps; exchanges between lanes of one
//     hardware warp still use shuffles, exchanges across hardware warps go through shared memory
//     with block barriers (__syncthreads).  Requirements: blockDim.x is a multiple of WIDTH and at
//     most 1024, and ALL threads of the block call the helper convergently (same helper, same
//     number of calls).  The algorithms (butterfly order, tie-breaking, scan steps, the match
//     peeling loop) are the same code that runs natively on MACA; only the lane exchange is
//     emulated.  This is how tests/cuda/warp64_test.cu executes the 64-lane logic on an H100.
//     Production kernels never use it (block barriers would be wrong inside their warp loops).
//
// Torch-free: includes only CUDA (or MACA) headers.
#pragma once

#include <cstdint>
#include <cstring>
#include <cuda_runtime.h>

#include "sbops/maca_compat.h"

#if defined(USE_MACA) && !defined(SBOPS_MACA_SIM)
#define SBOPS_WARP_SIZE 64
#else
#define SBOPS_WARP_SIZE 32
#endif
// Lanes of a MetaX warp: the group width the simulation build emulates.
#define SBOPS_MACA_WARP_SIZE 64

namespace sbops {

#if defined(USE_MACA)
using lane_mask_t = unsigned long long;
#else
using lane_mask_t = unsigned int;
#endif

// Type of the member-mask argument of the hardware warp intrinsics (__shfl_sync, __ballot_sync,
// __syncwarp): 64-bit on MetaX, 32-bit on NVIDIA (the simulation included).
#if defined(USE_MACA) && !defined(SBOPS_MACA_SIM)
using hw_mask_t = unsigned long long;
#else
using hw_mask_t = unsigned int;
#endif

constexpr int kWarpSize = SBOPS_WARP_SIZE;
constexpr int kMacaWarpSize = SBOPS_MACA_WARP_SIZE;
constexpr int kLaneMaskBits = static_cast<int>(sizeof(lane_mask_t) * 8);
constexpr int kMaxGroupWidth = 64;

// Mask with lanes [0, N) set (N <= kLaneMaskBits).
template <int N>
constexpr lane_mask_t kLowLanesMask =
    N >= kLaneMaskBits ? ~lane_mask_t(0) : (lane_mask_t(1) << (N % kLaneMaskBits)) - 1;

// All lanes of the hardware warp, as a lane mask (0xffffffff zero-extended in the simulation).
constexpr lane_mask_t kFullLaneMask = kLowLanesMask<kWarpSize>;
// All lanes of the hardware warp, as the intrinsics' member mask.
constexpr hw_mask_t kHwFullMask = ~hw_mask_t(0);

static_assert(kLaneMaskBits >= SBOPS_WARP_SIZE, "lane_mask_t must have one bit per lane");
static_assert(sizeof(hw_mask_t) * 8 == SBOPS_WARP_SIZE, "hw_mask_t must have one bit per hardware lane");

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

// Ballot over the hardware warp (bit i = lane i), zero-extended to lane_mask_t.
__device__ __forceinline__ lane_mask_t ballot(bool pred) {
  return static_cast<lane_mask_t>(__ballot_sync(kHwFullMask, pred));
}

template <typename T>
__device__ __forceinline__ T shfl(T v, int src_lane, int width = kWarpSize) {
  return __shfl_sync(kHwFullMask, v, src_lane, width);
}

template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask, int width = kWarpSize) {
  return __shfl_xor_sync(kHwFullMask, v, lane_mask, width);
}

__device__ __forceinline__ void warp_sync() { __syncwarp(kHwFullMask); }

// ------------------------------------------------------------------------------ logical groups

// True when a group of WIDTH lanes spans several hardware warps (emulated through shared memory).
template <int WIDTH>
constexpr bool kGroupEmulated = WIDTH > kWarpSize;

template <int WIDTH>
__device__ __forceinline__ void check_width() {
  static_assert(WIDTH >= 1 && WIDTH <= kMaxGroupWidth && (WIDTH & (WIDTH - 1)) == 0,
                "logical group width must be a power of two <= 64");
#if !defined(SBOPS_MACA_SIM)
  static_assert(!kGroupEmulated<WIDTH>,
                "a group wider than the hardware warp is emulated with block barriers: only the MACA "
                "simulation build (SBOPS_MACA_SIM) and its tests may use it");
#endif
}

// This thread's lane inside its group of WIDTH lanes.
template <int WIDTH>
__device__ __forceinline__ int group_lane() { return static_cast<int>(threadIdx.x) % WIDTH; }

// Group lanes strictly below this one (group-relative bits).
template <int WIDTH>
__device__ __forceinline__ lane_mask_t group_lanes_below() {
  static_assert(WIDTH <= kLaneMaskBits, "a group this wide needs 64-bit lane masks (USE_MACA)");
  return (lane_mask_t(1) << group_lane<WIDTH>()) - 1;
}

namespace detail {

// One 8-byte slot per thread of a block, for the emulated cross-warp exchange.  A function-scope
// __shared__ array is one allocation per kernel, whatever the number of call sites.
__device__ __forceinline__ unsigned long long* exchange_slots() {
  __shared__ unsigned long long slots[1024];
  return slots;
}

// Every thread of the block publishes `v`; returns the value published by thread `src_thread`.
// Block barriers: all threads of the block must call it, convergently.
template <typename T>
__device__ __forceinline__ T block_exchange(T v, int src_thread) {
  static_assert(sizeof(T) <= sizeof(unsigned long long), "block_exchange moves values of at most 8 bytes");
  unsigned long long* slots = exchange_slots();
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof(T));
  __syncthreads();  // the previous exchange's reads are done
  slots[threadIdx.x] = bits;
  __syncthreads();
  bits = slots[src_thread];
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace detail

// Value of group lane (this lane XOR lane_mask); lane_mask < WIDTH, the same in every thread.
template <int WIDTH, typename T>
__device__ __forceinline__ T group_shfl_xor(T v, int lane_mask) {
  check_width<WIDTH>();
  if constexpr (!kGroupEmulated<WIDTH>) {
    return shfl_xor(v, lane_mask, WIDTH);
  } else {
    // partner in the same hardware warp: a shuffle; in the other warp(s): shared memory
    if (lane_mask < kWarpSize) return shfl_xor(v, lane_mask, kWarpSize);
    return detail::block_exchange(v, static_cast<int>(threadIdx.x) ^ lane_mask);
  }
}

// Value of group lane `src_lane` (0 <= src_lane < WIDTH; may differ between threads).
template <int WIDTH, typename T>
__device__ __forceinline__ T group_shfl(T v, int src_lane) {
  check_width<WIDTH>();
  if constexpr (!kGroupEmulated<WIDTH>) {
    return shfl(v, src_lane, WIDTH);
  } else {
    const int base = static_cast<int>(threadIdx.x) - group_lane<WIDTH>();
    return detail::block_exchange(v, base + src_lane);
  }
}

// Ballot over the group: bit i set when group lane i's `pred` holds.
template <int WIDTH>
__device__ __forceinline__ lane_mask_t group_ballot(bool pred) {
  check_width<WIDTH>();
  static_assert(WIDTH <= kLaneMaskBits, "a group this wide needs 64-bit lane masks (USE_MACA)");
  const lane_mask_t mine = ballot(pred);  // this hardware warp's lanes
  if constexpr (WIDTH == kWarpSize) {
    return mine;
  } else if constexpr (!kGroupEmulated<WIDTH>) {
    const int base = lane_id() - lane_id() % WIDTH;
    return (mine >> base) & kLowLanesMask<WIDTH>;
  } else {
    // gather the ballots of the WIDTH / kWarpSize hardware warps of the group, lowest first
    const int base = static_cast<int>(threadIdx.x) - group_lane<WIDTH>();
    lane_mask_t m = 0;
#pragma unroll
    for (int s = 0; s < WIDTH / kWarpSize; ++s)
      m |= detail::block_exchange(mine, base + s * kWarpSize) << (s * kWarpSize);
    return m;
  }
}

// Butterfly reductions inside groups of WIDTH lanes; every lane of the group gets the result.
template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v += group_shfl_xor<WIDTH>(v, o);
  return v;
}

template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_max(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = max(v, group_shfl_xor<WIDTH>(v, o));
  return v;
}

template <int WIDTH, typename T>
__device__ __forceinline__ T warp_reduce_min(T v) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = min(v, group_shfl_xor<WIDTH>(v, o));
  return v;
}

// Arg-max inside groups of WIDTH lanes: the largest value wins, ties go to the lower index.
// `payload` travels with the winner.  Every lane of the group gets the winner's triple.
template <int WIDTH>
__device__ __forceinline__ void warp_argmax(float& value, int& index, float& payload) {
  check_width<WIDTH>();
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) {
    const float ov = group_shfl_xor<WIDTH>(value, o);
    const int oi = group_shfl_xor<WIDTH>(index, o);
    const float op = group_shfl_xor<WIDTH>(payload, o);
    if (ov > value || (ov == value && oi < index)) {
      value = ov;
      index = oi;
      payload = op;
    }
  }
}

// Inclusive prefix sum inside groups of WIDTH lanes (default: the hardware warp).
// Hillis-Steele; shfl_up is spelled as a shfl from lane - o (the portable form).
template <int WIDTH = kWarpSize, typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  check_width<WIDTH>();
  const int lane = group_lane<WIDTH>();
#pragma unroll
  for (int o = 1; o < WIDTH; o <<= 1) {
    const T n = group_shfl<WIDTH>(v, lane >= o ? lane - o : lane);
    if (lane >= o) v += n;
  }
  return v;
}

// Mask of the group lanes whose `v` equals this lane's (default group: the hardware warp; all
// lanes of the group must call it).  Native __match_any_sync on sm_70+ NVIDIA for the whole warp;
// the portable twin (MACA, the simulation, sub-warp groups) peels one distinct value per round
// with ballots: at most WIDTH rounds, usually a handful.
template <int WIDTH = kWarpSize>
__device__ __forceinline__ lane_mask_t match_any(int v) {
  check_width<WIDTH>();
#if !defined(USE_MACA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700 && !defined(SBOPS_PORTABLE_MATCH)
  if constexpr (WIDTH == kWarpSize) return static_cast<lane_mask_t>(__match_any_sync(kHwFullMask, v));
#endif
  lane_mask_t todo = kLowLanesMask<WIDTH>;
  lane_mask_t mine = 0;
  while (true) {
    // Shuffles and ballots need every thread of their domain (hardware warp, or the block when
    // emulated), so the loop runs until no group of that domain has values left.
    const bool more = todo != 0;
    bool any = more;
    if constexpr (kGroupEmulated<WIDTH>) {
      any = __syncthreads_or(more);
    } else if constexpr (WIDTH < kWarpSize) {
      any = __any_sync(kHwFullMask, more);
    }
    if (!any) break;
    const int leader = more ? lowest_lane(todo) : 0;
    const int lv = group_shfl<WIDTH>(v, leader);
    const bool hit = more && v == lv;
    const lane_mask_t same = group_ballot<WIDTH>(hit);
    if (hit) mine = same;
    todo &= ~same;
  }
  return mine;
}

#endif  // __CUDACC__

}  // namespace sbops
