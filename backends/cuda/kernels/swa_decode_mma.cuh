// swa_decode's tensor-core kernel for bf16 / fp16 caches on NVIDIA (sm_80+), included by swa_decode.cu.
// Torch-free, internal.
//
// One block per (split, sequence x KV head, chunk of 16 query heads), 4 warps that never wait for each
// other until the end: warp w walks the split's keys in 16-key sub-tiles w, w + 4, w + 8, ... with its
// own kStages-deep cp.async ring in shared memory (16-byte copies, rows past the split zero-filled),
// and keeps its own flash-attention state in registers:
//   S (16 heads x 16 keys) = Q . K^T    mma.m16n8k16, Q's fragments loaded once into registers
//   online softmax per head row          log2 domain, max / sum over the 4 lanes of a row
//   O (16 heads x D) += P . V            P re-packed from S's accumulators, V through ldmatrix.trans
// The only block barrier merges the four warps' (max, sum, O) at the end, in the shared memory of
// their rings; the block then writes the output, or the split's (max, sum, acc) partial that
// swa_combine_kernel merges.  The bytes in flight per warp (kStages - 1 sub-tiles of K and V, ~17 KB
// at D = 128) keep HBM busy with two blocks per SM; the earlier wmma kernel staged S, P and O
// through shared memory with four block barriers per 64-key tile.
#pragma once

#if !defined(USE_MACA)

#include <cmath>
#include <cstdint>
#include <cuda_pipeline.h>

#include "common.cuh"
#include "decode.cuh"
#include "pdl_launch.cuh"
#include "swa_decode_keys.cuh"
#include "warp_mma.cuh"

namespace sbops {
namespace swa_decode_mma {

using namespace swa_decode_detail;  // SplitPlan, plan_split, write_result

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kHeads = 16;   // query heads per block: the MMA's M
constexpr int kKeys = 16;    // keys per warp sub-tile: the P.V MMA's K
constexpr int kStages = 3;   // cp.async ring depth per warp
constexpr int kBlocksPerSm = 2;

template <int D>
struct Smem {
  static constexpr int LD = D + 8;                  // row pitch in elements: 16-byte pad, no bank conflicts
  static constexpr int kRows = kKeys * LD;          // one sub-tile of K (or V), elements
  static constexpr int kStage = 2 * kRows;          // K then V
  static constexpr int kWarp = kStages * kStage;    // a warp's ring
  static constexpr size_t bytes = sizeof(uint16_t) * kWarps * kWarp;
  // end-of-loop merge, per warp in its own ring: m[16], l[16], o[16][D] floats
  static constexpr int kMerge = 2 * kHeads + kHeads * D;
  static_assert(sizeof(float) * kMerge <= sizeof(uint16_t) * kWarp, "merge buffer fits a warp's ring");
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
swa_decode_warp_mma_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                           const void* __restrict__ seq_lens, bool lens64, const void* __restrict__ slots, bool slots64,
                           int64_t C, int64_t num_slots, int HKV, int G, int window, float scale_log2, int nsplit,
                           T* __restrict__ o, float* __restrict__ part, int64_t q0, int64_t q1, SwaCacheStrides cs,
                           SwaSinks sinks, int64_t nh0) {
  using L = Smem<D>;
  constexpr int KS = D / 16;                      // 16-dim k-steps of Q.K^T
  constexpr int NT = D / 8;                       // 8-column n-tiles of O
  constexpr int CPR = D / 8;                      // 16-byte copies per row
  constexpr int COPIES = kKeys * CPR / kWarpSize; // per lane per sub-tile, for K and for V
  static_assert(D % 16 == 0 && (kKeys * CPR) % kWarpSize == 0, "unsupported head dim");
  extern __shared__ __align__(128) unsigned char smem[];
  grid_dependency_wait();    // launched as a programmatic dependent: the kernels before are done
  grid_dependents_launch();  // the combine kernel (or what follows) may launch now; it waits for this grid

  const int tid = threadIdx.x, lane = lane_id(), warp = warp_id();
  const int g = lane >> 2, t4 = lane & 3;
  const int split = blockIdx.x;
  const BlockWork<T> bw = block_work<kHeads>(kc, vc, cs, sinks, seq_lens, lens64, slots, slots64, num_slots, C, HKV, G,
                                              window, nsplit, nh0);
  const int64_t n = bw.n;
  const int hk = bw.hk, h0 = bw.h0, nheads = bw.nheads;
  const int H = HKV * G;
  const SplitPlan<T>& sp = bw.sp;
  const int64_t cnt = sp.cnt;
  const int64_t nsub = (cnt + kKeys - 1) / kKeys;
  const int nmine = nsub > warp ? static_cast<int>((nsub - warp + kWarps - 1) / kWarps) : 0;

  T* ring = reinterpret_cast<T*>(smem) + warp * L::kWarp;
  // cp.async of this warp's i-th sub-tile (keys 16 (warp + 4 i) ..) into stage st
  auto load = [&](int i, int st) {
    const int64_t base = static_cast<int64_t>(warp + kWarps * i) * kKeys;
    T* ks = ring + st * L::kStage;
    T* vs = ks + L::kRows;
#pragma unroll
    for (int u = 0; u < COPIES; ++u) {
      const int e = lane + u * kWarpSize;
      const int r = e / CPR, c = e % CPR;
      const bool ok = base + r < cnt;
      // rows past the split copy nothing (zero-fill) from a valid address: P.V must see zeros there
      const T* ksrc = ok ? sp.rows.key(sp.a + base + r) + c * 8 : sp.rows.k;
      const T* vsrc = ok ? sp.rows.val(sp.a + base + r) + c * 8 : sp.rows.v;
      __pipeline_memcpy_async(ks + r * L::LD + c * 8, ksrc, 16, ok ? 0 : 16);
      __pipeline_memcpy_async(vs + r * L::LD + c * 8, vsrc, 16, ok ? 0 : 16);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nmine) load(s, s);
    __pipeline_commit();
  }

  // Q's A fragments (rows = heads h0 .., zero past nheads), straight from global memory
  uint32_t qa[KS][4];
  {
    const T* qr0 = q + n * q0 + static_cast<int64_t>(hk * G + h0 + g) * q1;
    const T* qr1 = qr0 + 8 * q1;
    const bool ok0 = g < nheads, ok1 = g + 8 < nheads;
    const T zero = from_float<T>(0.f);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int d = 16 * ks + 2 * t4;
      qa[ks][0] = ok0 ? warp_mma::pack2_raw(qr0[d], qr0[d + 1]) : warp_mma::pack2_raw(zero, zero);
      qa[ks][1] = ok1 ? warp_mma::pack2_raw(qr1[d], qr1[d + 1]) : warp_mma::pack2_raw(zero, zero);
      qa[ks][2] = ok0 ? warp_mma::pack2_raw(qr0[d + 8], qr0[d + 9]) : warp_mma::pack2_raw(zero, zero);
      qa[ks][3] = ok1 ? warp_mma::pack2_raw(qr1[d + 8], qr1[d + 9]) : warp_mma::pack2_raw(zero, zero);
    }
  }

  // flash state of rows g and g + 8: running max (same in the row's 4 lanes), this lane's partial sum
  float m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  // ldmatrix row addresses of this lane: matrix mi = lane / 8, row lane % 8
  const int mi = lane >> 3, mr = lane & 7;
  for (int i = 0; i < nmine; ++i) {
    if (i + kStages - 1 < nmine) load(i + kStages - 1, (i + kStages - 1) % kStages);
    __pipeline_commit();
    __pipeline_wait_prior(kStages - 1);  // this lane's copies of sub-tile i have landed
    __syncwarp();                        // ... and the whole warp's
    const T* ks = ring + (i % kStages) * L::kStage;
    const T* vs = ks + L::kRows;

    // S = Q . K^T: n-tile 0 = keys 0-7, n-tile 1 = keys 8-15
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const uint32_t kaddr = warp_mma::smem_addr(ks + (mr + 8 * (mi >> 1)) * L::LD + 8 * (mi & 1));
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      uint32_t b[4];  // (keys 0-7, dims lo), (keys 0-7, dims hi), (keys 8-15, lo), (keys 8-15, hi)
      warp_mma::ldmatrix_x4(b, kaddr + 32 * k);
      warp_mma::mma_16816<T>(s[0], qa[k], b[0], b[1]);
      warp_mma::mma_16816<T>(s[1], qa[k], b[2], b[3]);
    }

    // online softmax (log2 domain); keys past the split are -inf
    const int64_t base = static_cast<int64_t>(warp + kWarps * i) * kKeys;
    float p[2][4];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // row g (c = 0, 1), row g + 8 (c = 2, 3)
      float sc[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int nt = e >> 1, key = 8 * nt + 2 * t4 + (e & 1);
        sc[e] = base + key < cnt ? s[nt][2 * r + (e & 1)] * scale_log2 : -INFINITY;
      }
      float tmax = fmaxf(fmaxf(sc[0], sc[1]), fmaxf(sc[2], sc[3]));
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
      const float mnew = fmaxf(m[r], tmax);
      const float corr = m[r] == -INFINITY ? 0.f : exp2f(m[r] - mnew);
      float ps = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = sc[e] == -INFINITY ? 0.f : exp2f(sc[e] - mnew);
        p[e >> 1][2 * r + (e & 1)] = pv;
        ps += pv;
      }
      lsum[r] = lsum[r] * corr + ps;
      m[r] = mnew;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        acc[j][2 * r] *= corr;
        acc[j][2 * r + 1] *= corr;
      }
    }

    // O += P . V: P's A fragment is S's accumulator layout, packed
    const uint32_t pa[4] = {warp_mma::pack2<T>(p[0][0], p[0][1]), warp_mma::pack2<T>(p[0][2], p[0][3]),
                            warp_mma::pack2<T>(p[1][0], p[1][1]), warp_mma::pack2<T>(p[1][2], p[1][3])};
    const uint32_t vaddr = warp_mma::smem_addr(vs + (mr + 8 * (mi & 1)) * L::LD + 8 * (mi >> 1));
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
      uint32_t b[4];  // (keys 0-7, dims 8j..), (keys 8-15, dims 8j..), (keys 0-7, dims 8j+8..), (keys 8-15, ..)
      warp_mma::ldmatrix_x4_trans(b, vaddr + 16 * j);
      warp_mma::mma_16816<T>(acc[j], pa, b[0], b[1]);
      warp_mma::mma_16816<T>(acc[j + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // the stage is refilled next iteration
  }
  __pipeline_wait_prior(0);

  // merge the four warps: each writes (m, l, O) into its own ring, then the block combines
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lsum[r] += __shfl_xor_sync(0xffffffffu, lsum[r], 1);
    lsum[r] += __shfl_xor_sync(0xffffffffu, lsum[r], 2);
  }
  __syncwarp();
  float* mw = reinterpret_cast<float*>(ring);
  float* lw = mw + kHeads;
  float* ow = lw + kHeads;
  if (t4 == 0) {
    mw[g] = m[0];
    mw[g + 8] = m[1];
    lw[g] = lsum[0];
    lw[g + 8] = lsum[1];
  }
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int d = 8 * j + 2 * t4;
    ow[g * D + d] = acc[j][0];
    ow[g * D + d + 1] = acc[j][1];
    ow[(g + 8) * D + d] = acc[j][2];
    ow[(g + 8) * D + d + 1] = acc[j][3];
  }
  __syncthreads();
  const bool bad_slot = sp.bad;
  // warp w's (m, l, o), written above at the start of its ring
  auto merged = [&](int w) { return reinterpret_cast<const float*>(smem + sizeof(T) * w * L::kWarp); };
  for (int e = tid; e < nheads * D; e += kThreads) {
    const int h = e / D, d = e % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, merged(w)[h]);
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float* mb = merged(w);
        const float f = mb[h] == -INFINITY ? 0.f : exp2f(mb[h] - M);
        Ls += f * mb[kHeads + h];
        A += f * mb[2 * kHeads + h * D + d];
      }
    }
    write_result(o, part, n * H + hk * G + h0 + h, d, D, nsplit, split, M, Ls, A, bad_slot);
  }
}

// Splits per (sequence, KV head x head chunk): as many as fill kBlocksPerSm blocks on every SM once,
// so a batch whose pairs already fill the device reads each window in one block; a split is at least
// two sub-tiles per warp (B = 1 at a 4096 window: 33 splits; one sub-tile per warp, 65 splits, was ~7%
// slower on the H200).
inline int num_splits(int64_t pairs, int64_t keys) {
  const int64_t slots = static_cast<int64_t>(kBlocksPerSm) * num_sms();
  int64_t s = slots / (pairs > 0 ? pairs : 1);
  const int64_t cap = ceil_div(keys, static_cast<int64_t>(2 * kWarps * kKeys));
  if (s > cap) s = cap;
  if (s > 1024) s = 1024;
  return static_cast<int>(s < 1 ? 1 : s);
}

}  // namespace swa_decode_mma
}  // namespace sbops

#endif  // !USE_MACA
