// A probe, not a library kernel: spike_linear decode's GEMV with the weights streamed through shared memory by bulk
// copies (cp.async.bulk, an mbarrier ring per block) instead of spike_decode_kernel's register double-buffering,
// tried in session 23 to raise the bytes in flight per SM (the register-staged GEMV keeps about one 1 KB stage per
// warp in flight).  Measured slower on the H100 at the 7B shapes (benchmarks/RESULTS_sessions_17-23.md, session 23), so it is not
// in the library.  Included by spike_decode_vs_cublas.cu inside sbops' anonymous namespace, after spike_decode.cu
// (grid_dependency_wait, read_flags, mma_block, residual_rows, store_rows, pdl_plan and launch_one come from there);
// sm_90a only (the probe builds for it).
//
// Block: CW consumer warps + 1 producer warp, 16 weight rows (one m16 tile), all of K.  Chunk i holds columns
// [i KC, (i + 1) KC) of the 16 weight rows and of the M count rows (planes lo and, when some row has a count past
// 2048, hi) and goes to stage i % STAGES.  Producer lanes 0-15 copy one weight row each, lanes 16 + m and 24 + m
// token m's lo and hi chunk.  A stage's full barrier completes with its bytes (one arrival + the transaction
// count), its empty barrier with one arrival per consumer warp.  Consumer warp wk multiplies 64-column blocks
// wk, wk + CW, .. of each chunk in spike_decode_kernel's register layout (lane (g, t): 16 bytes of rows g and
// g + 8 and the same 16 columns of token g's counts), read from shared memory, where weight rows are padded to
// KC + 64 bytes and count rows to 2 KC + 16 so that each quarter-warp's 16-byte loads hit distinct banks.
// Launched as a programmatic dependent of the encode, the producer copies the first stages' weights before
// waiting for the counts.
namespace tma {

#ifdef SBOPS_SM90A_DEVICE  // sm90.cuh's bulk copy and mbarriers, plus an expect-tx without an arrival
using sm90::bulk_load;
using sm90::mbar_arrive;
using sm90::mbar_expect_tx;
using sm90::mbar_init;
using sm90::mbar_wait;
using sm90::smem_addr;
__device__ __forceinline__ void mbar_add_tx(uint32_t mbar, uint32_t bytes) {  // bytes, no arrival
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(mbar), "r"(bytes) : "memory");
}
#endif

template <int CW, int U>
struct Geometry {
  static constexpr int kKC = 64 * CW * U;     // columns (e4m3 bytes) of a row per chunk
  static constexpr int kWStride = kKC + 64;   // shared-memory bytes per weight row
  static constexpr int kCStride = 2 * kKC + 16;  // per count row (float16)
  static constexpr int kWBytes = 16 * kWStride;
  static constexpr int stage_bytes(int M) { return (kWBytes + 2 * M * kCStride + 127) / 128 * 128; }
  static constexpr int smem_bytes(int M, int stages) { return stages * stage_bytes(M) + 16 * stages; }
};

}  // namespace tma

// residual_rows as a call: its ~50 live floats stay out of this kernel's registers, capped for occupancy
template <int WK>
__device__ __noinline__ float4 residual_rows_call(const uint8_t* w, int64_t ldw, const float* res, int N, int K,
                                                  int n0, int wk, int lane, int big) {
  return residual_rows<WK>(w, ldw, res, N, K, n0, wk, lane, big);
}

template <typename E, int CW, int U, int S>
__global__ void __launch_bounds__(32 * (CW + 1), CW >= 4 ? 6 : 8) spike_decode_tma_kernel(SpikeDecodeArgs a) {
#ifdef SBOPS_SM90A_DEVICE
  using G = tma::Geometry<CW, U>;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ float red[CW * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nb = blockIdx.x * 16;
  const int SB = G::stage_bytes(a.M);
  const uint32_t base = tma::smem_addr(smem);
  const uint32_t full0 = base + S * SB, empty0 = full0 + 8 * S;
  const int nch = (a.K + G::kKC - 1) / G::kKC;
  auto cols = [&](int i) { return min(G::kKC, a.K - i * G::kKC); };  // a multiple of 16 (K % 16 == 0)
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      tma::mbar_init(full0 + 8 * s, 1);
      tma::mbar_init(empty0 + 8 * s, CW);
    }
  }
  __syncthreads();

  if (warp == CW) {  // producer
    const int rows = min(16, a.N - nb), m = lane & 7;
    const bool hi = lane >= 24;
    const uint8_t* wr = static_cast<const uint8_t*>(a.w) + static_cast<int64_t>(nb + min(lane, rows - 1)) * a.ldw;
    auto issue_w = [&](int i) {
      if (lane < rows)
        tma::bulk_load(base + (i % S) * SB + lane * G::kWStride, wr + static_cast<int64_t>(i) * G::kKC, cols(i),
                        full0 + 8 * (i % S));
    };
    auto issue_c = [&](int i, bool two) {
      if (lane >= 16 && m < a.M && (!hi || two)) {
        const __half* src = (hi ? a.hi : a.lo) + static_cast<int64_t>(m) * a.K + static_cast<int64_t>(i) * G::kKC;
        tma::bulk_load(base + (i % S) * SB + G::kWBytes + ((hi ? a.M : 0) + m) * G::kCStride, src, 2 * cols(i),
                        full0 + 8 * (i % S));
      }
    };
    auto cbytes = [&](int i, bool two) { return (two ? 2 : 1) * a.M * 2 * cols(i); };
    // the first stages' weights before the wait for the encode (their barriers' transaction bytes first)
    const int pre = min(S, nch);
    if (lane == 0)
      for (int i = 0; i < pre; ++i) tma::mbar_add_tx(full0 + 8 * i, rows * cols(i));
    __syncwarp();
    for (int i = 0; i < pre; ++i) issue_w(i);
    grid_dependency_wait();
    bool two = false;
    for (int r = 0; r < a.M; ++r) two |= (a.flags[r] & 1) != 0;
    if (lane == 0)
      for (int i = 0; i < pre; ++i) tma::mbar_add_tx(full0 + 8 * i, cbytes(i, two));
    __syncwarp();
    for (int i = 0; i < pre; ++i) issue_c(i, two);
    __syncwarp();
    if (lane == 0)
      for (int i = 0; i < pre; ++i) tma::mbar_arrive(full0 + 8 * i);
    for (int i = pre; i < nch; ++i) {
      const int s = i % S;
      tma::mbar_wait(empty0 + 8 * s, ((i / S) - 1) & 1);  // the consumers released chunk i - S
      if (lane == 0) tma::mbar_expect_tx(full0 + 8 * s, rows * cols(i) + cbytes(i, two));
      __syncwarp();
      issue_w(i);
      issue_c(i, two);
    }
  } else {  // consumer warp wk
    const int wk = warp, g = lane >> 2, t = lane & 3;
    grid_dependency_wait();
    bool two;
    int big;
    read_flags(a, two, big);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc[1][4] = {{0.f, 0.f, 0.f, 0.f}}, acch[1][4] = {{0.f, 0.f, 0.f, 0.f}};
    for (int i = 0; i < nch; ++i) {
      const int s = i % S, nc = cols(i);
      tma::mbar_wait(full0 + 8 * s, (i / S) & 1);
      const uint8_t* st = smem + s * SB;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int cb = 64 * (wk + CW * u);
        if (cb >= nc) break;  // uniform over the warp
        const int c0 = cb + 16 * t;
        const bool ok = c0 < nc;  // the lane's 16 columns (K % 16 == 0: all or none)
        const uint4 w0 = ok ? *reinterpret_cast<const uint4*>(st + g * G::kWStride + c0) : zero;
        const uint4 w1 = ok ? *reinterpret_cast<const uint4*>(st + (g + 8) * G::kWStride + c0) : zero;
        uint4 cv[2] = {zero, zero}, hv[2] = {zero, zero};
        if (ok && g < a.M) {
          const uint8_t* cp = st + G::kWBytes + g * G::kCStride + 2 * c0;
          cv[0] = *reinterpret_cast<const uint4*>(cp);
          cv[1] = *reinterpret_cast<const uint4*>(cp + 16);
          if (two) {
            hv[0] = *reinterpret_cast<const uint4*>(cp + a.M * G::kCStride);
            hv[1] = *reinterpret_cast<const uint4*>(cp + a.M * G::kCStride + 16);
          }
        }
        const uint4 cv2[1][2] = {{cv[0], cv[1]}}, hv2[1][2] = {{hv[0], hv[1]}};
        mma_block<1>(acc, acch, w0, w1, cv2, hv2, two);
      }
      __syncwarp();
      if (lane == 0) tma::mbar_arrive(empty0 + 8 * s);
    }
    if (big != 0) {
      const float4 r = residual_rows_call<CW>(static_cast<const uint8_t*>(a.w), a.ldw, a.res, a.N, a.K, nb, wk, lane, big);
      acc[0][0] += r.x, acc[0][1] += r.y, acc[0][2] += r.z, acc[0][3] += r.w;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) red[wk * 4 * 32 + i * 32 + lane] = fmaf(kPlane, acch[0][i], acc[0][i]);
  }
  __syncthreads();
  store_rows<E, 1, CW>(a, red, nb);
#endif
}

// The bulk-copy GEMV runs where the device is sm_90 or newer and the loaded binary holds its body; its
// shared-memory limit is raised to what M = kSpikeDecodeMaxRows needs (queried at every launch: a probe).
template <typename Kernel>
bool tma_plan(Kernel kernel, int smem_max) {
  int dev = 0, major = 0, optin = 0;
  cudaFuncAttributes fa{};
  const bool on = cudaGetDevice(&dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  major >= 9 &&
                  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
                  cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90 &&
                  smem_max + static_cast<int>(fa.sharedSizeBytes) <= optin &&
                  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max) == cudaSuccess;
  if (!on) (void)cudaGetLastError();
  return on;
}

// Launches the GEMV of layout (CW, U, S); false (nothing launched) where tma_plan turns it down.
template <typename E, int CW, int U, int S>
bool launch_tma_layout(const SpikeDecodeArgs& a, cudaStream_t st, cudaError_t* err) {
  using G = tma::Geometry<CW, U>;
  const auto kernel = spike_decode_tma_kernel<E, CW, U, S>;
  if (!tma_plan(kernel, G::smem_bytes(kSpikeDecodeMaxRows, S))) return false;
  *err = launch_one(kernel, static_cast<unsigned>(ceil_div(a.N, 16)), 32 * (CW + 1), pdl_plan(kernel, 1), a, st,
                    static_cast<size_t>(G::smem_bytes(a.M, S)));
  return true;
}

// Layouts 8 .. 11 of the probe: (consumer warps, 64-column blocks per warp and chunk, stages); the encode, then the GEMV
cudaError_t launch_tma_probe(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  using E = __nv_bfloat16;
  spike_decode_encode_kernel<E><<<static_cast<unsigned>(a.M), kEncodeThreads, 0, st>>>(a);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  bool ran = false;
  switch (layout) {
    case 8: ran = launch_tma_layout<E, 4, 2, 4>(a, st, &e); break;
    case 9: ran = launch_tma_layout<E, 4, 2, 3>(a, st, &e); break;
    case 10: ran = launch_tma_layout<E, 2, 2, 4>(a, st, &e); break;
    default: ran = launch_tma_layout<E, 4, 4, 2>(a, st, &e); break;
  }
  return ran ? e : cudaErrorNotSupported;
}
