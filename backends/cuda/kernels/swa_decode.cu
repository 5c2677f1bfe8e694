// Sliding-window attention decode over a ring-buffer KV cache (the cache write: swa_cache_write.cu).
// Torch-free.
//
// Flash-decoding on CUDA cores: the window of each (sequence, KV head) is split across `num_splits`
// blocks; one block serves all query heads of its KV head (up to kMaxHeads; more heads use
// blockIdx.z), so every K/V row is read from memory once.  The block walks its keys in tiles of
// kSwaTile (= block size):
//   1. scores: thread t owns key t of the tile, reads its K row with 16-byte loads and computes the
//      dot products with every query head (q staged in shared memory, read as broadcasts): no
//      cross-lane reduction per key;
//   2. online softmax: per-head tile max over the block (one warp reduction per head per tile),
//      probabilities into shared memory; each thread keeps a partial row sum;
//   3. P.V: warp w owns a contiguous quarter of the tile's keys and lane l owns D / warp-width
//      dimensions; each V row is one coalesced warp load, accumulated for all heads.
// At the end the warps' accumulators merge through shared memory.  With one split the block writes
// the output; otherwise it writes (max, sum, acc) partials that a combine kernel merges.  Scores are
// kept in the log2 domain (q pre-scaled by scale * log2 e) so the exponentials are exp2f.
//
// Sink keys (SpikingBrain-76B's meta tokens) are folded in as a block of M extra keys before the
// window: a (sequence, KV head) walks the virtual key range [0, M + len) -- sink j for j < M, then
// the cached positions lo .. L-1 -- split, tiled and softmaxed exactly like window keys (KeyRows).
// q, the caches and the sinks are read in place through their element strides; the caches' and
// sinks' rows must be 16-byte aligned (the binding copies operands that are not).
//
// bf16 / fp16 caches on NVIDIA take a tensor-core kernel instead (swa_decode_mma_kernel): a block
// stages its K and V tiles in shared memory with cp.async (double-buffered, coalesced 16-byte
// copies), computes Q.K^T and P.V with wmma 16x16x16 MMAs (up to 16 query heads as the M rows) and
// keeps the online softmax per head in float32; same splits, partials and combine kernel.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "decode.cuh"
#include "swa_decode_keys.cuh"

#if !defined(USE_MACA)
// NVIDIA only: the tensor-core kernel below (wmma + cp.async).  MACA builds (and the simulation)
// use the CUDA-core kernel for every dtype: MetaX's matrix-core API is not CUDA's wmma.
#include <cuda_pipeline.h>
#include <mma.h>
#define SBOPS_SWA_DECODE_MMA 1
#include <cstdlib>

#include "swa_decode_mma.cuh"
#endif

namespace sbops {
namespace {

using namespace swa_decode_detail;  // KeyRows, SplitPlan, plan_split

constexpr int kSwaThreads = 128;
constexpr int kSwaTile = kSwaThreads;            // keys per tile: one per thread in the score phase
constexpr int kSwaWarps = kSwaThreads / kWarpSize;
constexpr int kPvKeysPerWarp = kSwaTile / kSwaWarps;
constexpr int kPvUnroll = 8;                     // V rows in flight per lane in the P.V phase
constexpr int kMaxHeads = 8;                     // query heads per block (more heads: blockIdx.z chunks)
constexpr int kKeysPerSplit = 512;               // split length when the grid is full anyway
constexpr int kBlocksPerSm = 4;                  // grid target when it is not
constexpr int kMinResidentBlocks = 3;            // register budget: <= 168 per thread

template <typename T, int D>
__global__ void __launch_bounds__(kSwaThreads, kMinResidentBlocks)
swa_decode_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                  const void* __restrict__ seq_lens, bool lens64, const void* __restrict__ slots, bool slots64,
                  int64_t C, int64_t num_slots, int HKV, int G, int window, float scale_log2, int nsplit,
                  T* __restrict__ o, float* __restrict__ part, int64_t q0, int64_t q1, SwaCacheStrides cs,
                  SwaSinks sinks, int64_t nh0) {
  constexpr int VEC = vec16<T>();        // elements per 16-byte K load
  constexpr int NV = D / VEC;            // 16-byte vectors per K row
  constexpr int KB = NV < 8 ? NV : 8;    // K vectors loaded per batch (registers)
  constexpr int DPL = D / kWarpSize;     // dimensions per lane in the P.V phase
  static_assert(D % VEC == 0 && VEC % 4 == 0 && NV % KB == 0 && D % kWarpSize == 0, "unsupported head dim");
  using KV = Vec<T, VEC>;
  using VV = Vec<T, DPL>;
  __shared__ __align__(16) float s_q[kMaxHeads][D];        // q * scale * log2 e
  __shared__ __align__(16) float s_p[kSwaTile][kMaxHeads];  // scores, then probabilities
  __shared__ float s_red[kSwaWarps][kMaxHeads];
  __shared__ float s_m[kMaxHeads];
  __shared__ float s_acc[kSwaWarps][kMaxHeads][D];

  const int tid = threadIdx.x, lane = lane_id(), warp = warp_id();
  const int split = blockIdx.x;
  const int64_t nh = nh0 + blockIdx.y;  // n * HKV + hk (launched in slices of kMaxGridYZ)
  const int64_t n = nh / HKV;
  const int hk = static_cast<int>(nh % HKV);
  const int h0 = blockIdx.z * kMaxHeads;
  const int nheads = min(kMaxHeads, G - h0);
  const int H = HKV * G;

  const int64_t L = load_index(seq_lens, lens64, n);
  const int64_t slot = slots ? load_index(slots, slots64, n) : n;
  const SplitPlan<T> sp = plan_split(kc, vc, cs, static_cast<const T*>(sinks.k), static_cast<const T*>(sinks.v),
                                     sinks, L, slot, num_slots, C, hk, window, nsplit, split);
  const bool bad_slot = sp.bad;
  const int64_t cnt = sp.cnt;

  for (int i = tid; i < kMaxHeads * D; i += kSwaThreads) {
    const int h = i / D, d = i % D;
    s_q[h][d] = h < nheads ? to_float(q[n * q0 + (hk * G + h0 + h) * q1 + d]) * scale_log2 : 0.f;
  }
  __syncthreads();

  float m[kMaxHeads], lsum[kMaxHeads], acc[kMaxHeads][DPL];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    m[h] = -INFINITY;
    lsum[h] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[h][i] = 0.f;
  }

  // The trip count is uniform over the block (barriers and shuffles below).
  for (int64_t t0 = 0; t0 < cnt; t0 += kSwaTile) {
    // 1. scores of key t0 + tid for every head
    const int64_t j = t0 + tid;
    const bool ok = j < cnt;
    float sc[kMaxHeads];
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) sc[h] = 0.f;
    if (ok) {
      const KV* kr = reinterpret_cast<const KV*>(sp.rows.key(sp.a + j));
#pragma unroll
      for (int cb = 0; cb < NV; cb += KB) {
        KV kv[KB];
#pragma unroll
        for (int c = 0; c < KB; ++c) kv[c] = kr[cb + c];
#pragma unroll
        for (int c = 0; c < KB; ++c) {
          float kf[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) kf[e] = to_float(kv[c].v[e]);
#pragma unroll
          for (int h = 0; h < kMaxHeads; ++h) {
            if (h >= nheads) break;  // uniform
#pragma unroll
            for (int e4 = 0; e4 < VEC; e4 += 4) {
              const float4 qv = *reinterpret_cast<const float4*>(&s_q[h][(cb + c) * VEC + e4]);
              sc[h] += qv.x * kf[e4] + qv.y * kf[e4 + 1] + qv.z * kf[e4 + 2] + qv.w * kf[e4 + 3];
            }
          }
        }
      }
    }
    // 2. online softmax: block-wide tile max per head
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      if (!ok) sc[h] = -INFINITY;
      const float wm = warp_reduce_max<kWarpSize>(sc[h]);
      if (lane == 0) s_red[warp][h] = wm;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      float tm = -INFINITY;
#pragma unroll
      for (int w = 0; w < kSwaWarps; ++w) tm = fmaxf(tm, s_red[w][h]);
      const float mnew = fmaxf(m[h], tm);
      const float corr = m[h] == -INFINITY ? 0.f : exp2f(m[h] - mnew);
      const float p = sc[h] == -INFINITY ? 0.f : exp2f(sc[h] - mnew);
      s_p[tid][h] = p;
      lsum[h] = lsum[h] * corr + p;
      m[h] = mnew;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[h][i] *= corr;
    }
    __syncthreads();
    // 3. P.V over this warp's keys of the tile
    const int kbeg = warp * kPvKeysPerWarp;
#pragma unroll
    for (int u0 = 0; u0 < kPvKeysPerWarp; u0 += kPvUnroll) {
      VV vv[kPvUnroll];
#pragma unroll
      for (int u = 0; u < kPvUnroll; ++u) {
        const int64_t jj = t0 + kbeg + u0 + u;
        if (jj < cnt) vv[u] = *reinterpret_cast<const VV*>(sp.rows.val(sp.a + jj) + lane * DPL);
      }
#pragma unroll
      for (int u = 0; u < kPvUnroll; ++u) {
        const int kk = kbeg + u0 + u;
        if (t0 + kk >= cnt) break;  // uniform over the warp
        float vf[DPL];
#pragma unroll
        for (int i = 0; i < DPL; ++i) vf[i] = to_float(vv[u].v[i]);
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h) {
          if (h >= nheads) break;
          const float p = s_p[kk][h];
#pragma unroll
          for (int i = 0; i < DPL; ++i) acc[h][i] += p * vf[i];
        }
      }
    }
    __syncthreads();  // s_p and s_red are rewritten by the next tile
  }

  // Merge: row sums over the block, accumulators over the warps (m is uniform over the block).
  if (tid == 0) {
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) s_m[h] = m[h];
  }
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    const float ws = warp_reduce_sum<kWarpSize>(lsum[h]);
    if (lane == 0) s_red[warp][h] = ws;
    if (h < nheads) {
#pragma unroll
      for (int i = 0; i < DPL; ++i) s_acc[warp][h][lane * DPL + i] = acc[h][i];
    }
  }
  __syncthreads();
  for (int i = tid; i < nheads * D; i += kSwaThreads) {
    const int h = i / D, d = i % D;
    float Ls = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < kSwaWarps; ++w) {
      Ls += s_red[w][h];
      A += s_acc[w][h][d];
    }
    float M = s_m[h];
    const int64_t head = n * H + hk * G + h0 + h;
    if (bad_slot) {  // NaN out; partials that the combine turns into NaN
      M = 0.f;
      Ls = 1.f;
      A = NAN;
    }
    if (nsplit == 1) {
      o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
    } else {
      float* pp = part + (head * nsplit + split) * (D + 2);
      pp[2 + d] = A;
      if (d == 0) {
        pp[0] = M;
        pp[1] = Ls;
      }
    }
  }
}

#if defined(SBOPS_SWA_DECODE_MMA)
// TEMPORARY (session 14 A/B on the GPU): SBOPS_SWA_DECODE_WMMA=1 selects the earlier wmma kernel below.
inline bool legacy_wmma() {
  static const bool on = [] {
    const char* e = std::getenv("SBOPS_SWA_DECODE_WMMA");
    return e != nullptr && e[0] == '1';
  }();
  return on;
}
// ------------------------------------------------------------------ tensor-core kernel (bf16 / fp16)
namespace wm = nvcuda::wmma;
constexpr int kMmaThreads = 128;             // 4 warps
constexpr int kMmaWarps = kMmaThreads / kWarpSize;
constexpr int kMmaHeads = 16;                // query heads per block: the MMA's M
constexpr int kMmaTile = 64;                 // keys per tile: 16 per warp in Q.K^T
constexpr int kRowThreads = kMmaThreads / kMmaHeads;  // softmax threads per head row (8)
static_assert(kMmaTile == 16 * kMmaWarps, "one 16-key slice of the tile per warp");
static_assert(kWarpSize % kRowThreads == 0, "a head row's threads share a warp");

template <int D>
struct MmaSmem {  // shared-memory layout (bytes), rows padded by 16 bytes against bank conflicts
  static constexpr int LDQ = D + 8, LDK = D + 8, LDS = kMmaTile + 4, LDP = kMmaTile + 8, LDO = D + 4;
  static constexpr size_t q = 0;
  static constexpr size_t k = q + sizeof(uint16_t) * kMmaHeads * LDQ;
  static constexpr size_t v = k + sizeof(uint16_t) * 2 * kMmaTile * LDK;
  static constexpr size_t s = v + sizeof(uint16_t) * 2 * kMmaTile * LDK;
  static constexpr size_t p = s + sizeof(float) * kMmaHeads * LDS;
  static constexpr size_t o = p + sizeof(uint16_t) * kMmaHeads * LDP;
  static constexpr size_t bytes = o + sizeof(float) * kMmaHeads * LDO;
};

template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads)
swa_decode_mma_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                      const void* __restrict__ seq_lens, bool lens64, const void* __restrict__ slots, bool slots64,
                      int64_t C, int64_t num_slots, int HKV, int G, int window, float scale_log2, int nsplit,
                      T* __restrict__ o, float* __restrict__ part, int64_t q0, int64_t q1, SwaCacheStrides cs,
                      SwaSinks sinks, int64_t nh0) {
  using L = MmaSmem<D>;
  constexpr int VEC = 8;                    // 16-byte copies of 8 elements
  constexpr int CPR = D / VEC;              // copies per K/V row
  constexpr int COPIES = kMmaTile * CPR / kMmaThreads;  // per thread per tile, for K and for V
  constexpr int OCOLS = D / kMmaWarps;      // output columns per warp in P.V
  static_assert(kMmaTile * CPR % kMmaThreads == 0 && OCOLS % 16 == 0, "unsupported head dim");
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + L::q);
  T* k_s = reinterpret_cast<T*>(smem + L::k);
  T* v_s = reinterpret_cast<T*>(smem + L::v);
  float* s_s = reinterpret_cast<float*>(smem + L::s);
  T* p_s = reinterpret_cast<T*>(smem + L::p);
  float* o_s = reinterpret_cast<float*>(smem + L::o);

  const int tid = threadIdx.x, warp = warp_id();
  const int split = blockIdx.x;
  const int64_t nh = nh0 + blockIdx.y;
  const int64_t n = nh / HKV;
  const int hk = static_cast<int>(nh % HKV);
  const int h0 = blockIdx.z * kMmaHeads;
  const int nheads = min(kMmaHeads, G - h0);
  const int H = HKV * G;

  const int64_t Lq = load_index(seq_lens, lens64, n);
  const int64_t slot = slots ? load_index(slots, slots64, n) : n;
  const SplitPlan<T> sp = plan_split(kc, vc, cs, static_cast<const T*>(sinks.k), static_cast<const T*>(sinks.v),
                                     sinks, Lq, slot, num_slots, C, hk, window, nsplit, split);
  const bool bad_slot = sp.bad;
  const int64_t cnt = sp.cnt;
  const int ntiles = static_cast<int>(ceil_div(cnt, static_cast<int64_t>(kMmaTile)));

  // cp.async of tile `t` into buffer `b`; rows past cnt are zero-filled (P.V must see zeros there)
  auto load_tile = [&](int t, int b) {
#pragma unroll
    for (int u = 0; u < COPIES; ++u) {
      const int i = tid + u * kMmaThreads;
      const int j = i / CPR, c = i % CPR;
      const int64_t jj = static_cast<int64_t>(t) * kMmaTile + j;
      const bool ok = jj < cnt;
      // rows past cnt copy nothing (zero-fill) from a valid address: the first cache row
      const T* ksrc = ok ? sp.rows.key(sp.a + jj) + c * VEC : sp.rows.k;
      const T* vsrc = ok ? sp.rows.val(sp.a + jj) + c * VEC : sp.rows.v;
      const int so = (b * kMmaTile + j) * L::LDK + c * VEC;
      __pipeline_memcpy_async(k_s + so, ksrc, 16, ok ? 0 : 16);
      __pipeline_memcpy_async(v_s + so, vsrc, 16, ok ? 0 : 16);
    }
  };
  if (ntiles > 0) load_tile(0, 0);
  __pipeline_commit();

  for (int i = tid; i < kMmaHeads * D; i += kMmaThreads) {
    const int h = i / D, d = i % D;
    q_s[h * L::LDQ + d] = h < nheads ? q[n * q0 + (hk * G + h0 + h) * q1 + d] : from_float<T>(0.f);
  }
  for (int i = tid; i < kMmaHeads * L::LDO; i += kMmaThreads) o_s[i] = 0.f;
  __syncthreads();  // o_s is read back by other threads even when there is no tile

  // softmax state: thread t serves head row r = t / kRowThreads, columns c8 * 8 .. + 8 of a tile;
  // the kRowThreads threads of a row keep identical copies of its running max and sum
  const int r = tid / kRowThreads, c8 = tid % kRowThreads;
  constexpr int SC = kMmaTile / kRowThreads;   // score columns per thread
  constexpr int OC = D / kRowThreads;          // output columns per thread (rescale, final write)
  float m = -INFINITY, lsum = 0.f;

  for (int t = 0; t < ntiles; ++t) {
    const int b = t & 1;
    if (t + 1 < ntiles) load_tile(t + 1, b ^ 1);  // buffer b^1 was released by the last barrier
    __pipeline_commit();
    __pipeline_wait_prior(1);                     // this thread's copies of tile t have landed
    __syncthreads();                              // ... and everyone's

    {  // S[:, 16w .. 16w+16) = Q . K^T
      wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
      wm::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kd = 0; kd < D; kd += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::col_major> fb;
        wm::load_matrix_sync(fa, q_s + kd, L::LDQ);
        wm::load_matrix_sync(fb, k_s + (b * kMmaTile + 16 * warp) * L::LDK + kd, L::LDK);
        wm::mma_sync(acc, fa, fb, acc);
      }
      wm::store_matrix_sync(s_s + 16 * warp, acc, L::LDS, wm::mem_row_major);
    }
    __syncthreads();

    {  // online softmax of row r over this thread's SC columns, in the log2 domain
      const int64_t base = static_cast<int64_t>(t) * kMmaTile + c8 * SC;
      float sc[SC];
      float tmax = -INFINITY;
#pragma unroll
      for (int e = 0; e < SC; ++e) {
        sc[e] = base + e < cnt ? s_s[r * L::LDS + c8 * SC + e] * scale_log2 : -INFINITY;
        tmax = fmaxf(tmax, sc[e]);
      }
      tmax = warp_reduce_max<kRowThreads>(tmax);
      const float mnew = fmaxf(m, tmax);  // finite: every tile has at least one valid key
      const float corr = m == -INFINITY ? 0.f : exp2f(m - mnew);
      float ps = 0.f;
#pragma unroll
      for (int e = 0; e < SC; ++e) {
        const float pv = exp2f(sc[e] - mnew);  // exp2f(-inf) = 0
        p_s[r * L::LDP + c8 * SC + e] = from_float<T>(pv);
        ps += pv;
      }
      lsum = lsum * corr + warp_reduce_sum<kRowThreads>(ps);
      m = mnew;
#pragma unroll
      for (int e = 0; e < OC; ++e) o_s[r * L::LDO + c8 * OC + e] *= corr;
    }
    __syncthreads();

    // O[:, warp's columns] += P . V
#pragma unroll
    for (int oc = 0; oc < OCOLS; oc += 16) {
      const int col = warp * OCOLS + oc;
      wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
      wm::load_matrix_sync(acc, o_s + col, L::LDO, wm::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kMmaTile; kk += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb;
        wm::load_matrix_sync(fa, p_s + kk, L::LDP);
        wm::load_matrix_sync(fb, v_s + (b * kMmaTile + kk) * L::LDK + col, L::LDK);
        wm::mma_sync(acc, fa, fb, acc);
      }
      wm::store_matrix_sync(o_s + col, acc, L::LDO, wm::mem_row_major);
    }
    __syncthreads();  // s_s, p_s, o_s and buffer b are reused next tile
  }

  if (r < nheads) {
    const int64_t head = n * H + hk * G + h0 + r;
    float M = m, Ls = lsum;
#pragma unroll
    for (int e = 0; e < OC; ++e) {
      const int d = c8 * OC + e;
      float A = o_s[r * L::LDO + d];
      if (bad_slot) {  // NaN out; partials that the combine turns into NaN
        M = 0.f;
        Ls = 1.f;
        A = NAN;
      }
      if (nsplit == 1) {
        o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
      } else {
        float* pp = part + (head * nsplit + split) * (D + 2);
        pp[2 + d] = A;
        if (d == 0) {
          pp[0] = M;
          pp[1] = Ls;
        }
      }
    }
  }
}
#endif  // SBOPS_SWA_DECODE_MMA

// One block per (sequence, query head): merge the splits' (max, sum, acc) partials.
template <typename T>
__global__ void swa_combine_kernel(const float* __restrict__ part, T* __restrict__ o, int nsplit, int D) {
  const int64_t head = blockIdx.x;
  const float* pp = part + head * nsplit * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, pp[s * (D + 2)]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
      for (int s = 0; s < nsplit; ++s) {
        const float f = exp2f(pp[s * (D + 2)] - M);
        Ls += f * pp[s * (D + 2) + 1];
        A += f * pp[s * (D + 2) + 2 + d];
      }
    }
    o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
  }
}

// The per-call arguments every decode kernel takes after its pointers.
struct DecodeArgs {
  const void* lens;
  bool lens64;
  const void* slots;
  bool slots64;
  int64_t N;
  int H, HKV;
  int64_t C, ns;
  int window;
  float scale;
  int nsplit;
  float* ws;
  int64_t q0, q1;
  SwaCacheStrides cs;
  SwaSinks sinks;
};

template <typename T, int D>
cudaError_t decode_typed(const void* q, const void* kc, const void* vc, void* o, const DecodeArgs& A,
                         cudaStream_t st) {
  const int64_t N = A.N;
  const int H = A.H, HKV = A.HKV, nsplit = A.nsplit;
  float* ws = A.ws;
  const int G = H / HKV;
#if defined(SBOPS_SWA_DECODE_MMA)
  if constexpr (!std::is_same<T, float>::value) {
   if (!legacy_wmma()) {
    namespace wk = swa_decode_mma;
    constexpr size_t smem = wk::Smem<D>::bytes;
    SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(wk::swa_decode_warp_mma_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    SBOPS_RETURN_IF_ERROR(launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
      const dim3 grid(nsplit, rows, static_cast<unsigned>(ceil_div(G, wk::kHeads)));
      wk::swa_decode_warp_mma_kernel<T, D><<<grid, wk::kThreads, smem, st>>>(
          static_cast<const T*>(q), static_cast<const T*>(kc), static_cast<const T*>(vc), A.lens, A.lens64, A.slots,
          A.slots64, A.C, A.ns, HKV, G, A.window, A.scale * kLog2e, nsplit, static_cast<T*>(o), ws, A.q0, A.q1, A.cs,
          A.sinks, nh0);
    }));
   } else {
    constexpr size_t smem = MmaSmem<D>::bytes;
    SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(swa_decode_mma_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    SBOPS_RETURN_IF_ERROR(launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
      const dim3 grid(nsplit, rows, static_cast<unsigned>(ceil_div(G, kMmaHeads)));
      swa_decode_mma_kernel<T, D><<<grid, kMmaThreads, smem, st>>>(
          static_cast<const T*>(q), static_cast<const T*>(kc), static_cast<const T*>(vc), A.lens, A.lens64, A.slots,
          A.slots64, A.C, A.ns, HKV, G, A.window, A.scale * kLog2e, nsplit, static_cast<T*>(o), ws, A.q0, A.q1, A.cs,
          A.sinks, nh0);
    }));
   }
  } else
#endif
  {
    SBOPS_RETURN_IF_ERROR(launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
      const dim3 grid(nsplit, rows, static_cast<unsigned>(ceil_div(G, kMaxHeads)));
      swa_decode_kernel<T, D><<<grid, kSwaThreads, 0, st>>>(
          static_cast<const T*>(q), static_cast<const T*>(kc), static_cast<const T*>(vc), A.lens, A.lens64, A.slots,
          A.slots64, A.C, A.ns, HKV, G, A.window, A.scale * kLog2e, nsplit, static_cast<T*>(o), ws, A.q0, A.q1, A.cs,
          A.sinks, nh0);
    }));
  }
  if (nsplit > 1) {
    swa_combine_kernel<T><<<static_cast<unsigned>(N * H), D, 0, st>>>(ws, static_cast<T*>(o), nsplit, D);
    SBOPS_RETURN_IF_ERROR(last_launch_error());
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t decode_dim(int D, const void* q, const void* kc, const void* vc, void* o, const DecodeArgs& A,
                       cudaStream_t st) {
  switch (D) {
    case 64: return decode_typed<T, 64>(q, kc, vc, o, A, st);
    case 128: return decode_typed<T, 128>(q, kc, vc, o, A, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool swa_decode_supports(int D, DType dtype) {
  return (D == 64 || D == 128) && (dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16);
}

int swa_decode_num_splits(int64_t N, int H, int HKV, int window, int64_t C, int64_t M, DType dtype) {
  const int64_t keys = M + (window < 0 ? C : (window + 1 < C ? window + 1 : C));
#if defined(SBOPS_SWA_DECODE_MMA)
  if (dtype != DType::F32 && !legacy_wmma())
    return swa_decode_mma::num_splits(N * HKV * ceil_div(H / HKV, swa_decode_mma::kHeads), keys);
#else
  (void)dtype;
#endif
  const int64_t pairs = N * HKV * ceil_div(H / HKV, kMaxHeads);
  // Splits of about kKeysPerSplit keys, more when the grid would not fill kBlocksPerSm blocks per
  // SM, never shorter than one tile.
  const int64_t by_len = ceil_div(keys, kKeysPerSplit);
  const int64_t by_grid = ceil_div(static_cast<int64_t>(kBlocksPerSm) * num_sms(), pairs);
  const int64_t cap = ceil_div(keys, kSwaTile);
  int64_t s = by_len > by_grid ? by_len : by_grid;
  if (s > cap) s = cap;
  if (s > 1024) s = 1024;
  return static_cast<int>(s < 1 ? 1 : s);
}

int64_t swa_decode_workspace_floats(int64_t N, int H, int D, int num_splits) {
  return num_splits > 1 ? N * H * num_splits * (D + 2) : 0;
}

cudaError_t launch_swa_decode(const void* q, const void* kc, const void* vc, DType dtype, const void* lens,
                              bool lens64, const void* slots, bool slots64, void* o, int64_t N, int H, int HKV, int D,
                              int64_t C, int64_t num_slots, int window, float scale, int nsplit, float* ws, int64_t q0,
                              int64_t q1, const SwaCacheStrides& cs, const SwaSinks& sinks, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (HKV <= 0 || H % HKV != 0 || C < 1 || nsplit < 1 || (nsplit > 1 && ws == nullptr)) return cudaErrorInvalidValue;
  const int64_t es = dtype == DType::F32 ? 4 : 2;
  if (!rows_aligned16(kc, es, cs.k0, cs.k1, cs.k2) || !rows_aligned16(vc, es, cs.v0, cs.v1, cs.v2))
    return cudaErrorInvalidValue;
  if (sinks.M > 0 && (!rows_aligned16(sinks.k, es, sinks.k0, sinks.k1, 0) ||
                      !rows_aligned16(sinks.v, es, sinks.v0, sinks.v1, 0)))
    return cudaErrorInvalidValue;
  const DecodeArgs A{lens, lens64, slots, slots64, N, H, HKV, C, num_slots, window, scale, nsplit, ws, q0, q1, cs,
                     sinks};
  switch (dtype) {
    case DType::F32: return decode_dim<float>(D, q, kc, vc, o, A, stream);
    case DType::F16: return decode_dim<__half>(D, q, kc, vc, o, A, stream);
    case DType::BF16: return decode_dim<__nv_bfloat16>(D, q, kc, vc, o, A, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sbops
