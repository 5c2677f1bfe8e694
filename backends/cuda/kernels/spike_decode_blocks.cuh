// Device building blocks of spike_linear's CUDA C++ decode (spike_decode.cu; the probes in benchmarks/gpu/probes
// include them too): the weight loads, programmatic-dependent-launch controls, e4m3 -> float16, the count split
// into planes, the MMA block, the residual pass and the output store.  Torch-free.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"
#include "pdl_launch.cuh"
#include "spike.cuh"
#include "spike_count.cuh"
#include "warp_mma.cuh"

#if !defined(USE_MACA)
namespace sbops {
namespace {

constexpr float kPlane = 2048.f;           // counts up to this are exact in float16
constexpr float kBig = kPlane * kPlane;  // from here a count goes to the float32 residual plane
constexpr int kEncodeThreads = 256;

// Weights are read once: no L1 allocation, and each L2 miss fetches the 256-byte segment around it (the neighbouring
// 64-byte blocks of a weight row are read by the block's other k-groups at about the same time; session 23, H100:
// the fp8 model's decode step 4.077 -> 4.036 ms at B = 1, gate_up 51.0 -> 50.1 us).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
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

// two int8 bytes (b0 = bits 0-7, b1 = bits 8-15 of v) as one float16 pair, exactly: each byte with its sign bit
// flipped (b + 128, 0 .. 255) under float16's exponent of 1024 is 1024 + b + 128 (every integer there is exact), less 1152
__device__ __forceinline__ uint32_t i8x2_to_f16x2(uint32_t v) {
  const uint32_t h = __byte_perm(v ^ 0x00008080u, 0x64646464u, 0x5140);  // {0x64, b1 ^ 0x80, 0x64, b0 ^ 0x80}
  __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(1152.f, 1152.f));
  return *reinterpret_cast<uint32_t*>(&r);
}

// the weights' 8-bit format: e4m3 (I8 false) or int8 (spike_linear's int8 per-channel weights)
template <bool I8>
__device__ __forceinline__ uint32_t w8x2_to_f16x2(uint32_t v) {
  if constexpr (I8)
    return i8x2_to_f16x2(v);
  else
    return e4m3x2_to_f16x2(v);
}

// A count q = rint(x / vth) as the planes hold it: lo + 2048 hi (each exact in float16) for |q| < 2048^2, else whole
// in the float32 residual plane (lo = hi = 0); an infinite or NaN count stays in lo.
__device__ __forceinline__ void split_count(float q, float& cl, float& ch, float& cr) {
  const float aq = fabsf(q);
  const bool finite = aq < INFINITY, whole = finite && aq >= kBig;
  ch = finite && aq > kPlane && !whole ? rintf(q * (1.f / kPlane)) : 0.f;
  cl = whole ? 0.f : fmaf(-kPlane, ch, q);
  cr = whole ? q : 0.f;
}

// Adds 8 values of x (one uint4 of E) to a thread's running sum and max of |x|, in element order: with the encode's
// threads and strides (thread t: elements 8 t + 8 kEncodeThreads j ..) every kernel gets vth bit for bit.
template <typename E>
__device__ __forceinline__ void abs_sum_max8(const uint4& v, float& s, float& mx) {
  const E* e = reinterpret_cast<const E*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float f = fabsf(to_float(e[i]));
    s += f;
    mx = fmaxf(mx, f);
  }
}

// vth, RN(1 / vth) and the flags of a row (bit 0: a count past 2048, bit 1: one of 2048^2 or more) from its warps'
// sums and maxima of |x| (sums[v * stride], v over the encode's warps, added in warp order).
__device__ __forceinline__ int row_threshold(const float* sums, const float* maxs, int stride, int K, float k,
                                             float& vth, float& inv) {
  float tot = 0.f, big = 0.f;
  for (int v = 0; v < kEncodeThreads / 32; ++v) tot += sums[v * stride], big = fmaxf(big, maxs[v * stride]);
  vth = spike_threshold(tot, static_cast<float>(K), k);
  inv = __frcp_rn(vth);
  const float cmax = rintf(quotient_rn(big, vth, inv));  // the row's largest |count| (NaN: no flag)
  return (cmax > kPlane ? 1 : 0) | (cmax >= kBig ? 2 : 0);
}

// The lane's weight rows g and g + 8 of the 16-row tile at n0 (row pointers at the lane's 16-byte column slot 16 t;
// rows past N point at row 0 and are flagged off).
__device__ __forceinline__ void weight_rows(const uint8_t* w, int64_t ldw, int N, int n0, int lane,
                                            const uint8_t* (&wrow)[2], bool (&wok)[2]) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = n0 + g + 8 * h;
    wok[h] = n < N;
    wrow[h] = w + static_cast<int64_t>(wok[h] ? n : 0) * ldw + 16 * t;
  }
}

// Whether some row has a count past 2048 (two: the hi plane is multiplied) and the rows with one of 2048^2 or more
// (bit m of big: the residual pass); the same for every thread of the grid.
__device__ __forceinline__ void read_flags(const int* flags, int M, bool& two, int& big) {
  two = false;
  big = 0;
  for (int m = 0; m < M; ++m) {
    const int f = flags[m];
    two |= (f & 1) != 0;
    big |= ((f >> 1) & 1) << m;
  }
}
__device__ __forceinline__ void read_flags(const SpikeDecodeArgs& a, bool& two, int& big) {
  read_flags(a.flags, a.M, two, big);
}

// One 64-column block of the lane's layout: weights w0 / w1 (16 bytes of rows g and g + 8), counts cv[j] / hv[j]
// (16 float16 of token 8 j + g, lo / hi plane) as four k16 steps; step s takes weight bytes 4s .. 4s + 3 of each
// row (word s) and counts 4s .. 4s + 3 (words 2s, 2s + 1 of the pair).
template <int NT, bool I8 = false>
__device__ __forceinline__ void mma_block(float (&acc)[NT][4], float (&acch)[NT][4], const uint4& w0, const uint4& w1,
                                          const uint4 (&cv)[NT][2], const uint4 (&hv)[NT][2], bool two) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t r0 = word(w0, s), r1 = word(w1, s);
    const uint32_t af[4] = {w8x2_to_f16x2<I8>(r0), w8x2_to_f16x2<I8>(r1), w8x2_to_f16x2<I8>(r0 >> 16),
                            w8x2_to_f16x2<I8>(r1 >> 16)};
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4& c = cv[j][s / 2];
      warp_mma::mma_16816<__half>(acc[j], af, word(c, 2 * (s % 2)), word(c, 2 * (s % 2) + 1));
      if (two) {
        const uint4& h = hv[j][s / 2];
        warp_mma::mma_16816<__half>(acch[j], af, word(h, 2 * (s % 2)), word(h, 2 * (s % 2) + 1));
      }
    }
  }
}

// Rows with a count of 2048^2 or more (bit m of big): a second pass over the warp's column blocks (kb = wk, wk + WK,
// ..; the weights read again; rare) gives their float32 residual counts times the weights (CUDA-core FMAs) for the
// lane's four accumulators of the 16-row tile at n0.  Lane (g, t) sums physical columns 64 kb + 16 t .. + 15 of rows
// g and g + 8 for every token, the lane quad adds its four column slices, and each lane keeps its accumulators'
// (row, token) entries.
// counts(m, col, q): the float32 residual counts of row m, columns col + 4 q .. + 3.
template <int WK, bool I8 = false, typename Counts>
__device__ __forceinline__ float4 residual_rows_of(const uint8_t* w, int64_t ldw, const Counts& counts, int N, int K,
                                                   int n0, int wk, int lane, int big) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int t = lane & 3, KB = (K + 63) >> 6;
  const uint8_t* wrow[2];
  bool wok[2];
  weight_rows(w, ldw, N, n0, lane, wrow, wok);
  float racc[2][8];
#pragma unroll
  for (int m = 0; m < 8; ++m) racc[0][m] = racc[1][m] = 0.f;
  for (int kb2 = wk; kb2 < KB; kb2 += WK) {
    if (kb2 * 64 + 16 * t >= K) continue;
    float wf[2][16];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 wr = wok[h] ? ld_stream(wrow[h] + kb2 * 64) : zero;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t v = word(wr, q);
        const uint32_t p01 = w8x2_to_f16x2<I8>(v), p23 = w8x2_to_f16x2<I8>(v >> 16);
        const float2 f01 = __half22float2(*reinterpret_cast<const __half2*>(&p01));
        const float2 f23 = __half22float2(*reinterpret_cast<const __half2*>(&p23));
        wf[h][4 * q] = f01.x, wf[h][4 * q + 1] = f01.y, wf[h][4 * q + 2] = f23.x, wf[h][4 * q + 3] = f23.y;
      }
    }
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      if (!((big >> m) & 1)) continue;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float4 r = counts(m, kb2 * 64 + 16 * t, q);
#pragma unroll
        for (int h = 0; h < 2; ++h)
          racc[h][m] += wf[h][4 * q] * r.x + wf[h][4 * q + 1] * r.y + wf[h][4 * q + 2] * r.z + wf[h][4 * q + 3] * r.w;
      }
    }
  }
  float4 add = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const float r0 = warp_reduce_sum<4>(racc[0][m]), r1 = warp_reduce_sum<4>(racc[1][m]);
    // accumulator c of lane (g, t): row g (c < 2) or g + 8, token 2 t + (c & 1)
    if (m == 2 * t) add.x += r0, add.z += r1;
    if (m == 2 * t + 1) add.y += r0, add.w += r1;
  }
  return add;
}

// The residual plane of the encode kernel (res [M, K] float32)
struct ResidualPlane {
  const float* res;
  int K;
  __device__ __forceinline__ float4 operator()(int m, int col, int q) const {
    return __ldg(reinterpret_cast<const float4*>(res + static_cast<int64_t>(m) * K + col) + q);
  }
};
template <int WK, bool I8 = false>
__device__ __forceinline__ float4 residual_rows(const uint8_t* w, int64_t ldw, const float* res, int N, int K, int n0,
                                                int wk, int lane, int big) {
  return residual_rows_of<WK, I8>(w, ldw, ResidualPlane{res, K}, N, K, n0, wk, lane, big);
}

// The block's outputs from the warps' partial sums red[wk][wn][i][lane] (i over the 4 accumulators of one n-tile):
// the WK k-groups add up, then y = vth * scale * sum (+ bias).  Every thread of the block takes part.
template <typename E, int WN, int WK>
__device__ __forceinline__ void store_rows(const SpikeDecodeArgs& a, const float* vth, const float* red, int nb) {
  constexpr int kPart = WN * 4 * 32;
  E* y = static_cast<E*>(a.y);
  for (int idx = threadIdx.x; idx < kPart; idx += blockDim.x) {
    float sum = red[idx];
#pragma unroll
    for (int v = 1; v < WK; ++v) sum += red[v * kPart + idx];
    // idx = (wn' * 4 + c) * 32 + l: row (l / 4) + 8 (c >= 2) of warp column wn', token 2 (l % 4) + (c & 1)
    const int l = idx & 31, c = (idx >> 5) & 3, wcol = idx >> 7;
    const int n = nb + wcol * 16 + (l >> 2) + 8 * (c >> 1);
    const int m = 2 * (l & 3) + (c & 1);
    if (n < a.N && m < a.M) {
      float out = vth[m] * (a.scale[n] * sum);
      if (a.bias)
        out += a.bias_x_dtype ? to_float(static_cast<const E*>(a.bias)[n]) : static_cast<const float*>(a.bias)[n];
      y[static_cast<int64_t>(m) * a.ldy + n] = from_float<E>(out);
    }
  }
}
template <typename E, int WN, int WK>
__device__ __forceinline__ void store_rows(const SpikeDecodeArgs& a, const float* red, int nb) {
  store_rows<E, WN, WK>(a, a.vth, red, nb);
}

// ---- the fused encode (layouts 4-7, SBOPS_DECODE_ENCODE=fused): no encode launch and no workspace.  Each GEMV block
// computes every row's vth and flags itself with the encode's threads and order (bit for bit the encode's values) and
// turns the x it streams into the counts the encode would have written.
struct RowStats {
  float vth[kSpikeDecodeMaxRows], inv[kSpikeDecodeMaxRows];
  int flags[kSpikeDecodeMaxRows];
};

// st (shared) for rows m < M; rows past M get vth = 1 and no flags.  Needs blockDim.x == kEncodeThreads; every thread
// of the block calls it (two barriers).  The rows' loads of one column step are issued together.
template <typename E>
__device__ __forceinline__ void row_stats(const SpikeDecodeArgs& a, RowStats& st) {
  constexpr int R = kSpikeDecodeMaxRows, WARPS = kEncodeThreads / 32;
  __shared__ float s_sum[WARPS][R], s_max[WARPS][R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const E* x = static_cast<const E*>(a.x);
  float s[R], mx[R];
#pragma unroll
  for (int m = 0; m < R; ++m) s[m] = mx[m] = 0.f;
  if (a.M == 1) {  // decode at batch 1: four column steps' loads in flight (K = 18944 takes 10 steps)
#pragma unroll 4
    for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads)
      abs_sum_max8<E>(__ldg(reinterpret_cast<const uint4*>(x + c)), s[0], mx[0]);
  } else {
    // the rows' loads of one column step are issued together; the steps follow one another (K = 18944: 10 L2 round
    // trips before the first MMA).  Loading the next step during this one's sums took layout 6 from 80 registers to
    // 105 (two blocks per SM instead of three) for every M: not done.
    for (int c = 8 * threadIdx.x; c < a.K; c += 8 * kEncodeThreads) {
      uint4 v[R];
#pragma unroll
      for (int m = 0; m < R; ++m)
        if (m < a.M) v[m] = __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * a.ldx + c));
#pragma unroll
      for (int m = 0; m < R; ++m)
        if (m < a.M) abs_sum_max8<E>(v[m], s[m], mx[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < R; ++m) {
    if (m >= a.M) break;
    const float ws = warp_reduce_sum<32>(s[m]), wm = warp_reduce_max<32>(mx[m]);
    if (lane == 0) s_sum[warp][m] = ws, s_max[warp][m] = wm;
  }
  __syncthreads();
  if (threadIdx.x < R) {
    const int m = threadIdx.x;
    float vth = 1.f, inv = 1.f;
    int flags = 0;
    if (m < a.M) flags = row_threshold(&s_sum[0][m], &s_max[0][m], R, a.K, a.k, vth, inv);
    st.vth[m] = vth, st.inv[m] = inv, st.flags[m] = flags;
  }
  __syncthreads();
}

// 8 values of x (one uint4 of E) as the encode's lo plane and, where two, its hi plane.  Without two no count passes
// 2048 (nor is infinite), so lo is the count itself: the encode's lo - 2048 * 0, bit for bit.
template <typename E>
__device__ __forceinline__ void x_counts8(const uint4& v, float vth, float inv, bool two, uint4& lo, uint4& hi) {
  const E* e = reinterpret_cast<const E*>(&v);
  uint32_t* lw = reinterpret_cast<uint32_t*>(&lo);
  uint32_t* hw = reinterpret_cast<uint32_t*>(&hi);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float cl[2], ch[2] = {0.f, 0.f}, cr;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float q = rintf(quotient_rn(to_float(e[2 * i + j]), vth, inv));
      if (two)
        split_count(q, cl[j], ch[j], cr);
      else
        cl[j] = q;
    }
    __half2 l = __floats2half2_rn(cl[0], cl[1]), h = __floats2half2_rn(ch[0], ch[1]);
    lw[i] = *reinterpret_cast<uint32_t*>(&l);
    hw[i] = *reinterpret_cast<uint32_t*>(&h);
  }
}

// The residual counts (2048^2 or more, else 0) of row m straight from x, for residual_rows_of
template <typename E>
struct ResidualFromX {
  const E* x;
  int64_t ldx;
  const RowStats* st;
  __device__ __forceinline__ float4 operator()(int m, int col, int q) const {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(x + static_cast<int64_t>(m) * ldx + col + 4 * q));
    const E* e = reinterpret_cast<const E*>(&v);
    float r[4], cl, ch;
#pragma unroll
    for (int i = 0; i < 4; ++i) split_count(rintf(quotient_rn(to_float(e[i]), st->vth[m], st->inv[m])), cl, ch, r[i]);
    return make_float4(r[0], r[1], r[2], r[3]);
  }
};

}  // namespace
}  // namespace sbops
#endif  // !USE_MACA
