// A/B probe of top-k gating selection loops (diagnosis aid for moe_gating.cu's topk_gating_kernel, not a test):
// T = 16384 tokens, E = 128 experts, k = 8, bf16 logits, softmax + renormalize, no bias / groups; W = 8 lanes
// per token, J = 16 experts per lane.  Each variant is timed with CUDA events (median of 200 launches, L2
// flushed before each) and its ids compared with variant A's.  Variants:
//   select "old": moe_gating.cu's select_rounds (per round a serial 16-key max, 3-step max butterfly, lowest-expert min
//                 butterfly, retire by index), or the same with tree-shaped max / index search
//   select "new": per-lane best kept, tree maxima, winner lane by ballot, its lowest j by one shuffle
//   rowpass: full-row softmax max/sum (else weights from the k picks' keys); reload: winner logit re-read
//   minb: __launch_bounds__ min blocks per SM; pred: the retire is predicated in every lane (no branch)
//   nvcc -std=c++17 -arch=sm_90a -O3 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/topk_selection_loops.cu -o /tmp/topk_selection_loops
#include <algorithm>
#include <cstdio>
#include <vector>

#include "moe_gating.cu"

namespace sbops {
namespace {
constexpr int PW = 8, PJ = 16;
using BF = __nv_bfloat16;

// the tree helpers of the "new" selection (tried in moe_gating.cu in session 6, removed from there: slower)
template <int J>
__device__ __forceinline__ uint32_t max_tree(const uint32_t (&key)[J]) {
  uint32_t t[J];
#pragma unroll
  for (int j = 0; j < J; ++j) t[j] = key[j];
#pragma unroll
  for (int h = J / 2; h > 0; h /= 2)
#pragma unroll
    for (int j = 0; j < h; ++j) t[j] = max(t[j], t[j + h]);
  return t[0];
}
template <int J>
__device__ __forceinline__ int lowest_index_of(const uint32_t (&key)[J], uint32_t v) {
  int t[J];
#pragma unroll
  for (int j = 0; j < J; ++j) t[j] = key[j] == v ? j : J;
#pragma unroll
  for (int h = J / 2; h > 0; h /= 2)
#pragma unroll
    for (int j = 0; j < h; ++j) t[j] = min(t[j], t[j + h]);
  return t[0];
}

template <int MINB, bool kNew, bool kRowPass, bool kReload, bool kPred, bool kTreeOld>
__global__ void __launch_bounds__(256, MINB) tk(const BF* __restrict__ logits, float* __restrict__ weights,
                                                int32_t* __restrict__ ids, int Tn, int E, int k) {
  constexpr int W = PW, J = PJ;
  const int gl = static_cast<int>(threadIdx.x) % W;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * (256 / W) + threadIdx.x / W;
  const bool valid = token < Tn;
  const BF* row = logits + (valid ? token : 0) * E;
  const int e0 = gl * J;
  float x[J];
#pragma unroll
  for (int c = 0; c < J / 8; ++c) {
    Vec<BF, 8> v;
    if (valid) v = reinterpret_cast<const Vec<BF, 8>*>(row + e0)[c];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[c * 8 + i] = valid ? to_float(v.v[i]) : -INFINITY;
  }
  float m = -INFINITY, s = 1.f;
  if (kRowPass) {
#pragma unroll
    for (int j = 0; j < J; ++j) m = fmaxf(m, x[j]);
    m = warp_reduce_max<W>(m);
    s = 0.f;
#pragma unroll
    for (int j = 0; j < J; ++j) s += expf(x[j] - m);
    s = warp_reduce_sum<W>(s);
  }
  uint32_t key[J];
#pragma unroll
  for (int j = 0; j < J; ++j) key[j] = float_order_bits(x[j]);
  int my_id = -1;
  uint32_t my_key = 0u, first_key = 0u;
  if (!kNew && !kTreeOld) {
    select_rounds<W, J>(key, e0, E, k, gl, my_id, my_key, first_key);  // moe_gating.cu's general loop
  } else if (!kNew) {
    // the same rounds with tree-shaped max and index search
    for (int r = 0; r < k; ++r) {
      const uint32_t best = warp_reduce_max<W>(max_tree(key));
      const int j_low = lowest_index_of(key, best);
      const int e_min = warp_reduce_min<W>(j_low < J ? e0 + j_low : E);
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
  } else {
    uint32_t lane_best = max_tree(key);
    for (int r = 0; r < k; ++r) {
      const uint32_t best = warp_reduce_max<W>(lane_best);
      const int win = lowest_lane(group_ballot<W>(lane_best == best));
      const int jmin = group_shfl<W>(lowest_index_of(key, best), win);
      const int e = best != 0u ? win * J + jmin : -1;
      if (r == 0) first_key = best;
      if (gl == r) {
        my_id = e;
        my_key = best;
      }
      if (kPred) {
#pragma unroll
        for (int j = 0; j < J; ++j) key[j] = (gl == win && j == jmin) ? 0u : key[j];
        lane_best = max_tree(key);
      } else if (gl == win) {
#pragma unroll
        for (int j = 0; j < J; ++j)
          if (j == jmin) key[j] = 0u;
        lane_best = max_tree(key);
      }
    }
  }
  float w = 0.f;
  if (valid && gl < k && my_id >= 0) {
    const float xv = kReload ? to_float(row[my_id]) : order_bits_float(my_key);
    w = kRowPass ? expf(xv - m) / s : expf(xv - order_bits_float(first_key));
  }
  const float sum_w = warp_reduce_sum<W>(w);
  if (valid && gl < k) {
    weights[token * k + gl] = w / sum_w;
    ids[token * k + gl] = my_id;
  }
}
}  // namespace
}  // namespace sbops

using namespace sbops;

int main() {
  const int T = 16384, E = 128, K = 8;
  std::vector<BF> h(static_cast<size_t>(T) * E);
  srand(3);
  for (auto& x : h) x = __float2bfloat16((rand() % 20001 - 10000) / 2500.f);
  BF* d;
  float* w;
  int32_t* ids;
  char* flush;
  cudaMalloc(&d, h.size() * 2);
  cudaMalloc(&w, T * K * 4);
  cudaMalloc(&ids, T * K * 4);
  cudaMalloc(&flush, 256 << 20);
  cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice);
  std::vector<int32_t> ref(T * K), got(T * K);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  const unsigned grid = T / (256 / PW);
  int rc = 0;
  auto run = [&](const char* name, auto launch, bool is_ref) {
    for (int i = 0; i < 20; ++i) launch();
    std::vector<float> ts;
    for (int i = 0; i < 200; ++i) {
      cudaMemsetAsync(flush, i & 255, 256 << 20);
      cudaEventRecord(a);
      launch();
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms;
      cudaEventElapsedTime(&ms, a, b);
      ts.push_back(ms * 1000.f);
    }
    cudaEventRecord(a);
    for (int i = 0; i < 100; ++i) launch();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float warm;
    cudaEventElapsedTime(&warm, a, b);
    std::sort(ts.begin(), ts.end());
    cudaError_t err = cudaGetLastError();
    cudaMemcpy((is_ref ? ref : got).data(), ids, T * K * 4, cudaMemcpyDeviceToHost);
    const bool same = is_ref || ref == got;
    if (!same || err != cudaSuccess) rc = 1;
    printf("%-58s cold median %6.2f us  warm back-to-back %6.2f us  ids %s %s\n", name, ts[ts.size() / 2],
           warm * 10.f, same ? "same" : "DIFFER", err == cudaSuccess ? "" : cudaGetErrorString(err));
  };
#define V(NAME, ...) run(NAME, [&] { tk<__VA_ARGS__><<<grid, 256>>>(d, w, ids, T, E, K); }, false)
  run("A old select, rowpass, reload, minb1 (session 5 kernel)", [&] { tk<1, false, true, true, false, false><<<grid, 256>>>(d, w, ids, T, E, K); }, true);
  V("B old select, rowpass, reload, minb4", 4, false, true, true, false, false);
  V("C old select, no rowpass, keys, minb1", 1, false, false, false, false, false);
  V("D old select, no rowpass, keys, minb4", 4, false, false, false, false, false);
  V("G old select with trees, no rowpass, keys, minb1", 1, false, false, false, false, true);
  V("H old select with trees, no rowpass, keys, minb4", 4, false, false, false, false, true);
  V("I new select, rowpass, reload, minb1", 1, true, true, true, false, false);
  V("E new select, no rowpass, keys, minb4", 4, true, false, false, false, false);
  V("F new select pred retire, no rowpass, keys, minb4", 4, true, false, false, true, false);
  V("J new select pred retire, no rowpass, keys, minb1", 1, true, false, false, true, false);
  run("moe_gating.cu topk_gating_kernel<bf16, 8, 16> (packed keys, sorted lanes)", [&] {
    topk_gating_kernel<BF, 8, 16><<<grid, 256>>>(d, nullptr, w, ids, T, E, K, true, true, 0, 0, 1.f, true);
  }, false);
  return rc;
}
