// Sliding-window attention backward for Hopper (sm_90a), head dim 128, bf16/fp16 in, float32 accumulation.
//
// Step 1 (prep kernel): lse2 = lse * log2(e) and delta = rowsum(o * do) - grad_lse, written per (batch row, query
// head) as contiguous rows padded to 64 queries, so one 1-D bulk copy brings a query block's 64 values.
//
// Step 2: one block per (128-key block, KV head, batch row) of three warpgroups (384 threads):
//  * warpgroup 0 (producer, one thread works) copies the block's K and V tiles once, then per step the Q and dO
//    tiles (64 queries x 128 dims, TMA, 128-byte swizzle, rows past the sequence as zeros) and the 64 lse2 / delta
//    values (bulk copies) of one (query head, query block) into a two-stage ring;
//  * warpgroups 1 and 2 own keys n0 .. n0 + 63 and n0 + 64 .. n0 + 127 and visit, for each of the G query heads
//    of the KV head, the 64-query blocks whose window reaches their keys (m0 = n0, n0 + 64, ... up to
//    n0 + 127 + window).  Per step, transposed as in FlashAttention-2's dK/dV loop:
//      S^T  = K Q^T          (wgmma m64n64k16, both operands K-major in shared memory)
//      dP^T = V dO^T         (same)
//      P^T  = exp2(S^T scale log2(e) - lse2),  dS^T = P^T (dP^T - delta) scale
//      dV  += P^T dO,  dK += dS^T Q   (m64n128k16, P^T / dS^T straight from registers, dO / Q as MN-major operands)
//    and with dq_acc: dS^T goes to shared memory (bf16/fp16, both warpgroups' halves), and each warpgroup
//    computes its 64 dims of dQ = dS K (m64n64k16, both operands MN-major) into a float32 tile in shared
//    memory, which one thread of the producer warpgroup adds to dq_acc with TMA reductions
//    (cp.reduce.async.bulk.tensor) while the MMA warpgroups go on (FlashAttention-3's design, 5 MMAs per step
//    instead of 7).
//  dK and dV of the KV head stay in registers over all G heads: written once, no atomics.
// NVIDIA only (inline PTX): under USE_MACA the launchers report "not available" and the Triton backward runs.
#include "swa_bwd.cuh"

#if !defined(USE_MACA)
#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "sm90.cuh"
#include "swa_fwd.cuh"

namespace sbops {
namespace {

constexpr int kD = 128;
constexpr int kBN = 128;  // keys per block (64 per MMA warpgroup)
constexpr int kBM = 64;   // queries per step
constexpr int kProducerThreads = 128, kConsumerThreads = 256, kThreads = kProducerThreads + kConsumerThreads;
constexpr int kStages = 2;  // Q / dO / lse2 / delta ring
using KTile = sm90::KMajorSw128Tile<kBN, kD>;   // K, V: keys x dims
using QTile = sm90::KMajorSw128Tile<kBM, kD>;   // Q, dO: queries x dims
using DsTile = sm90::KMajorSw128Tile<kBN, kBM>;  // dS^T: keys x queries (read as the MN-major A of dQ = dS K)
constexpr int kKBytes = KTile::kBytes, kQBytes = QTile::kBytes, kDsBytes = DsTile::kBytes;
constexpr int kRowBytes = kBM * 4;  // 64 float32 lse2 or delta values
// layout: K, V, Q[kStages], dO[kStages], dS[3], dQ (float32), lse2[kStages], delta[kStages], mbarriers
constexpr int kOffV = kKBytes, kOffQ = 2 * kKBytes, kOffDo = kOffQ + kStages * kQBytes;
constexpr int kOffDs = kOffDo + kStages * kQBytes, kOffDq = kOffDs + 3 * kDsBytes;
// dQ tile: four TMA boxes of 64 query rows x 32 float32 dims (128 bytes, 128-byte swizzle), dims 32 a .. in box a
constexpr int kDqBoxBytes = kBM * 128, kDqBytes = 4 * kDqBoxBytes;
constexpr int kOffLse = kOffDq + kDqBytes, kOffDelta = kOffLse + kStages * kRowBytes;
constexpr int kOffBar = kOffDelta + kStages * kRowBytes;
constexpr int kSmemBytes = kOffBar + 8 * (6 + 2 * kStages);
static_assert(kSmemBytes <= 227 * 1024 && kOffV % 1024 == 0 && kOffQ % 1024 == 0 && kOffDs % 1024 == 0 &&
                  kOffDq % 1024 == 0,
              "shared memory: tiles 1024-byte aligned");
static_assert(kD == 2 * 64 && kBM == 64, "tiles are loaded as 64-dim boxes; one dS^T atom per 64 queries");

#ifdef SBOPS_SM90A_DEVICE
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register file");

#endif  // SBOPS_SM90A_DEVICE

template <typename E>
__global__ void swa_bwd_prep_kernel(const E* __restrict__ o, const E* __restrict__ dout, const float* __restrict__ lse,
                                    const float* __restrict__ glse, float* __restrict__ lse2,
                                    float* __restrict__ delta, int T, int H, int Tpad, int64_t rows) {
  // one warp per (b, t, h) of the padded [B, Tpad, H] grid (h fastest: o and do rows are read in order)
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  if (r >= rows) return;
  const int lane = lane_id();
  const int h = static_cast<int>(r % H);
  const int64_t bt = r / H;
  const int t = static_cast<int>(bt % Tpad);
  const int64_t b = bt / Tpad;
  float sum = 0.f, l2 = 0.f;
  if (t < T) {
    const int64_t row = (b * T + t) * H + h;
    constexpr int kPer = kD / kWarpSize;  // 4 dims per lane (8 bytes)
    const Vec<E, kPer> ov = reinterpret_cast<const Vec<E, kPer>*>(o + row * kD)[lane];
    const Vec<E, kPer> dv = reinterpret_cast<const Vec<E, kPer>*>(dout + row * kD)[lane];
#pragma unroll
    for (int i = 0; i < kPer; ++i) sum += to_float(ov.v[i]) * to_float(dv.v[i]);
    sum = warp_reduce_sum<kWarpSize>(sum);
    if (glse != nullptr) sum -= glse[row];
    l2 = lse[row] * kLog2e;
  }
  if (lane == 0) {
    const int64_t out = (b * H + h) * Tpad + t;
    lse2[out] = l2;
    delta[out] = sum;
  }
}

// kDqMode: 0 no dQ (dq_acc unused), 1 dQ.  benchmarks/gpu/probes/swa_bwd_time_split.cu times diagnosis modes that each drop
// one part of the dQ path (wrong results, timing only): 2 no global reduction, 3 no dQ MMA, 4 no dS^T stores.
enum DqMode : int { kNoDq = 0, kWithDq = 1, kProbeNoReduce = 2, kProbeNoDqMma = 3, kProbeNoDsStore = 4 };

template <typename E, int kDqMode>
__global__ void __launch_bounds__(kThreads, 1)
swa_bwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                    const __grid_constant__ CUtensorMap tm_dq, const float* __restrict__ lse2,
                    const float* __restrict__ delta,
                    E* __restrict__ dk_out, E* __restrict__ dv_out, int L, int H, int HKV, int Tpad, int window,
                    float scale_log2, float scale) {
#ifdef SBOPS_SM90A_DEVICE
  constexpr bool kDq = kDqMode != kNoDq;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t base = sm90::smem_addr(smem);
  const uint32_t s_k = base, s_v = base + kOffV;
  const uint32_t bar_kv = base + kOffBar;   // K and V tiles have landed
  const uint32_t bar_full = bar_kv + 8;     // kStages: the stage's Q, dO, lse2, delta have landed
  const uint32_t bar_empty = bar_full + 8 * kStages;  // kStages: both MMA warpgroups are done with the stage
  const uint32_t bar_dq_full = bar_empty + 8 * kStages;  // the step's dQ tile is in shared memory
  const uint32_t bar_dq_empty = bar_dq_full + 8;         // the dQ writer has sent it
  const uint32_t bar_ds_full = bar_dq_empty + 8;         // 3: both MMA warpgroups wrote dS^T into that buffer

  const int n0 = blockIdx.x * kBN, hkv = blockIdx.y, b = blockIdx.z;
  const int G = H / HKV;
  const int hi = min(n0 + kBN + window, L);  // queries [n0, hi) see some key of the block
  const int nq = (hi - n0 + kBM - 1) / kBM;
  const int nsteps = G * nq;
  auto step_head = [&](int i) { return hkv * G + i / nq; };  // step i: this query head ...
  auto step_m0 = [&](int i) { return n0 + kBM * (i % nq); };  // ... and the query block from this row
  const int tid = threadIdx.x;

  if (tid == 0) {
    sm90::mbar_init(bar_kv, 1);
    sm90::ring_barriers_init<false>(bar_full, bar_empty, kStages, kConsumerThreads);
    sm90::mbar_init(bar_dq_full, kConsumerThreads);
    sm90::mbar_init(bar_dq_empty, 1);
    for (int j = 0; j < 3; ++j) sm90::mbar_init(bar_ds_full + 8 * j, kConsumerThreads);
  }
  __syncthreads();

  if (tid < kProducerThreads) {
    sm90::regs_dec<kProducerRegs>();
    if (kDq && tid == kWarpSize) {
      // ---- dQ writer (lane 0 of warp 1): adds each step's dQ tile to dq_acc with four TMA reductions, rows
      // past the sequence skipped by the hardware, then frees the tile for the next step
      sm90::tma_prefetch_map(&tm_dq);
      for (int i = 0; i < nsteps; ++i) {
        const int h = step_head(i), m0 = step_m0(i);
        sm90::mbar_wait(bar_dq_full, i & 1);
        if (kDqMode != kProbeNoReduce) {
#pragma unroll
          for (int a = 0; a < 4; ++a) sm90::tma_reduce_add_4d(&tm_dq, base + kOffDq + a * kDqBoxBytes, 32 * a, h, m0, b);
        }
        sm90::bulk_commit();
        sm90::bulk_wait_read<0>();
        sm90::mbar_arrive(bar_dq_empty);
      }
      sm90::bulk_wait<0>();
      return;
    }
    if (tid != 0) return;
    sm90::tma_prefetch_map(&tm_q);
    sm90::tma_prefetch_map(&tm_k);
    sm90::tma_prefetch_map(&tm_v);
    sm90::tma_prefetch_map(&tm_do);
    sm90::mbar_expect_tx(bar_kv, 2 * kKBytes);
    sm90::tma_rows<kBN>(s_k, &tm_k, bar_kv, hkv, n0, b);
    sm90::tma_rows<kBN>(s_v, &tm_v, bar_kv, hkv, n0, b);
    for (int i = 0; i < nsteps; ++i) {
      const int st = i % kStages;
      if (i >= kStages) sm90::mbar_wait(bar_empty + 8 * st, ((i / kStages) - 1) & 1);
      const uint32_t full = bar_full + 8 * st;
      const int h = step_head(i), m0 = step_m0(i);
      sm90::mbar_expect_tx(full, 2 * kQBytes + 2 * kRowBytes);
      sm90::tma_rows<kBM>(base + kOffQ + st * kQBytes, &tm_q, full, h, m0, b);
      sm90::tma_rows<kBM>(base + kOffDo + st * kQBytes, &tm_do, full, h, m0, b);
      const int64_t row = (static_cast<int64_t>(b) * H + h) * Tpad + m0;  // m0 + 64 <= Tpad
      sm90::bulk_load(base + kOffLse + st * kRowBytes, lse2 + row, kRowBytes, full);
      sm90::bulk_load(base + kOffDelta + st * kRowBytes, delta + row, kRowBytes, full);
    }
    return;
  }

  // ---- MMA warpgroups: wg owns keys n0 + 64 wg .. + 63
  sm90::regs_inc<kConsumerRegs>();
  const int ctid = tid - kProducerThreads, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = lane_id();
  const int krow = 64 * wg + 16 * warp + (lane >> 2);  // this thread's keys n0 + krow, + 8 (fragment rows)
  const int col0 = 2 * (lane & 3);                     // and queries m0 + col0 + 8 j + {0, 1} (fragment columns)
  const int kr0 = n0 + 64 * wg;                        // the warpgroup's first key
  const float* s_lse = reinterpret_cast<const float*>(smem + kOffLse);
  const float* s_delta = reinterpret_cast<const float*>(smem + kOffDelta);

  float dk[64], dv[64];  // m64n128 accumulators: keys krow (+8) x dims
#pragma unroll
  for (int i = 0; i < 64; ++i) dk[i] = dv[i] = 0.f;

  // this warpgroup's 64 dims of dQ of step j into the shared tile for the writer (which has sent step j - 1's
  // tile by now, nearly always): dims 64 wg + 8 jj + col0 (+1) sit in box 2 wg + jj / 4 at column
  // 8 (jj % 4) + col0, whose 16-byte chunk (col / 4) is swizzled with the row
  auto put_dq = [&](const float (&dq)[32], int j) {
    if (j > 0) sm90::mbar_wait(bar_dq_empty, (j - 1) & 1);
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int r = 16 * warp + (lane >> 2) + 8 * rr;
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        const int col = 8 * (jj & 3) + col0;
        const int off = (2 * wg + (jj >> 2)) * kDqBoxBytes + r * 128 + (((col >> 2) ^ (r & 7)) << 4) + 4 * (col & 3);
        *reinterpret_cast<float2*>(smem + kOffDq + off) = make_float2(dq[4 * jj + 2 * rr], dq[4 * jj + 2 * rr + 1]);
      }
    }
    sm90::fence_proxy_async();  // for the writer's TMA reductions (async proxy)
    sm90::mbar_arrive(bar_dq_full);
  };
  // issue dQ[:, 64 wg ..] = dS K of the step whose dS^T sits in buffer buf
  auto issue_dq = [&](float (&dq)[32], int buf) {
    const uint32_t ds_s = base + kOffDs + buf * kDsBytes;
#pragma unroll
    for (int ks = 0; ks < kBN / 16; ++ks)
      sm90::Wgmma64<E>::template ss<1, 1>(dq, DsTile::desc_rows_as_k(ds_s, ks),
                                          KTile::desc_rows_as_k(s_k + wg * (kBN * 128), ks), ks > 0);
  };

  sm90::mbar_wait(bar_kv, 0);
  for (int i = 0; i < nsteps; ++i) {
    const int st = i % kStages;
    const int m0 = step_m0(i);
    const uint32_t s_q = base + kOffQ + st * kQBytes, s_do = base + kOffDo + st * kQBytes;
    float s[32], dp[32];  // m64n64 accumulators: keys krow (+8) x queries
    float dq[32];         // kDq: dQ of step i - 1 (m64n64: its queries 16 warp + lane / 4 (+8) x dims 64 wg + ..)
    // kDq: the previous step's dQ goes first, once both warpgroups wrote that step's dS^T (an mbarrier, so the
    // two warpgroups drift apart and one's softmax overlaps the other's MMAs).  At step 0 it runs on an unused
    // buffer and is dropped: every step issues the same wgmma groups (dQ, S, dP, dV + dK), so every wait below
    // retires a known group.
    if constexpr (kDq) {
      if (i > 0) sm90::mbar_wait(bar_ds_full + 8 * ((i - 1) % 3), ((i - 1) / 3) & 1);
    }
    sm90::mbar_wait(bar_full + 8 * st, (i / kStages) & 1);
    sm90::wgmma_fence();
    if constexpr (kDq) {
      if constexpr (kDqMode == kProbeNoDqMma) {
#pragma unroll
        for (int j = 0; j < 32; ++j) dq[j] = 0.f;
      } else {
        issue_dq(dq, (i + 2) % 3);
      }
      sm90::wgmma_commit();
    }
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks)
      sm90::Wgmma64<E>::template ss<0, 0>(s, KTile::desc(s_k, 64 * wg, ks), QTile::desc(s_q, 0, ks), ks > 0);
    sm90::wgmma_commit();
    if constexpr (kDq) {  // dQ of step i - 1 is in (S^T runs): to shared memory before dP^T takes registers
      sm90::wgmma_wait<1>();
      sm90::reg_fence(dq);
      if (i > 0) put_dq(dq, i - 1);
    }
    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks)
      sm90::Wgmma64<E>::template ss<0, 0>(dp, KTile::desc(s_v, 64 * wg, ks), QTile::desc(s_do, 0, ks), ks > 0);
    sm90::wgmma_commit();

    float l2[16], dl[16];  // lse2 and delta of this thread's 16 query columns
    const float* lse_st = s_lse + st * kBM;
    const float* delta_st = s_delta + st * kBM;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 a = *reinterpret_cast<const float2*>(lse_st + 8 * j + col0);
      const float2 d = *reinterpret_cast<const float2*>(delta_st + 8 * j + col0);
      l2[2 * j] = a.x, l2[2 * j + 1] = a.y, dl[2 * j] = d.x, dl[2 * j + 1] = d.y;
    }
    sm90::wgmma_wait<1>();  // S^T is in; dP^T may still run
    sm90::reg_fence(s);
    // every pair visible and every query in the sequence: no mask
    const bool full_tile = m0 >= kr0 + 63 && m0 + kBM - 1 <= kr0 + window && m0 + kBM - 1 < L;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float p = sm90::ex2(fmaf(s[4 * j + e], scale_log2, -l2[2 * j + (e & 1)]));
        if (!full_tile) {
          const int c = m0 + 8 * j + col0 + (e & 1), r = n0 + krow + 8 * (e >> 1);
          if (c < r || c > r + window || c >= L) p = 0.f;
        }
        s[4 * j + e] = p;
      }
    uint32_t pa[4][4];  // P^T as the A operand of dV += P^T dO (k-steps of 16 queries)
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
      for (int j = 0; j < 4; ++j) pa[ks][j] = sm90::pack2<E>(s[8 * ks + 2 * j], s[8 * ks + 2 * j + 1]);

    sm90::wgmma_wait<0>();
    sm90::reg_fence(dp);
    uint32_t da[4][4];  // dS^T (scaled) as the A operand of dK += dS^T Q
#pragma unroll
    for (int j = 0; j < 32; ++j) dp[j] = s[j] * (dp[j] - dl[2 * (j >> 2) + (j & 1)]) * scale;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
      for (int j = 0; j < 4; ++j) da[ks][j] = sm90::pack2<E>(dp[8 * ks + 2 * j], dp[8 * ks + 2 * j + 1]);
    if constexpr (kDq) {
      // dS^T rows krow, krow + 8, query pairs (8 j + col0, + 1) into buffer i % 3: fragment (ks, j) holds rows
      // krow + 8 (j & 1), queries 16 ks + 8 (j >> 1) + col0.  Three buffers: buffer i % 3 is rewritten at step
      // i + 3, after this warpgroup waited (step i + 2) for the other one's dS^T of step i + 1, which that one
      // writes after its dQ of step i has completed.
      unsigned char* tile = smem + kOffDs + (i % 3) * kDsBytes;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
#pragma unroll
        for (int j = 0; j < 4 && kDqMode != kProbeNoDsStore; ++j) {
          const int r = krow + 8 * (j & 1), kg = 2 * ks + (j >> 1);
          *reinterpret_cast<uint32_t*>(tile + DsTile::chunk_offset(r, kg) + 2 * col0) = da[ks][j];
        }
      sm90::fence_proxy_async();  // the st.shared above, for the dQ wgmma of both warpgroups
      sm90::mbar_arrive(bar_ds_full + 8 * (i % 3));
    }

    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBM / 16; ++ks)
      sm90::Wgmma<E>::template rs<1>(dv, pa[ks], QTile::desc_rows_as_k(s_do, ks), 1);
#pragma unroll
    for (int ks = 0; ks < kBM / 16; ++ks)
      sm90::Wgmma<E>::template rs<1>(dk, da[ks], QTile::desc_rows_as_k(s_q, ks), 1);
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::reg_fence(dk);
    sm90::reg_fence(dv);
    sm90::reg_fence(pa);
    sm90::reg_fence(da);
    sm90::mbar_arrive(bar_empty + 8 * st);
  }
  if constexpr (kDq) {  // the last step's dQ
    if (nsteps > 0) {
      float dq[32];
      sm90::mbar_wait(bar_ds_full + 8 * ((nsteps - 1) % 3), ((nsteps - 1) / 3) & 1);
      sm90::wgmma_fence();
      issue_dq(dq, (nsteps - 1) % 3);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::reg_fence(dq);
      put_dq(dq, nsteps - 1);
    }
  }

  // epilogue: keys < L of this thread, 32-bit stores of dim pairs
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int key = n0 + krow + 8 * rr;
    if (key < L) {
      const int64_t off = ((static_cast<int64_t>(b) * L + key) * HKV + hkv) * kD + col0;
      uint32_t* ok = reinterpret_cast<uint32_t*>(dk_out + off);
      uint32_t* ov = reinterpret_cast<uint32_t*>(dv_out + off);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        ok[4 * j] = sm90::pack2<E>(dk[4 * j + 2 * rr], dk[4 * j + 2 * rr + 1]);
        ov[4 * j] = sm90::pack2<E>(dv[4 * j + 2 * rr], dv[4 * j + 2 * rr + 1]);
      }
    }
  }
#endif  // SBOPS_SM90A_DEVICE
}

template <typename E>
cudaError_t launch_prep_typed(const void* o, const void* dout, const float* lse, const float* glse, float* lse2,
                              float* delta, int B, int T, int H, cudaStream_t stream) {
  const int Tpad = static_cast<int>(swa_bwd_sm90_padded_len(T));
  const int64_t rows = static_cast<int64_t>(B) * Tpad * H;
  constexpr int kBlock = 256;
  const int64_t blocks = ceil_div(rows * kWarpSize, int64_t{kBlock});
  swa_bwd_prep_kernel<E><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      static_cast<const E*>(o), static_cast<const E*>(dout), lse, glse, lse2, delta, T, H, Tpad, rows);
  return last_launch_error();
}

template <typename E, int kDqMode>
cudaError_t launch_typed(const void* q, const void* k, const void* v, const void* dout, const float* lse2,
                         const float* delta, float* dq_acc, void* dk, void* dv, int B, int T, int H, int HKV,
                         int window, float scale, cudaStream_t stream) {
  const CUtensorMapDataType type =
      std::is_same<E, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap tm_q, tm_k, tm_v, tm_do;
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_q, type, q, B, T, H, kBM));
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_do, type, dout, B, T, H, kBM));
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_k, type, k, B, T, HKV, kBN));
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_v, type, v, B, T, HKV, kBN));
  CUtensorMap tm_dq{};
  if (kDqMode != kNoDq)
    SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_dq, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, dq_acc, B, T, H, kBM));
  auto kernel = swa_bwd_sm90_kernel<E, kDqMode>;
  SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const dim3 grid(static_cast<unsigned>(ceil_div(T, kBN)), static_cast<unsigned>(HKV), static_cast<unsigned>(B));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(tm_q, tm_k, tm_v, tm_do, tm_dq, lse2, delta, static_cast<E*>(dk),
                                                 static_cast<E*>(dv), T, H, HKV,
                                                 static_cast<int>(swa_bwd_sm90_padded_len(T)), window,
                                                 scale * kLog2e, scale);
  return last_launch_error();
}
}  // namespace
}  // namespace sbops

cudaError_t sbops::launch_swa_bwd_sm90_prep(const void* o, const void* dout, DType dtype, const float* lse,
                                            const float* glse, float* lse2, float* delta, int B, int T, int H,
                                            cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::BF16: return launch_prep_typed<__nv_bfloat16>(o, dout, lse, glse, lse2, delta, B, T, H, stream);
    case DType::F16: return launch_prep_typed<__half>(o, dout, lse, glse, lse2, delta, B, T, H, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t sbops::launch_swa_bwd_sm90(const void* q, const void* k, const void* v, const void* dout, DType dtype,
                                       const float* lse2, const float* delta, float* dq_acc, void* dk, void* dv,
                                       int B, int T, int H, int HKV, int window, float scale, cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0) return cudaSuccess;
  if (HKV <= 0 || H % HKV != 0 || window < 0 || T > INT32_MAX - 2 * kBN || B > 65535 || HKV > 65535)
    return cudaErrorInvalidValue;
  for (const void* p : {q, k, v, dout, static_cast<const void*>(lse2), static_cast<const void*>(delta),
                        static_cast<const void*>(dq_acc)})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return cudaErrorMisalignedAddress;
  if (!swa_fwd_sm90_available()) return cudaErrorNotSupported;
  const bool with_dq = dq_acc != nullptr;
  switch (dtype) {
    case DType::BF16:
      return with_dq ? launch_typed<__nv_bfloat16, kWithDq>(q, k, v, dout, lse2, delta, dq_acc, dk, dv, B, T, H, HKV,
                                                         window, scale, stream)
                     : launch_typed<__nv_bfloat16, kNoDq>(q, k, v, dout, lse2, delta, dq_acc, dk, dv, B, T, H, HKV,
                                                          window, scale, stream);
    case DType::F16:
      return with_dq ? launch_typed<__half, kWithDq>(q, k, v, dout, lse2, delta, dq_acc, dk, dv, B, T, H, HKV, window,
                                                  scale, stream)
                     : launch_typed<__half, kNoDq>(q, k, v, dout, lse2, delta, dq_acc, dk, dv, B, T, H, HKV, window,
                                                   scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

#else  // USE_MACA: MetaX has no wgmma; the Triton backward serves every case

cudaError_t sbops::launch_swa_bwd_sm90_prep(const void*, const void*, DType, const float*, const float*, float*,
                                            float*, int, int, int, cudaStream_t) {
  return cudaErrorNotSupported;
}
cudaError_t sbops::launch_swa_bwd_sm90(const void*, const void*, const void*, const void*, DType, const float*,
                                       const float*, float*, void*, void*, int, int, int, int, int, float,
                                       cudaStream_t) {
  return cudaErrorNotSupported;
}

#endif  // USE_MACA
