// int8 x int8 -> int32 GEMM for Hopper (sm_90a) with spike_linear's int_mm epilogue fused: the int8 prefill path
// of a SwiGLU down projection (spike counts clamped to +-127 times int8 weights), replacing torch._int_mm, whose
// cuBLASLt heuristic picks CUTLASS's sm80 kernel on Hopper (mma.sync, ~0.95 POPS at M = 16384, N x K = 3584 x 18944
// on an H100), and the separate epilogue pass over the int32 result.
//
// Blocks of three warpgroups (384 threads), each computing 128 x 256 output tiles (work items, below):
//  * warpgroup 0 (producer, 40 registers after setmaxnreg; one thread works) copies the tile's A rows (128 x 128
//    bytes of K) and B rows (256 x 128 bytes) into a four-stage ring in shared memory with TMA (128-byte swizzle: a
//    K step of 128 int8 is one swizzle atom, the KMajorSw128Tile layout of sm90.cuh with 32-byte K slices); rows and
//    columns past the matrix arrive as zeros.  A stage's "full" mbarrier completes when its bytes land, its
//    "empty" one when both MMA warpgroups are done with it;
//  * warpgroups 1 and 2 (232 registers) own output rows 0-63 and 64-127: per stage four wgmma m64n256k32 s8.s8
//    MMAs into 128 int32 accumulators a thread, one stage's MMAs in flight while the next stage's are issued;
//    then the epilogue: y = (float(acc) * scale[n]) * vth[m] (+ bias[n]), rounded once, written through shared
//    memory and TMA stores (kTmaStoreEpilogue, below), or two columns per 4-byte store from registers.
// Work items: a unit of rows (one 128-row tile, or with kMc two consecutive ones) x one 256-column tile.  With kMc
// (the default) the blocks run in clusters of two that take the two row tiles of a unit and share its B tile: each
// loads one 128-row half of it and multicasts it into both blocks' ring (a third less L2 -> SM traffic per block:
// 48 KB per 128-byte K step for 8.4 M int8 operations), and a stage is refilled once the
// MMA warps of both blocks released it (remote mbarrier arrivals).
// Schedule (session 39): persistent.  W workers (blocks, or clusters with kMc; by default as many as can be resident)
// take items w, w + W, w + 2 W, ...: the ring's stage count runs on across items, so the producer loads the next
// item's first stages while the MMA warpgroups run this item's epilogue.  Items are numbered in groups of `group`
// row units: within a group, down the rows first, then the next column tile, so the W items in flight at a time
// cover about group row units x W / group column tiles, whose A rows and B columns both stay in L2 (with the
// columns fastest over all rows, as session 31's one-block-per-item grid ran, a wave of the 37888-wide gate/up
// projection read ~121 MB of B from HBM for one row unit).  workers < 0 and group 1: that launch (A/B).
// SwiGLU mode (kSw, session 40; launch_int8_gemm_sm90's `swiglu`): b = [gate; up], an item's B tile the 128 gate rows
// and the 128 up rows of one feature block, and the epilogue writes h = silu(g) * u (swiglu_epilogue, below).
// NVIDIA only (inline PTX): under USE_MACA the launcher reports "not available".
#include "int8_gemm.cuh"

#if !defined(USE_MACA)
#include <algorithm>
#include <atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>

#include "common.cuh"
#include "sm90.cuh"

namespace sbops {
namespace {

constexpr int kBM = 128;                // output rows per block (64 per MMA warpgroup)
constexpr int kBN = 256;                // output columns per block: the wgmma's N
constexpr int kBK = 128;                // K per stage: 128 int8 = 128 bytes, one swizzle atom
constexpr int kStages = 4;
constexpr int kProducerThreads = 128;
constexpr int kConsumerThreads = 256;
constexpr int kThreads = kProducerThreads + kConsumerThreads;
// The swizzled tile of sm90.cuh counts columns of 2 bytes: 64 of them are the 128 bytes of a K step.
using TileA = sm90::KMajorSw128Tile<kBM, 64>;
using TileB = sm90::KMajorSw128Tile<kBN, 64>;
constexpr int kABytes = kBM * kBK, kBBytes = kBN * kBK;
static_assert(TileA::kBytes == kABytes && TileB::kBytes == kBBytes, "tile bytes");
constexpr int kStageBytes = kABytes + kBBytes;
// The epilogue through shared memory and TMA stores (kTs; session 39): each MMA warpgroup's 64 x 256 outputs go out as
// four 64 x 64 chunks through two buffers of its own (64 rows of 128 bytes, 128-byte swizzle), after the ring, the
// stores overlapping the next chunk's writes and the next item's MMAs.  Where y's rows are 16-byte aligned (else the
// stores from registers).  H100, M = 16384 (probes/int8_gemm_sm90_variants.sh, the same bits): gate/up 4.117 ->
// 3.397 ms, qkv 0.535 -> 0.467, o 0.418 -> 0.360, down 1.440 -> 1.409; with the epilogue's stores dropped (timing
// only) gate/up took 2.271 ms, so the stores from registers were the short-K shapes' whole gap to cuBLAS's e4m3 GEMM.
// false: the stores from registers everywhere (the probe's A/B).
constexpr bool kTmaStoreEpilogue = true;
// Probe knob (session 40, probes/int8_gemm_sm90_variants.sh; 0 = off, as shipped): MMA warpgroup 1 starts only after
// warpgroup 0 has issued its first kWgLag stages (<= kStages), so that one warpgroup's epilogue may run while the
// other still issues MMAs (if the lag persists across items).  Named barrier 3.
constexpr int kWgLag = 0;
static_assert(kWgLag >= 0 && kWgLag <= 4, "the lag fits the ring");
// Probe knob (session 41, probes/int8_gemm_sm90_variants.sh variant 9 with a ring of 3 stages; 2 as shipped): each
// MMA warpgroup's store buffers.  With 4, a warpgroup stages a whole 64 x 256 item without waiting for the stores of
// its earlier chunks, which every SM issues at once (the workers run in step), to drain to HBM.
constexpr int kEpiBufs = 2;
constexpr int kEpiCols = 64, kEpiBytes = 64 * kEpiCols * 2, kEpiAllBytes = 2 * kEpiBufs * kEpiBytes;
// The epilogue's column parameters staged in shared memory (kTs; session 41): each of the 256 MMA threads loads the
// (scale, bias) of one of the item's 256 columns from global memory before its K loop and writes it to a 2 KB table
// after it, between two barriers of both warpgroups (the table is shared: no room for two), so the epilogue reads
// them from shared memory.  Loaded per 8-column block in the epilogue, as until session 40 (false, the probe's A/B),
// each block's scale sector was an L1 miss (the ring leaves little L1) whose latency ptxas hid only one block ahead,
// 32 times per item.  (Not with the kWgLag probe, whose warpgroups must not meet at every item.)
[[maybe_unused]] constexpr bool kStagedColParams = true;
constexpr int kParBytes = kBN * 8;  // float2 (scale, bias) per tile column
// tiles (1024-aligned), the epilogue buffers and the column parameters (kTs), then the mbarriers
template <bool kTs>
constexpr int smem_bytes() {
  return kStages * kStageBytes + (kTs ? kEpiAllBytes + kParBytes : 0) + 8 * 2 * kStages;
}
static_assert(smem_bytes<true>() <= 227 * 1024, "shared memory per block");

#ifdef SBOPS_SM90A_DEVICE
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register file");

// a stage's A tile, then its B tile, in the ring at s_tiles
__device__ __forceinline__ uint32_t stage_a(uint32_t s_tiles, int st) {
  return s_tiles + static_cast<uint32_t>(st * kStageBytes);
}
__device__ __forceinline__ uint32_t stage_b(uint32_t s_tiles, int st) { return stage_a(s_tiles, st) + kABytes; }

#include "gemm_sm90_wgmma.cuh"  // wgmma_s8_m64n256k32, wgmma_bf16_m64n256k16

__device__ __forceinline__ void reg_fence(uint32_t (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

template <typename T>
__device__ __forceinline__ uint32_t pack_out(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack_out<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack_out<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
#endif  // SBOPS_SM90A_DEVICE


template <typename T>
__device__ __forceinline__ float bias_at(const void* bias, bool bias_f32, int64_t n) {
  if (bias == nullptr) return 0.f;
  return bias_f32 ? static_cast<const float*>(bias)[n] : to_float(static_cast<const T*>(bias)[n]);
}

#ifdef SBOPS_SM90A_DEVICE
// The stores of the epilogue through shared memory and TMA (kTs; the plain and the SwiGLU epilogue): kChunks chunks of
// 64 columns of the warpgroup's 64 rows, chunk c (columns c0 + 64 c ..) into buffer c % kBufs once its store kBufs
// chunks back (possibly of the previous item: every item cycles through the same kBufs buffers) has read it; the
// warpgroup's first thread issues the stores (rows / columns past y are skipped by TMA).  rows(j): the lane's packed
// column pair of 8-column block j (j = 8 c + q) for its local rows lr and lr + 8.  128-byte swizzle: local row r's
// 16-byte piece q sits at piece q ^ (r % 8), so a warp's 4-byte writes (rows g, 8 pieces x 4 lanes) fall in 32
// distinct banks.
template <int kChunks, typename Rows>
__device__ __forceinline__ void tma_store_chunks(uint32_t s_epi, int wg, int m0, int c0, const CUtensorMap* tm_y,
                                                 const Rows& rows) {
  const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int lr = 16 * ((tid >> 5) & 3) + g;  // local rows lr and lr + 8 (lr % 8 == g)
  const bool leader = (tid - kProducerThreads) % 128 == 0;
  constexpr int kBufs = kChunks < kEpiBufs ? kChunks : kEpiBufs;  // (the SwiGLU epilogue's 2 chunks: 2 buffers)
  static_assert(kChunks % kBufs == 0, "every item starts at buffer 0");
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const uint32_t buf = s_epi + static_cast<uint32_t>((kEpiBufs * wg + c % kBufs) * kEpiBytes);
    uint2 v[kEpiCols / 8];  // the chunk's values first (their loads together, and while the buffer's store reads)
#pragma unroll
    for (int q = 0; q < kEpiCols / 8; ++q) v[q] = rows(c * (kEpiCols / 8) + q);
    if (leader) sm90::bulk_wait_read<kBufs - 1>();
    sm90::named_sync(1 + wg, 128);
#pragma unroll
    for (int q = 0; q < kEpiCols / 8; ++q) {
      const uint32_t piece = static_cast<uint32_t>(((q ^ g) << 4) + 4 * t4);
      sm90::st_shared_u32(buf + static_cast<uint32_t>(lr * 128) + piece, v[q].x);
      sm90::st_shared_u32(buf + static_cast<uint32_t>((lr + 8) * 128) + piece, v[q].y);
    }
    sm90::fence_proxy_async();  // the generic-proxy writes, visible to the TMA store
    sm90::named_sync(1 + wg, 128);
    if (leader) {
      sm90::tma_store_2d(tm_y, buf, c0 + kEpiCols * c, m0 + 64 * wg);
      sm90::bulk_commit();
    }
  }
}
#endif  // SBOPS_SM90A_DEVICE

#include "int8_gemm_sm90_swiglu.cuh"  // SwigluArgs, swiglu_epilogue (kSw)

#ifdef SBOPS_SM90A_DEVICE
// The MMA warpgroups' part of one item: its K loop over the ring (stages it .. it + nk - 1 of the running count,
// every one released when its MMAs retired), then the epilogue from the accumulator registers.
template <typename T, bool kMc, bool kTs, bool kSw, bool kBf>
__device__ __forceinline__ void mma_and_epilogue(uint32_t s_tiles, uint32_t bar_full, uint32_t bar_empty, int rank,
                                                 const float* __restrict__ vth, const float* __restrict__ scale,
                                                 const void* __restrict__ bias, bool bias_f32, T* __restrict__ y,
                                                 int64_t ldy, int M, int N, int nk, int m0, int n0, uint64_t it,
                                                 const CUtensorMap* tm_y, uint32_t s_epi, float2* s_par,
                                                 const SwigluArgs<T>& sw) {
  const int tid = threadIdx.x, lane = tid & 31;
  // a stage this warpgroup's MMAs read may be refilled (kMc: one arrival per warp on the barrier of both blocks)
  auto release = [&](uint64_t i) {
    const uint32_t bar = bar_empty + 8 * (i % kStages);
    if (!kMc) {
      sm90::mbar_arrive(bar);
    } else if (lane == 0) {
      sm90::mbar_arrive(bar);
      sm90::mbar_arrive_cluster(sm90::map_to_rank(bar, static_cast<uint32_t>(rank ^ 1)));
    }
  };
  const int wg = (tid - kProducerThreads) / 128;  // rows 64 wg .. 64 wg + 63 of the tile
  // the epilogue's per-row and (kStaged) per-column factors, loaded now, used after the K loop: this thread's tile
  // column c (kSw: the gate's n0 + c for c < 128, then the up's half_n + n0 + c - 128)
  const int w = (tid >> 5) & 3, g = lane >> 2, t4 = lane & 3;
  const int r0 = m0 + 64 * wg + 16 * w + g, r1 = r0 + 8;
  const float v0 = kBf ? 1.f : r0 < M ? vth[r0] : 0.f, v1 = kBf ? 1.f : r1 < M ? vth[r1] : 0.f;  // kBf: no vth
  constexpr bool kStaged = kTs && kStagedColParams && kWgLag == 0;
  auto tile_col = [&](int cc) { return kSw ? (cc < kBN / 2 ? n0 + cc : sw.half_n + n0 + cc - kBN / 2) : n0 + cc; };
  float2 par = make_float2(0.f, 0.f);
  if constexpr (kStaged) {
    const int col = tile_col(tid - kProducerThreads);
    if (col < N) par = make_float2(kBf ? 1.f : scale[col], bias_at<T>(bias, bias_f32, col));
  }
  uint32_t acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0u;
  for (int kt = 0; kt < nk; ++kt, ++it) {
    const int st = static_cast<int>(it % kStages);
    sm90::mbar_wait(bar_full + 8 * st, (it / kStages) & 1);
    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {  // the stage's four 32-byte K slices
      const uint64_t da = TileA::desc(stage_a(s_tiles, st), 64 * wg, ks), db = TileB::desc(stage_b(s_tiles, st), 0, ks);
      if constexpr (kBf)
        wgmma_bf16_m64n256k16(acc, da, db, kt > 0 || ks > 0);
      else
        wgmma_s8_m64n256k32(acc, da, db, kt > 0 || ks > 0);
    }
    sm90::wgmma_commit();
    if constexpr (kWgLag > 0) {
      if (wg == 0 && it == static_cast<uint64_t>(kWgLag - 1)) sm90::named_arrive(3, kConsumerThreads);
    }
    sm90::wgmma_wait<1>();  // the previous stage's MMAs retired: release it to the producer
    if (kt > 0) release(it - 1);
  }
  sm90::wgmma_wait<0>();
  release(it - 1);  // the item's last stage (the producer may already be filling the next item's)
  reg_fence(acc);

  // ---- epilogue: accumulator fragment of warp w (rows 16 w .. 16 w + 15 of the warpgroup's 64): lane (g, t4)
  // holds, per 8-column block j, columns 8 j + 2 t4, + 1 of rows g and g + 8.  The column table (kStaged): written
  // once both warpgroups are past their reads of the previous item's, read once both wrote it
  if constexpr (kStaged) {
    sm90::named_sync(4, kConsumerThreads);
    s_par[tid - kProducerThreads] = par;
    sm90::named_sync(4, kConsumerThreads);
  }
  // (scale, bias) of tile columns 8 j + 2 t4 and + 1 as (s0, b0, s1, b1): from the table or (!kStaged) global memory
  auto col_par = [&](int j) {
    const int cc = 8 * j + 2 * t4;
    if constexpr (kStaged) {
      return reinterpret_cast<const float4*>(s_par)[cc / 2];
    } else {
      const int col = tile_col(cc);
      if (col >= N) return make_float4(0.f, 0.f, 0.f, 0.f);  // N even: col < N means col + 1 < N
      return make_float4(kBf ? 1.f : scale[col], bias_at<T>(bias, bias_f32, col), kBf ? 1.f : scale[col + 1],
                         bias_at<T>(bias, bias_f32, col + 1));
    }
  };
  auto out = [&](uint32_t a, float s, float v, float b) {
    // kBf: the float32 sum itself (s and v are 1); else the int32 sum times the channel scale and the threshold
    const float t = kBf ? __uint_as_float(a) : __fmul_rn(__fmul_rn(static_cast<float>(static_cast<int32_t>(a)), s), v);
    return bias != nullptr ? __fadd_rn(t, b) : t;
  };
  if constexpr (kSw) {
    static_assert(kTs, "the SwiGLU epilogue stores through shared memory and TMA");
    swiglu_epilogue<T>(acc, out, col_par, sw, M, m0, n0, wg, v0, v1, s_epi, tm_y);
  } else if constexpr (kTs) {  // the tile's 256 columns as four chunks
    tma_store_chunks<kBN / kEpiCols>(s_epi, wg, m0, n0, tm_y, [&](int j) {
      const float4 p = col_par(j);  // (s0, b0, s1, b1); zeros past N
      return make_uint2(pack_out<T>(out(acc[4 * j], p.x, v0, p.y), out(acc[4 * j + 1], p.z, v0, p.w)),
                        pack_out<T>(out(acc[4 * j + 2], p.x, v1, p.y), out(acc[4 * j + 3], p.z, v1, p.w)));
    });
  } else {  // the stores from registers
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int c = n0 + 8 * j + 2 * t4;
      if (c >= N) continue;  // N even: c < N means c + 1 < N
      const float s0 = scale[c], s1 = scale[c + 1];
      const float b0 = bias_at<T>(bias, bias_f32, c), b1 = bias_at<T>(bias, bias_f32, c + 1);
      if (r0 < M)
        *reinterpret_cast<uint32_t*>(y + static_cast<int64_t>(r0) * ldy + c) =
            pack_out<T>(out(acc[4 * j], s0, v0, b0), out(acc[4 * j + 1], s1, v0, b1));
      if (r1 < M)
        *reinterpret_cast<uint32_t*>(y + static_cast<int64_t>(r1) * ldy + c) =
            pack_out<T>(out(acc[4 * j + 2], s0, v1, b0), out(acc[4 * j + 3], s1, v1, b1));
    }
  }
}
#endif  // SBOPS_SM90A_DEVICE

// Item t of the schedule -> its first row tile (of kMc ? 2 : 1) and its column tile: groups of `group` row units,
// within a group down the rows first (see the schedule above).
#ifdef SBOPS_SM90A_DEVICE
struct ItemTile {
  int64_t row_unit, col;
};
__device__ __forceinline__ ItemTile item_tile(int64_t t, int64_t row_units, int64_t col_tiles, int64_t group) {
  const int64_t per_group = group * col_tiles;
  const int64_t g = t / per_group, first = g * group, i = t - g * per_group;
  const int64_t rows = row_units - first < group ? row_units - first : group;
  return {first + i % rows, i / rows};
}
#endif

template <typename T, bool kMc, bool kTs, bool kSw, bool kBf>
__global__ void __launch_bounds__(kThreads, 1)
int8_gemm_sm90_kernel(const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_b,
                      const __grid_constant__ CUtensorMap tm_y, const float* __restrict__ vth,
                      const float* __restrict__ scale, const void* __restrict__ bias, bool bias_f32,
                      T* __restrict__ y, int64_t ldy, int M, int N, int K, int64_t row_units, int64_t col_tiles,
                      int64_t group, const SwigluArgs<T> sw) {
#ifdef SBOPS_SM90A_DEVICE
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s_tiles = sm90::smem_addr(smem);
  const uint32_t s_epi = s_tiles + kStages * kStageBytes;  // kTs: the epilogue buffers (1024-aligned)
  // kTs: the column table (2 KB), after the epilogue buffers
  float2* const s_par = reinterpret_cast<float2*>(smem + kStages * kStageBytes + kEpiAllBytes);
  const uint32_t bar_full = s_epi + (kTs ? kEpiAllBytes + kParBytes : 0);  // kStages mbarriers: the tiles landed
  const uint32_t bar_empty = bar_full + 8 * kStages;          // kStages mbarriers: both MMA warpgroups are done
  const int tid = threadIdx.x;
  constexpr int kKE = kBf ? kBK / 2 : kBK;  // K elements per stage (128 bytes)
  const int nk = (K + kKE - 1) / kKE;
  // clusters are (2, 1, 1) on a 1-D grid: a worker is a cluster (kMc) or a block; rank = the unit's row tile
  const int rank = kMc ? static_cast<int>(sm90::cluster_ctarank()) : 0;
  const int64_t worker = kMc ? blockIdx.x / 2 : blockIdx.x, workers = kMc ? gridDim.x / 2 : gridDim.x;
  const int64_t items = row_units * col_tiles;
  auto origin = [&](int64_t t, int& m0, int& n0) {
    const ItemTile it = item_tile(t, row_units, col_tiles, group);
    m0 = static_cast<int>(((kMc ? 2 : 1) * it.row_unit + rank) * kBM);
    n0 = static_cast<int>(it.col * (kSw ? kBN / 2 : kBN));  // kSw: h's columns (= gate rows) n0 .. n0 + 127
  };

  // kMc: either block's producer multicasts into a stage, so its empty barrier counts the MMA warps of both blocks
  if (tid == 0) sm90::ring_barriers_init<kMc>(bar_full, bar_empty, kStages, kConsumerThreads);
  sm90::barriers_ready<kMc>(tid == 0);

  if (tid < kProducerThreads) {
    sm90::regs_dec<kProducerRegs>();
    if (tid == 0) {
      sm90::tma_prefetch_map(&tm_a);
      sm90::tma_prefetch_map(&tm_b);
      uint64_t it = 0;  // the ring's running stage count (both blocks of a cluster take the same items)
      for (int64_t t = worker; t < items; t += workers) {
        int m0, n0;
        origin(t, m0, n0);
        // kMc: the unit's first row tile; this block loads its half of the B tile into both blocks' stage (kSw:
        // rank 0 the gate rows, rank 1 the up rows)
        const int nb = kMc ? n0 + rank * (kSw ? sw.half_n : kBN / 2) : n0;
        for (int kt = 0; kt < nk; ++kt, ++it) {
          const int st = static_cast<int>(it % kStages);
          if (it >= kStages) sm90::mbar_wait(bar_empty + 8 * st, ((it / kStages) & 1) ^ 1);
          sm90::mbar_expect_tx(bar_full + 8 * st, kStageBytes);
          sm90::tma_load_2d(stage_a(s_tiles, st), &tm_a, bar_full + 8 * st, kt * kKE, m0);
          if (kMc)
            sm90::tma_load_2d_multicast(stage_b(s_tiles, st) + rank * (kBBytes / 2), &tm_b, bar_full + 8 * st,
                                        kt * kKE, nb, 3);
          else
            sm90::tma_load_2d(stage_b(s_tiles, st), &tm_b, bar_full + 8 * st, kt * kKE, n0);
          if (kSw && !kMc)  // the up rows into the tile's second half (the B map's box is 128 rows)
            sm90::tma_load_2d(stage_b(s_tiles, st) + kBBytes / 2, &tm_b, bar_full + 8 * st, kt * kKE, n0 + sw.half_n);
        }
      }
    }
  } else {
    sm90::regs_inc<kConsumerRegs>();
    uint64_t it = 0;
    if constexpr (kWgLag > 0) {  // warpgroup 0 arrives at its stage kWgLag - 1 where the worker has that many
      const int64_t mine = worker < items ? (items - worker + workers - 1) / workers : 0;
      if ((tid - kProducerThreads) / 128 == 1 && mine * nk >= kWgLag) sm90::named_sync(3, kConsumerThreads);
    }
    for (int64_t t = worker; t < items; t += workers, it += nk) {
      int m0, n0;
      origin(t, m0, n0);
      mma_and_epilogue<T, kMc, kTs, kSw, kBf>(s_tiles, bar_full, bar_empty, rank, vth, scale, bias, bias_f32, y, ldy,
                                              M, N, nk, m0, n0, it, &tm_y, s_epi, s_par, sw);
    }
    if constexpr (kTs) {
      if ((tid - kProducerThreads) % 128 == 0) sm90::bulk_wait<0>();  // its last stores done before the block exits
    }
  }
  if (kMc) sm90::cluster_sync();  // no block exits while its peer may still multicast into it or arrive on it
#endif  // SBOPS_SM90A_DEVICE
}

// Tensor map of an int8 [rows, K] matrix with row stride ld (bytes), boxes of kBK = 128 bytes of K x box_rows rows,
// 128-byte swizzle (one atom of KMajorSw128Tile<box_rows, 64>); elements past the matrix read as zeros.
cudaError_t encode_int8_map(CUtensorMap* map, const int8_t* base, int64_t rows, int64_t K, int64_t ld, int box_rows) {
  static_assert(kBK == 128, "a box is 128 bytes of K");
  return sm90::encode_matrix_map(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, rows, K, ld, box_rows);
}

#include "gemm_sm90_launch.cuh"  // pair_cluster_config, resident_workers

// The operands of one launch (tensor maps: A, B or its half with clusters, y where kTs)
struct Launch {
  CUtensorMap tm_a, tm_b, tm_y;
  const float* vth;
  const float* scale;
  const void* bias;
  bool bias_f32;
  void* y;
  int64_t ldy;
  int M, N, K;
  int64_t workers, group;
  const int* row_flags;  // the SwiGLU launch's (SwigluArgs)
  void* side;
  int64_t ld_side;
  int half_n;
  float* row_sums;
  int64_t ld_sums;
};

template <typename T, bool kMc, bool kTs, bool kSw, bool kBf = false>
cudaError_t launch_typed(const Launch& l, cudaStream_t stream) {
  auto kernel = int8_gemm_sm90_kernel<T, kMc, kTs, kSw, kBf>;
  constexpr int kSmem = smem_bytes<kTs>();
  SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  constexpr int kUnit = kMc ? 2 : 1;  // blocks (row tiles) of a worker
  const int64_t row_units = ceil_div(l.M, kUnit * kBM), col_tiles = kSw ? l.half_n / (kBN / 2) : ceil_div(l.N, kBN);
  const int64_t items = row_units * col_tiles;
  const int resident = resident_workers<kMc, kSmem>(kernel);
  if (kMc && resident == 0) return cudaErrorNotSupported;  // the caller launches without clusters
  // workers 0: as many as are resident at once (one per item where that is unknown); < 0: one per item (every block
  // one tile, session 31's launch)
  const int64_t cap = resident > 0 ? resident : items;
  const int64_t w = l.workers < 0 ? items : std::min<int64_t>(items, l.workers > 0 ? l.workers : cap);
  if (kUnit * w > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t g = std::min<int64_t>(l.group, row_units);
  const dim3 grid(static_cast<unsigned>(kUnit * w));
  T* y = static_cast<T*>(l.y);
  const SwigluArgs<T> sw{l.row_flags, static_cast<T*>(l.side), l.ld_side, l.half_n, l.row_sums, l.ld_sums};
  if (!kMc) {
    kernel<<<grid, kThreads, kSmem, stream>>>(l.tm_a, l.tm_b, l.tm_y, l.vth, l.scale, l.bias, l.bias_f32, y, l.ldy,
                                              l.M, l.N, l.K, row_units, col_tiles, g, sw);
    return last_launch_error();
  }
  // an odd last row tile is paired with a block past M, which loads its B half and stores nothing
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = pair_cluster_config(grid, kSmem, stream, attr);
  SBOPS_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, l.tm_a, l.tm_b, l.tm_y, l.vth, l.scale, l.bias, l.bias_f32,
                                           y, l.ldy, l.M, l.N, l.K, row_units, col_tiles, g, sw));
  return last_launch_error();
}

template <typename T, bool kMc, bool kBf = false>
cudaError_t launch_epilogue(const Launch& l, bool tma_store, cudaStream_t stream) {
  if constexpr (kBf) {  // bfloat16 operands: the TMA-store epilogues only (the launcher checks y's rows)
    return l.half_n > 0 ? launch_typed<T, kMc, true, true, true>(l, stream)
                        : launch_typed<T, kMc, true, false, true>(l, stream);
  }
  if (l.half_n > 0) return tma_store ? launch_typed<T, kMc, true, true>(l, stream) : cudaErrorInvalidValue;
  if constexpr (kTmaStoreEpilogue) {
    if (tma_store) return launch_typed<T, kMc, true, false>(l, stream);
  }
  (void)tma_store;
  return launch_typed<T, kMc, false, false>(l, stream);
}

template <bool kMc>
cudaError_t launch_dtype(const Launch& l, DType y_dtype, bool tma_store, cudaStream_t stream) {
  return y_dtype == DType::BF16 ? launch_epilogue<__nv_bfloat16, kMc>(l, tma_store, stream)
                                : launch_epilogue<__half, kMc>(l, tma_store, stream);
}

// Tensor map of y [M, N] (16-bit, row stride ldy elements) in boxes of 64 rows x kEpiCols columns, 128-byte swizzle
cudaError_t encode_y_map(CUtensorMap* map, void* y, DType y_dtype, int64_t M, int64_t N, int64_t ldy) {
  static_assert(kEpiCols * 2 == 128, "a box is 128 bytes of y's columns");
  return sm90::encode_matrix_map(map, y_dtype == DType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                                 2, y, M, N, ldy * 2, 64, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

// The checks both launchers make (the cluster, the group: 0 becomes the default; sizes the kernel's int tile origins
// hold, row strides covering K and y's yn columns): cudaSuccess or the error to return
cudaError_t check_launch_shape(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldy, int64_t yn,
                               int cluster, int64_t& group) {
  if ((cluster != 1 && cluster != 2) || group < 0) return cudaErrorInvalidValue;
  if (group == 0) group = kInt8GemmGroup;
  // (tile origins are int: M and N up to a pair of tiles below INT32_MAX)
  if (K <= 0 || lda < K || ldb < K || ldy < yn || M > INT32_MAX - 2 * kBM || N > INT32_MAX - kBN || K > INT32_MAX)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

// The launch of `l` (its A and y maps and operands set) once B's map is made: with cluster 2, B in half-tile boxes
// (each block of a cluster loads one half) and the clustered kernels, falling back to single blocks where no cluster
// can be resident; else (and with SwiGLU, whose gate and up halves of a tile are two loads of 128 rows) single
// blocks.  encode_b(map, box_rows) makes B's map; run(clustered) launches.
template <typename EncodeB, typename Run>
cudaError_t launch_clustered_or_not(Launch& l, int cluster, const EncodeB& encode_b, const Run& run) {
  if (cluster == 2) {
    SBOPS_RETURN_IF_ERROR(encode_b(&l.tm_b, kBN / 2));
    const cudaError_t e = run(true);
    if (e != cudaErrorNotSupported) return e;
  }
  SBOPS_RETURN_IF_ERROR(encode_b(&l.tm_b, l.half_n > 0 ? kBN / 2 : kBN));
  return run(false);
}

}  // namespace
}  // namespace sbops

bool sbops::int8_gemm_sm90_available() {
  static signed char cache[64] = {0};
  return sm90::sm90a_kernel_available(int8_gemm_sm90_kernel<__nv_bfloat16, false, false, false, false>, cache);
}

cudaError_t sbops::launch_int8_gemm_sm90(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* vth,
                                         const float* scale, const void* bias, DType bias_dtype, void* y, int64_t ldy,
                                         DType y_dtype, int64_t M, int64_t N, int64_t K, int cluster,
                                         int64_t workers, int64_t group, cudaStream_t stream,
                                         const Int8GemmSwiglu* swiglu) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const int64_t yn = swiglu != nullptr ? swiglu->half_n : N;  // y's columns
  if (swiglu != nullptr) {
    if (swiglu->half_n <= 0 || swiglu->half_n % (kBN / 2) != 0 || 2 * swiglu->half_n != N)
      return cudaErrorInvalidValue;
    if (swiglu->row_flags != nullptr && (swiglu->side == nullptr || swiglu->ld_side < N)) return cudaErrorInvalidValue;
    if (swiglu->row_flags != nullptr &&
        (swiglu->ld_side % 2 != 0 || reinterpret_cast<uintptr_t>(swiglu->side) % 4 != 0))
      return cudaErrorMisalignedAddress;
    if (swiglu->row_sums != nullptr && swiglu->ld_sums < swiglu->half_n / (kBN / 2)) return cudaErrorInvalidValue;
  }
  SBOPS_RETURN_IF_ERROR(check_launch_shape(M, N, K, lda, ldb, ldy, yn, cluster, group));
  if (K % 16 != 0 || N % 2 != 0 || lda % 16 != 0 || ldb % 16 != 0) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(a) % 16 != 0 || reinterpret_cast<uintptr_t>(b) % 16 != 0)
    return cudaErrorMisalignedAddress;
  if (y_dtype != DType::BF16 && y_dtype != DType::F16) return cudaErrorInvalidValue;
  if (ldy % 2 != 0 || reinterpret_cast<uintptr_t>(y) % 4 != 0) return cudaErrorMisalignedAddress;  // 2-column stores
  if (bias != nullptr && bias_dtype != DType::F32 && bias_dtype != y_dtype) return cudaErrorInvalidValue;
  if (!int8_gemm_sm90_available()) return cudaErrorNotSupported;
  Launch l{};
  SBOPS_RETURN_IF_ERROR(encode_int8_map(&l.tm_a, a, M, K, lda, kBM));
  // the TMA-store epilogue where y's rows are 16-byte aligned (TMA), else the stores from registers
  const bool tma_store = kTmaStoreEpilogue && ldy % 8 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
                         encode_y_map(&l.tm_y, y, y_dtype, M, yn, ldy) == cudaSuccess;
  if (swiglu != nullptr && !tma_store) return cudaErrorMisalignedAddress;  // its epilogue stores through TMA only
  if (swiglu != nullptr)
    l.half_n = static_cast<int>(swiglu->half_n), l.row_flags = swiglu->row_flags, l.side = swiglu->side,
    l.ld_side = swiglu->ld_side, l.row_sums = swiglu->row_sums, l.ld_sums = swiglu->ld_sums;
  l.vth = vth, l.scale = scale, l.bias = bias, l.bias_f32 = bias_dtype == DType::F32, l.y = y, l.ldy = ldy;
  l.M = static_cast<int>(M), l.N = static_cast<int>(N), l.K = static_cast<int>(K), l.workers = workers,
  l.group = group;
  return launch_clustered_or_not(
      l, cluster, [&](CUtensorMap* map, int box) { return encode_int8_map(map, b, N, K, ldb, box); },
      [&](bool mc) {
        return mc ? launch_dtype<true>(l, y_dtype, tma_store, stream)
                  : launch_dtype<false>(l, y_dtype, tma_store, stream);
      });
}

cudaError_t sbops::launch_bf16_gemm_sm90(const void* a, int64_t lda, const void* b, int64_t ldb, const void* bias,
                                         DType bias_dtype, void* y, int64_t ldy, int64_t M, int64_t N, int64_t K,
                                         int cluster, int64_t workers, int64_t group, int64_t swiglu_half_n,
                                         cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const bool sw = swiglu_half_n > 0;
  const int64_t yn = sw ? swiglu_half_n : N;
  if (swiglu_half_n < 0 || (sw && (swiglu_half_n % (kBN / 2) != 0 || 2 * swiglu_half_n != N)))
    return cudaErrorInvalidValue;
  SBOPS_RETURN_IF_ERROR(check_launch_shape(M, N, K, lda, ldb, ldy, yn, cluster, group));
  // 16-byte rows for TMA (K, the row strides and y's in multiples of 8 elements; aligned bases)
  if (K % 8 != 0 || N % 8 != 0 || lda % 8 != 0 || ldb % 8 != 0 || ldy % 8 != 0) return cudaErrorInvalidValue;
  for (const void* p : {a, b, static_cast<const void*>(y)})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return cudaErrorMisalignedAddress;
  if (bias != nullptr && bias_dtype != DType::F32 && bias_dtype != DType::BF16) return cudaErrorInvalidValue;
  if (!int8_gemm_sm90_available()) return cudaErrorNotSupported;
  constexpr auto kBf16 = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  Launch l{};
  SBOPS_RETURN_IF_ERROR(sm90::encode_matrix_map(&l.tm_a, kBf16, 2, a, M, K, lda * 2, kBM));
  SBOPS_RETURN_IF_ERROR(encode_y_map(&l.tm_y, y, DType::BF16, M, yn, ldy));
  l.half_n = static_cast<int>(swiglu_half_n);
  l.bias = bias, l.bias_f32 = bias_dtype == DType::F32, l.y = y, l.ldy = ldy;
  l.M = static_cast<int>(M), l.N = static_cast<int>(N), l.K = static_cast<int>(K), l.workers = workers,
  l.group = group;
  return launch_clustered_or_not(
      l, cluster,
      [&](CUtensorMap* map, int box) { return sm90::encode_matrix_map(map, kBf16, 2, b, N, K, ldb * 2, box); },
      [&](bool mc) {
        return mc ? launch_epilogue<__nv_bfloat16, true, true>(l, true, stream)
                  : launch_epilogue<__nv_bfloat16, false, true>(l, true, stream);
      });
}

#else  // USE_MACA: MetaX has no wgmma; the caller keeps torch._int_mm

bool sbops::int8_gemm_sm90_available() { return false; }
cudaError_t sbops::launch_int8_gemm_sm90(const int8_t*, int64_t, const int8_t*, int64_t, const float*, const float*,
                                         const void*, DType, void*, int64_t, DType, int64_t, int64_t, int64_t, int,
                                         int64_t, int64_t, cudaStream_t, const Int8GemmSwiglu*) {
  return cudaErrorNotSupported;
}
cudaError_t sbops::launch_bf16_gemm_sm90(const void*, int64_t, const void*, int64_t, const void*, DType, void*,
                                         int64_t, int64_t, int64_t, int64_t, int, int64_t, int64_t, int64_t,
                                         cudaStream_t) {
  return cudaErrorNotSupported;
}

#endif  // USE_MACA
