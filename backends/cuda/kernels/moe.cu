// MoE routing kernels: top-k gating (+ backward), permute / unpermute (+ backward),
// moe_align_block_size and expert_counts.  Torch-free.
//
// Routing pass (permute and align): the T*k slots are cut into per-warp chunks.  (1) each warp
// counts its chunk's slots per bucket (expert e, or bucket E for dropped slots); (2) one block per
// bucket turns the chunk counts into exclusive prefixes over chunks; (3) one block scans the bucket
// totals into bucket bases; (4) each warp walks its chunk again in order and gives every slot
// `base[bucket] + prefix[chunk][bucket] + rank inside the chunk`, the rank coming from a warp
// match (lanes holding the same bucket) and a running per-warp counter.  The result is the
// deterministic (expert, token, slot) order with no atomics.
#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "moe.cuh"

namespace sbops {
namespace {

constexpr float kNegInf = -INFINITY;
constexpr int kGateBlock = 256;

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// Softmax or sigmoid scores of one row held as J values per lane in a group of W lanes; experts
// are strided: lane l holds experts j*W + l.
template <int W, int J>
__device__ __forceinline__ void row_scores(const float (&x)[J], float (&p)[J], int gl, int E, bool softmax,
                                           float& row_max, float& row_sum) {
  if (softmax) {
    float m = kNegInf;
#pragma unroll
    for (int j = 0; j < J; ++j) m = fmaxf(m, x[j]);
    m = warp_reduce_max<W>(m);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      p[j] = (j * W + gl < E) ? expf(x[j] - m) : 0.f;
      s += p[j];
    }
    s = warp_reduce_sum<W>(s);
#pragma unroll
    for (int j = 0; j < J; ++j) p[j] = p[j] / s;
    row_max = m;
    row_sum = s;
  } else {
#pragma unroll
    for (int j = 0; j < J; ++j) p[j] = (j * W + gl < E) ? sigmoidf_(x[j]) : 0.f;
    row_max = 0.f;
    row_sum = 1.f;
  }
}

// Orderable image of a float: comparing images as unsigned ints orders them like the floats.
__device__ __forceinline__ uint32_t float_order_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Inverse of float_order_bits.
__device__ __forceinline__ float order_bits_float(uint32_t b) {
  return __uint_as_float((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b);
}

// Low bits of float_order_bits(x) that are zero (or, for negative x, one) for every x of type T: the expert
// index fits there.  bf16 -> float32 leaves 16 low mantissa bits clear, fp16 -> float32 13; 0 = none free.
template <typename T>
constexpr int kIndexBits = std::is_same<T, __nv_bfloat16>::value ? 16 : std::is_same<T, __half>::value ? 13 : 0;

// A packed key back to the plain score image: the index bits as float_order_bits left them.
__device__ __forceinline__ uint32_t unpack_score(uint32_t key, uint32_t idx_mask) {
  return (key & 0x80000000u) ? (key & ~idx_mask) : (key | idx_mask);
}

// Bitonic sorting network, descending (J a power of two; J log2 J (log2 J + 1) / 4 compare-exchanges).
template <int J>
__device__ __forceinline__ void sort_descending(uint32_t (&key)[J]) {
#pragma unroll
  for (int size = 2; size <= J; size <<= 1)
#pragma unroll
    for (int stride = size / 2; stride > 0; stride >>= 1)
#pragma unroll
      for (int i = 0; i < J; ++i) {
        const int l = i ^ stride;
        if (l > i) {
          const uint32_t a = key[i], b = key[l];
          const bool desc = (i & size) == 0;
          key[i] = desc ? max(a, b) : min(a, b);
          key[l] = desc ? min(a, b) : max(a, b);
        }
      }
}

// k rounds of top-k selection over a group of W lanes holding J keys each (lane gl: experts e0 .. e0 + J - 1;
// 0 = not eligible).  Lane r gets round r's expert (-1 when nothing was left) and key; every lane gets
// round 0's key.  The keys are consumed.
//
// General keys (the orderable score image, equal images possible): per round the group-wide max key, then the
// lowest expert holding it; its lane retires it.  (32-bit keys and a separate index min: about 30% fewer
// instructions per round than one 64-bit (score, ~expert) max.  Tree-shaped maxima and a ballot for the
// winner lane were timed slower, 22 against 12.3 us at E=128 k=8: benchmarks/gpu/probe_topk.cu.)
template <int W, int J>
__device__ __forceinline__ void select_rounds(uint32_t (&key)[J], int e0, int E, int k, int gl, int& my_id,
                                              uint32_t& my_key, uint32_t& first_key) {
  for (int r = 0; r < k; ++r) {
    uint32_t best = 0u;
#pragma unroll
    for (int j = 0; j < J; ++j) best = max(best, key[j]);
    best = warp_reduce_max<W>(best);
    int mine = E;  // this lane's lowest expert with the best key
#pragma unroll
    for (int j = J - 1; j >= 0; --j)
      if (key[j] == best) mine = e0 + j;
    const int e_min = warp_reduce_min<W>(mine);
    const int e = best != 0u ? e_min : -1;
    if (r == 0) first_key = best;
    if (gl == r) {
      my_id = e;
      my_key = best;
    }
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (e0 + j == e) key[j] = 0u;
  }
}

// Packed keys, for 16-bit logits without a bias: the float32 image of a bf16 / fp16 value leaves its low
// kBits bits zero, so they carry the expert (inverted: ties go to the lower expert) and every key is unique.
// Each lane sorts its J keys once (descending); then per round the group max of the lanes' heads is the pick,
// its expert is in the key, and the one lane holding it pops its head.  my_key / first_key come back as plain
// score images (the expert bits restored as float_order_bits left them).
template <int W, int J, int kBits>
__device__ __forceinline__ void select_packed(uint32_t (&key)[J], int e0, int k, int gl, int& my_id, uint32_t& my_key,
                                              uint32_t& first_key) {
  constexpr uint32_t kIdx = (1u << kBits) - 1u;
#pragma unroll
  for (int j = 0; j < J; ++j) key[j] = key[j] != 0u ? (key[j] & ~kIdx) | (kIdx - static_cast<uint32_t>(e0 + j)) : 0u;
  sort_descending(key);
  for (int r = 0; r < k; ++r) {
    const uint32_t best = warp_reduce_max<W>(key[0]);
    const bool pop = key[0] == best;
#pragma unroll
    for (int j = 0; j + 1 < J; ++j) key[j] = pop ? key[j + 1] : key[j];
    key[J - 1] = pop ? 0u : key[J - 1];
    if (r == 0) first_key = best;
    if (gl == r) {
      my_key = best;
      my_id = best != 0u ? static_cast<int>(kIdx - (best & kIdx)) : -1;
    }
  }
  my_key = unpack_score(my_key, kIdx);
  first_key = unpack_score(first_key, kIdx);
}

// Selection key of group g with score c (the group choice of grouped routing): (orderable score, ~g).  The
// largest key is the best score with ties going to the lower index, so one 64-bit max per butterfly step
// does the arg-max (no separate index / payload shuffles).  Key 0 is below every real key: "not eligible".
__device__ __forceinline__ unsigned long long gate_key(float c, int e) {
  constexpr int kScoreShift = 8 * sizeof(uint32_t);  // score in the high word, ~e in the low word
  return (static_cast<unsigned long long>(float_order_bits(c)) << kScoreShift) | static_cast<uint32_t>(~e);
}
__device__ __forceinline__ int gate_key_expert(unsigned long long key) {
  return static_cast<int>(~static_cast<uint32_t>(key));
}

// Blocks per SM the forward is compiled for: at 16 experts per lane, 4 (64 registers), so that
// T = 16384 tokens of 8 lanes fit one wave on an H100 (132 SMs x 4 blocks of 256 threads).
template <int J>
constexpr int kGateFwdMinBlocks = J >= 16 ? 4 : 1;

// One group of W lanes per token; lane gl holds the J consecutive experts gl*J .. gl*J+J-1 (16-byte
// loads when `vec_load`).  Groups whose token is past the end still run every shuffle (full-warp
// masks) and simply do not store.
//
// The choice is made on the logits themselves when there is no bias: softmax and sigmoid are
// increasing, so the order (and the ties) are those of the exact scores, and only the k winners'
// scores are computed (from their keys).  With a bias the choice score is the float32 score + bias, as
// specified.  Two selection loops: packed unique keys sorted per lane (bf16/fp16, no bias) and the
// general 32-bit-key rounds (benchmarks/gpu/NOTES_cuda_ops.md, session 6).

template <typename T, int W, int J>
__global__ void __launch_bounds__(kGateBlock, kGateFwdMinBlocks<J>)
topk_gating_kernel(const T* __restrict__ logits, const float* __restrict__ bias, float* __restrict__ weights,
                   int32_t* __restrict__ ids, int64_t Tn, int E, int k, bool softmax, bool renormalize,
                   int num_groups, int topk_groups, float scaling, bool vec_load) {
  const int gl = static_cast<int>(threadIdx.x) % W;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * (kGateBlock / W) + threadIdx.x / W;
  const bool valid = token < Tn;
  const T* row = logits + (valid ? token : 0) * E;
  const int e0 = gl * J;

  float x[J];
  if (vec_load) {  // E % J == 0 and 16-byte aligned rows (checked by the launcher)
    constexpr int VC = J < vec16<T>() ? J : vec16<T>();
    const bool mine = valid && e0 < E;
#pragma unroll
    for (int c = 0; c < J / VC; ++c) {
      Vec<T, VC> v;
      if (mine) v = reinterpret_cast<const Vec<T, VC>*>(row + e0)[c];
#pragma unroll
      for (int i = 0; i < VC; ++i) x[c * VC + i] = mine ? to_float(v.v[i]) : kNegInf;
    }
  } else {
#pragma unroll
    for (int j = 0; j < J; ++j) x[j] = (valid && e0 + j < E) ? to_float(row[e0 + j]) : kNegInf;
  }

  // The full-row softmax (max and denominator) is needed only when a bias makes the choice on the
  // probabilities or the weights are not renormalised.  Otherwise the k picks alone give the weights:
  // p_r / sum p = exp(x_r - x_0) / sum exp(x_r' - x_0), x_0 the first (largest) pick.
  const bool row_pass = softmax && (bias != nullptr || !renormalize);
  float m = kNegInf, s = 1.f;
  if (row_pass) {
#pragma unroll
    for (int j = 0; j < J; ++j) m = fmaxf(m, x[j]);
    m = warp_reduce_max<W>(m);
    s = 0.f;
#pragma unroll
    for (int j = 0; j < J; ++j) s += (e0 + j < E) ? expf(x[j] - m) : 0.f;
    s = warp_reduce_sum<W>(s);
  }
  float c[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int e = e0 + j;
    if (bias && e < E) c[j] = (softmax ? expf(x[j] - m) / s : sigmoidf_(x[j])) + bias[e];
    else c[j] = x[j];
  }

  // Selection keys: the orderable image of the choice score (32 bits; 0 = not eligible).  Equal images
  // go to the lower expert: lanes hold consecutive experts, so the lowest matching (lane, j) wins.
  uint32_t key[J];
#pragma unroll
  for (int j = 0; j < J; ++j) key[j] = e0 + j < E ? float_order_bits(c[j]) : 0u;

  if (num_groups > 0) {
    // Lane g of the group holds group g's score (num_groups <= W, checked by the launcher).
    const int gsz = E / num_groups;
    float my_group_score = kNegInf;
    for (int g = 0; g < num_groups; ++g) {
      float lm = kNegInf;
#pragma unroll
      for (int j = 0; j < J; ++j)
        if (e0 + j < E && (e0 + j) / gsz == g) lm = fmaxf(lm, c[j]);
      lm = warp_reduce_max<W>(lm);
      if (gl == g) my_group_score = lm;
    }
    // The best topk_groups groups, ties to the lower group index (64-bit keys: score, ~group).
    bool chosen = false;
    for (int r = 0; r < topk_groups; ++r) {
      unsigned long long gk = (gl < num_groups && !chosen) ? gate_key(my_group_score, gl) : 0ull;
      gk = warp_reduce_max<W>(gk);
      if (gk != 0ull && gl == gate_key_expert(gk)) chosen = true;
    }
    const lane_mask_t eligible = group_ballot<W>(chosen);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int e = e0 + j;
      if (e < E && !((eligible >> (e / gsz)) & 1)) key[j] = 0u;
    }
  }

  int my_id = -1;
  uint32_t my_key = 0u, first_key = 0u;
  if (kIndexBits<T> > 0 && !bias)
    select_packed<W, J, kIndexBits<T>>(key, e0, k, gl, my_id, my_key, first_key);
  else
    select_rounds<W, J>(key, e0, E, k, gl, my_id, my_key, first_key);
  // Unbiased score of this lane's pick (same formulas as above), renormalised over the k picks.  Without
  // a bias the key is the logit itself.
  float w = 0.f;
  if (valid && gl < k && my_id >= 0) {
    const float xv = bias ? to_float(row[my_id]) : order_bits_float(my_key);
    if (!softmax) w = sigmoidf_(xv);
    else if (row_pass) w = expf(xv - m) / s;
    else w = expf(xv - order_bits_float(first_key));
  }
  const float sum_w = warp_reduce_sum<W>(w);
  if (valid && gl < k) {
    weights[token * k + gl] = (renormalize ? w / sum_w : w) * scaling;
    ids[token * k + gl] = my_id;
  }
}

// d logits of w = scaling * p[ids] (/ sum p[ids] when renormalize), p = softmax / sigmoid(logits).
template <typename T, int W, int J>
__global__ void __launch_bounds__(kGateBlock)
topk_gating_bwd_kernel(const float* __restrict__ grad_w, const T* __restrict__ logits, const void* __restrict__ ids,
                       bool ids64, T* __restrict__ grad_logits, int64_t Tn, int E, int k, bool softmax,
                       bool renormalize, float scaling) {
  const int gl = static_cast<int>(threadIdx.x) % W;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * (kGateBlock / W) + threadIdx.x / W;
  const bool valid = token < Tn;
  const int64_t t = valid ? token : 0;
  const T* row = logits + t * E;

  float x[J], p[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int e = j * W + gl;
    x[j] = e < E ? to_float(row[e]) : kNegInf;
  }
  float m, s;
  row_scores<W, J>(x, p, gl, E, softmax, m, s);

  // Every lane recomputes the k picked scores (same formula, so the same values as p[]).
  int pid[kMaxTopK];
  float pp[kMaxTopK], pg[kMaxTopK];
  float S = 0.f, u = 0.f;
#pragma unroll
  for (int r = 0; r < kMaxTopK; ++r) {
    pid[r] = -1;
    pp[r] = 0.f;
    pg[r] = 0.f;
    if (r < k) {
      const int64_t id = load_index(ids, ids64, t * k + r);
      if (id >= 0 && id < E) {
        const float xr = to_float(row[id]);
        pid[r] = static_cast<int>(id);
        pp[r] = softmax ? expf(xr - m) / s : sigmoidf_(xr);
        pg[r] = grad_w[t * k + r];
      }
      S += pp[r];
      u += pg[r] * pp[r];
    }
  }
  // dL/dp for each pick, then dot = sum_r dL/dp_r * p_r for the softmax Jacobian.
  float dot = 0.f;
#pragma unroll
  for (int r = 0; r < kMaxTopK; ++r) {
    pg[r] = renormalize ? scaling * (pg[r] / S - u / (S * S)) : scaling * pg[r];
    if (pid[r] < 0) pg[r] = 0.f;
    dot += pg[r] * pp[r];
  }
  if (!valid) return;  // no shuffles below
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int e = j * W + gl;
    if (e >= E) continue;
    float gp = 0.f;
#pragma unroll
    for (int r = 0; r < kMaxTopK; ++r)
      if (pid[r] == e) gp += pg[r];
    const float gx = softmax ? p[j] * (gp - dot) : gp * p[j] * (1.f - p[j]);
    grad_logits[t * E + e] = from_float<T>(gx);
  }
}

// Chooses the group width W and values per lane J for E experts and launches KERNEL.
template <typename T, template <typename, int, int> class Launch, typename... Args>
cudaError_t dispatch_gate_width(int E, int64_t Tn, Args... args) {
  if (E <= 8) return Launch<T, 8, 1>::run(Tn, args...);
  if (E <= 16) return Launch<T, 16, 1>::run(Tn, args...);
  if (E <= kWarpSize) return Launch<T, kWarpSize, 1>::run(Tn, args...);
  if (E <= 2 * kWarpSize) return Launch<T, kWarpSize, 2>::run(Tn, args...);
  if (E <= 4 * kWarpSize) return Launch<T, kWarpSize, 4>::run(Tn, args...);
  if (E <= 8 * kWarpSize) return Launch<T, kWarpSize, 8>::run(Tn, args...);
  if (E <= 16 * kWarpSize) return Launch<T, kWarpSize, 16>::run(Tn, args...);
  return cudaErrorInvalidValue;
}

// Forward group shape: W lanes per token (at least k lanes, one per pick, and at least num_groups
// lanes, one per group score; narrow groups need fewer shuffle steps and handle several tokens per
// warp), J experts per lane (a power of two, at most kGateMaxJ).
constexpr int kGateMinW = 8;
constexpr int kGateMaxJ = 16;

template <typename T, int W, int J>
struct GateFwd {
  static cudaError_t run(int64_t Tn, const void* logits, const float* bias, float* weights, int32_t* ids, int E,
                         int k, bool softmax, bool renorm, int ng, int tg, float scaling, cudaStream_t st) {
    if (ng > W || k > W || W * J < E) return cudaErrorInvalidValue;
    const bool vec_load = E % J == 0 && (E * sizeof(T)) % 16 == 0 && aligned_to(logits, 16);
    const unsigned grid = static_cast<unsigned>(ceil_div(Tn, kGateBlock / W));
    topk_gating_kernel<T, W, J><<<grid, kGateBlock, 0, st>>>(static_cast<const T*>(logits), bias, weights, ids,
                                                             Tn, E, k, softmax, renorm, ng, tg, scaling, vec_load);
    return last_launch_error();
  }
};

template <typename T, int W, typename... Args>
cudaError_t dispatch_gate_j(int J, Args... args) {
  switch (J) {
    case 1: return GateFwd<T, W, 1>::run(args...);
    case 2: return GateFwd<T, W, 2>::run(args...);
    case 4: return GateFwd<T, W, 4>::run(args...);
    case 8: return GateFwd<T, W, 8>::run(args...);
    case kGateMaxJ: return GateFwd<T, W, kGateMaxJ>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

// Experts per lane: at most kGateMaxJ (more lanes per token only where k or the group count needs
// them).  Timed on the H100 at T=16384, E=128, k=8: 16 per lane 17.3 us, 8 per lane 19.5, 4 per lane
// 23.6 (the shorter serial max chains do not pay for the wider cross-lane reductions).
template <typename T, typename... Args>
cudaError_t dispatch_gate_fwd(int E, int k, int num_groups, Args... args) {
  int W = kGateMinW;
  while (W < kWarpSize && (W < k || W < num_groups || W * kGateMaxJ < E)) W *= 2;
  int J = 1;
  while (W * J < E) J *= 2;
  if (W == kGateMinW) return dispatch_gate_j<T, kGateMinW>(J, args...);
  if (W == 2 * kGateMinW) return dispatch_gate_j<T, 2 * kGateMinW>(J, args...);
  if (W == 4 * kGateMinW) return dispatch_gate_j<T, 4 * kGateMinW>(J, args...);
  if (W == kWarpSize) return dispatch_gate_j<T, kWarpSize>(J, args...);
  return cudaErrorInvalidValue;
}

template <typename T, int W, int J>
struct GateBwd {
  static cudaError_t run(int64_t Tn, const float* gw, const void* logits, const void* ids, bool ids64,
                         void* grad, int E, int k, bool softmax, bool renorm, float scaling, cudaStream_t st) {
    const unsigned grid = static_cast<unsigned>(ceil_div(Tn, kGateBlock / W));
    topk_gating_bwd_kernel<T, W, J><<<grid, kGateBlock, 0, st>>>(gw, static_cast<const T*>(logits), ids, ids64,
                                                                 static_cast<T*>(grad), Tn, E, k, softmax, renorm,
                                                                 scaling);
    return last_launch_error();
  }
};

// ------------------------------------------------------------------------------ routing pass
constexpr int kRouteWarps = 4;
constexpr int kRouteBlock = kRouteWarps * kWarpSize;
constexpr int kScanBlock = 256;
constexpr int64_t kTargetChunks = 1024;

struct RoutePlan {
  int64_t n;
  int buckets;          // E + 1 (bucket E: dropped slots)
  int tiles_per_chunk;  // warp-width tiles per chunk
  int64_t chunks;
  // workspace carve-up (ints)
  int64_t off_chunk_counts, off_totals, off_base, off_dst, total_ints;
};

RoutePlan make_plan(int64_t n, int E) {
  RoutePlan p{};
  p.n = n;
  p.buckets = E + 1;
  const int64_t tiles = ceil_div(n, kWarpSize);
  p.tiles_per_chunk = static_cast<int>(ceil_div(tiles, kTargetChunks) < 1 ? 1 : ceil_div(tiles, kTargetChunks));
  p.chunks = ceil_div(tiles, p.tiles_per_chunk);
  if (p.chunks < 1) p.chunks = 1;
  p.off_chunk_counts = 0;
  p.off_totals = p.chunks * p.buckets;
  p.off_base = p.off_totals + p.buckets;
  p.off_dst = p.off_base + p.buckets + 1;
  p.total_ints = p.off_dst + n;
  return p;
}

// Bucket of slot i: its expert, E when dropped (id < 0), -1 past n.  An id >= E (the frontend
// rejects those before dispatch) is treated like a dropped slot, so nothing is ever indexed by it.
__device__ __forceinline__ int slot_bucket(const void* ids, bool ids64, int64_t i, int64_t n, int E) {
  if (i >= n) return -1;
  const int64_t id = load_index(ids, ids64, i);
  return (id < 0 || id >= E) ? E : static_cast<int>(id);
}

__global__ void __launch_bounds__(kRouteBlock)
route_count_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E, int tiles_per_chunk, int64_t chunks,
                   int* __restrict__ chunk_counts) {
  extern __shared__ int route_smem[];
  const int NB = E + 1;
  int* cnt = route_smem + warp_id() * NB;
  const int lane = lane_id();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp_id();
  if (chunk >= chunks) return;  // warp-uniform
  for (int b = lane; b < NB; b += kWarpSize) cnt[b] = 0;
  warp_sync();
  const int64_t start = chunk * tiles_per_chunk * kWarpSize;
  for (int tile = 0; tile < tiles_per_chunk; ++tile) {
    const int64_t i = start + static_cast<int64_t>(tile) * kWarpSize + lane;
    const int b = slot_bucket(ids, ids64, i, n, E);
    const lane_mask_t peers = match_any(b);
    if (b >= 0 && (peers & lanes_below_mask()) == 0) cnt[b] += popc(peers);  // group leader
    warp_sync();
  }
  for (int b = lane; b < NB; b += kWarpSize) chunk_counts[chunk * NB + b] = cnt[b];
}

// One block per bucket: exclusive prefix over chunks (in place) and the bucket total.
__global__ void __launch_bounds__(kScanBlock)
route_scan_chunks_kernel(int* __restrict__ chunk_counts, int* __restrict__ totals, int64_t chunks, int NB) {
  __shared__ int scratch[kWarpSize];
  const int b = blockIdx.x;
  int carry = 0;
  for (int64_t base = 0; base < chunks; base += blockDim.x) {
    const int64_t c = base + threadIdx.x;
    const int v = c < chunks ? chunk_counts[c * NB + b] : 0;
    int tot;
    const int incl = block_inclusive_scan(v, scratch, tot);
    if (c < chunks) chunk_counts[c * NB + b] = carry + incl - v;
    carry += tot;
  }
  if (threadIdx.x == 0) totals[b] = carry;
}

// One block: bucket bases (each expert's count rounded up to block_size; the dropped bucket E is
// not padded) and the optional outputs of permute (expert_offsets) and align (fill, block experts).
__global__ void __launch_bounds__(kScanBlock)
route_bases_kernel(const int* __restrict__ totals, int E, int block_size, int* __restrict__ base,
                   int64_t* __restrict__ expert_offsets, int32_t* __restrict__ sorted_ids, int64_t sorted_len,
                   int32_t fill, int32_t* __restrict__ block_expert_ids, int64_t nblocks,
                   int32_t* __restrict__ num_post_pad) {
  extern __shared__ int bases_smem[];  // [E + 2]
  __shared__ int scratch[kWarpSize];
  const int NB = E + 1;
  int carry = 0;
  for (int b0 = 0; b0 < NB; b0 += blockDim.x) {
    const int b = b0 + threadIdx.x;
    int v = 0;
    if (b < NB) v = b < E ? static_cast<int>(ceil_div(totals[b], block_size) * block_size) : totals[b];
    int tot;
    const int incl = block_inclusive_scan(v, scratch, tot);
    if (b < NB) bases_smem[b] = carry + incl - v;
    carry += tot;
  }
  if (threadIdx.x == 0) bases_smem[NB] = carry;
  __syncthreads();
  for (int b = threadIdx.x; b <= NB; b += blockDim.x) {
    base[b] = bases_smem[b];
    if (expert_offsets && b <= E) expert_offsets[b] = bases_smem[b];
  }
  if (num_post_pad && threadIdx.x == 0) *num_post_pad = bases_smem[E];
  if (sorted_ids)
    for (int64_t i = threadIdx.x; i < sorted_len; i += blockDim.x) sorted_ids[i] = fill;
  if (block_expert_ids) {
    for (int64_t blk = threadIdx.x; blk < nblocks; blk += blockDim.x) {
      const int64_t pos = blk * block_size;
      int32_t e = -1;
      if (pos < bases_smem[E]) {  // largest expert whose base <= pos (binary search)
        int lo = 0, hi = E - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (bases_smem[mid] <= pos) lo = mid;
          else hi = mid - 1;
        }
        e = lo;
      }
      block_expert_ids[blk] = e;
    }
  }
}

// Second walk over each chunk: destination of every slot.  Permute mode writes dst (all slots,
// dropped ones into the zero rows after the routed ones) and row_map; align mode writes sorted_ids.
__global__ void __launch_bounds__(kRouteBlock)
route_rank_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E, int tiles_per_chunk, int64_t chunks,
                  const int* __restrict__ chunk_prefix, const int* __restrict__ base, int* __restrict__ dst,
                  int32_t* __restrict__ row_map, int32_t* __restrict__ sorted_ids) {
  extern __shared__ int route_smem[];
  const int NB = E + 1;
  int* next = route_smem + warp_id() * NB;
  const int lane = lane_id();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp_id();
  if (chunk >= chunks) return;
  for (int b = lane; b < NB; b += kWarpSize) next[b] = base[b] + chunk_prefix[chunk * NB + b];
  warp_sync();
  const int64_t start = chunk * tiles_per_chunk * kWarpSize;
  for (int tile = 0; tile < tiles_per_chunk; ++tile) {
    const int64_t i = start + static_cast<int64_t>(tile) * kWarpSize + lane;
    const int b = slot_bucket(ids, ids64, i, n, E);
    const lane_mask_t peers = match_any(b);
    if (b >= 0) {
      const int d = next[b] + popc(peers & lanes_below_mask());
      if (dst) {
        dst[i] = d;
        row_map[i] = b < E ? d : -1;
      } else if (b < E) {
        sorted_ids[d] = static_cast<int32_t>(i);
      }
    }
    warp_sync();
    if (b >= 0 && (peers & lanes_below_mask()) == 0) next[b] += popc(peers);
    warp_sync();
  }
}

cudaError_t run_routing(const void* ids, bool ids64, const RoutePlan& p, int E, int block_size, int* ws,
                        int64_t* expert_offsets, int32_t* row_map, int32_t* sorted_ids, int64_t sorted_len,
                        int32_t* block_expert_ids, int64_t nblocks, int32_t* num_post_pad, cudaStream_t st) {
  const size_t smem = static_cast<size_t>(kRouteWarps) * p.buckets * sizeof(int);
  const unsigned route_grid = static_cast<unsigned>(ceil_div(p.chunks, kRouteWarps));
  int* chunk_counts = ws + p.off_chunk_counts;
  route_count_kernel<<<route_grid, kRouteBlock, smem, st>>>(ids, ids64, p.n, E, p.tiles_per_chunk, p.chunks,
                                                            chunk_counts);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_scan_chunks_kernel<<<p.buckets, kScanBlock, 0, st>>>(chunk_counts, ws + p.off_totals, p.chunks, p.buckets);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_bases_kernel<<<1, kScanBlock, (E + 2) * sizeof(int), st>>>(ws + p.off_totals, E, block_size, ws + p.off_base,
                                                                   expert_offsets, sorted_ids, sorted_len,
                                                                   static_cast<int32_t>(p.n), block_expert_ids,
                                                                   nblocks, num_post_pad);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_rank_kernel<<<route_grid, kRouteBlock, smem, st>>>(ids, ids64, p.n, E, p.tiles_per_chunk, p.chunks,
                                                           chunk_counts, ws + p.off_base,
                                                           row_map ? ws + p.off_dst : nullptr, row_map, sorted_ids);
  return last_launch_error();
}

// ------------------------------------------------------------------------------ row movers
constexpr int kRowBlock = 256;
constexpr int kRowWarps = kRowBlock / kWarpSize;
constexpr int kRowUnroll = 8;  // vectors per lane in flight

// One warp per token: read x[t] once (kRowUnroll vectors per lane at a time) and write it to the
// token's k destination rows (zeros for dropped slots, whose rows are the tail of x_perm).
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
permute_scatter_kernel(const T* __restrict__ x, const int* __restrict__ dst, const int32_t* __restrict__ row_map,
                       T* __restrict__ x_perm, int64_t Tn, int k, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  V zero;
#pragma unroll
  for (int e = 0; e < VEC; ++e) zero.v[e] = from_float<T>(0.f);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id(); t < Tn;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const V* src = reinterpret_cast<const V*>(x + t * Hd);
    for (int64_t v0 = 0; v0 < nvec; v0 += kRowUnroll * kWarpSize) {
      V buf[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t vi = v0 + u * kWarpSize + lane;
        if (vi < nvec) buf[u] = src[vi];
      }
      for (int j = 0; j < k; ++j) {
        const int64_t slot = t * k + j;
        const bool routed = row_map[slot] >= 0;
        V* out = reinterpret_cast<V*>(x_perm + static_cast<int64_t>(dst[slot]) * Hd);
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const int64_t vi = v0 + u * kWarpSize + lane;
          if (vi < nvec) out[vi] = routed ? buf[u] : zero;
        }
      }
    }
  }
}

// One warp per token: y[t] = sum_j w[t,j] y_perm[row_map[t,j]] in float32 (w = 1 when null).
// The token's row_map / weights entries (k <= warp width: one per lane, broadcast by shuffles) are
// loaded one token ahead, so a token's row loads do not wait behind its own index load.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
unpermute_kernel(const T* __restrict__ y_perm, const int32_t* __restrict__ row_map, const float* __restrict__ weights,
                 T* __restrict__ y, int64_t Tn, int k, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  const bool lane_slots = k <= kWarpSize;
  auto fetch = [&](int64_t t, int32_t& r, float& w) {
    const bool ok = lane_slots && t < Tn && lane < k;
    r = ok ? row_map[t * k + lane] : -1;
    w = ok && weights ? weights[t * k + lane] : 1.f;
  };
  int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id();
  int32_t r_next;
  float w_next;
  fetch(t, r_next, w_next);
  for (; t < Tn; t += stride) {
    const int32_t r_lane = r_next;
    const float w_lane = w_next;
    fetch(t + stride, r_next, w_next);
    for (int64_t v0 = 0; v0 < nvec; v0 += kRowUnroll * kWarpSize) {
      float acc[kRowUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[u][e] = 0.f;
      for (int j = 0; j < k; ++j) {
        const int32_t r = lane_slots ? shfl(r_lane, j) : row_map[t * k + j];
        if (r < 0) continue;
        const float w = lane_slots ? shfl(w_lane, j) : (weights ? weights[t * k + j] : 1.f);
        const V* src = reinterpret_cast<const V*>(y_perm + static_cast<int64_t>(r) * Hd);
        V buf[kRowUnroll];
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const int64_t vi = v0 + u * kWarpSize + lane;
          if (vi < nvec) buf[u] = src[vi];
        }
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[u][e] += w * to_float(buf[u].v[e]);
      }
      V* out = reinterpret_cast<V*>(y + t * Hd);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t vi = v0 + u * kWarpSize + lane;
        if (vi < nvec) {
          V o;
#pragma unroll
          for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(acc[u][e]);
          out[vi] = o;
        }
      }
    }
  }
}

// k = 1: y[t] = w[t] y_perm[row_map[t]] is a gather of whole rows plus a scale, so the kernel maps
// threads onto the flat [Tn, nvec] vector grid of y (row = i / nvec) instead of a warp per row: every
// lane is busy whatever Hd is (a warp per row left a quarter of the lanes idle on the second pass at
// Hd = 3584), each thread keeps kFlatUnroll independent 16-byte loads in flight, and the few
// registers this needs leave the SM fully occupied.  IndexT is uint32_t when Tn * nvec fits
// (32-bit division), int64_t otherwise.
constexpr int kFlatUnroll = 4;
template <typename T, int VEC, typename IndexT>
__global__ void __launch_bounds__(kRowBlock)
unpermute_k1_kernel(const T* __restrict__ y_perm, const int32_t* __restrict__ row_map,
                    const float* __restrict__ weights, T* __restrict__ y, IndexT total, IndexT nvec) {
  using V = Vec<T, VEC>;
  const V* src = reinterpret_cast<const V*>(y_perm);
  V* dst = reinterpret_cast<V*>(y);
  const IndexT step = static_cast<IndexT>(gridDim.x) * (kRowBlock * kFlatUnroll);
  for (IndexT base = static_cast<IndexT>(blockIdx.x) * (kRowBlock * kFlatUnroll) + threadIdx.x; base < total;
       base += step) {
    int32_t r[kFlatUnroll];
    float w[kFlatUnroll];
    IndexT col[kFlatUnroll];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u) {
      const IndexT i = base + static_cast<IndexT>(u * kRowBlock);
      const IndexT t = i < total ? i / nvec : 0;
      col[u] = i - t * nvec;
      r[u] = i < total ? row_map[t] : -1;
      w[u] = i < total && weights ? weights[t] : 1.f;
    }
    V buf[kFlatUnroll];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u)
      if (r[u] >= 0) buf[u] = src[static_cast<int64_t>(r[u]) * static_cast<int64_t>(nvec) + col[u]];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u) {
      const IndexT i = base + static_cast<IndexT>(u * kRowBlock);
      if (i < total) {
        V o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(r[u] >= 0 ? w[u] * to_float(buf[u].v[e]) : 0.f);
        dst[i] = o;
      }
    }
  }
}

__global__ void invert_row_map_kernel(const int32_t* __restrict__ row_map, int64_t n, int64_t R,
                                      int* __restrict__ inv) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t r = row_map[i];
    if (r >= 0 && r < R) inv[r] = static_cast<int>(i);
  }
}

// One warp per y_perm row r, fed by slot i = inv[r] (token t = i / k):
// grad_y_perm[r] = w[i] * grad_y[t] and grad_w[i] = dot(grad_y[t], y_perm[r]); zero rows otherwise.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
unpermute_bwd_kernel(const T* __restrict__ grad_y, const T* __restrict__ y_perm, const int* __restrict__ inv,
                     const float* __restrict__ weights, T* __restrict__ grad_y_perm, float* __restrict__ grad_w,
                     int k, int64_t R, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id(); r < R;
       r += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int i = inv[r];
    V* out = reinterpret_cast<V*>(grad_y_perm + r * Hd);
    if (i < 0) {
      V zero;
#pragma unroll
      for (int e = 0; e < VEC; ++e) zero.v[e] = from_float<T>(0.f);
      for (int64_t vi = lane; vi < nvec; vi += kWarpSize) out[vi] = zero;
      continue;
    }
    const float w = weights[i];
    const V* gy = reinterpret_cast<const V*>(grad_y + static_cast<int64_t>(i / k) * Hd);
    const V* yp = reinterpret_cast<const V*>(y_perm + r * Hd);
    float dot = 0.f;
    for (int64_t vi = lane; vi < nvec; vi += kWarpSize) {
      const V g = gy[vi], y = yp[vi];
      V o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float gf = to_float(g.v[e]);
        dot += gf * to_float(y.v[e]);
        o.v[e] = from_float<T>(w * gf);
      }
      out[vi] = o;
    }
    dot = warp_reduce_sum<kWarpSize>(dot);
    if (lane == 0) grad_w[i] = dot;
  }
}

constexpr int kHistBlock = 256;

__global__ void __launch_bounds__(kHistBlock)
expert_hist_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E,
                   unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned int hist_smem[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist_smem[e] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = load_index(ids, ids64, i);
    if (id >= 0 && id < E) atomicAdd(&hist_smem[id], 1u);  // ids < 0 dropped, >= E skipped
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (hist_smem[e]) atomicAdd(&counts[e], static_cast<unsigned long long>(hist_smem[e]));
}

// Row kernels take 16-byte vectors when every row start is 16-byte aligned, else scalars.
template <typename T, template <typename, int> class K, typename... Args>
cudaError_t launch_rows_vec(bool vec_ok, int64_t rows, cudaStream_t st, Args... args) {
  if (rows == 0) return cudaSuccess;
  const unsigned grid = grid_for(rows, kRowWarps, 16);
  if (vec_ok) K<T, vec16<T>()>::run(grid, st, args...);
  else K<T, 1>::run(grid, st, args...);
  return last_launch_error();
}

template <typename T, int VEC>
struct ScatterRun {
  static void run(unsigned g, cudaStream_t st, const void* x, const int* dst, const int32_t* rm, void* xp,
                  int64_t Tn, int k, int64_t Hd) {
    permute_scatter_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(x), dst, rm, static_cast<T*>(xp),
                                                            Tn, k, Hd);
  }
};

template <typename T, int VEC>
struct UnpermuteRun {
  static void run(unsigned g, cudaStream_t st, const void* yp, const int32_t* rm, const float* w, void* y,
                  int64_t Tn, int k, int64_t Hd) {
    if (k == 1) {
      const int64_t nvec = Hd / VEC, total = Tn * nvec;
      const unsigned gf = grid_for(total, kRowBlock * kFlatUnroll, 16);
      if (total + static_cast<int64_t>(gf) * kRowBlock * kFlatUnroll <= static_cast<int64_t>(UINT32_MAX))
        unpermute_k1_kernel<T, VEC, uint32_t><<<gf, kRowBlock, 0, st>>>(
            static_cast<const T*>(yp), rm, w, static_cast<T*>(y), static_cast<uint32_t>(total),
            static_cast<uint32_t>(nvec));
      else
        unpermute_k1_kernel<T, VEC, int64_t><<<gf, kRowBlock, 0, st>>>(static_cast<const T*>(yp), rm, w,
                                                                       static_cast<T*>(y), total, nvec);
    } else
      unpermute_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(yp), rm, w, static_cast<T*>(y), Tn, k,
                                                        Hd);
  }
};

template <typename T, int VEC>
struct UnpermuteBwdRun {
  static void run(unsigned g, cudaStream_t st, const void* gy, const void* yp, const int* inv, const float* w,
                  void* gyp, float* gw, int k, int64_t R, int64_t Hd) {
    unpermute_bwd_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(gy), static_cast<const T*>(yp), inv,
                                                          w, static_cast<T*>(gyp), gw, k, R, Hd);
  }
};

template <template <typename> class F, typename... Args>
cudaError_t dispatch_float(DType t, Args... args) {
  switch (t) {
    case DType::F32: return F<float>::run(args...);
    case DType::F16: return F<__half>::run(args...);
    case DType::BF16: return F<__nv_bfloat16>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
struct GateFwdTyped {
  static cudaError_t run(const void* logits, const float* bias, float* w, int32_t* ids, int64_t Tn, int E, int k,
                         bool sm, bool rn, int ng, int tg, float sc, cudaStream_t st) {
    return dispatch_gate_fwd<T>(E, k, ng, Tn, logits, bias, w, ids, E, k, sm, rn, ng, tg, sc, st);
  }
};

template <typename T>
struct GateBwdTyped {
  static cudaError_t run(const float* gw, const void* logits, const void* ids, bool ids64, void* grad, int64_t Tn,
                         int E, int k, bool sm, bool rn, float sc, cudaStream_t st) {
    return dispatch_gate_width<T, GateBwd>(E, Tn, gw, logits, ids, ids64, grad, E, k, sm, rn, sc, st);
  }
};

template <typename T>
struct ScatterTyped {
  static cudaError_t run(bool vec_ok, const void* x, const int* dst, const int32_t* rm, void* xp, int64_t Tn, int k,
                         int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, ScatterRun>(vec_ok, Tn, st, x, dst, rm, xp, Tn, k, Hd);
  }
};

template <typename T>
struct UnpermuteTyped {
  static cudaError_t run(bool vec_ok, const void* yp, const int32_t* rm, const float* w, void* y, int64_t Tn, int k,
                         int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, UnpermuteRun>(vec_ok, Tn, st, yp, rm, w, y, Tn, k, Hd);
  }
};

template <typename T>
struct UnpermuteBwdTyped {
  static cudaError_t run(bool vec_ok, const void* gy, const void* yp, const int* inv, const float* w, void* gyp,
                         float* gw, int k, int64_t R, int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, UnpermuteBwdRun>(vec_ok, R, st, gy, yp, inv, w, gyp, gw, k, R, Hd);
  }
};

bool rows_vec_ok(int64_t Hd, DType t, std::initializer_list<const void*> ptrs) {
  const int elem = t == DType::F32 ? 4 : 2;
  if ((Hd * elem) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (!aligned_to(p, 16)) return false;
  return true;
}

}  // namespace

int max_gating_experts() { return 16 * kWarpSize; }
int max_gating_groups() { return kWarpSize; }

cudaError_t launch_topk_gating(const void* logits, DType lt, const float* bias, float* weights, int32_t* ids,
                               int64_t T, int E, int k, bool softmax, bool renormalize, int num_groups,
                               int topk_groups, float scaling, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (k < 1 || k > kMaxTopK || k > E) return cudaErrorInvalidValue;
  return dispatch_float<GateFwdTyped>(lt, logits, bias, weights, ids, T, E, k, softmax, renormalize, num_groups,
                                      topk_groups, scaling, stream);
}

cudaError_t launch_topk_gating_bwd(const float* grad_weights, const void* logits, DType lt, const void* ids,
                                   bool ids64, void* grad_logits, int64_t T, int E, int k, bool softmax,
                                   bool renormalize, float scaling, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (k < 1 || k > kMaxTopK) return cudaErrorInvalidValue;
  return dispatch_float<GateBwdTyped>(lt, grad_weights, logits, ids, ids64, grad_logits, T, E, k, softmax,
                                      renormalize, scaling, stream);
}

size_t moe_route_workspace_bytes(int64_t n, int E) {
  return static_cast<size_t>(make_plan(n, E).total_ints) * sizeof(int);
}

cudaError_t launch_moe_permute(const void* x, DType xt, const void* ids, bool ids64, int64_t T, int k, int64_t Hd,
                               int E, void* x_perm, int64_t* expert_offsets, int32_t* row_map, void* workspace,
                               cudaStream_t stream) {
  if (E < 1 || E > kMaxRouteExperts) return cudaErrorInvalidValue;
  const RoutePlan p = make_plan(T * k, E);
  int* ws = static_cast<int*>(workspace);
  SBOPS_RETURN_IF_ERROR(run_routing(ids, ids64, p, E, 1, ws, expert_offsets, row_map, nullptr, 0, nullptr, 0,
                                    nullptr, stream));
  if (T * k == 0 || Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, xt, {x, x_perm});
  return dispatch_float<ScatterTyped>(xt, vec_ok, x, ws + p.off_dst, row_map, x_perm, T, k, Hd, stream);
}

cudaError_t launch_moe_unpermute(const void* y_perm, DType t, const int32_t* row_map, const float* weights, void* y,
                                 int64_t T, int k, int64_t Hd, cudaStream_t stream) {
  if (Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, t, {y_perm, y});
  return dispatch_float<UnpermuteTyped>(t, vec_ok, y_perm, row_map, weights, y, T, k, Hd, stream);
}

cudaError_t launch_moe_unpermute_bwd(const void* grad_y, const void* y_perm, DType t, const int32_t* row_map,
                                     const float* weights, void* grad_y_perm, float* grad_weights, int64_t T, int k,
                                     int64_t R, int64_t Hd, void* workspace, cudaStream_t stream) {
  int* inv = static_cast<int*>(workspace);
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(grad_weights, 0, sizeof(float) * T * k, stream));
  if (R == 0) return cudaSuccess;
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(inv, 0xff, sizeof(int) * R, stream));  // -1 everywhere
  if (T * k > 0) {
    invert_row_map_kernel<<<grid_for(T * k, kRowBlock), kRowBlock, 0, stream>>>(row_map, T * k, R, inv);
    SBOPS_RETURN_IF_ERROR(last_launch_error());
  }
  if (Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, t, {grad_y, y_perm, grad_y_perm});
  return dispatch_float<UnpermuteBwdTyped>(t, vec_ok, grad_y, y_perm, inv, weights, grad_y_perm, grad_weights, k, R,
                                           Hd, stream);
}

cudaError_t launch_moe_align_block_size(const void* ids, bool ids64, int64_t n, int E, int block_size,
                                        int32_t* sorted_ids, int32_t* block_expert_ids, int32_t* num_post_pad,
                                        void* workspace, cudaStream_t stream) {
  if (E < 1 || E > kMaxRouteExperts || block_size < 1) return cudaErrorInvalidValue;
  const RoutePlan p = make_plan(n, E);
  const int64_t max_padded = n + static_cast<int64_t>(E) * (block_size - 1);
  return run_routing(ids, ids64, p, E, block_size, static_cast<int*>(workspace), nullptr, nullptr, sorted_ids,
                     max_padded, block_expert_ids, ceil_div(max_padded, block_size), num_post_pad, stream);
}

cudaError_t launch_expert_counts(const void* ids, bool ids64, int64_t n, int E, int64_t* counts, cudaStream_t stream) {
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(int64_t) * E, stream));
  if (n == 0 || E == 0) return cudaSuccess;
  if (E > kMaxRouteExperts * 4) return cudaErrorInvalidValue;  // shared-memory histogram
  expert_hist_kernel<<<grid_for(n, kHistBlock, 2), kHistBlock, E * sizeof(unsigned int), stream>>>(
      ids, ids64, n, E, reinterpret_cast<unsigned long long*>(counts));
  return last_launch_error();
}

}  // namespace sbops
