// Probe, not in the library (session 38): a Hopper (sm_90a) dense decode GEMM, y = x @ w^T for M <= 32 rows of x,
// float16 or bfloat16, float32 accumulation, y in x's dtype, written to beat cuBLAS past 16 rows, where the
// register-streaming GEMV of backends/cuda/kernels/dense_decode.cu loses (x's n-tiles take its registers).  Measured on
// an H100 it lost to both at every 7B shape but the widest (benchmarks/RESULTS_sessions_37-39.md, session 38; its
// open variants, session 43: RESULTS.md), so it was taken out of the library.  The loss is the cut tiles' reduction: with it dropped (SBOPS_DD90_TIMING_NO_REDUCE, wrong results) the
// kernel beat cuBLAS at M = 32 on every layer shape.  dense_decode_sm90_variants.cu times it with the knobs below; the
// next tries, written after the last device call and not yet run: SBOPS_DD90_DEFER_FIRST (a block's cut first tile
// summed after its last unit) and SBOPS_DD90_CLUSTER_K (no stream-K: clusters of CS blocks split each tile's K and
// sum through distributed shared memory, no global counters).  Torch-free; NVIDIA sm_90a only.
//
// Both operands are staged in shared memory by TMA and multiplied with wgmma, so the rows of x cost shared memory, not
// registers.  "Swap AB": the weight tile is wgmma's A operand (64 weight rows per MMA) and x's rows are B (N = NT =
// 8, 16 or 32 tokens, rows past M arrive as zeros), so D is a tile of y^T.
// Work is split "stream-K": a unit is one 128-column K step of one tile (weight rows), the units are ordered tile by
// tile and every block of a persistent grid (one per SM) takes an equal contiguous range of them, so each SM streams
// the same number of weight bytes whatever the shape and the pipeline never drains between tiles.  A block that holds a
// whole tile stores it; a tile cut between blocks is summed by the last of them to finish: each writes its float32
// partial to a workspace slot, bumps the tile's counter, and the one that brings it to the number of pieces adds the
// pieces in block order (deterministic), stores y and resets the counter to 0 for the next call.
//
// Block: warpgroup 0 (128 threads) multiplies, warp 4's lane 0 fills a ring of stages (weights 128 x 128, x NT x
// 128; 128-byte swizzle, the KMajorSw128Tile layout of sm90.cuh).  Launched as a programmatic dependent (sm_90):
// before it waits for the kernel before, the producer may only ask L2 to prefetch the first stages' weights (a hint);
// every load into shared memory and every store comes after the wait.
#pragma once

#include "dense_decode.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "pdl_launch.cuh"
#include "sm90.cuh"

namespace sbops {

// ws: dense_decode_sm90_workspace(M) floats of scratch; cnt: dense_decode_sm90_tiles(N) int32 counters, zero before
// the call and zero again after it (the kernel resets them), never used by two launches at once.
cudaError_t launch_dense_decode_sm90(const DenseDecodeArgs& args, DType dtype, float* ws, int* cnt, cudaStream_t stream);
bool dense_decode_sm90_available();
int dense_decode_sm90_grid();
int64_t dense_decode_sm90_tiles(int64_t N);
int64_t dense_decode_sm90_workspace(int64_t M);

namespace {

// Probe knobs (benchmarks/gpu/probes/dense_decode_sm90_variants.cu compiles the kernel with other values; the library
// builds these defaults): the L2 prefetch before the wait, the programmatic launch, blocks per SM (each with 1 / n of
// the shared memory), the MMA warpgroup keeping one stage's MMAs in flight while it issues the next.
#ifndef SBOPS_DD90_L2_PREFETCH
#define SBOPS_DD90_L2_PREFETCH 1
#endif
#ifndef SBOPS_DD90_PDL
#define SBOPS_DD90_PDL 1
#endif
#ifndef SBOPS_DD90_BLOCKS_PER_SM
#define SBOPS_DD90_BLOCKS_PER_SM 1
#endif
#ifndef SBOPS_DD90_MMA_IN_FLIGHT
#define SBOPS_DD90_MMA_IN_FLIGHT 0
#endif
#ifndef SBOPS_DD90_TILE_ROWS  // 128 (two wgmma m64 a tile) or 64
#define SBOPS_DD90_TILE_ROWS 128
#endif
#ifndef SBOPS_DD90_GRID_TILES  // 1: one block per tile (no tile is cut; more or fewer blocks than SMs)
#define SBOPS_DD90_GRID_TILES 0
#endif
#ifndef SBOPS_DD90_DEFER_FIRST  // 1: a block's cut first tile is summed after its last unit, not between its units
#define SBOPS_DD90_DEFER_FIRST 0
#endif
#ifndef SBOPS_DD90_CLUSTER_K  // CS >= 2: no stream-K; a cluster of CS blocks per tile splits its K, summed through DSMEM
#define SBOPS_DD90_CLUSTER_K 0
#endif
#ifndef SBOPS_DD90_TIMING_NO_REDUCE  // timing only (wrong results): the pieces of cut tiles are dropped
#define SBOPS_DD90_TIMING_NO_REDUCE 0
#endif

constexpr int kTileRows = SBOPS_DD90_TILE_ROWS;  // weight rows (columns of y) per tile: wgmma m64 each
constexpr int kH = kTileRows / 64;
constexpr int kClusterK = SBOPS_DD90_CLUSTER_K;
static_assert(kClusterK == 0 || (kClusterK >= 2 && kClusterK <= 8), "a cluster of 2-8 blocks");
constexpr int kBK = 128;        // K per unit / stage: two 64-column swizzle atoms
constexpr int kConsumers = 128;
constexpr int kThreads = kConsumers + 32;
constexpr int kBlocksPerSm = SBOPS_DD90_BLOCKS_PER_SM;
constexpr int kSmemBudget = 220 * 1024 / kBlocksPerSm;

template <int NT>
struct Cfg {
  using TileW = sm90::KMajorSw128Tile<kTileRows, kBK>;
  using TileX = sm90::KMajorSw128Tile<NT, kBK>;
  static constexpr int kWBytes = TileW::kBytes, kXBytes = TileX::kBytes;
  static constexpr int kStageBytes = kWBytes + kXBytes;  // a multiple of 1024: every tile stays atom-aligned
  static constexpr int kStages = kSmemBudget / kStageBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + 16 * kStages;  // the ring, then its mbarriers
  static_assert(kStageBytes % 1024 == 0 && kStages >= 2, "stage layout");
};

struct Sm90Args {
  const void* bias;  // [N] or null: float32, or x's dtype where bias_x_dtype
  bool bias_x_dtype;
  void* y;    // [M, N], row stride ldy
  float* ws;  // [2 grid, kTileRows NT] partials
  int* cnt;   // [tiles], zero between calls
  int64_t ldy, units;
  int M, N, ks, grid;
};

#ifdef SBOPS_SM90A_DEVICE
// the block that holds unit u (blocks take units [g U / G, (g + 1) U / G))
__device__ __forceinline__ int block_of(int64_t u, int64_t U, int G) {
  return static_cast<int>(((u + 1) * G - 1) / U);
}
__device__ __forceinline__ int64_t first_unit(int g, int64_t U, int G) { return g * U / G; }

// D[64 x NT] (+)= A[64 x 16] B[NT x 16]^T, both K-major in shared memory
template <typename E, int NT>
struct SkinnyMma;
#define SBOPS_SKINNY_MMA(E, TY)                                                                                      \
  template <>                                                                                                        \
  struct SkinnyMma<E, 8> {                                                                                           \
    __device__ static void ss(float (&d)[4], uint64_t da, uint64_t db, int scale_d) {                                \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"                                                       \
                   "wgmma.mma_async.sync.aligned.m64n8k16.f32." TY "." TY " {%0, %1, %2, %3}, %4, %5, p, 1, 1, 0, 0;\n}\n" \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                  \
                   : "l"(da), "l"(db), "r"(scale_d));                                                                \
    }                                                                                                                \
  };                                                                                                                 \
  template <>                                                                                                        \
  struct SkinnyMma<E, 16> {                                                                                          \
    __device__ static void ss(float (&d)[8], uint64_t da, uint64_t db, int scale_d) {                                \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                                                      \
                   "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY                                           \
                   " {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"                                  \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])  \
                   : "l"(da), "l"(db), "r"(scale_d));                                                                \
    }                                                                                                                \
  };                                                                                                                 \
  template <>                                                                                                        \
  struct SkinnyMma<E, 32> {                                                                                          \
    __device__ static void ss(float (&d)[16], uint64_t da, uint64_t db, int scale_d) {                               \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                                      \
                   "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY                                           \
                   " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n" \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                     "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),         \
                     "+f"(d[15])                                                                                     \
                   : "l"(da), "l"(db), "r"(scale_d));                                                                \
    }                                                                                                                \
  };
SBOPS_SKINNY_MMA(__nv_bfloat16, "bf16")
SBOPS_SKINNY_MMA(__half, "f16")
#undef SBOPS_SKINNY_MMA

// an L2 prefetch of a tensor map's box (a hint: no shared memory, no barrier)
__device__ __forceinline__ void tma_prefetch_l2_2d(const void* map, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global [%0, {%1, %2}];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1)
               : "memory");
}

// y[m, n] of the tile's D fragment (+ bias): warp w, lane (q, t4) holds, per 8-token block j, tokens 8 j + 2 t4, + 1
// of weight rows 16 w + q and 16 w + q + 8 of each 64-row half h
template <typename E, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[kH][NT / 2], const Sm90Args& a, int n0) {
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, q = lane >> 2, t4 = lane & 3;
  E* y = static_cast<E*>(a.y);
#pragma unroll
  for (int h = 0; h < kH; ++h)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int n = n0 + 64 * h + 16 * w + q + 8 * r;
      if (n >= a.N) continue;
      float b = 0.f;
      if (a.bias != nullptr)
        b = a.bias_x_dtype ? to_float(static_cast<const E*>(a.bias)[n]) : static_cast<const float*>(a.bias)[n];
#pragma unroll
      for (int j = 0; j < NT / 8; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int m = 8 * j + 2 * t4 + c;
          if (m < a.M) y[static_cast<int64_t>(m) * a.ldy + n] = from_float<E>(acc[h][4 * j + 2 * r + c] + b);
        }
    }
}

// A cut tile's piece: this block's float32 partial into its slot (2 g for its first tile, 2 g + 1 for its last), then
// the tile's counter; the piece that completes the count adds every piece in block order and stores y.
template <typename E, int NT>
__device__ __forceinline__ void finish_piece(const float (&acc)[kH][NT / 2], const Sm90Args& a, int g, int t,
                                             int first_tile, int& s_arrived) {
  constexpr int kPer = kH * NT / 2;  // floats a thread holds
  const int tid = threadIdx.x;
  const int64_t U = a.units;
  const int slot = 2 * g + (t == first_tile ? 0 : 1);
  float4* mine = reinterpret_cast<float4*>(a.ws + (static_cast<int64_t>(slot) * kTileRows * NT + tid * kPer));
#pragma unroll
  for (int h = 0; h < kH; ++h)
#pragma unroll
    for (int i4 = 0; i4 < NT / 8; ++i4)
      __stcg(mine + h * (NT / 8) + i4,
             make_float4(acc[h][4 * i4], acc[h][4 * i4 + 1], acc[h][4 * i4 + 2], acc[h][4 * i4 + 3]));
  __threadfence();
  sm90::named_sync(1, kConsumers);
  const int64_t tu0 = static_cast<int64_t>(t) * a.ks;
  const int gf = block_of(tu0, U, a.grid), gl = block_of(tu0 + a.ks - 1, U, a.grid);
  if (tid == 0) s_arrived = atomicAdd(a.cnt + t, 1);
  sm90::named_sync(1, kConsumers);
  if (s_arrived != gl - gf) return;
  __threadfence();  // the last piece: add them all, in block order
  float sum[kH][NT / 2];
#pragma unroll
  for (int h = 0; h < kH; ++h)
#pragma unroll
    for (int i2 = 0; i2 < NT / 2; ++i2) sum[h][i2] = 0.f;
  for (int gg = gf; gg <= gl; ++gg) {
    const int s2 = 2 * gg + (t == static_cast<int>(first_unit(gg, U, a.grid) / a.ks) ? 0 : 1);
    const float4* p = reinterpret_cast<const float4*>(a.ws + (static_cast<int64_t>(s2) * kTileRows * NT + tid * kPer));
#pragma unroll
    for (int h = 0; h < kH; ++h)
#pragma unroll
      for (int i4 = 0; i4 < NT / 8; ++i4) {
        const float4 v = __ldcg(p + h * (NT / 8) + i4);
        sum[h][4 * i4] += v.x, sum[h][4 * i4 + 1] += v.y, sum[h][4 * i4 + 2] += v.z, sum[h][4 * i4 + 3] += v.w;
      }
  }
  store_tile<E, NT>(sum, a, t * kTileRows);
  if (tid == 0) a.cnt[t] = 0;
}

__device__ __forceinline__ float4 ld_dsmem_f4(uint32_t addr) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

// SBOPS_DD90_CLUSTER_K: every thread of every block of the cluster calls this once, after its block's last unit (the
// ring is idle then).  The MMA threads (acc != null) put their sums in their block's shared memory; rank 0's add
// every rank's in rank order (DSMEM reads) and store tile t; the second barrier keeps each block's shared memory alive
// until rank 0 has read it.
template <typename E, int NT>
__device__ __forceinline__ void cluster_reduce(const float (*acc)[kH][NT / 2], unsigned char* smem, const Sm90Args& a,
                                               int rank, int t) {
  constexpr int kPer = kH * NT / 2;
  float* part = reinterpret_cast<float*>(smem);
  const int tid = threadIdx.x;
  if (acc != nullptr) {
    sm90::named_sync(1, kConsumers);  // every MMA warp's last wgmma has read the ring before it is overwritten
#pragma unroll
    for (int h = 0; h < kH; ++h)
#pragma unroll
      for (int i4 = 0; i4 < NT / 8; ++i4)
        *reinterpret_cast<float4*>(part + tid * kPer + h * (NT / 2) + 4 * i4) =
            make_float4((*acc)[h][4 * i4], (*acc)[h][4 * i4 + 1], (*acc)[h][4 * i4 + 2], (*acc)[h][4 * i4 + 3]);
  }
  sm90::cluster_sync();
  if (acc != nullptr && rank == 0) {
    float sum[kH][NT / 2];
#pragma unroll
    for (int h = 0; h < kH; ++h)
#pragma unroll
      for (int i2 = 0; i2 < NT / 2; ++i2) sum[h][i2] = (*acc)[h][i2];
    const uint32_t mine = sm90::smem_addr(part + tid * kPer);
    for (int r = 1; r < kClusterK; ++r) {
      const uint32_t peer = sm90::map_to_rank(mine, static_cast<uint32_t>(r));
#pragma unroll
      for (int h = 0; h < kH; ++h)
#pragma unroll
        for (int i4 = 0; i4 < NT / 8; ++i4) {
          const float4 v = ld_dsmem_f4(peer + 4 * (h * (NT / 2) + 4 * i4));
          sum[h][4 * i4] += v.x, sum[h][4 * i4 + 1] += v.y, sum[h][4 * i4 + 2] += v.z, sum[h][4 * i4 + 3] += v.w;
        }
    }
    store_tile<E, NT>(sum, a, t * kTileRows);
  }
  sm90::cluster_sync();
}
#endif  // SBOPS_SM90A_DEVICE

template <typename E, int NT>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
dense_decode_sm90_kernel(const __grid_constant__ CUtensorMap tm_w, const __grid_constant__ CUtensorMap tm_x,
                         const Sm90Args a) {
#ifdef SBOPS_SM90A_DEVICE
  using C = Cfg<NT>;
  constexpr int S = C::kStages;
  extern __shared__ __align__(1024) unsigned char smem[];
  __shared__ int s_arrived;
  const uint32_t s_tiles = sm90::smem_addr(smem);
  const uint32_t bar_full = s_tiles + S * C::kStageBytes, bar_empty = bar_full + 8 * S;
  const int tid = threadIdx.x, g = blockIdx.x;
  const int64_t U = a.units;
  int64_t u0 = first_unit(g, U, a.grid), u1 = first_unit(g + 1, U, a.grid);
  constexpr int kCs = kClusterK ? kClusterK : 1;
  const int cluster_tile = g / kCs;  // cluster mode: the tile of this block's cluster
  int rank = 0;
  if (kClusterK) {  // block rank r of the cluster takes K steps [r per, (r + 1) per) of its tile
    rank = static_cast<int>(sm90::cluster_ctarank());
    const int per = (a.ks + kCs - 1) / kCs;
    const int lo = rank * per < a.ks ? rank * per : a.ks, hi = (rank + 1) * per < a.ks ? (rank + 1) * per : a.ks;
    u0 = static_cast<int64_t>(cluster_tile) * a.ks + lo;
    u1 = static_cast<int64_t>(cluster_tile) * a.ks + hi;
  }
  if (tid == 0) sm90::ring_barriers_init<false>(bar_full, bar_empty, S, kConsumers);
  __syncthreads();

  if (tid >= kConsumers) {  // the producer (in cluster mode every thread stays for the cluster barriers below)
    if (tid != kConsumers) {
      if (kClusterK) {
        grid_dependents_launch();
        cluster_reduce<E, NT>(nullptr, smem, a, rank, cluster_tile);
      }
      return;
    }
    sm90::tma_prefetch_map(&tm_w);
    sm90::tma_prefetch_map(&tm_x);
    const int64_t n = u1 - u0;
    const int pre = static_cast<int>(n < S ? n : S);
    for (int i = 0; i < (SBOPS_DD90_L2_PREFETCH ? pre : 0); ++i) {  // a hint only: the weights are read after the wait
      const int64_t u = u0 + i;
      const int t = static_cast<int>(u / a.ks), k0 = static_cast<int>(u % a.ks) * kBK;
      tma_prefetch_l2_2d(&tm_w, k0, t * kTileRows);
      tma_prefetch_l2_2d(&tm_w, k0 + 64, t * kTileRows);
    }
    grid_dependency_wait();
    grid_dependents_launch();
    for (int64_t i = 0; i < n; ++i) {
      const int st = static_cast<int>(i % S);
      if (i >= S) sm90::mbar_wait(bar_empty + 8 * st, static_cast<uint32_t>(((i / S) & 1) ^ 1));
      const int64_t u = u0 + i;
      const int t = static_cast<int>(u / a.ks), k0 = static_cast<int>(u % a.ks) * kBK;
      const uint32_t sw = s_tiles + st * C::kStageBytes, sx = sw + C::kWBytes, full = bar_full + 8 * st;
      sm90::mbar_expect_tx(full, C::kStageBytes);
#pragma unroll
      for (int at = 0; at < 2; ++at) {
        sm90::tma_load_2d(sw + at * (kTileRows * 128), &tm_w, full, k0 + 64 * at, t * kTileRows);
        sm90::tma_load_2d(sx + at * (NT * 128), &tm_x, full, k0 + 64 * at, 0);
      }
    }
    if (kClusterK) cluster_reduce<E, NT>(nullptr, smem, a, rank, cluster_tile);
    return;
  }

  // the MMA warpgroup
  grid_dependency_wait();  // y, the workspace and the counters: the kernel before is done with them
  grid_dependents_launch();
  float acc[kH][NT / 2];
#pragma unroll
  for (int h = 0; h < kH; ++h)
#pragma unroll
    for (int i = 0; i < NT / 2; ++i) acc[h][i] = 0.f;
  int seg_k0 = static_cast<int>(u0 % a.ks);
  const int first_tile = static_cast<int>(u0 / a.ks);
  float first_acc[kH][NT / 2];  // SBOPS_DD90_DEFER_FIRST: the cut first tile's sums, kept to the end
  bool deferred = false;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t i = u - u0;
    const int st = static_cast<int>(i % S);
    const int t = static_cast<int>(u / a.ks), kk = static_cast<int>(u % a.ks);
    if (kk == 0) seg_k0 = 0;
    const uint32_t sw = s_tiles + st * C::kStageBytes, sx = sw + C::kWBytes;
    sm90::mbar_wait(bar_full + 8 * st, static_cast<uint32_t>((i / S) & 1));
    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks)
#pragma unroll
      for (int h = 0; h < kH; ++h)
        SkinnyMma<E, NT>::ss(acc[h], C::TileW::desc(sw, 64 * h, ks), C::TileX::desc(sx, 0, ks),
                             kk != seg_k0 || ks > 0);
    sm90::wgmma_commit();
    const bool piece_end = kk == a.ks - 1 || u == u1 - 1;
    if (SBOPS_DD90_MMA_IN_FLIGHT && !piece_end) {  // the stage before is done: release it, keep this one in flight
      sm90::wgmma_wait<1>();
      if (u > u0 && kk != seg_k0) sm90::mbar_arrive(bar_empty + 8 * ((st + S - 1) % S));
      continue;
    }
    sm90::wgmma_wait<0>();
#pragma unroll
    for (int h = 0; h < kH; ++h) sm90::reg_fence(acc[h]);
    if (SBOPS_DD90_MMA_IN_FLIGHT && u > u0 && kk != seg_k0) sm90::mbar_arrive(bar_empty + 8 * ((st + S - 1) % S));
    sm90::mbar_arrive(bar_empty + 8 * st);
    if (!piece_end) continue;
    // ---- the end of this block's piece of tile t
    const int n0 = t * kTileRows;
    if (kClusterK) continue;  // cluster mode: summed after the last unit (cluster_reduce)
    if (seg_k0 == 0 && kk == a.ks - 1) {  // the whole tile
      store_tile<E, NT>(acc, a, n0);
      continue;
    }
    if (SBOPS_DD90_TIMING_NO_REDUCE) continue;
    if (SBOPS_DD90_DEFER_FIRST && t == first_tile && u != u1 - 1) {  // keep it: summed after the last unit
#pragma unroll
      for (int h = 0; h < kH; ++h)
#pragma unroll
        for (int i2 = 0; i2 < NT / 2; ++i2) first_acc[h][i2] = acc[h][i2];
      deferred = true;
      continue;
    }
    finish_piece<E, NT>(acc, a, g, t, first_tile, s_arrived);
  }
  if (SBOPS_DD90_DEFER_FIRST && deferred) finish_piece<E, NT>(first_acc, a, g, first_tile, first_tile, s_arrived);
  if (kClusterK) cluster_reduce<E, NT>(&acc, smem, a, rank, cluster_tile);
#endif  // SBOPS_SM90A_DEVICE
}

// Tensor map of a 16-bit [rows, K] matrix with row stride ld (elements), boxes of 64 columns (128 bytes) x box_rows
// rows, 128-byte swizzle (one atom of KMajorSw128Tile<box_rows, .>); elements past the matrix read as zeros.
cudaError_t encode_rows16_map(CUtensorMap* map, CUtensorMapDataType type, const void* base, int64_t rows, int64_t K,
                              int64_t ld, int box_rows) {
  return sm90::encode_matrix_map(map, type, 2, base, rows, K, ld * 2, box_rows);
}

template <typename E, int NT>
cudaError_t launch_nt(const DenseDecodeArgs& d, CUtensorMapDataType type, float* ws, int* cnt, cudaStream_t st) {
  const auto kernel = dense_decode_sm90_kernel<E, NT>;
  static bool attr_set[64] = {false};
  int dev = 0;
  SBOPS_RETURN_IF_ERROR(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
  if (!attr_set[dev]) {
    SBOPS_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg<NT>::kSmemBytes));
    attr_set[dev] = true;
  }
  CUtensorMap tm_w, tm_x;
  SBOPS_RETURN_IF_ERROR(encode_rows16_map(&tm_w, type, d.w, d.N, d.K, d.N > 1 ? d.ldw : d.K, kTileRows));
  SBOPS_RETURN_IF_ERROR(encode_rows16_map(&tm_x, type, d.x, d.M, d.K, d.M > 1 ? d.ldx : d.K, NT));
  Sm90Args a{};
  a.bias = d.bias;
  a.bias_x_dtype = d.bias_x_dtype;
  a.y = d.y;
  a.ws = ws;
  a.cnt = cnt;
  a.ldy = d.ldy;
  a.M = d.M;
  a.N = d.N;
  a.ks = static_cast<int>(ceil_div(d.K, kBK));
  a.units = ceil_div(d.N, kTileRows) * a.ks;
  a.grid = static_cast<int>(a.units < dense_decode_sm90_grid() ? a.units : dense_decode_sm90_grid());
  if (SBOPS_DD90_GRID_TILES) a.grid = static_cast<int>(ceil_div(d.N, kTileRows));
  if (kClusterK) {  // tiles x kClusterK blocks in clusters of kClusterK, as a programmatic dependent where it may
    a.grid = static_cast<int>(ceil_div(d.N, kTileRows) * kClusterK);
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = kClusterK;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(a.grid);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = Cfg<NT>::kSmemBytes;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = SBOPS_DD90_PDL && pdl_plan(kernel, 1) ? 2 : 1;
    return cudaLaunchKernelEx(&cfg, kernel, tm_w, tm_x, a);
  }
  return launch_kernel(kernel, dim3(a.grid), dim3(kThreads), Cfg<NT>::kSmemBytes, st,
                       SBOPS_DD90_PDL && pdl_plan(kernel, 1), tm_w, tm_x, a);
}

}  // namespace
}  // namespace sbops

int sbops::dense_decode_sm90_grid() { return kBlocksPerSm * num_sms(); }

int64_t sbops::dense_decode_sm90_tiles(int64_t N) { return ceil_div(N, kTileRows); }

int64_t sbops::dense_decode_sm90_workspace(int64_t M) {
  const int64_t nt = M <= 8 ? 8 : M <= 16 ? 16 : 32;
  return 2 * static_cast<int64_t>(SBOPS_DD90_GRID_TILES ? 1 : dense_decode_sm90_grid()) * kTileRows * nt;
}

bool sbops::dense_decode_sm90_available() {
  static signed char cache[64] = {0};
  return sm90::sm90a_kernel_available(dense_decode_sm90_kernel<__nv_bfloat16, 8>, cache);
}

cudaError_t sbops::launch_dense_decode_sm90(const DenseDecodeArgs& a, DType dtype, float* ws, int* cnt,
                                            cudaStream_t st) {
  if (a.M < 1 || a.M > kDenseDecodeMaxRows || a.N < 1 || a.K < 8 || a.K % 8 != 0 || a.ldw % 8 != 0 ||
      (a.M > 1 && a.ldx % 8 != 0) || a.ldy < a.N)
    return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(a.x) % 16 != 0 || reinterpret_cast<uintptr_t>(a.w) % 16 != 0)
    return cudaErrorMisalignedAddress;
  if (dtype != DType::BF16 && dtype != DType::F16) return cudaErrorInvalidValue;
  if (!dense_decode_sm90_available()) return cudaErrorNotSupported;
  const CUtensorMapDataType type =
      dtype == DType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  if (dtype == DType::BF16) {
    if (a.M <= 8) return launch_nt<__nv_bfloat16, 8>(a, type, ws, cnt, st);
    if (a.M <= 16) return launch_nt<__nv_bfloat16, 16>(a, type, ws, cnt, st);
    return launch_nt<__nv_bfloat16, 32>(a, type, ws, cnt, st);
  }
  if (a.M <= 8) return launch_nt<__half, 8>(a, type, ws, cnt, st);
  if (a.M <= 16) return launch_nt<__half, 16>(a, type, ws, cnt, st);
  return launch_nt<__half, 32>(a, type, ws, cnt, st);
}
