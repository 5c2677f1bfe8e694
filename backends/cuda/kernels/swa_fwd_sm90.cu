// Sliding-window attention forward for Hopper (sm_90a), head dim 128, bf16/fp16 in, float32 softmax.
//
// Persistent blocks of three warpgroups (384 threads), one per SM, each taking work items (query head, 128-query
// block, batch row) in turn; for an even number of query heads the blocks run in clusters of two that take head
// pairs and share each K/V tile by TMA multicast (kFwdMcast below):
//  * warpgroup 0 (producer, 40 registers after setmaxnreg; one thread works) copies Q, then K and V tiles (128
//    keys x 128 dims each) into a three-stage ring in shared memory with TMA (boxes of 128 rows x 64 columns,
//    128-byte swizzle: the layout of sm90.cuh; 224 KiB; rows past the sequence arrive as zeros; P V reads the V
//    tile as an MN-major operand, so v is used as stored); a stage's "full"
//    mbarrier completes when its bytes land, its "empty" one when both MMA warpgroups are done with it, so
//    the two MMA warpgroups never wait for each other;
//  * warpgroups 1 and 2 (232 registers) own query rows m0 .. m0 + 63 and m0 + 64 .. m0 + 127: each copies its
//    Q rows into registers once per item (ldmatrix; Q's buffer is then free for the next item), and S = Q K^T
//    and O += P V are wgmma m64n128k16 MMAs with register A operands (float32 accumulators in registers; P goes
//    from the score registers straight into the A operand of P V as packed bf16/fp16 pairs; Q from registers
//    instead of shared memory on every tile: 1-3% faster at the power cap); the next tile's S is issued before this
//    tile's P V and its softmax runs while P V is in flight (FlashAttention-3's intra-warpgroup overlap), and
//    the two warpgroups take turns issuing their MMAs (named barriers: one's softmax overlaps the other's MMAs);
//  * the window/causal mask is applied only on the tiles that need it (per warpgroup).
// Online softmax in log2 units: m = running max of scale*log2(e)*s, p = exp2(scale*log2(e)*s - m); each
// thread keeps partial row sums of its 32 columns, reduced over the row's 4 lanes at the end.
// NVIDIA only (inline PTX): under USE_MACA the launcher reports "not available" and the Triton forward runs.
#include "swa_fwd.cuh"

#if !defined(USE_MACA)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "sm90.cuh"

namespace sbops {
namespace {

constexpr int kD = kSwaFwdSm90HeadDim;
constexpr int kBM = 128;                // query rows per block (64 per warpgroup)
constexpr int kBN = 128;                // keys per tile
constexpr int kProducerThreads = 128;  // one warpgroup (one thread of it) loads Q, K and V tiles (TMA)
constexpr int kConsumerThreads = 256;  // two warpgroups run the MMAs and the softmax
constexpr int kThreads = kProducerThreads + kConsumerThreads;
constexpr int kStages = 3;              // K/V tiles in shared memory: t (P V), t + 1 (S), t + 2 (loading)
using Tile = sm90::KMajorSw128Tile<kBM, kD>;  // Q (rows x dims), K and V (keys x dims)
constexpr int kTileBytes = kBM * kD * 2;  // Q, K and V tiles are all 128 x 128
static_assert(kBM == kBN && kD == 2 * 64, "Q, K and V tiles share one shape: 128 x 128, two 64-column boxes");
constexpr int kSmemBytes = kTileBytes * (1 + 2 * kStages) + 8 * (2 * kStages + 2);  // tiles, then the mbarriers

#ifdef SBOPS_SM90A_DEVICE
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // setmaxnreg: 128 * 40 + 256 * 232 <= 65536
static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register file");
static_assert(4 * kWarpSize == kProducerThreads, "a warpgroup is 4 warps of 32 lanes (wgmma fragment layouts)");

#endif  // SBOPS_SM90A_DEVICE

// Modes.  kFwdMcast is the kernel whenever H is even: clusters of 2 CTAs take the same query block of query heads
// 2 j and 2 j + 1; when both read the same KV head (12 of the 14 pairs at 28 / 4 heads), each CTA loads one
// 64-column half of every K/V tile and multicasts it into both CTAs' ring (half the L2 -> SM traffic), and a stage
// is refilled once the consumer warps of both CTAs released it (remote mbarrier arrivals).  kFwd is the same
// kernel without clusters (odd H).  At the H100's power cap the multicast is 0.973x the time at 128k and 0.936x at
// 32k (benchmarks/gpu/probes/swa_fwd_time_split.cu; outputs bit-identical).
// The probe modes exist only to find where the time goes; all but kProbeQSmem and kProbeMcastLocal give wrong
// outputs.  kProbeHalfLoads issues the K/V tile loads of every other tile only (the MMAs read the ring's stale
// tiles in between: half the L2 -> SM traffic), kProbeNoLoads loads only the first kStages tiles of the launch,
// kProbeHalfPv runs 4 of the 8 k-steps of P V (a quarter fewer MMAs), kProbeNoExp replaces exp2 by a clamped
// linear map (finite p in [0, 1]), kProbeQSmem is the session-6 kernel (S = Q K^T reads Q from shared memory on
// every tile instead of from registers), kProbeMcastLocal is kFwdMcast with every tile loaded whole by each CTA
// (the cost of coupling the two CTAs' rings).
enum SwaFwdMode { kFwd, kProbeHalfLoads, kProbeNoLoads, kProbeHalfPv, kProbeNoExp, kProbeQSmem, kFwdMcast,
                  kProbeMcastLocal };
__host__ __device__ constexpr bool clustered(int mode) { return mode == kFwdMcast || mode == kProbeMcastLocal; }

template <typename E, int kMode>
__global__ void __launch_bounds__(kThreads, 1)
swa_fwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v, E* __restrict__ o, float* __restrict__ lse, int B,
                    int L, int Lq, int H, int HKV, int window, float scale_log2) {
#ifdef SBOPS_SM90A_DEVICE
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s_q = sm90::smem_addr(smem);
  const uint32_t s_k = s_q + kTileBytes;
  const uint32_t s_v = s_k + kStages * kTileBytes;
  const uint32_t bar_full = s_v + kStages * kTileBytes;  // kStages mbarriers: stage holds its tile
  const uint32_t bar_empty = bar_full + 8 * kStages;     // kStages mbarriers: both MMA warpgroups are done with it
  const uint32_t bar_qfull = bar_empty + 8 * kStages;    // Q of the current work item has landed
  const uint32_t bar_qempty = bar_qfull + 8;             // both MMA warpgroups copied Q into registers (kProbeQSmem:
                                                          // issued and retired their last Q K^T of the item)

  // Persistent: block i takes work items i, i + gridDim.x, ...; item w = (query block, head, batch row), the
  // heaviest query blocks first (full causal).  The Lq <= L query rows of a batch row are its last Lq positions
  // (a prefill chunk after q_off cached keys): query block rows count from q's first row (its Q loads and
  // outputs), positions (its keys and masks) from the first key.  K/V tiles run through the ring with one global tile counter
  // g, so the producer fills the next item's first stages (and its Q) while the MMA warpgroups finish this one.
  // clustered modes: the unit is a cluster (blockIdx.x / 2, rank = the CTA in it) and an item a pair of heads
  constexpr bool kMc = clustered(kMode);
  const int rank = kMc ? static_cast<int>(sm90::cluster_ctarank()) : 0;
  const int unit = kMc ? blockIdx.x / 2 : blockIdx.x, nunits = kMc ? gridDim.x / 2 : gridDim.x;
  const int Hi = kMc ? H / 2 : H;  // items per (query block, batch row); clustered: H even (launcher)
  const int q_off = L - Lq;  // position of q's row 0
  const int nqb = (Lq + kBM - 1) / kBM;
  const int nwork = nqb * Hi * B;  // < 2^31: checked by the launcher
  struct Item {
    int h, hkv, b, mq, m0, lo, ntiles;  // mq: the block's first row of q; m0: its position
    bool shared;  // kFwdMcast: both CTAs' heads read KV head hkv: the K/V tiles are multicast
  };
  auto item_of = [&](int w) {
    Item it;
    const int G = H / HKV;
    it.h = kMc ? 2 * (w % Hi) + rank : w % H;
    it.hkv = it.h / G;
    it.shared = kMode == kFwdMcast && (2 * (w % Hi)) / G == (2 * (w % Hi) + 1) / G;
    const int rest = w / Hi;
    it.mq = (nqb - 1 - rest % nqb) * kBM;
    it.m0 = it.mq + q_off;
    it.b = rest / nqb;
    const int hi = min(it.m0 + kBM, L);  // keys [lo, hi) cover every row's window
    it.lo = max(it.m0 - window, 0) / kBN * kBN;
    it.ntiles = (hi - it.lo + kBN - 1) / kBN;
    return it;
  };
  const int tid = threadIdx.x;

  if (tid == 0) {
    // clustered: either CTA's producer refills a stage, so its empty barrier counts the consumer warps of both
    sm90::ring_barriers_init<kMc>(bar_full, bar_empty, kStages, kConsumerThreads);
    sm90::mbar_init(bar_qfull, 1);
    sm90::mbar_init(bar_qempty, kConsumerThreads);
  }
  sm90::barriers_ready<kMc>(tid == 0);

  if (tid < kProducerThreads) {
    // ---- producer warpgroup: one thread issues, per item, K/V tile 0, then Q (once both MMA warpgroups have
    // copied the previous item's Q into registers), then the item's other K/V tiles, through the kStages-deep ring
    sm90::regs_dec<kProducerRegs>();
    if (tid != 0) goto done;
    sm90::tma_prefetch_map(&tm_q);
    sm90::tma_prefetch_map(&tm_k);
    sm90::tma_prefetch_map(&tm_v);
    int g = 0, n_item = 0;
    for (int w = unit; w < nwork; w += nunits, ++n_item) {
      const Item it = item_of(w);
      for (int t = 0; t < it.ntiles; ++t, ++g) {
        const int st = g % kStages;
        if (g >= kStages) sm90::mbar_wait(bar_empty + 8 * st, ((g / kStages) - 1) & 1);
        const uint32_t full = bar_full + 8 * st;
        // (both probe modes fill every stage once first: no MMA reads uninitialized shared memory)
        const bool load = g < kStages || (kMode == kProbeHalfLoads ? g % 2 == 0 : kMode != kProbeNoLoads);
        if (load) {
          sm90::mbar_expect_tx(full, 2 * kTileBytes);
          const int n0 = it.lo + t * kBN;
          if (kMc && it.shared) {  // this CTA's 64-column box of K and of V, to both CTAs' stage st
            const uint32_t half = rank * (kBM * 128);
            sm90::tma_load_4d_multicast(s_k + st * kTileBytes + half, &tm_k, full, 64 * rank, it.hkv, n0, it.b, 3);
            sm90::tma_load_4d_multicast(s_v + st * kTileBytes + half, &tm_v, full, 64 * rank, it.hkv, n0, it.b, 3);
          } else {
            sm90::tma_rows<kBM>(s_k + st * kTileBytes, &tm_k, full, it.hkv, n0, it.b);
            sm90::tma_rows<kBM>(s_v + st * kTileBytes, &tm_v, full, it.hkv, n0, it.b);
          }
        } else {
          sm90::mbar_arrive(full);
        }
        if (t == 0) {
          if (n_item > 0) sm90::mbar_wait(bar_qempty, (n_item - 1) & 1);
          sm90::mbar_expect_tx(bar_qfull, kTileBytes);
          sm90::tma_rows<kBM>(s_q, &tm_q, bar_qfull, it.h, it.mq, it.b);
        }
      }
    }
    goto done;
  }
  {
    // ---- two MMA warpgroups: wg owns query rows m0 + 64 wg .. + 63 of each item
    sm90::regs_inc<kConsumerRegs>();
    const int ctid = tid - kProducerThreads, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = lane_id();
    const int row_in = 64 * wg + 16 * warp + (lane >> 2);  // this thread's rows m0 + row_in, + 8
    const int col0 = 2 * (lane & 3);                       // and columns col0 + 8 i + {0, 1} of a tile
    const int my_turn = 1 + wg, other_turn = 2 - wg;
    const int64_t q_stride = static_cast<int64_t>(H) * kD;

    float acc[64];     // O rows of this warpgroup (accumulator layout)
    float s[64];       // scores / probabilities of one tile
    uint32_t p[8][4];  // probabilities as the A operand of P V (k-steps of 16 keys)
    uint32_t qf[kMode != kProbeQSmem ? kD / 16 : 1][4];  // this warpgroup's Q rows as the A operands of Q K^T
    float m_r[2], l_r[2], alpha[2];

    // a ring stage read by this warpgroup's MMAs may be refilled (clustered: one arrival per warp on the barrier
    // of both CTAs, since either CTA's producer may multicast into it)
    auto release = [&](int st) {
      const uint32_t bar = bar_empty + 8 * st;
      if (!kMc) {
        sm90::mbar_arrive(bar);
      } else if (lane == 0) {
        sm90::mbar_arrive(bar);
        sm90::mbar_arrive_cluster(sm90::map_to_rank(bar, rank ^ 1));
      }
    };
    int g0 = 0, n_item = 0;  // global index of the item's first tile; items done
    for (int w = unit; w < nwork; w += nunits, ++n_item) {
      const Item it = item_of(w);
      const int ntiles = it.ntiles, lo = it.lo;
      const int wr0 = it.m0 + 64 * wg;  // this warpgroup's first row
      const int row0 = it.m0 + row_in;
      m_r[0] = m_r[1] = -1e30f;
      l_r[0] = l_r[1] = 0.f;
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] = 0.f;

      auto wait_full = [&](int t) {
        const int g = g0 + t;
        sm90::mbar_wait(bar_full + 8 * (g % kStages), (g / kStages) & 1);  // TMA and wgmma: both async proxy
      };
      auto qk = [&](int t) {  // issue s = Q K_t^T
        const uint32_t kt = s_k + ((g0 + t) % kStages) * kTileBytes;
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          if (kMode != kProbeQSmem)
            sm90::Wgmma<E>::template rs<0>(s, qf[ks], Tile::desc(kt, 0, ks), ks > 0 ? 1 : 0);
          else
            sm90::Wgmma<E>::ss(s, Tile::desc(s_q, 64 * wg, ks), Tile::desc(kt, 0, ks), ks > 0 ? 1 : 0);
        }
      };
      auto pv = [&](int t) {  // issue acc += P V_t
        const uint32_t v_s = s_v + ((g0 + t) % kStages) * kTileBytes;
#pragma unroll
        for (int ks = 0; ks < (kMode == kProbeHalfPv ? kBN / 32 : kBN / 16); ++ks)
          sm90::Wgmma<E>::template rs<1>(acc, p[ks], Tile::desc_rows_as_k(v_s, ks), 1);
      };
      // online softmax of tile t in place (s becomes p); alpha = the factors that rescale the old acc and sums
      auto softmax = [&](int t) {
        const int n0 = lo + t * kBN;
        if (!(n0 + kBN - 1 <= wr0 && n0 >= wr0 + 63 - window)) {  // some pair of this warpgroup is outside
#pragma unroll
          for (int i = 0; i < 16; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int j = n0 + 8 * i + col0 + (e & 1), r = row0 + 8 * (e >> 1);
              if (j > r || j < r - window || j >= L) s[4 * i + e] = -INFINITY;
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          mx[0] = fmaxf(mx[0], fmaxf(s[4 * i], s[4 * i + 1]));
          mx[1] = fmaxf(mx[1], fmaxf(s[4 * i + 2], s[4 * i + 3]));
        }
        float neg_m[2], sum[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
          mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
          const float m_new = fmaxf(m_r[r], mx[r] * scale_log2);  // m_r stays finite: masked rows give p = 0
          alpha[r] = sm90::ex2(m_r[r] - m_new);
          m_r[r] = m_new;
          neg_m[r] = -m_new;
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) {
          const float x = fmaf(s[i], scale_log2, neg_m[(i >> 1) & 1]);
          // kProbeNoExp: two ALU ops instead of the MUFU exp2, p still finite and in [0, 1] (masked -inf -> 0)
          s[i] = kMode == kProbeNoExp ? fmaxf(fmaf(x, 0.0625f, 1.f), 0.f) : sm90::ex2(x);
          sum[(i >> 1) & 1] += s[i];
        }
        l_r[0] = l_r[0] * alpha[0] + sum[0];
        l_r[1] = l_r[1] * alpha[1] + sum[1];
      };
      auto pack = [&]() {
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
#pragma unroll
          for (int j = 0; j < 4; ++j) p[ks][j] = sm90::pack2<E>(s[8 * ks + 2 * j], s[8 * ks + 2 * j + 1]);
      };

      sm90::mbar_wait(bar_qfull, n_item & 1);
      if (kMode != kProbeQSmem) {
        // ldmatrix x4 of k-step ks: lanes 0-15 address rows 0-15 of 16-byte chunk 2 ks, lanes 16-31 chunk 2 ks + 1
        const int r = 64 * wg + 16 * warp + (lane & 15);
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks)
          sm90::ldmatrix_x4(qf[ks], s_q + Tile::chunk_offset(r, 2 * ks + (lane >> 4)));
        sm90::fence_proxy_async();      // these generic-proxy reads before the producer's TMA overwrite
        sm90::mbar_arrive(bar_qempty);  // Q is in registers: its buffer may take the next item's
      }
      wait_full(0);
      sm90::wgmma_fence();
      qk(0);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::reg_fence(s);
      if (kMode == kProbeQSmem && ntiles == 1) sm90::mbar_arrive(bar_qempty);  // the only Q K^T is done: Q may go
      softmax(0);
      pack();

      // steady state (the last tile is peeled off so that every wgmma group here is unconditional: ptxas
      // serializes the MMAs when it cannot tell which group a wait retires)
      // The two MMA warpgroups take turns issuing their MMAs (named barrier 1 + wg: "wg may issue"), so one
      // warpgroup's softmax runs while the other's MMAs occupy the tensor cores (FlashAttention-3's ping-pong).
      // Per item the arrivals and syncs balance, so every item starts with warpgroup 0's turn.
      if (wg == 1 && ntiles > 1) sm90::named_arrive(1, kConsumerThreads);  // warpgroup 0 goes first
      for (int t = 0; t + 1 < ntiles; ++t) {
        wait_full(t + 1);
        sm90::named_sync(my_turn, kConsumerThreads);
        sm90::wgmma_fence();
        qk(t + 1);
        sm90::wgmma_commit();
        pv(t);
        sm90::wgmma_commit();
        if (wg == 0 || t + 2 < ntiles) sm90::named_arrive(other_turn, kConsumerThreads);  // no dangling arrive
        sm90::wgmma_wait<1>();  // scores of tile t + 1 are in; P V of tile t still running
        sm90::reg_fence(s);
        if (kMode == kProbeQSmem && t + 2 == ntiles) sm90::mbar_arrive(bar_qempty);  // the item's last Q K^T is done
        softmax(t + 1);
        sm90::wgmma_wait<0>();
        sm90::reg_fence(acc);
        sm90::reg_fence(p);
        release((g0 + t) % kStages);  // K_t and V_t read: the stage may be refilled
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] *= alpha[(i >> 1) & 1];
        pack();
      }
      sm90::wgmma_fence();
      pv(ntiles - 1);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::reg_fence(acc);
      release((g0 + ntiles - 1) % kStages);
      g0 += ntiles;

      // epilogue: q rows < Lq of this thread: o = acc / l (32-bit stores of column pairs), lse = ln(l) + m ln(2)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float l = l_r[r];
        l += shfl_xor(l, 1);
        l += shfl_xor(l, 2);
        const float l_safe = l > 0.f ? l : 1.f, inv = 1.f / l_safe;
        const int row = row0 + 8 * r - q_off;  // row of q and o
        if (row < Lq) {
          const int64_t tok = static_cast<int64_t>(it.b) * Lq + row;
          uint32_t* out = reinterpret_cast<uint32_t*>(o + tok * q_stride + it.h * kD + col0);
#pragma unroll
          for (int i = 0; i < 16; ++i) out[4 * i] = sm90::pack2<E>(acc[4 * i + 2 * r] * inv, acc[4 * i + 2 * r + 1] * inv);
          if ((lane & 3) == 0) lse[tok * H + it.h] = (m_r[r] + __log2f(l_safe)) * kLn2;
        }
      }
    }
  }
done:
  if (kMc) sm90::cluster_sync();  // no CTA exits while its peer may still multicast into it or arrive on its barriers
#endif  // SBOPS_SM90A_DEVICE
}

template <typename E, int kMode = kFwd>
cudaError_t launch_typed(const void* q, const void* k, const void* v, void* o, float* lse, int B, int T, int H,
                         int HKV, int window, float scale, cudaStream_t stream, int Tq) {
  const CUtensorMapDataType type =
      std::is_same<E, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap tm_q, tm_k, tm_v;
  static_assert(kBM == kBN, "one box shape for the Q and the K/V tiles");
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_q, type, q, B, Tq, H, kBM));
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_k, type, k, B, T, HKV, kBM));
  SBOPS_RETURN_IF_ERROR(sm90::encode_rows_map(&tm_v, type, v, B, T, HKV, kBM));
  auto kernel = swa_fwd_sm90_kernel<E, kMode>;
  SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const int64_t nwork = ceil_div(static_cast<int64_t>(Tq), kBM) * H * B;
  if (clustered(kMode)) {
    // clusters of 2 CTAs, as many as fit at once (persistent; 66 on the H100), each taking head pairs
    if (H % 2 != 0) return cudaErrorInvalidValue;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 2;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(2 * static_cast<unsigned>(std::min<int64_t>(nwork / 2, num_sms() / 2)));
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = kSmemBytes;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    // how many clusters fit at once: asked once per device (per instantiation); a failed query counts as none
    constexpr int kMaxDevices = 64;
    static std::atomic<int> cached[kMaxDevices] = {};  // 0 unknown, -1 none
    int dev = 0;
    SBOPS_RETURN_IF_ERROR(cudaGetDevice(&dev));
    int clusters = dev >= 0 && dev < kMaxDevices ? cached[dev].load(std::memory_order_relaxed) : 0;
    if (clusters == 0) {
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it for the caller's fallback launch
        clusters = -1;
      }
      if (dev >= 0 && dev < kMaxDevices) cached[dev].store(clusters > 0 ? clusters : -1, std::memory_order_relaxed);
    }
    if (clusters < 1) return cudaErrorNotSupported;  // the caller runs the kernel without clusters
    cfg.gridDim = dim3(2 * static_cast<unsigned>(std::min<int64_t>(nwork / 2, clusters)));
    SBOPS_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, tm_q, tm_k, tm_v, static_cast<E*>(o), lse, B, T, Tq, H,
                                             HKV, window, scale * kLog2e));
    return last_launch_error();
  }
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(nwork, num_sms()));  // persistent: one block per SM
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(tm_q, tm_k, tm_v, static_cast<E*>(o), lse, B, T, Tq, H, HKV, window,
                                                 scale * kLog2e);
  return last_launch_error();
}

// the multicast kernel for an even number of query heads (clusters take head pairs), else (or where no cluster of
// two fits) the kernel without clusters
template <typename E>
cudaError_t launch_best(const void* q, const void* k, const void* v, void* o, float* lse, int B, int Tq, int T, int H,
                        int HKV, int window, float scale, cudaStream_t stream) {
  if (H % 2 == 0) {
    const cudaError_t e = launch_typed<E, kFwdMcast>(q, k, v, o, lse, B, T, H, HKV, window, scale, stream, Tq);
    if (e != cudaErrorNotSupported) return e;
    cudaGetLastError();  // a refused cluster launch leaves its (non-sticky) error behind: not the fallback's
  }
  return launch_typed<E, kFwd>(q, k, v, o, lse, B, T, H, HKV, window, scale, stream, Tq);
}

}  // namespace

}  // namespace sbops

// Qualified definitions, as in the USE_MACA stubs below: they must match swa_fwd.cuh.
bool sbops::swa_fwd_sm90_available() {
  static signed char cache[64] = {0};
  return sm90::sm90a_kernel_available(swa_fwd_sm90_kernel<__nv_bfloat16, kFwd>, cache);
}

cudaError_t sbops::launch_swa_fwd_sm90(const void* q, const void* k, const void* v, DType dtype, void* o,
                                       float* lse, int B, int Tq, int T, int H, int HKV, int window, float scale,
                                       cudaStream_t stream) {
  if (B <= 0 || Tq <= 0 || H <= 0) return cudaSuccess;
  if (Tq > T || HKV <= 0 || H % HKV != 0 || window < 0 || ceil_div(static_cast<int64_t>(Tq), kBM) * H * B > INT32_MAX)
    return cudaErrorInvalidValue;
  // TMA reads 16-byte-aligned bases (every row stride here is a multiple of 256 bytes)
  for (const void* p : {q, k, v})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return cudaErrorMisalignedAddress;
  if (!swa_fwd_sm90_available()) return cudaErrorNotSupported;
  switch (dtype) {
    case DType::BF16: return launch_best<__nv_bfloat16>(q, k, v, o, lse, B, Tq, T, H, HKV, window, scale, stream);
    case DType::F16: return launch_best<__half>(q, k, v, o, lse, B, Tq, T, H, HKV, window, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

#else  // USE_MACA: MetaX has no wgmma; the Triton forward serves every case

// Qualified definitions: a signature that drifts from swa_fwd.cuh's declaration is a compile error here (an
// unqualified one would silently define an overload and leave the declared symbol undefined at link time).
bool sbops::swa_fwd_sm90_available() { return false; }
cudaError_t sbops::launch_swa_fwd_sm90(const void*, const void*, const void*, DType, void*, float*, int, int, int, int,
                                       int, int, float, cudaStream_t) {
  return cudaErrorNotSupported;
}

#endif  // USE_MACA
