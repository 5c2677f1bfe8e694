// The dense decode GEMV: y = x @ w^T (+ bias) for M <= 32 rows of x (a decode step's tokens), float16 or bfloat16
// x and w, float32 accumulation, y in x's dtype.  Torch-free.  It serves the bf16 model's projections at decode,
// where cuBLAS's GEMV reads the smaller weights (qkv, o: 25-33 MB) at ~68% of an H100's bandwidth (session 30).
//
// Layout (sm_80+, mma.m16n8k16 with float32 accumulators; the e4m3 spike_decode GEMV's scheme without its counts):
// block = WN x WK warps.  Warp (wn, wk) owns 16 weight rows and every WK-th 32-column block (64 bytes of a row);
// each lane loads 16 contiguous bytes (8 weights) of rows g and g + 8 (g = lane / 4, t = lane % 4, columns
// 32 kb + 8 t ..) straight into registers by a streaming load (no L1 allocation, 256-byte L2 segments), no
// shared-memory staging.  A dot product does not care about the order of K, so those 8 columns serve as the lane's
// logical columns {2t, 2t+1, 2t+8, 2t+9} of two k16 steps (step s: columns 8 t + 4 s .. + 3), and x's rows (the
// tokens 8 j + g of n-tile j) are loaded with the same permutation, through L1 (every warp of an SM reads them).
// Two register stages of U blocks alternate, so the next stage's loads are in flight while the current one is
// multiplied.  NT n-tiles of 8 tokens cover M <= 8 NT.  The WK k-groups add their partial sums through shared
// memory in a fixed order (deterministic), then the block adds the bias and stores y.
// On sm_90 the grid launches as a programmatic dependent of the kernel before it (pdl_launch.cuh, SBOPS_DECODE_PDL) and
// waits for that kernel's results before it reads anything: the kernel before may be any (it may have just written
// the weights, e.g. the copy that fuses q/k/v), and only the wait makes its writes visible.
#include "dense_decode.cuh"

#include "pdl_launch.cuh"
#include "spike_decode_blocks.cuh"

namespace sbops {

#if !defined(USE_MACA)
namespace {

template <typename E, int NT, int WN, int WK, int U>
__global__ void __launch_bounds__(32 * WN * WK) dense_decode_kernel(DenseDecodeArgs a) {
  const char* __restrict__ w = static_cast<const char*>(a.w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % WN, wk = warp / WN;
  const int g = lane >> 2, t = lane & 3;
  const int nb = blockIdx.x * 16 * WN, n0 = nb + wn * 16;
  const int KB = (a.K + 31) >> 5;  // 32-column blocks

  const char* wrow[2];
  bool wok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = n0 + g + 8 * h;
    wok[h] = n < a.N;
    wrow[h] = w + (static_cast<int64_t>(wok[h] ? n : 0) * a.ldw + 8 * t) * 2;
  }
  const E* xrow[NT];
  bool xok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = 8 * j + g;
    xok[j] = m < a.M;
    xrow[j] = static_cast<const E*>(a.x) + static_cast<int64_t>(xok[j] ? m : 0) * a.ldx + 8 * t;
  }
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 wv[2][U][2], xv[2][U][NT];
  auto load_w = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = kb0 + u * WK;
      const bool kok = kb < KB && 32 * kb + 8 * t < a.K;
#pragma unroll
      for (int h = 0; h < 2; ++h) wv[buf][u][h] = (kok && wok[h]) ? ld_stream(wrow[h] + 64 * int64_t{kb}) : zero;
    }
  };
  auto load_x = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = kb0 + u * WK;
      const bool kok = kb < KB && 32 * kb + 8 * t < a.K;
#pragma unroll
      for (int j = 0; j < NT; ++j)
        xv[buf][u][j] = (kok && xok[j]) ? __ldg(reinterpret_cast<const uint4*>(xrow[j] + 32 * int64_t{kb})) : zero;
    }
  };
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
  auto compute = [&](int buf) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const uint4 &w0 = wv[buf][u][0], &w1 = wv[buf][u][1];
        const uint32_t af[4] = {word(w0, 2 * s), word(w1, 2 * s), word(w0, 2 * s + 1), word(w1, 2 * s + 1)};
#pragma unroll
        for (int j = 0; j < NT; ++j)
          warp_mma::mma_16816<E>(acc[j], af, word(xv[buf][u][j], 2 * s), word(xv[buf][u][j], 2 * s + 1));
      }
  };

  constexpr int kStep = WK * U;
  int kb = wk;
  grid_dependency_wait();  // x and the weights may come from the kernel before (a programmatic launch starts early)
  grid_dependents_launch();  // what follows may launch now (a programmatic dependent waits for this whole grid)
  if (kb < KB) load_w(0, kb), load_x(0, kb);
  while (kb < KB) {  // two stages per trip keep the register buffers' indices compile-time
    if (kb + kStep < KB) load_w(1, kb + kStep), load_x(1, kb + kStep);
    compute(0);
    kb += kStep;
    if (kb >= KB) break;
    if (kb + kStep < KB) load_w(0, kb + kStep), load_x(0, kb + kStep);
    compute(1);
    kb += kStep;
  }

  // partial sums red[wk][wn][j][i][lane]; the k-groups add in k-group order
  __shared__ float red[WK * WN * NT * 4 * 32];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[(((wk * WN + wn) * NT + j) * 4 + i) * 32 + lane] = acc[j][i];
  __syncthreads();
  constexpr int kRows = 16 * WN, kOut = kRows * 8 * NT;
  for (int o = threadIdx.x; o < kOut; o += 32 * WN * WK) {
    const int r = o % kRows, m = o / kRows, n = nb + r;
    if (m >= a.M || n >= a.N) continue;
    const int rw = r / 16, rr = r % 16, j = m / 8, mm = m % 8;
    const int src_lane = 4 * (rr % 8) + mm / 2, i = 2 * (rr / 8) + mm % 2;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < WK; ++k) s += red[(((k * WN + rw) * NT + j) * 4 + i) * 32 + src_lane];
    if (a.bias != nullptr)
      s += a.bias_x_dtype ? to_float(static_cast<const E*>(a.bias)[n]) : static_cast<const float*>(a.bias)[n];
    static_cast<E*>(a.y)[static_cast<int64_t>(m) * a.ldy + n] = from_float<E>(s);
  }
}

template <typename E, int NT, int WN, int WK, int U>
cudaError_t launch_shape(const DenseDecodeArgs& a, cudaStream_t st) {
  const auto kernel = dense_decode_kernel<E, NT, WN, WK, U>;
  return launch_one(kernel, static_cast<unsigned>(ceil_div(a.N, 16 * WN)), 32 * WN * WK, pdl_plan(kernel, 1), a, st);
}

// Block shapes (WN, WK, U).  Four n-tiles (M > 16) hold x for U <= 2 blocks (a U = 4 stage pair would not fit in
// registers): layouts 2 and 4 run there as 0 and 3.
template <typename E, int NT>
cudaError_t launch_layout(const DenseDecodeArgs& a, int layout, cudaStream_t st) {
  constexpr int U4 = NT == 4 ? 2 : 4;
  switch (layout) {
    case 0: return launch_shape<E, NT, 1, 8, 2>(a, st);
    case 1: return launch_shape<E, NT, 1, 8, 1>(a, st);
    case 2: return launch_shape<E, NT, 1, 8, U4>(a, st);
    case 3: return launch_shape<E, NT, 2, 4, 2>(a, st);
    case 4: return launch_shape<E, NT, 2, 4, U4>(a, st);
    default: return launch_shape<E, NT, 4, 2, 2>(a, st);
  }
}

template <typename E>
cudaError_t launch_typed(const DenseDecodeArgs& a, int layout, cudaStream_t st) {
  if (a.M <= 8) return launch_layout<E, 1>(a, layout, st);
  if (a.M <= 16) return launch_layout<E, 2>(a, layout, st);
  return launch_layout<E, 4>(a, layout, st);
}

}  // namespace
#endif  // !USE_MACA

bool dense_decode_supports(int64_t M, int64_t N, int64_t K) {
#if defined(USE_MACA)
  (void)M, (void)N, (void)K;
  return false;  // mma.sync through inline PTX: not on MACA
#else
  return M >= 1 && M <= kDenseDecodeMaxRows && N >= 1 && N < (int64_t{1} << 31) && K >= 8 && K % 8 == 0 &&
         K < (int64_t{1} << 31);
#endif
}

int dense_decode_default_layout(int64_t M, int64_t N, int64_t K) {
  // measured on an H100 at the bf16 7B shapes (benchmarks/RESULTS_sessions_31-33.md, session 32,
  // probes/dense_decode_ab.py):
  // M <= 8 (1, 8, 2), or (1, 8, 4) for the wide gate_up / lm_head; M <= 16 (1, 8, 1), or (1, 8, 2) for K >= 8192
  // (down); past 16 rows (1, 8, 1), which loses to cuBLAS there (the model keeps F.linear past 16 rows)
  if (M <= 8) return N >= 16384 ? 2 : 0;
  if (M <= 16) return K >= 8192 ? 0 : 1;
  return 1;
}

bool dense_decode_available() {
#if defined(USE_MACA)
  return false;
#else
  // an sm_80+ device, and this build holds code that runs there (a build for other archs only has no image to load)
  int dev = 0, major = 0;
  cudaFuncAttributes fa{};
  const bool ok = cudaGetDevice(&dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8 &&
                  cudaFuncGetAttributes(&fa, dense_decode_kernel<__nv_bfloat16, 1, 1, 8, 2>) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok;
#endif
}

cudaError_t launch_dense_decode(const DenseDecodeArgs& a, DType dtype, int layout, cudaStream_t st) {
#if defined(USE_MACA)
  (void)a, (void)dtype, (void)layout, (void)st;
  return cudaErrorNotSupported;
#else
  if (!dense_decode_supports(a.M, a.N, a.K) || layout < -1 || layout >= kDenseDecodeLayouts)
    return cudaErrorInvalidValue;
  if (layout < 0) layout = dense_decode_default_layout(a.M, a.N, a.K);
  if (dtype == DType::BF16) return launch_typed<__nv_bfloat16>(a, layout, st);
  if (dtype == DType::F16) return launch_typed<__half>(a, layout, st);
  return cudaErrorInvalidValue;
#endif
}

}  // namespace sbops
