// spike_linear at decode (M <= 8 rows) on e4m3 (or int8) weights with per-output-channel scales, two launches (one with the
// fused encode, below):
//   y[m, n] = vth[m] * scale[n] * sum_k s[m, k] w[n, k] + bias[n],  s = rint(x / vth),
//   vth[m] = clamp(mean_k |x[m, k]| / k, 1e-5, 1e4)  (spike_encode's definition, spike_count.cuh).
// Torch-free.
//
// 1. The encode (one block per row) writes vth and each count as float16 planes, s = lo + 2048 hi, both
//    exact for |s| < 2048^2; a finite count of 2048^2 or more (a huge x against vth's clamp at 1e4,
//    or k K >= 2048^2) goes whole, as float32, to a residual plane instead; an infinite or NaN count
//    stays in lo.  Per row it flags a count past 2048 (bit 0) and one of 2048^2 or more (bit 1).
// 2. The GEMV: tensor cores multiply float16 operands; e4m3 weights convert to float16 exactly (on sm_80
//    by bit manipulation, which reads an e4m3 NaN byte as +-480; quantize_weight never writes one).  The
//    hi plane is loaded and multiplied only when some row has bit 0; rows with bit 1 take a second pass
//    over the weights (CUDA-core float32 FMAs with their residual plane); both branches are uniform.
//    Products of the planes are exact, every sum is float32, as the reference.
// On sm_90 the GEMV launches as a programmatic dependent of the encode (launch_layout): its blocks start while
// the encode runs and load their first stage, then wait for the counts.  By default (SBOPS_DECODE_PDL unset or all)
// the encode likewise launches as a dependent of whatever kernel precedes it and waits for that kernel's results first.
// Opt-in (SBOPS_DECODE_ENCODE=fused, layouts 4-7): no encode launch.  Every GEMV block computes the rows' vth and
// flags itself (the encode's threads and order: the same bits) and converts the x it streams into counts as it
// goes; the residual pass recomputes its counts from x.  It costs each block a read of x (M K elements from L2)
// before its first MMA, overlapped with its first stage of weights, and saves a launch and the planes' round trip.
//
// Layout (sm_80+, mma.m16n8k16 f16): block = WN x WK warps.  Warp (wn, wk) owns 16 weight rows and every
// WK-th 64-column block; each lane loads 16 contiguous bytes (16 weights) of rows g and g + 8
// (g = lane / 4, t = lane % 4, columns 64 kb + 16 t ..) straight into registers, no shared-memory
// staging.  The order of K does not matter to a dot product, so those 16 columns serve as the lane's
// logical columns {2t, 2t+1, 2t+8, 2t+9} of four k16 steps (step s: bytes 4s .. 4s+3), and the counts of
// token g are loaded with the same permutation.  Two stages of UNROLL blocks alternate in registers,
// so the next stage's loads are in flight while the current one is multiplied.  One n-tile of 8 tokens
// covers M <= 8.  The WK k-groups add their partial sums through shared memory.
#include <cstdlib>
#include <cstring>

#include "pdl_launch.cuh"
#include "spike_decode_blocks.cuh"

namespace sbops {

#if !defined(USE_MACA)
namespace {

// One block per row m: vth[m], the count planes lo / hi (float16) and, for a row with a count of 2048^2 or
// more, the residual plane res (float32) of that row; flags[m] (bit 0: a count past 2048, bit 1: one of
// 2048^2 or more).
template <typename E>
__global__ void __launch_bounds__(kEncodeThreads) spike_decode_encode_kernel(SpikeDecodeArgs a) {
  constexpr int WARPS = kEncodeThreads / 32;
  // launched as a programmatic dependent of the kernel before it (SBOPS_DECODE_PDL=all): nothing is read or written
  // before that kernel's results are complete (returns at once after a plain launch) ...
  grid_dependency_wait();
  // ... and only then may the GEMV start streaming its weights (the kernel before could have written them)
  grid_dependents_launch();
  const int m = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const E* xr = static_cast<const E*>(a.x) + static_cast<int64_t>(m) * a.ldx;
  __shared__ float s_sum[WARPS], s_max[WARPS], s_vth[2];
  __shared__ int s_flags;
  float s = 0.f, mx = 0.f;
  for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads)  // a fixed order: deterministic vth
    abs_sum_max8<E>(__ldg(reinterpret_cast<const uint4*>(xr + c)), s, mx);
  s = warp_reduce_sum<32>(s);
  mx = warp_reduce_max<32>(mx);
  if (lane == 0) s_sum[warp] = s, s_max[warp] = mx;
  __syncthreads();
  if (threadIdx.x == 0) {
    float vth, inv;
    const int flags = row_threshold(s_sum, s_max, 1, a.K, a.k, vth, inv);
    s_vth[0] = vth;
    s_vth[1] = inv;
    s_flags = flags;
    a.vth[m] = vth;
    a.flags[m] = s_flags;
  }
  __syncthreads();
  const float vth = s_vth[0], inv = s_vth[1];
  const bool with_res = (s_flags & 2) != 0;
  __half* lo = a.lo + static_cast<int64_t>(m) * a.K;
  __half* hi = a.hi + static_cast<int64_t>(m) * a.K;
  float* res = a.res + static_cast<int64_t>(m) * a.K;
  for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(xr + c));
    const E* e = reinterpret_cast<const E*>(&v);
    float cl[8], ch[8], cr[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      split_count(rintf(quotient_rn(to_float(e[i]), vth, inv)), cl[i], ch[i], cr[i]);
    }
    uint4 lv, hv;
    uint32_t* lw = reinterpret_cast<uint32_t*>(&lv);
    uint32_t* hw = reinterpret_cast<uint32_t*>(&hv);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 l = __floats2half2_rn(cl[2 * i], cl[2 * i + 1]), h = __floats2half2_rn(ch[2 * i], ch[2 * i + 1]);
      lw[i] = *reinterpret_cast<uint32_t*>(&l);
      hw[i] = *reinterpret_cast<uint32_t*>(&h);
    }
    *reinterpret_cast<uint4*>(lo + c) = lv;
    *reinterpret_cast<uint4*>(hi + c) = hv;
    if (with_res) {
      *reinterpret_cast<float4*>(res + c) = make_float4(cr[0], cr[1], cr[2], cr[3]);
      *reinterpret_cast<float4*>(res + c + 4) = make_float4(cr[4], cr[5], cr[6], cr[7]);
    }
  }
}

// The fused-encode GEMV's row statistics (shared memory of the calling block)
__device__ __forceinline__ RowStats& block_row_stats() {
  __shared__ RowStats st;
  return st;
}

// FUSED (layouts 4-7): no encode before it; the block computes the rows' vth and flags (row_stats) and converts the
// x it loads into counts (x_counts8): the encode's values bit for bit, so the same output bits as layouts 0-3.
// MT m16 tiles per warp (16 MT weight rows): one load of token g's counts serves all of them (layout 8: MT = 2,
// held to 96 registers for five 128-thread blocks per SM; MT = 1 keeps the compiler's own choice: minimum 0 = unset,
// the PTX of layouts 0-7 unchanged).
template <typename E, int WN, int WK, int UNROLL, bool FUSED, bool I8, int MT = 1>
__global__ void __launch_bounds__(32 * WN * WK, MT == 2 ? 5 : 0) spike_decode_kernel(SpikeDecodeArgs a) {
  static_assert(!(FUSED && I8), "int8 weights take the encode + GEMV layouts (0-3, 8)");
  static_assert(!FUSED || MT == 1, "the fused encode takes 16-row warps");
  static_assert(!FUSED || 32 * WN * WK == kEncodeThreads, "row_stats takes the encode's threads and order");
  constexpr int NT = 1;  // n-tiles of 8 tokens: M <= kSpikeDecodeMaxRows = 8
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(a.w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % WN, wk = warp / WN;
  const int g = lane >> 2, t = lane & 3;
  const int nb = blockIdx.x * 16 * MT * WN, n0 = nb + wn * 16 * MT;
  const int KB = (a.K + 63) >> 6;

  const uint8_t* wrow[MT][2];
  bool wok[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) weight_rows(w, a.ldw, a.N, n0 + 16 * mt, lane, wrow[mt], wok[mt]);
  // per stage and unrolled block: the lane's 16 weights of rows g and g + 8 of each m-tile, and its 16 counts of
  // token g (FUSED: its 16 values of x, hv unused)
  uint4 wv[2][UNROLL][MT][2], cv[2][UNROLL][NT][2], hv[2][UNROLL][NT][2];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load_w = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int kb = kb0 + u * WK;
      const bool kok = kb < KB && kb * 64 + 16 * t < a.K;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          wv[buf][u][mt][h] = (kok && wok[mt][h]) ? ld_stream(wrow[mt][h] + kb * 64) : zero;
    }
  };

  // Launched as a programmatic dependent of the encode (sm_90, launch_layout), this grid may start while the
  // encode still runs: until the wait it touches the weights only (its first stage, into registers).  Launched
  // plainly, the wait returns at once.  (An L2 prefetch of the block's rows before the wait measured slower on
  // the H200, session 22: 3.74 vs 3.58 ms per fp8 decode step without the early launch, 3.51 with it alone.)
  // FUSED: the kernel before this one (an arbitrary one, which may have written x or the weights) must be complete
  // before anything is read; the first stage of weights is then in flight while the block computes the row statistics.
  if constexpr (!FUSED) {
    if (wk < KB) load_w(0, wk);
    grid_dependency_wait();
  } else {
    grid_dependency_wait();
    if (wk < KB) load_w(0, wk);
    row_stats<E>(a, block_row_stats());
  }

  // the hi plane when some row has a count past 2048, the residual plane for the rows with one of 2048^2 or
  // more (bit m of big); the same for every thread of the grid
  static_assert(kSpikeDecodeMaxRows <= 8 * NT, "the residual path adds into the one n-tile of 8 tokens");
  bool two;
  int big;
  float vth_g = 1.f, inv_g = 1.f;  // FUSED: token g's threshold and its reciprocal
  if constexpr (FUSED) {
    const RowStats& st = block_row_stats();
    read_flags(st.flags, a.M, two, big);
    vth_g = st.vth[g], inv_g = st.inv[g];
  } else {
    read_flags(a, two, big);
  }
  const __half* crow[2][NT];  // the count planes' rows (layouts 0-3)
  const E* xrow[NT];          // x's rows (FUSED)
  bool cok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = j * 8 + g;
    cok[j] = m < a.M;
    const int64_t row = cok[j] ? m : 0;
    if constexpr (FUSED) {
      xrow[j] = static_cast<const E*>(a.x) + row * a.ldx + 16 * t;
    } else {
      crow[0][j] = a.lo + row * a.K + 16 * t;
      crow[1][j] = a.hi + row * a.K + 16 * t;
    }
  }
  auto load_c = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int kb = kb0 + u * WK;
      const bool kok = kb < KB && kb * 64 + 16 * t < a.K;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const bool ok = kok && cok[j];
          if constexpr (FUSED) {
            cv[buf][u][j][v] = ok ? __ldg(reinterpret_cast<const uint4*>(xrow[j] + kb * 64 + 8 * v)) : zero;
          } else {
            cv[buf][u][j][v] = ok ? __ldg(reinterpret_cast<const uint4*>(crow[0][j] + kb * 64 + 8 * v)) : zero;
            hv[buf][u][j][v] = (ok && two) ? __ldg(reinterpret_cast<const uint4*>(crow[1][j] + kb * 64 + 8 * v)) : zero;
          }
        }
    }
  };
  auto load = [&](int buf, int kb0) {
    load_w(buf, kb0);
    load_c(buf, kb0);
  };

  float acc[MT][NT][4], acch[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = acch[mt][j][i] = 0.f;

  auto compute = [&](int buf) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      if constexpr (FUSED) {
        uint4 lo[NT][2], hi[NT][2];
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int v = 0; v < 2; ++v) x_counts8<E>(cv[buf][u][j][v], vth_g, inv_g, two, lo[j][v], hi[j][v]);
        mma_block<NT, I8>(acc[0], acch[0], wv[buf][u][0][0], wv[buf][u][0][1], lo, hi, two);
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          mma_block<NT, I8>(acc[mt], acch[mt], wv[buf][u][mt][0], wv[buf][u][mt][1], cv[buf][u], hv[buf][u], two);
      }
    }
  };
  constexpr int kStep = WK * UNROLL;
  int kb = wk;
  if (kb < KB) load_c(0, kb);
  while (kb < KB) {  // two stages per trip keep the register buffers' indices compile-time
    if (kb + kStep < KB) load(1, kb + kStep);
    compute(0);
    kb += kStep;
    if (kb >= KB) break;
    if (kb + kStep < KB) load(0, kb + kStep);
    compute(1);
    kb += kStep;
  }
  if (big != 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {  // each m-tile's 16 rows at n0 + 16 mt
      float4 r;
      if constexpr (FUSED)  // (inlined: layout 6 spills 8 bytes on sm_90a in this rare pass; as a call, 105 registers)
        r = residual_rows_of<WK, I8>(w, a.ldw, ResidualFromX<E>{static_cast<const E*>(a.x), a.ldx, &block_row_stats()},
                                 a.N, a.K, n0 + 16 * mt, wk, lane, big);
      else
        r = residual_rows<WK, I8>(w, a.ldw, a.res, a.N, a.K, n0 + 16 * mt, wk, lane, big);
      acc[mt][0][0] += r.x, acc[mt][0][1] += r.y, acc[mt][0][2] += r.z, acc[mt][0][3] += r.w;
    }
  }

  // partial sums red[wk][wn MT + mt][i][lane] (i over the 4 accumulators); the k-groups add into red[0].  A warp's
  // m-tiles are consecutive 16-row tiles, so store_rows sees WN MT warp columns of 16 rows.
  __shared__ float red[WK * WN * MT * 4 * 32];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i)
      red[((wk * WN + wn) * MT + mt) * 4 * 32 + i * 32 + lane] = fmaf(kPlane, acch[mt][0][i], acc[mt][0][i]);
  __syncthreads();
  if constexpr (FUSED)
    store_rows<E, WN, WK>(a, block_row_stats().vth, red, nb);
  else
    store_rows<E, WN * MT, WK>(a, red, nb);
}

// Programmatic dependent launches (sm_90; pdl_launch.cuh): the GEMV after its encode (default), and with
// SBOPS_DECODE_PDL=all the encode after the kernel before it (the model's RMSNorm, silu_mul, swa_combine or a GEMV: the
// encode is set up while that kernel drains and waits for its results before touching memory; opt-in, as the order
// shipped -- the GEMV released after that wait -- was not timed: session 23 measured -0.5% per fp8 B = 1 step on the
// H200 with the GEMV released before it, which could let the GEMV read weights the kernel before had just written).

// The GEMV as a programmatic dependent of the work before it in the default mode: of its encode (layouts 0-3), or, with
// the encode fused (layouts 4-7), of whatever kernel precedes it, which it waits for before reading anything.
template <typename E, int WN, int WK, int U, bool FUSED, bool I8 = false, int MT = 1>
cudaError_t launch_layout(const SpikeDecodeArgs& a, cudaStream_t st) {
  const auto kernel = spike_decode_kernel<E, WN, WK, U, FUSED, I8, MT>;
  return launch_one(kernel, static_cast<unsigned>(ceil_div(a.N, 16 * MT * WN)), 32 * WN * WK, pdl_plan(kernel, 1), a,
                    st);
}

template <typename E>
cudaError_t launch_encode(const SpikeDecodeArgs& a, cudaStream_t st) {
  const auto kernel = spike_decode_encode_kernel<E>;
  return launch_one(kernel, static_cast<unsigned>(a.M), kEncodeThreads, pdl_plan(kernel, kPdlAll), a, st);
}

// The GEMV's block shape 0-3 (WN x WK warps, UNROLL blocks): layouts 0-3 after the encode, 4-7 (FUSED) the same shapes
// computing the counts themselves (e4m3 weights only); shape 8 (after the encode) gives each warp two m16 tiles (32
// weight rows) that share each load of the counts: (1, 4, 1) in 128-thread blocks, a warp's register stage holding the
// weight bytes of UNROLL = 2 but one block of counts (session 36, H100: the wide gate_up 47.94 vs (1, 8, 1)'s 49.75 us
// at M = 1, 48.97 vs 50.60 at M = 8; slower on qkv, o and down; (2, 2, 1) slower everywhere, removed)
template <typename E, bool FUSED, bool I8>
cudaError_t launch_gemv(const SpikeDecodeArgs& a, int shape, cudaStream_t st) {
  switch (shape) {
    case 0: return launch_layout<E, 1, 8, 2, FUSED, I8>(a, st);
    case 1: return launch_layout<E, 2, 4, 2, FUSED, I8>(a, st);
    case 2: return launch_layout<E, 1, 8, 1, FUSED, I8>(a, st);
    case 3: return launch_layout<E, 4, 2, 2, FUSED, I8>(a, st);
    default: return launch_layout<E, 1, 4, 1, false, I8, 2>(a, st);
  }
}

template <typename E>
cudaError_t launch_typed(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  const bool fused = spike_decode_layout_fused(layout);
  if (!fused) {
    const cudaError_t err = launch_encode<E>(a, st);
    if (err != cudaSuccess) return err;
  }
  if (a.w_int8) return launch_gemv<E, false, true>(a, layout, st);  // layouts 0-3, 8 (launch_spike_decode refuses 4-7)
  return fused ? launch_gemv<E, true, false>(a, layout - 4, st) : launch_gemv<E, false, false>(a, layout, st);
}

}  // namespace
#endif  // !USE_MACA

bool spike_decode_supports(int64_t M, int64_t N, int64_t K) {
#if defined(USE_MACA)
  (void)M, (void)N, (void)K;
  return false;  // e4m3 weights: MetaX C500-class GPUs are not known to have fp8 units (spike_linear refuses)
#else
  return M >= 1 && M <= kSpikeDecodeMaxRows && N >= 1 && N < (int64_t{1} << 31) && K >= 16 && K % 16 == 0 &&
         K < (int64_t{1} << 31);
#endif
}

// SBOPS_DECODE_ENCODE=fused (read once): the GEMVs compute the counts themselves (layouts 4-7, no encode launch, no
// workspace); unset or anything else: the encode kernel, then the GEMV.  Opt-in and off: slower in the fp8 7B model
// (H100, session 26: +5.5% per B = 1 step, +24% at B = 8; gate_up's GEMV +13% / +28% at M = 1 / 8).
bool spike_decode_fused_encode() {
#if defined(USE_MACA)
  return false;
#else
  static const bool fused = [] {
    const char* v = std::getenv("SBOPS_DECODE_ENCODE");
    return v != nullptr && std::strcmp(v, "fused") == 0;
  }();
  return fused;
#endif
}

// SBOPS_SPIKE_DECODE_MT=1 (read once): the wide shapes' default GEMV keeps 16-row warps (layout 2), to compare;
// unset or anything else: 32-row warps there (layout 8, session 36).
int spike_decode_row_tiles() {
#if defined(USE_MACA)
  return 1;
#else
  static const int mt = [] {
    const char* v = std::getenv("SBOPS_SPIKE_DECODE_MT");
    return v != nullptr && std::strcmp(v, "1") == 0 ? 1 : 2;
  }();
  return mt;
#endif
}

int spike_decode_default_layout(int64_t M, int64_t N, int64_t K, bool w_int8) {
  // measured on the H200 at the 7B shapes, M = 1 .. 8 (benchmarks/RESULTS_sessions_11-16.md, session 16): 16 rows
  // x 8 k-groups of 2 blocks per warp for N <= 3584 (o, down), 8 k-groups of 1 block for the wider ones (int8
  // weights: the same layouts, not timed apart; never fused).  N >= 16384 (gate_up): 32-row warps in 4 k-groups of 1
  // block (layout 8; H100, session 36: -3.6% per call at M = 1, -3.2% at M = 8) unless SBOPS_SPIKE_DECODE_MT=1.
  (void)M, (void)K;
  if (spike_decode_fused_encode() && !w_int8) return N < 4096 ? 4 : 6;
  if (N >= 16384 && spike_decode_row_tiles() == 2) return 8;
  return N < 4096 ? 0 : 2;
}

cudaError_t launch_spike_decode(const SpikeDecodeArgs& a, DType x_dtype, int layout, cudaStream_t st) {
#if defined(USE_MACA)
  (void)a, (void)x_dtype, (void)layout, (void)st;
  return cudaErrorNotSupported;
#else
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.M < 0 || a.M > kSpikeDecodeMaxRows || a.K < 16 || a.K % 16 != 0 || layout < 0 ||
      layout >= kSpikeDecodeLayouts || (a.w_int8 && spike_decode_layout_fused(layout)))
    return cudaErrorInvalidValue;
  if (!spike_decode_layout_fused(layout) &&
      (a.lo == nullptr || a.hi == nullptr || a.res == nullptr || a.vth == nullptr || a.flags == nullptr))
    return cudaErrorInvalidValue;  // the encode's workspace (spike_decode_workspace)
  if (x_dtype == DType::BF16) return launch_typed<__nv_bfloat16>(a, layout, st);
  if (x_dtype == DType::F16) return launch_typed<__half>(a, layout, st);
  return cudaErrorInvalidValue;
#endif
}

}  // namespace sbops
