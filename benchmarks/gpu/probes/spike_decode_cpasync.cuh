// A probe, not a library kernel (written in session 23 after its device time was spent: compiled, never run):
// spike_linear decode's GEMV with spike_decode_kernel's warp layout (one 16-row tile per block, WK warps, warp wk
// taking 64-column blocks wk, wk + WK, ..), but each warp streams its weights and counts through its own S-deep
// ring in shared memory by cp.async (16 bytes per lane and row) instead of two register stages.  The aim is the
// one session 23's bulk-copy GEMV (spike_decode_tma.cuh) had -- more bytes in flight per SM than the register
// stages' ~16 KB -- without the bulk copies' per-copy cost (~45 SM cycles per 512-byte copy inferred on the
// H100): cp.async is a per-thread instruction, as the swa_decode kernel's per-warp rings use it.
// Included by spike_decode_vs_cublas.cu inside sbops' anonymous namespace, after spike_decode.cu (ld_stream,
// weight_rows, grid_dependency_wait, read_flags, mma_block, residual_rows, store_rows, pdl_plan and launch_one come
// from there).
//
// A stage of a warp is 2 KB: four 512-byte regions of 32 lane slots of 16 bytes (weight row g, weight row g + 8,
// counts 0-7 and counts 8-15 of token g), so every lane copies into and reads back its own slots: no bank
// conflicts and no exchange between lanes (no __syncwarp).  The hi plane (rows with a count past 2048, rare) is
// read from global memory where it is used.  Launched as a programmatic dependent of the encode, a warp copies
// its first S - 1 stages' weights before the wait and their counts after it; the commit groups are counted so
// that iteration i always waits with S - 2 groups left in flight.

namespace cpa {
constexpr int kStageBytes = 2048;
}  // namespace cpa

template <typename E, int WK, int S>
// registers capped for 3 blocks of 8 warps (6 of 4) per SM, what their rings of 4-6 stages leave room for
__global__ void __launch_bounds__(32 * WK, WK >= 8 ? 3 : 6) spike_decode_cpasync_kernel(SpikeDecodeArgs a) {
  static_assert(S >= 2, "a ring of at least two stages");
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ float red[WK * 4 * 32];
  const int lane = threadIdx.x & 31, wk = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nb = blockIdx.x * 16;
  const int KB = (a.K + 63) >> 6;
  const int n = wk < KB ? (KB - wk + WK - 1) / WK : 0;  // this warp's 64-column blocks
  uint8_t* ring = smem + static_cast<size_t>(wk) * S * cpa::kStageBytes;
  const uint8_t* w = static_cast<const uint8_t*>(a.w);
  const uint8_t* wrow[2];
  bool wok[2];
  weight_rows(w, a.ldw, a.N, nb, lane, wrow, wok);
  const bool cok = g < a.M;
  const __half* crow = a.lo + static_cast<int64_t>(cok ? g : 0) * a.K + 16 * t;
  auto ok_cols = [&](int i) { return (wk + WK * i) * 64 + 16 * t < a.K; };  // the lane's 16 columns of block i
  auto load_w = [&](int i) {
    uint8_t* st = ring + (i % S) * cpa::kStageBytes;
    const int kb = wk + WK * i;
    const bool ok = ok_cols(i);
#pragma unroll
    for (int h = 0; h < 2; ++h)  // invalid rows / columns: 16 zero bytes, copied from a valid address
      __pipeline_memcpy_async(st + 512 * h + 16 * lane, ok && wok[h] ? wrow[h] + kb * 64 : w, 16,
                              ok && wok[h] ? 0 : 16);
  };
  auto load_c = [&](int i) {
    uint8_t* st = ring + (i % S) * cpa::kStageBytes;
    const int kb = wk + WK * i;
    const bool ok = ok_cols(i) && cok;
#pragma unroll
    for (int v = 0; v < 2; ++v)
      __pipeline_memcpy_async(st + 1024 + 512 * v + 16 * lane, ok ? crow + kb * 64 + 8 * v : a.lo, 16, ok ? 0 : 16);
  };

  // prologue: the first S - 1 stages' weights (groups W_0 .. W_{S-2}), the wait for the encode, their counts
  // (groups C_0 .. C_{S-2})
  for (int s = 0; s < S - 1; ++s) {
    if (s < n) load_w(s);
    __pipeline_commit();
  }
  grid_dependency_wait();
  bool two;
  int big;
  read_flags(a, two, big);
  for (int s = 0; s < S - 1; ++s) {
    if (s < n) load_c(s);
    __pipeline_commit();
  }
  float acc[1][4] = {{0.f, 0.f, 0.f, 0.f}}, acch[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int i = 0; i < n; ++i) {
    // stage i's groups are complete when at most S - 2 later ones are not: C_{i+1} .. C_{S-2} and the i groups
    // committed by the iterations before (i < S - 1), or the S - 2 iterations' groups before this one
    __pipeline_wait_prior(S - 2);
    const uint8_t* st = ring + (i % S) * cpa::kStageBytes;
    const uint4 w0 = *reinterpret_cast<const uint4*>(st + 16 * lane);
    const uint4 w1 = *reinterpret_cast<const uint4*>(st + 512 + 16 * lane);
    uint4 cv[1][2] = {{*reinterpret_cast<const uint4*>(st + 1024 + 16 * lane),
                       *reinterpret_cast<const uint4*>(st + 1536 + 16 * lane)}};
    uint4 hv[1][2] = {{zero, zero}};
    if (two && cok && ok_cols(i)) {
      const __half* hrow = a.hi + static_cast<int64_t>(g) * a.K + 16 * t + (wk + WK * i) * 64;
      hv[0][0] = __ldg(reinterpret_cast<const uint4*>(hrow));
      hv[0][1] = __ldg(reinterpret_cast<const uint4*>(hrow + 8));
    }
    mma_block<1>(acc, acch, w0, w1, cv, hv, two);
    const int nx = i + S - 1;  // refill the slot read at iteration i - 1 (lane-private: no exchange needed)
    if (nx < n) {
      load_w(nx);
      load_c(nx);
    }
    __pipeline_commit();
  }
  if (big != 0) {
    const float4 r = residual_rows<WK>(w, a.ldw, a.res, a.N, a.K, nb, wk, lane, big);
    acc[0][0] += r.x, acc[0][1] += r.y, acc[0][2] += r.z, acc[0][3] += r.w;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) red[wk * 4 * 32 + i * 32 + lane] = fmaf(kPlane, acch[0][i], acc[0][i]);
  __syncthreads();
  store_rows<E, 1, WK>(a, red, nb);
}

// Layouts 12 .. 15 of the probe: (warps, stages per warp); the encode, then the GEMV
template <int WK, int S>
cudaError_t launch_cpasync_layout(const SpikeDecodeArgs& a, cudaStream_t st) {
  using E = __nv_bfloat16;
  const auto kernel = spike_decode_cpasync_kernel<E, WK, S>;
  const int smem = WK * S * cpa::kStageBytes;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return cudaErrorNotSupported;
  return launch_one(kernel, static_cast<unsigned>(ceil_div(a.N, 16)), 32 * WK, pdl_plan(kernel, 1), a, st,
                    static_cast<size_t>(smem));
}

cudaError_t launch_cpasync_probe(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  spike_decode_encode_kernel<__nv_bfloat16><<<static_cast<unsigned>(a.M), kEncodeThreads, 0, st>>>(a);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (layout) {
    case 12: return launch_cpasync_layout<8, 4>(a, st);
    case 13: return launch_cpasync_layout<4, 8>(a, st);
    case 14: return launch_cpasync_layout<8, 6>(a, st);
    default: return launch_cpasync_layout<4, 12>(a, st);
  }
}
