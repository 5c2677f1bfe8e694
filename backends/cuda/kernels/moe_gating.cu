// MoE top-k gating kernels (forward and backward).  Torch-free.  Split from the routing and
// row-mover kernels (moe_route.cu, moe_unpermute.cu); launchers declared in moe.cuh.
#include <cmath>
#include <type_traits>

#include "moe_common.cuh"

namespace sbops {
namespace {

using namespace moe_detail;  // the shared row-mover helpers (moe_common.cuh)
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
// winner lane were timed slower, 22 against 12.3 us at E=128 k=8: benchmarks/gpu/probes/topk_selection_loops.cu.)
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
}  // namespace sbops
