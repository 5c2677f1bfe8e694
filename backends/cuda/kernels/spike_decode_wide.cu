// spike_linear at decode for 9 <= M <= 32 rows (the model's decode at batch 16 / 32) on e4m3 or int8 weights with
// per-output-channel scales: the "wide" GEMV after spike_decode.cu's encode (the same count planes, lo + 2048 hi in
// float16 and the float32 residual plane, and the same flags).  Torch-free.
//
// The narrow GEMV (M <= 8) keeps one n-tile of 8 tokens and its counts in registers, two stages deep.  At M = 32 that
// would be four n-tiles of counts per stage (spills), and loading them per warp from L2 would move 4x the weight
// bytes (16 weight rows per warp against 32 tokens of float16).  Here:
// * a block is WN warps of 16 weight rows each (16 WN rows, a "tile"), all over the same column blocks, so each
//   64-column block of counts (M x 64 float16) is read by WN warps at about the same time: the first warp's load
//   brings it to L1, the others hit there (the counts' L2 traffic is 2 / WN of the weights' at M = 32);
// * each warp streams its weights straight into registers, two stages of U 64-column blocks (the narrow GEMV's
//   ld_stream loads), and loads a block's counts only when it multiplies it;
// * one mma.m16n8k16 per k16 step and n-tile: the weights are the A operand (rows), the tokens B, four n-tiles;
// * the columns are split into `splits` ranges of column blocks (grid.y), so that narrow shapes (N = 3584 rows: 56
//   tiles) still fill the GPU.  Each block writes its float32 partial sums to part[split, m, n]; the block that
//   arrives last at its tile's counter (zeroed by the encode) adds the splits' partials in split order (the same
//   bits whatever the arrival order) and writes y.  With one split the block writes y itself.
// Rows with a count past 2048 multiply the hi plane too (the flag is global: every block the same branch), rows with
// one of 2048^2 or more take the residual pass over the block's own column range, as in the narrow GEMV.
#include <algorithm>
#include <type_traits>

#include <cuda_pipeline.h>

#include "spike_decode_blocks.cuh"

namespace sbops {

#if !defined(USE_MACA)
namespace {

constexpr int kWideTiles = kSpikeDecodeWideRows / 8;  // n-tiles of 8 tokens

template <typename E, bool I8, int WN, int U>
__global__ void __launch_bounds__(32 * WN) spike_decode_wide_kernel(SpikeDecodeArgs a) {
  constexpr int NT = kWideTiles;
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(a.w);
  const int lane = threadIdx.x & 31, wn = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nb = blockIdx.x * 16 * WN, n0 = nb + wn * 16;
  const int KB = (a.K + 63) >> 6, S = gridDim.y, split = blockIdx.y;
  const int kb_begin = static_cast<int>(int64_t{KB} * split / S), kb_end = static_cast<int>(int64_t{KB} * (split + 1) / S);

  const uint8_t* wrow[2];
  bool wok[2];
  weight_rows(w, a.ldw, a.N, n0, lane, wrow, wok);
  uint4 wv[2][U][2];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load_w = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = kb0 + u;
      const bool kok = kb < kb_end && kb * 64 + 16 * t < a.K;
#pragma unroll
      for (int h = 0; h < 2; ++h) wv[buf][u][h] = (kok && wok[h]) ? ld_stream(wrow[h] + kb * 64) : zero;
    }
  };
  // the first stage of weights is in flight while the encode finishes (a programmatic dependent launch on sm_90)
  if (kb_begin < kb_end) load_w(0, kb_begin);
  grid_dependency_wait();

  bool two;
  unsigned big;
  read_flags(a, two, big);

  // One pass over the block's column range with one count plane (lo; then hi, re-reading the weights, only where some
  // count passes 2048: rare).  Stage i is U column blocks (kb_begin + U i ..): the block copies its counts (all M
  // tokens, zero past M, K and the range) into a kStages-deep shared-memory ring with cp.async, shared by the WN
  // warps; each warp's weights for stage i + 1 are loaded into registers while it multiplies stage i.
  constexpr int kStages = 3, P = U * 64 + 8;  // row pitch in halves: 16 bytes of padding keep ld.shared conflict-free
  constexpr int kChunks = kSpikeDecodeWideRows * U * 8;  // 16-byte copies per stage
  static_assert(kChunks % (32 * WN) == 0, "the block's threads split a stage's copies evenly");
  __shared__ __align__(16) __half ring[kStages][kSpikeDecodeWideRows][P];
  const int nst = (kb_end - kb_begin + U - 1) / U;
  auto load_c = [&](const __half* plane, int i) {
    const int kb0 = kb_begin + i * U;
    __half(*dst)[P] = ring[i % kStages];
#pragma unroll
    for (int e0 = 0; e0 < kChunks; e0 += 32 * WN) {
      const int e = e0 + static_cast<int>(threadIdx.x), r = e / (U * 8), c = e % (U * 8);
      const int col = kb0 * 64 + c * 8;
      const bool ok = r < a.M && col < a.K && kb0 + c / 8 < kb_end;
      __pipeline_memcpy_async(&dst[r][c * 8], ok ? plane + int64_t{r} * a.K + col : plane, 16, ok ? 0 : 16);
    }
  };
  auto pass = [&](const __half* plane, float (&acc)[NT][4]) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i) {
      if (i < nst) load_c(plane, i);
      __pipeline_commit();
    }
    auto step = [&](int buf, int i) {
      __pipeline_wait_prior(kStages - 2);  // this thread's copies of stage i have landed ...
      __syncthreads();                     // ... and everyone's; stage i - 1's slot is free again
      if (i + kStages - 1 < nst) load_c(plane, i + kStages - 1);
      __pipeline_commit();
      if (i + 1 < nst) load_w(buf ^ 1, kb_begin + (i + 1) * U);
      const __half(*src)[P] = ring[i % kStages];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        uint4 cv[NT][2];
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int v = 0; v < 2; ++v) cv[j][v] = *reinterpret_cast<const uint4*>(&src[8 * j + g][u * 64 + 16 * t + 8 * v]);
        mma_plane<NT, I8>(acc, wv[buf][u][0], wv[buf][u][1], cv);
      }
    };
    int i = 0;
    while (i < nst) {  // two steps per trip keep the weight buffers' indices compile-time
      step(0, i);
      if (++i >= nst) break;
      step(1, i);
      ++i;
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // the ring is free for the next pass
  };
  float acc[NT][4], acch[NT][4];
  pass(a.lo, acc);
  if (two) {
    if (kb_begin < kb_end) load_w(0, kb_begin);
    pass(a.hi, acch);
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] = fmaf(kPlane, acch[j][i], acc[j][i]);
  }
  if (big != 0) {
#pragma unroll 1
    for (int j = 0; j < NT; ++j) {
      const unsigned bits = (big >> (8 * j)) & 0xffu;
      if (bits == 0) continue;
      const float4 r = residual_rows_range<I8>(w, a.ldw, ResidualPlane{a.res + int64_t{8} * j * a.K, a.K}, a.N, a.K, n0,
                                               kb_begin, kb_end, 1, lane, bits);
      acc[j][0] += r.x, acc[j][1] += r.y, acc[j][2] += r.z, acc[j][3] += r.w;
    }
  }

  // accumulator c of n-tile j, lane (g, t): row n0 + g + 8 (c >= 2), token 8 j + 2 t + (c & 1)
  if (S == 1) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int n = n0 + g + 8 * (c >> 1), m = 8 * j + 2 * t + (c & 1);
        if (n < a.N && m < a.M) store_one<E>(a, a.vth[m], m, n, acc[j][c]);
      }
    return;
  }
  float* part = a.part + int64_t{split} * a.M * a.N;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int n = n0 + g + 8 * (c >> 1), m = 8 * j + 2 * t + (c & 1);
      if (n < a.N && m < a.M) __stcg(part + int64_t{m} * a.N + n, acc[j][c]);
    }
  // the last block to arrive at this tile adds the partials (every block's stores made visible before its arrival)
  __shared__ bool s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(a.counters + blockIdx.x, 1) == S - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  constexpr int kRows = 16 * WN;
  for (int idx = threadIdx.x; idx < a.M * kRows; idx += blockDim.x) {
    const int m = idx / kRows, n = nb + idx % kRows;
    if (n >= a.N) continue;
    const float* p = a.part + int64_t{m} * a.N + n;
    float sum = 0.f;
    for (int s = 0; s < S; ++s) sum += __ldcg(p + int64_t{s} * a.M * a.N);
    store_one<E>(a, a.vth[m], m, n, sum);
  }
}

// Layouts 8-10: (WN warps of 16 rows, U column blocks per stage)
template <typename E, bool I8, int WN, int U>
cudaError_t launch_wide(const SpikeDecodeArgs& a, cudaStream_t st) {
  if (a.tiles != ceil_div(a.N, 16 * WN) || a.splits < 1 || (a.splits > 1 && (a.part == nullptr || a.counters == nullptr)))
    return cudaErrorInvalidValue;  // spike_decode_plan and spike_decode_workspace for this layout
  const auto kernel = spike_decode_wide_kernel<E, I8, WN, U>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(a.tiles), static_cast<unsigned>(a.splits));
  cfg.blockDim = dim3(32 * WN);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (pdl_plan(kernel, 1)) {  // a programmatic dependent of the encode, as the narrow GEMV
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, kernel, a);
}

template <typename E, bool I8>
cudaError_t launch_wide_layout(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  switch (layout) {
    case 8: return launch_wide<E, I8, 4, 2>(a, st);
    case 9: return launch_wide<E, I8, 4, 1>(a, st);
    default: return launch_wide<E, I8, 8, 2>(a, st);
  }
}

int wide_rows(int layout) { return layout == 10 ? 128 : 64; }

int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  static std::mutex mu;
  static std::map<int, int> counts;
  const std::lock_guard<std::mutex> lock(mu);
  const auto it = counts.find(dev);
  if (it != counts.end()) return it->second;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1) {
    (void)cudaGetLastError();
    sms = 132;
  }
  counts.emplace(dev, sms);
  return sms;
}

}  // namespace

cudaError_t launch_spike_decode_wide_gemv(const SpikeDecodeArgs& a, DType x_dtype, int layout, cudaStream_t st) {
  if (x_dtype == DType::BF16)
    return a.w_int8 ? launch_wide_layout<__nv_bfloat16, true>(a, layout, st)
                    : launch_wide_layout<__nv_bfloat16, false>(a, layout, st);
  if (x_dtype == DType::F16)
    return a.w_int8 ? launch_wide_layout<__half, true>(a, layout, st) : launch_wide_layout<__half, false>(a, layout, st);
  return cudaErrorInvalidValue;
}
#endif  // !USE_MACA

void spike_decode_plan(SpikeDecodeArgs& a, int layout, int splits) {
  a.splits = 1;
  a.tiles = 0;
#if !defined(USE_MACA)
  if (layout < 8 || a.N < 1 || a.K < 1) return;
  a.tiles = static_cast<int>(ceil_div(a.N, wide_rows(layout)));
  const int KB = (a.K + 63) / 64;
  // default: about two blocks per SM (a tile's blocks each keep at least 4 column blocks)
  const int want = splits > 0 ? splits : static_cast<int>(ceil_div(2 * sm_count(), a.tiles));
  a.splits = std::max(1, std::min({want, KB, splits > 0 ? KB : std::max(1, KB / 4), 64}));
#else
  (void)splits;
#endif
}

}  // namespace sbops
