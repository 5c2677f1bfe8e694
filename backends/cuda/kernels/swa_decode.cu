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
// the output; otherwise it writes (max, sum, acc) partials that a combine kernel merges.  With
// SBOPS_DECODE_PDL=all both launch on sm_90 as programmatic dependents of the kernel before them
// (pdl_launch.cuh): each waits for it before touching memory and lets the next one launch at its start, so
// launches overlap the work before them.  Scores are kept in the log2 domain (q pre-scaled by scale * log2 e) so
// the exponentials are exp2f.
//
// Sink keys (SpikingBrain-76B's meta tokens) are folded in as a block of M extra keys before the
// window: a (sequence, KV head) walks the virtual key range [0, M + len) -- sink j for j < M, then
// the cached positions lo .. L-1 -- split, tiled and softmaxed exactly like window keys (KeyRows).
// q, the caches and the sinks are read in place through their element strides; the caches' and
// sinks' rows must be 16-byte aligned (the binding copies operands that are not).
//
// bf16 / fp16 caches on NVIDIA take a tensor-core kernel instead (swa_decode_mma.cuh: four independent
// warps per block, mma.sync, flash state in registers); same splits' partials and combine kernel.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "decode.cuh"
#include "pdl_launch.cuh"
#include "swa_decode_keys.cuh"

#if !defined(USE_MACA)
// NVIDIA only: the tensor-core kernel (mma.sync + cp.async, inline PTX).  MACA builds (and the simulation)
// use the CUDA-core kernel for every dtype: MetaX has no mma.sync / ldmatrix PTX.
#define SBOPS_SWA_DECODE_MMA 1
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
  grid_dependency_wait();    // launched as a programmatic dependent: the kernels before are done
  grid_dependents_launch();  // the combine kernel (or what follows) may launch now; it waits for this grid

  const int tid = threadIdx.x, lane = lane_id(), warp = warp_id();
  const int split = blockIdx.x;
  const BlockWork<T> bw = block_work<kMaxHeads>(kc, vc, cs, sinks, seq_lens, lens64, slots, slots64, num_slots, C, HKV, G,
                                              window, nsplit, nh0);
  const int64_t n = bw.n;
  const int hk = bw.hk, h0 = bw.h0, nheads = bw.nheads;
  const int H = HKV * G;
  const SplitPlan<T>& sp = bw.sp;
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
    write_result(o, part, n * H + hk * G + h0 + h, d, D, nsplit, split, s_m[h], Ls, A, bad_slot);
  }
}


constexpr int kCombineThreads = 256;

// Block-wide max (kMax) or sum of v over kCombineThreads threads, in a fixed order (deterministic); every thread
// gets it.  red: one float per warp.
template <bool kMax>
__device__ __forceinline__ float combine_all_reduce(float v, float* red) {
  v = kMax ? warp_reduce_max<kWarpSize>(v) : warp_reduce_sum<kWarpSize>(v);
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / kWarpSize; ++w) r = kMax ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();  // red is reused
  return r;
}

struct CombineArgs {
  const float* part;  // [N * H][nsplit][D + 2]: (max, sum, acc[D]) per split
  void* o;            // [N * H][D], contiguous
  int nsplit;
};

// One block per (sequence, query head): merge the splits' (max, sum, acc) partials.  The block's threads share out
// the splits for the max and the sum, then kGroups groups of D threads share them out per output dimension, so a
// call's loads go out in a few rounds (a loop over every split per thread made nsplit dependent rounds: 4.6 us a
// call at B = 1, 33 splits, on an H100).  Launched as a programmatic dependent of the decode kernel, it waits for
// that grid's partials before reading them.
template <typename T, int D>
__global__ void __launch_bounds__(kCombineThreads) swa_combine_kernel(CombineArgs a) {
  constexpr int kGroups = kCombineThreads / D;
  static_assert(kCombineThreads % D == 0 && kCombineThreads % kWarpSize == 0, "combine block shape");
  __shared__ float red[kCombineThreads / kWarpSize];
  __shared__ float acc[kGroups][D];
  grid_dependency_wait();
  grid_dependents_launch();  // what follows (the o projection's GEMV) may launch now; it waits for this grid
  const int tid = threadIdx.x, nsplit = a.nsplit;
  const float* pp = a.part + static_cast<int64_t>(blockIdx.x) * nsplit * (D + 2);
  float m = -INFINITY;
  for (int s = tid; s < nsplit; s += kCombineThreads) m = fmaxf(m, pp[s * (D + 2)]);
  const float M = combine_all_reduce<true>(m, red);
  const bool any = M != -INFINITY;  // no split saw a key: the output is 0
  float l = 0.f;
  if (any)
    for (int s = tid; s < nsplit; s += kCombineThreads) l += exp2f(pp[s * (D + 2)] - M) * pp[s * (D + 2) + 1];
  const float Ls = combine_all_reduce<false>(l, red);
  const int d = tid % D, grp = tid / D;
  float x = 0.f;
  if (any) {
#pragma unroll 4
    for (int s = grp; s < nsplit; s += kGroups) x += exp2f(pp[s * (D + 2)] - M) * pp[s * (D + 2) + 2 + d];
  }
  acc[grp][d] = x;
  __syncthreads();
  if (tid < D) {
    float A = 0.f;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) A += acc[k][tid];
    static_cast<T*>(a.o)[static_cast<int64_t>(blockIdx.x) * D + tid] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
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
    namespace wk = swa_decode_mma;
    constexpr size_t smem = wk::Smem<D>::bytes;
    SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(wk::swa_decode_warp_mma_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    const auto kernel = wk::swa_decode_warp_mma_kernel<T, D>;
    const bool pdl = pdl_plan(kernel, kPdlAll);
    SBOPS_RETURN_IF_ERROR(launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
      const dim3 grid(nsplit, rows, static_cast<unsigned>(ceil_div(G, wk::kHeads)));
      return launch_kernel(kernel, grid, wk::kThreads, smem, st, pdl, static_cast<const T*>(q),
                           static_cast<const T*>(kc), static_cast<const T*>(vc), A.lens, A.lens64, A.slots, A.slots64,
                           A.C, A.ns, HKV, G, A.window, A.scale * kLog2e, nsplit, static_cast<T*>(o), ws, A.q0, A.q1,
                           A.cs, A.sinks, nh0);
    }));
  } else
#endif
  {
    const auto kernel = swa_decode_kernel<T, D>;
    const bool pdl = pdl_plan(kernel, kPdlAll);
    SBOPS_RETURN_IF_ERROR(launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
      const dim3 grid(nsplit, rows, static_cast<unsigned>(ceil_div(G, kMaxHeads)));
      return launch_kernel(kernel, grid, kSwaThreads, 0, st, pdl, static_cast<const T*>(q), static_cast<const T*>(kc),
                           static_cast<const T*>(vc), A.lens, A.lens64, A.slots, A.slots64, A.C, A.ns, HKV, G, A.window,
                           A.scale * kLog2e, nsplit, static_cast<T*>(o), ws, A.q0, A.q1, A.cs, A.sinks, nh0);
    }));
  }
  if (nsplit > 1) {
    const auto combine = swa_combine_kernel<T, D>;
    const CombineArgs ca{ws, o, nsplit};
    const unsigned blocks = static_cast<unsigned>(N * H);
    SBOPS_RETURN_IF_ERROR(launch_kernel(combine, blocks, kCombineThreads, 0, st, pdl_plan(combine, kPdlAll), ca));
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
  if (dtype != DType::F32)
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
