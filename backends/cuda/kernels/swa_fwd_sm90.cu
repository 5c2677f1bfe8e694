// Sliding-window attention forward for Hopper (sm_90a), head dim 128, bf16/fp16 in, float32 softmax.
//
// One block of three warpgroups (384 threads) per (query head, 128-query block, batch row):
//  * warpgroup 0 (producer, 40 registers after setmaxnreg) copies Q, then K tiles (128 keys x 128) and V^T
//    tiles (128 dims x 128 keys, from a transposed copy of v so that both MMAs read K-major operands) into a
//    three-stage ring in shared memory with cp.async, in the 128-byte-swizzled layout of sm90.cuh (224 KiB);
//    a stage's "full" mbarrier completes when its copies land, its "empty" one when both MMA warpgroups
//    are done with it, so the two MMA warpgroups never wait for each other;
//  * warpgroups 1 and 2 (232 registers) own query rows m0 .. m0 + 63 and m0 + 64 .. m0 + 127: S = Q K^T and
//    O += P V are wgmma m64n128k16 MMAs (float32 accumulators in registers; P goes from the score registers
//    straight into the A operand of P V as packed bf16/fp16 pairs); the next tile's S is issued before this
//    tile's P V and its softmax runs while P V is in flight (FlashAttention-3's intra-warpgroup overlap), and
//    the two warpgroups take turns issuing their MMAs (named barriers: one's softmax overlaps the other's MMAs);
//  * the window/causal mask is applied only on the tiles that need it (per warpgroup).
// Online softmax in log2 units: m = running max of scale*log2(e)*s, p = exp2(scale*log2(e)*s - m); each
// thread keeps partial row sums of its 32 columns, reduced over the row's 4 lanes at the end.
// NVIDIA only (inline PTX): under USE_MACA the launcher reports "not available" and the Triton forward runs.
#include "swa_fwd.cuh"

#if !defined(USE_MACA)
#include <cmath>

#include "common.cuh"
#include "sm90.cuh"

namespace sbops {
namespace {

constexpr int kD = kSwaFwdSm90HeadDim;
constexpr int kBM = 128;                // query rows per block (64 per warpgroup)
constexpr int kBN = kSwaFwdSm90KeyTile;  // keys per tile
constexpr int kProducerThreads = 128;  // one warpgroup copies Q, K and V^T tiles (cp.async)
constexpr int kConsumerThreads = 256;  // two warpgroups run the MMAs and the softmax
constexpr int kThreads = kProducerThreads + kConsumerThreads;
constexpr int kStages = 3;              // K/V tiles in shared memory: t (P V), t + 1 (S), t + 2 (loading)
using Tile = sm90::KMajorSw128Tile<kBM, kD>;  // Q (rows x dims), K (keys x dims), V^T (dims x keys)
constexpr int kTileBytes = kBM * kD * 2;  // Q, K and V^T tiles are all 128 x 128
static_assert(kBM == kD && kBN == kD && kTileBytes / 16 / kProducerThreads == 16, "Q, K and V^T tiles share one shape");
constexpr int kSmemBytes = kTileBytes * (1 + 2 * kStages) + 16 * kStages;  // tiles, then the mbarriers

#ifdef SBOPS_SM90A_DEVICE
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // setmaxnreg: 128 * 40 + 256 * 232 <= 65536
static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register file");
static_assert(4 * kWarpSize == kProducerThreads, "a warpgroup is 4 warps of 32 lanes (wgmma fragment layouts)");

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename E>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// cp.async of a 128 x 128 tile (16 chunks of 16 bytes per row) by the 128 producer threads: thread p copies
// column group kg = (p >> 3) & 15 of rows (p & 7) + 8 u, u = 0 .. 15, so each 8-lane phase writes 8 rows of
// one 16-byte column (distinct banks under the swizzle), a warp reads 64 contiguous bytes of each of 8 rows,
// and row r0 + 8 u lands 1024 u bytes after row r0.  Rows >= rows_valid are zero-filled without being read.
// The loop is only partly unrolled: the producer runs on 40 registers.
template <typename E>
__device__ __forceinline__ void load_tile(uint32_t dst, const E* src, int64_t row_stride, int rows_valid, int ptid) {
  const int r0 = ptid & 7, kg = (ptid >> 3) & 15;
  const uint32_t d0 = dst + Tile::chunk_offset(r0, kg);
  const E* s0 = src + static_cast<int64_t>(r0) * row_stride + kg * 8;
  const int64_t step = 8 * row_stride;
#pragma unroll 4
  for (int u = 0; u < kTileBytes / 16 / kProducerThreads; ++u) {
    const bool ok = r0 + 8 * u < rows_valid;
    sm90::cp_async16(d0 + 1024 * u, ok ? s0 + u * step : src, ok ? 16 : 0);
  }
}
#endif  // SBOPS_SM90A_DEVICE

template <typename E>
__global__ void __launch_bounds__(kThreads, 1)
swa_fwd_sm90_kernel(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ vt, E* __restrict__ o,
                    float* __restrict__ lse, int L, int Tpad, int H, int HKV, int window, float scale_log2) {
#ifdef SBOPS_SM90A_DEVICE
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s_q = sm90::smem_addr(smem);
  const uint32_t s_k = s_q + kTileBytes;
  const uint32_t s_v = s_k + kStages * kTileBytes;
  const uint32_t bar_full = s_v + kStages * kTileBytes;  // kStages mbarriers: stage holds its tile
  const uint32_t bar_empty = bar_full + 8 * kStages;     // kStages mbarriers: both MMA warpgroups are done with it

  const int h = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kBM;  // heaviest query blocks first (full causal)
  const int b = blockIdx.z;
  const int hkv = h / (H / HKV);
  const int tid = threadIdx.x;
  const int hi = min(m0 + kBM, L);                    // keys [lo, hi) cover every row's window
  const int lo = max(m0 - window, 0) / kBN * kBN;
  const int ntiles = (hi - lo + kBN - 1) / kBN;

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      sm90::mbar_init(bar_full + 8 * st, kProducerThreads);
      sm90::mbar_init(bar_empty + 8 * st, kConsumerThreads);
    }
  }
  __syncthreads();

  if (tid < kProducerThreads) {
    // ---- producer warpgroup: Q with tile 0, then K and V^T tiles through the kStages-deep ring
    sm90::regs_dec<kProducerRegs>();
    const int64_t q_stride = static_cast<int64_t>(H) * kD, kv_stride = static_cast<int64_t>(HKV) * kD;
    const E* kb = k + static_cast<int64_t>(b) * L * kv_stride + hkv * kD;
    const E* vb = vt + (static_cast<int64_t>(b) * HKV + hkv) * kD * Tpad;
    load_tile(s_q, q + (static_cast<int64_t>(b) * L + m0) * q_stride + h * kD, q_stride, L - m0, tid);
    for (int t = 0; t < ntiles; ++t) {
      const int st = t % kStages;
      if (t >= kStages) sm90::mbar_wait(bar_empty + 8 * st, ((t / kStages) - 1) & 1);
      const int n0 = lo + t * kBN;
      load_tile(s_k + st * kTileBytes, kb + static_cast<int64_t>(n0) * kv_stride, kv_stride, L - n0, tid);
      load_tile(s_v + st * kTileBytes, vb + n0, static_cast<int64_t>(Tpad), kD, tid);  // keys >= L are zeros
      sm90::cp_async_arrive(bar_full + 8 * st);
    }
    sm90::cp_async_wait<0>();
    return;
  }

  // ---- two MMA warpgroups: wg owns query rows m0 + 64 wg .. + 63
  sm90::regs_inc<kConsumerRegs>();
  const int ctid = tid - kProducerThreads, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = lane_id();
  const int wr0 = m0 + 64 * wg;                    // this warpgroup's first row
  const int row0 = wr0 + 16 * warp + (lane >> 2);  // this thread's rows row0, row0 + 8
  const int col0 = 2 * (lane & 3);                 // and columns col0 + 8 i + {0, 1} of a tile

  float acc[64];     // O rows of this warpgroup (accumulator layout)
  float s[64];       // scores / probabilities of one tile
  uint32_t p[8][4];  // probabilities as the A operand of P V (k-steps of 16 keys)
  float m_r[2] = {-1e30f, -1e30f}, l_r[2] = {0.f, 0.f}, alpha[2];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

  auto wait_full = [&](int t) {
    sm90::mbar_wait(bar_full + 8 * (t % kStages), (t / kStages) & 1);
    sm90::fence_proxy_async();  // the cp.async writes, now visible, are read by wgmma (async proxy)
  };
  auto qk = [&](int t) {  // issue s = Q K_t^T
    const uint32_t kt = s_k + (t % kStages) * kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks)
      sm90::Wgmma<E>::ss(s, Tile::desc(s_q, 64 * wg, ks), Tile::desc(kt, 0, ks), ks > 0 ? 1 : 0);
  };
  auto pv = [&](int t) {  // issue acc += P V_t
    const uint32_t vt_s = s_v + (t % kStages) * kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kBN / 16; ++ks) sm90::Wgmma<E>::rs(acc, p[ks], Tile::desc(vt_s, 0, ks), 1);
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
      alpha[r] = ex2(m_r[r] - m_new);
      m_r[r] = m_new;
      neg_m[r] = -m_new;
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      s[i] = ex2(fmaf(s[i], scale_log2, neg_m[(i >> 1) & 1]));
      sum[(i >> 1) & 1] += s[i];
    }
    l_r[0] = l_r[0] * alpha[0] + sum[0];
    l_r[1] = l_r[1] * alpha[1] + sum[1];
  };
  auto pack = [&]() {
#pragma unroll
    for (int ks = 0; ks < 8; ++ks)
#pragma unroll
      for (int j = 0; j < 4; ++j) p[ks][j] = pack2<E>(s[8 * ks + 2 * j], s[8 * ks + 2 * j + 1]);
  };

  wait_full(0);  // Q came with tile 0
  sm90::wgmma_fence();
  qk(0);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::reg_fence(s);
  softmax(0);
  pack();

  // steady state (the last tile is peeled off so that every wgmma group here is unconditional: ptxas
  // serializes the MMAs when it cannot tell which group a wait retires)
  // The two MMA warpgroups take turns issuing their MMAs (named barrier 1 + wg: "wg may issue"), so one
  // warpgroup's softmax runs while the other's MMAs occupy the tensor cores (FlashAttention-3's ping-pong).
  const int my_turn = 1 + wg, other_turn = 2 - wg;
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
    softmax(t + 1);
    sm90::wgmma_wait<0>();
    sm90::reg_fence(acc);
    sm90::reg_fence(p);
    sm90::mbar_arrive(bar_empty + 8 * (t % kStages));  // K_t and V_t read: the stage may be refilled
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] *= alpha[(i >> 1) & 1];
    pack();
  }
  sm90::wgmma_fence();
  pv(ntiles - 1);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::reg_fence(acc);

  // epilogue: rows < L of this thread: o = acc / l (32-bit stores of column pairs), lse = ln(l) + m ln(2)
  const int64_t q_stride = static_cast<int64_t>(H) * kD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_r[r];
    l += shfl_xor(l, 1);
    l += shfl_xor(l, 2);
    const float l_safe = l > 0.f ? l : 1.f, inv = 1.f / l_safe;
    const int row = row0 + 8 * r;
    if (row < L) {
      const int64_t tok = static_cast<int64_t>(b) * L + row;
      uint32_t* out = reinterpret_cast<uint32_t*>(o + tok * q_stride + h * kD + col0);
#pragma unroll
      for (int i = 0; i < 16; ++i) out[4 * i] = pack2<E>(acc[4 * i + 2 * r] * inv, acc[4 * i + 2 * r + 1] * inv);
      if ((lane & 3) == 0) lse[tok * H + h] = (m_r[r] + __log2f(l_safe)) * kLn2;
    }
  }
#endif  // SBOPS_SM90A_DEVICE
}

template <typename E>
cudaError_t launch_typed(const void* q, const void* k, const void* vt, void* o, float* lse, int B, int T, int Tpad,
                         int H, int HKV, int window, float scale, cudaStream_t stream) {
  auto kernel = swa_fwd_sm90_kernel<E>;
  SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(ceil_div(static_cast<int64_t>(T), kBM)),
                  static_cast<unsigned>(B));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(static_cast<const E*>(q), static_cast<const E*>(k),
                                                 static_cast<const E*>(vt), static_cast<E*>(o), lse, T, Tpad, H, HKV,
                                                 window, scale * kLog2e);
  return last_launch_error();
}

}  // namespace

namespace {
bool query_available(int dev) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes attr;
  // the binary picked for this device must be the sm_90a build (an sm_80 one holds an empty kernel)
  if (cudaFuncGetAttributes(&attr, swa_fwd_sm90_kernel<__nv_bfloat16>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.binaryVersion == 90;
}
}  // namespace

// Cached per device like num_sms(): the binding and the launcher both ask on every call.
bool swa_fwd_sm90_available() {
  constexpr int kMaxDevices = 64;
  static signed char cache[kMaxDevices] = {0};  // 0 unknown, 1 yes, -1 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  if (cache[dev] == 0) cache[dev] = query_available(dev) ? 1 : -1;
  return cache[dev] > 0;
}

cudaError_t launch_swa_fwd_sm90(const void* q, const void* k, const void* vt, DType dtype, void* o, float* lse,
                                int B, int T, int Tpad, int H, int HKV, int window, float scale, cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0) return cudaSuccess;
  if (HKV <= 0 || H % HKV != 0 || window < 0 || Tpad < T || Tpad % kBN != 0 || B > kMaxGridYZ ||
      ceil_div(static_cast<int64_t>(T), kBM) > kMaxGridYZ)
    return cudaErrorInvalidValue;
  if (!swa_fwd_sm90_available()) return cudaErrorNotSupported;
  switch (dtype) {
    case DType::BF16: return launch_typed<__nv_bfloat16>(q, k, vt, o, lse, B, T, Tpad, H, HKV, window, scale, stream);
    case DType::F16: return launch_typed<__half>(q, k, vt, o, lse, B, T, Tpad, H, HKV, window, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sbops

#else  // USE_MACA: MetaX has no wgmma; the Triton forward serves every case

namespace sbops {
bool swa_fwd_sm90_available() { return false; }
cudaError_t launch_swa_fwd_sm90(const void*, const void*, const void*, DType, void*, float*, int, int, int, int, int,
                                int, float, cudaStream_t) {
  return cudaErrorNotSupported;
}
}  // namespace sbops

#endif  // USE_MACA
