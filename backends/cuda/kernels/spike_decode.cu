// spike_linear at decode (M <= 8 rows) on e4m3 weights with per-output-channel scales, two launches:
//   y[m, n] = vth[m] * scale[n] * sum_k s[m, k] w[n, k] + bias[n],  s = rint(x / vth),
//   vth[m] = clamp(mean_k |x[m, k]| / k, 1e-5, 1e4)  (spike_encode's definition).
// Torch-free.
//
// 1. The encode (one block per row) writes vth and the counts as float16 planes, s = lo + 2048 hi, both
//    exact (the caller routes k K > 2048^2, a count that even hi cannot hold, elsewhere), and flags the
//    rows with a count past 2048.
// 2. The GEMV: tensor cores multiply float16 operands; e4m3 weights convert to float16 exactly, and the
//    hi plane is loaded and multiplied only when some row is flagged (a uniform branch).  Products are
//    exact and sums float32, as the reference.
//
// Layout (sm_80+, mma.m16n8k16 f16): block = WN x WK warps.  Warp (wn, wk) owns 16 weight rows and every
// WK-th 64-column block; each lane loads 16 contiguous bytes (16 weights) of rows g and g + 8
// (g = lane / 4, t = lane % 4, columns 64 kb + 16 t ..) straight into registers, no shared-memory
// staging.  The order of K does not matter to a dot product, so those 16 columns serve as the lane's
// logical columns {2t, 2t+1, 2t+8, 2t+9} of four k16 steps (step s: bytes 4s .. 4s+3), and the counts of
// token g are loaded with the same permutation.  Two stages of UNROLL blocks alternate in registers,
// so the next stage's loads are in flight while the current one is multiplied.  NT n-tiles of 8
// tokens cover M <= 8 NT (NT = 1 is built).  The WK k-groups add their partial sums through shared memory.
#include <cuda_fp16.h>

#include "common.cuh"
#include "spike.cuh"

namespace sbops {

#if !defined(USE_MACA)
namespace {

constexpr float kPlane = 2048.f;  // counts up to this are exact in float16
constexpr int kEncodeThreads = 256;

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// two e4m3 bytes (b0 = bits 0-7, b1 = bits 8-15 of v >> shift) as one float16 pair, exactly
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t r;
  asm("{\n .reg .b16 lo;\n mov.b32 {lo, _}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}\n" : "=r"(r) : "r"(v));
  return r;
#else
  // sign to bit 15, exponent and mantissa to bits 7-13 of each half: 2^-8 times the value as float16
  // bits (subnormals included), then an exact multiply by 2^8
  const uint32_t t = __byte_perm(v, 0, 0x4140);
  const uint32_t h = ((t & 0x00800080u) << 8) | ((t & 0x007F007Fu) << 7);
  __half2 r = __hmul2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(256.f, 256.f));
  return *reinterpret_cast<uint32_t*>(&r);
#endif
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// rint(x / vth) with x / vth correctly rounded (spike_encode's quotient); infinities pass through
__device__ __forceinline__ float quotient_rint(float x, float vth, float inv) {
  const float q1 = x * inv;
  const float e = fmaf(-q1, vth, x);
  const float q = fabsf(q1) < INFINITY ? fmaf(e, inv, q1) : q1;
  return rintf(q);
}

// One block per row m: vth[m], the count planes lo / hi [M, K] (float16) and two[m] (a count past 2048).
template <typename E>
__global__ void __launch_bounds__(kEncodeThreads) spike_decode_encode_kernel(SpikeDecodeArgs a) {
  constexpr int WARPS = kEncodeThreads / 32;
  const int m = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const E* xr = static_cast<const E*>(a.x) + static_cast<int64_t>(m) * a.ldx;
  __shared__ float s_sum[WARPS], s_max[WARPS], s_vth[2];
  float s = 0.f, mx = 0.f;
  for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads) {  // a fixed order: deterministic vth
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(xr + c));
    const E* e = reinterpret_cast<const E*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float f = fabsf(to_float(e[i]));
      s += f;
      mx = fmaxf(mx, f);
    }
  }
  s = warp_reduce_sum<32>(s);
  mx = warp_reduce_max<32>(mx);
  if (lane == 0) s_sum[warp] = s, s_max[warp] = mx;
  __syncthreads();
  if (threadIdx.x == 0) {
    float tot = 0.f, big = 0.f;
    for (int v = 0; v < WARPS; ++v) tot += s_sum[v], big = fmaxf(big, s_max[v]);
    const float vth = fminf(fmaxf(__fdiv_rn(__fdiv_rn(tot, static_cast<float>(a.K)), a.k), 1e-5f), 1e4f);
    const float inv = __frcp_rn(vth);
    s_vth[0] = vth;
    s_vth[1] = inv;
    a.vth[m] = vth;
    a.two[m] = quotient_rint(big, vth, inv) > kPlane;  // NaN: not flagged (the lo plane carries it)
  }
  __syncthreads();
  const float vth = s_vth[0], inv = s_vth[1];
  __half* lo = a.lo + static_cast<int64_t>(m) * a.K;
  __half* hi = a.hi + static_cast<int64_t>(m) * a.K;
  for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(xr + c));
    const E* e = reinterpret_cast<const E*>(&v);
    uint4 lv, hv;
    uint32_t* lw = reinterpret_cast<uint32_t*>(&lv);
    uint32_t* hw = reinterpret_cast<uint32_t*>(&hv);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float c0 = quotient_rint(to_float(e[2 * i]), vth, inv), c1 = quotient_rint(to_float(e[2 * i + 1]), vth, inv);
      // an infinite (or NaN) count stays whole in lo, so its row gets the reference's inf (or NaN)
      const float h0 = fabsf(c0) > kPlane && fabsf(c0) < INFINITY ? rintf(c0 * (1.f / kPlane)) : 0.f;
      const float h1 = fabsf(c1) > kPlane && fabsf(c1) < INFINITY ? rintf(c1 * (1.f / kPlane)) : 0.f;
      __half2 l = __floats2half2_rn(fmaf(-kPlane, h0, c0), fmaf(-kPlane, h1, c1)), h = __floats2half2_rn(h0, h1);
      lw[i] = *reinterpret_cast<uint32_t*>(&l);
      hw[i] = *reinterpret_cast<uint32_t*>(&h);
    }
    *reinterpret_cast<uint4*>(lo + c) = lv;
    *reinterpret_cast<uint4*>(hi + c) = hv;
  }
}

template <typename E, int NT, int WN, int WK, int UNROLL>
__global__ void __launch_bounds__(32 * WN * WK) spike_decode_kernel(SpikeDecodeArgs a) {
  constexpr int WARPS = WN * WK;
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(a.w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % WN, wk = warp / WN;
  const int g = lane >> 2, t = lane & 3;
  const int nb = blockIdx.x * 16 * WN, n0 = nb + wn * 16;
  const int KB = (a.K + 63) >> 6;

  const uint8_t* wrow[2];
  bool wok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = n0 + g + 8 * h;
    wok[h] = n < a.N;
    wrow[h] = w + static_cast<int64_t>(wok[h] ? n : 0) * a.ldw + 16 * t;
  }
  // the hi plane only when some row has a count past 2048 (uniform over the grid)
  bool two = false;
  for (int m = 0; m < a.M; ++m) two |= a.two[m] != 0;
  const __half* crow[2][NT];
  bool cok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = j * 8 + g;
    cok[j] = m < a.M;
    const int64_t off = static_cast<int64_t>(cok[j] ? m : 0) * a.K + 16 * t;
    crow[0][j] = a.lo + off;
    crow[1][j] = a.hi + off;
  }

  // per stage and unrolled block: the lane's 16 weights of rows g and g + 8, and its 16 counts of token g
  uint4 wv[2][UNROLL][2], cv[2][UNROLL][NT][2], hv[2][UNROLL][NT][2];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load = [&](int buf, int kb0) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int kb = kb0 + u * WK;
      const bool kok = kb < KB && kb * 64 + 16 * t < a.K;
#pragma unroll
      for (int h = 0; h < 2; ++h) wv[buf][u][h] = (kok && wok[h]) ? ld_stream(wrow[h] + kb * 64) : zero;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const bool ok = kok && cok[j];
          cv[buf][u][j][v] = ok ? __ldg(reinterpret_cast<const uint4*>(crow[0][j] + kb * 64 + 8 * v)) : zero;
          hv[buf][u][j][v] = (ok && two) ? __ldg(reinterpret_cast<const uint4*>(crow[1][j] + kb * 64 + 8 * v)) : zero;
        }
    }
  };

  float acc[NT][4], acch[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = acch[j][i] = 0.f;

  auto compute = [&](int buf) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        // step s: weight bytes 4s .. 4s + 3 of each row (word s), counts 4s .. 4s + 3 (words 2s, 2s + 1)
        const uint32_t r0 = word(wv[buf][u][0], s), r1 = word(wv[buf][u][1], s);
        const uint32_t af[4] = {e4m3x2_to_f16x2(r0), e4m3x2_to_f16x2(r1), e4m3x2_to_f16x2(r0 >> 16),
                                e4m3x2_to_f16x2(r1 >> 16)};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4& c = cv[buf][u][j][s / 2];
          mma_f16(acc[j], af, word(c, 2 * (s % 2)), word(c, 2 * (s % 2) + 1));
          if (two) {
            const uint4& h = hv[buf][u][j][s / 2];
            mma_f16(acch[j], af, word(h, 2 * (s % 2)), word(h, 2 * (s % 2) + 1));
          }
        }
      }
  };
  constexpr int kStep = WK * UNROLL;
  int kb = wk;
  if (kb < KB) load(0, kb);
  while (kb < KB) {  // two stages per trip keep the register buffers' indices compile-time
    if (kb + kStep < KB) load(1, kb + kStep);
    compute(0);
    kb += kStep;
    if (kb >= KB) break;
    if (kb + kStep < KB) load(0, kb + kStep);
    compute(1);
    kb += kStep;
  }

  // partial sums red[wk][wn][i][lane] (i over NT * 4 accumulators); the k-groups add into red[0]
  constexpr int NACC = NT * 4, kPart = WN * NACC * 32;
  __shared__ float red[WK * kPart];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i)
      red[(wk * WN + wn) * NACC * 32 + (j * 4 + i) * 32 + lane] = fmaf(kPlane, acch[j][i], acc[j][i]);
  __syncthreads();
  const E* bias = static_cast<const E*>(a.bias);
  E* y = static_cast<E*>(a.y);
  for (int idx = threadIdx.x; idx < kPart; idx += 32 * WARPS) {
    float sum = red[idx];
#pragma unroll
    for (int v = 1; v < WK; ++v) sum += red[v * kPart + idx];
    // idx = (wn' * NACC + j * 4 + c) * 32 + l: row (l / 4) + 8 (c >= 2) of warp column wn', token
    // 8 j + 2 (l % 4) + (c & 1)
    const int l = idx & 31, i = (idx >> 5) % NACC, wcol = (idx >> 5) / NACC;
    const int c = i & 3, j = i >> 2;
    const int n = nb + wcol * 16 + (l >> 2) + 8 * (c >> 1);
    const int m = j * 8 + 2 * (l & 3) + (c & 1);
    if (n < a.N && m < a.M) {
      float out = a.vth[m] * (a.scale[n] * sum);
      if (bias) out += to_float(bias[n]);
      y[static_cast<int64_t>(m) * a.ldy + n] = from_float<E>(out);
    }
  }
}

template <typename E, int NT, int WN, int WK, int U>
cudaError_t launch_layout(const SpikeDecodeArgs& a, cudaStream_t st) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(a.N, 16 * WN));
  spike_decode_kernel<E, NT, WN, WK, U><<<blocks, 32 * WN * WK, 0, st>>>(a);
  return cudaGetLastError();
}

template <typename E, int NT>
cudaError_t launch_nt(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  switch (layout) {
    case 0: return launch_layout<E, NT, 1, 8, 2>(a, st);
    case 1: return launch_layout<E, NT, 2, 4, 2>(a, st);
    case 2: return launch_layout<E, NT, 1, 8, 1>(a, st);
    default: return launch_layout<E, NT, 4, 2, 2>(a, st);
  }
}

template <typename E>
cudaError_t launch_typed(const SpikeDecodeArgs& a, int layout, cudaStream_t st) {
  spike_decode_encode_kernel<E><<<static_cast<unsigned>(a.M), kEncodeThreads, 0, st>>>(a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  static_assert(kSpikeDecodeMaxRows <= 8, "one n-tile of 8 tokens");
  return launch_nt<E, 1>(a, layout, st);
}

}  // namespace
#endif  // !USE_MACA

bool spike_decode_supports(int64_t M, int64_t N, int64_t K, double k) {
#if defined(USE_MACA)
  (void)M, (void)N, (void)K, (void)k;
  return false;  // e4m3 weights: MetaX C500-class GPUs are not known to have fp8 units (spike_linear refuses)
#else
  const double largest_count = k * static_cast<double>(K);  // |x| / (mean|x| / k) <= k K
  return M >= 1 && M <= kSpikeDecodeMaxRows && N >= 1 && N < (int64_t{1} << 31) && K >= 16 && K % 16 == 0 &&
         K < (int64_t{1} << 31) && k > 0 && largest_count < 2048.0 * 2048.0;
#endif
}

int spike_decode_default_layout(int64_t M, int64_t N, int64_t K) {
  // measured on the H200 at the 7B shapes, M = 1 .. 8 (benchmarks/RESULTS.md, session 16): 16 rows x 8
  // k-groups of 2 blocks per warp for N <= 3584 (o, down), 8 k-groups of 1 block for the wider ones
  (void)M, (void)K;
  return N < 4096 ? 0 : 2;
}

cudaError_t launch_spike_decode(const SpikeDecodeArgs& a, DType x_dtype, int layout, cudaStream_t st) {
#if defined(USE_MACA)
  (void)a, (void)x_dtype, (void)layout, (void)st;
  return cudaErrorNotSupported;
#else
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.M < 0 || a.M > kSpikeDecodeMaxRows || a.K % 16 != 0 || layout < 0 || layout > 3) return cudaErrorInvalidValue;
  if (x_dtype == DType::BF16) return launch_typed<__nv_bfloat16>(a, layout, st);
  if (x_dtype == DType::F16) return launch_typed<__half>(a, layout, st);
  return cudaErrorInvalidValue;
#endif
}

}  // namespace sbops
