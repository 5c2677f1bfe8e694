// Sliding-window attention decode over a ring-buffer KV cache, plus the cache write.  Torch-free.
//
// Flash-decoding: the window of each (sequence, KV head) is split across `num_splits` blocks.
// Inside a block, groups of D/VEC lanes each own one key row at a time (16-byte loads), keep an
// online softmax for the block's query heads (the H/HKV heads of the KV head, up to kMaxHeads per
// block) and merge through shared memory at the end.  With one split the block writes the output;
// otherwise it writes (max, sum, acc) partials that a combine kernel merges.  Scores are kept in
// the log2 domain (q pre-scaled by scale * log2 e) so the exponentials are exp2f.
#include <cmath>

#include "common.cuh"
#include "decode.cuh"

namespace sbops {
namespace {

constexpr int kSwaBlock = 128;
constexpr int kMaxHeads = 8;     // query heads per block (more heads: blockIdx.z chunks)
constexpr int kKeysInFlight = 4; // key rows per lane group per iteration
constexpr int kMinKeysPerSplit = 128;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T, int D>
__global__ void __launch_bounds__(kSwaBlock, 2)
swa_decode_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                  const void* __restrict__ seq_lens, bool lens64, const void* __restrict__ slots, bool slots64,
                  int64_t C, int64_t num_slots, int HKV, int G, int window, float scale_log2, int nsplit,
                  T* __restrict__ o,
                  float* __restrict__ part) {
  constexpr int VEC = vec16<T>();
  constexpr int GW = D / VEC;          // lanes per key row
  constexpr int NGRP = kSwaBlock / GW; // key rows in flight per block-step
  static_assert(D % VEC == 0 && GW <= kWarpSize && kWarpSize % GW == 0, "unsupported head dim");
  using V = Vec<T, VEC>;
  __shared__ float s_ml[NGRP][kMaxHeads][2];
  __shared__ float s_acc[NGRP][kMaxHeads][D];

  const int split = blockIdx.x;
  const int64_t nh = blockIdx.y;  // n * HKV + hk
  const int64_t n = nh / HKV;
  const int hk = static_cast<int>(nh % HKV);
  const int h0 = blockIdx.z * kMaxHeads;
  const int nheads = min(kMaxHeads, G - h0);
  const int H = HKV * G;
  const int grp = threadIdx.x / GW, gl = threadIdx.x % GW, d0 = gl * VEC;

  const int64_t L = load_index(seq_lens, lens64, n);
  const int64_t slot = slots ? load_index(slots, slots64, n) : n;
  const bool bad_slot = slot < 0 || slot >= num_slots;
  // Positions before L - C were overwritten in the ring: never read more than C rows.
  int64_t lo = window < 0 ? 0 : max(static_cast<int64_t>(0), L - 1 - window);
  lo = max(lo, L - C);
  const int64_t len = (L > lo && !bad_slot) ? L - lo : 0;
  const int64_t chunk = ceil_div(len, nsplit);
  const int64_t a = lo + split * chunk;
  const int64_t cnt = max(static_cast<int64_t>(0), min(L, a + chunk) - a);
  const int64_t row_stride = static_cast<int64_t>(HKV) * D;
  const T* kbase = kc + (slot * C * HKV + hk) * D + d0;
  const T* vbase = vc + (slot * C * HKV + hk) * D + d0;
  const int64_t r0 = cnt > 0 ? a % C : 0;

  float qf[kMaxHeads][VEC], m[kMaxHeads], l[kMaxHeads], acc[kMaxHeads][VEC];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
    V qv;
    if (h < nheads) qv = *reinterpret_cast<const V*>(q + (n * H + hk * G + h0 + h) * D + d0);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      qf[h][e] = h < nheads ? to_float(qv.v[e]) * scale_log2 : 0.f;
      acc[h][e] = 0.f;
    }
  }

  // The trip count is uniform over the block (shuffles below need whole warps).
  for (int64_t j0 = 0; j0 < cnt; j0 += static_cast<int64_t>(NGRP) * kKeysInFlight) {
    V kv[kKeysInFlight], vv[kKeysInFlight];
    bool ok[kKeysInFlight];
#pragma unroll
    for (int u = 0; u < kKeysInFlight; ++u) {
      const int64_t j = j0 + u * NGRP + grp;
      ok[u] = j < cnt;
      if (ok[u]) {
        int64_t row = r0 + j;  // the chunk never wraps twice (cnt <= C)
        if (row >= C) row -= C;
        kv[u] = *reinterpret_cast<const V*>(kbase + row * row_stride);
        vv[u] = *reinterpret_cast<const V*>(vbase + row * row_stride);
      }
    }
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      if (h >= nheads) break;  // uniform
      float sc[kKeysInFlight];
      float mnew = m[h];
#pragma unroll
      for (int u = 0; u < kKeysInFlight; ++u) {
        float d = 0.f;
        if (ok[u]) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) d += qf[h][e] * to_float(kv[u].v[e]);
        }
        d = warp_reduce_sum<GW>(d);
        sc[u] = ok[u] ? d : -INFINITY;
        mnew = fmaxf(mnew, sc[u]);
      }
      if (mnew == -INFINITY) continue;  // nothing seen yet by this lane group
      const float corr = exp2f(m[h] - mnew);
      m[h] = mnew;
      l[h] *= corr;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[h][e] *= corr;
#pragma unroll
      for (int u = 0; u < kKeysInFlight; ++u) {
        if (!ok[u]) continue;
        const float p = exp2f(sc[u] - mnew);
        l[h] += p;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[h][e] += p * to_float(vv[u].v[e]);
      }
    }
  }

  // Merge the lane groups of the block.
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    if (h < nheads) {
      if (gl == 0) {
        s_ml[grp][h][0] = m[h];
        s_ml[grp][h][1] = l[h];
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) s_acc[grp][h][d0 + e] = acc[h][e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nheads * D; i += blockDim.x) {
    const int h = i / D, d = i % D;
    float M = -INFINITY;
    for (int g2 = 0; g2 < NGRP; ++g2) M = fmaxf(M, s_ml[g2][h][0]);
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
      for (int g2 = 0; g2 < NGRP; ++g2) {
        const float f = exp2f(s_ml[g2][h][0] - M);
        Ls += f * s_ml[g2][h][1];
        A += f * s_acc[g2][h][d];
      }
    }
    const int64_t head = n * H + hk * G + h0 + h;
    if (bad_slot) {  // NaN out; partials that the combine turns into NaN
      M = 0.f;
      Ls = 1.f;
      A = NAN;
    }
    if (nsplit == 1) {
      o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
    } else {
      float* pp = part + (head * nsplit + split) * (D + 2);
      pp[2 + d] = A;
      if (d == 0) {
        pp[0] = M;
        pp[1] = Ls;
      }
    }
  }
}

// One block per (sequence, query head): merge the splits' (max, sum, acc) partials.
template <typename T>
__global__ void swa_combine_kernel(const float* __restrict__ part, T* __restrict__ o, int nsplit, int D) {
  const int64_t head = blockIdx.x;
  const float* pp = part + head * nsplit * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, pp[s * (D + 2)]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
      for (int s = 0; s < nsplit; ++s) {
        const float f = exp2f(pp[s * (D + 2)] - M);
        Ls += f * pp[s * (D + 2) + 1];
        A += f * pp[s * (D + 2) + 2 + d];
      }
    }
    o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
  }
}

template <typename T>
__global__ void swa_cache_write_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc,
                                       T* __restrict__ vc, const void* __restrict__ pos, bool pos64,
                                       const void* __restrict__ slots, bool slots64, int64_t N, int HKV, int D,
                                       int64_t C, int64_t num_slots) {
  const int64_t total = N * HKV * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / (static_cast<int64_t>(HKV) * D);
    const int64_t rest = i % (static_cast<int64_t>(HKV) * D);  // hk * D + d
    const int64_t slot = slots ? load_index(slots, slots64, n) : n;
    const int64_t p = load_index(pos, pos64, n);
    if (p < 0 || slot < 0 || slot >= num_slots) continue;
    const int64_t row = p % C;
    const int64_t dst = (slot * C + row) * HKV * D + rest;
    kc[dst] = k[i];
    vc[dst] = v[i];
  }
}

template <typename T, int D>
cudaError_t decode_typed(const void* q, const void* kc, const void* vc, const void* lens, bool lens64,
                         const void* slots, bool slots64, void* o, int64_t N, int H, int HKV, int64_t C, int64_t ns,
                         int window, float scale, int nsplit, float* ws, cudaStream_t st) {
  const int G = H / HKV;
  const dim3 grid(nsplit, static_cast<unsigned>(N * HKV), static_cast<unsigned>(ceil_div(G, kMaxHeads)));
  swa_decode_kernel<T, D><<<grid, kSwaBlock, 0, st>>>(static_cast<const T*>(q), static_cast<const T*>(kc),
                                                      static_cast<const T*>(vc), lens, lens64, slots, slots64, C, ns, HKV,
                                                      G, window, scale * kLog2e, nsplit, static_cast<T*>(o), ws);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  if (nsplit > 1) {
    swa_combine_kernel<T><<<static_cast<unsigned>(N * H), D, 0, st>>>(ws, static_cast<T*>(o), nsplit, D);
    SBOPS_RETURN_IF_ERROR(last_launch_error());
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t decode_dim(int D, const void* q, const void* kc, const void* vc, const void* lens, bool lens64,
                       const void* slots, bool slots64, void* o, int64_t N, int H, int HKV, int64_t C, int64_t ns,
                       int window, float scale, int nsplit, float* ws, cudaStream_t st) {
  switch (D) {
    case 64: return decode_typed<T, 64>(q, kc, vc, lens, lens64, slots, slots64, o, N, H, HKV, C, ns, window, scale, nsplit, ws, st);
    case 128: return decode_typed<T, 128>(q, kc, vc, lens, lens64, slots, slots64, o, N, H, HKV, C, ns, window, scale, nsplit, ws, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool swa_decode_supports(int D, DType dtype) {
  return (D == 64 || D == 128) && (dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16);
}

int swa_decode_num_splits(int64_t N, int H, int HKV, int window, int64_t C) {
  const int64_t pairs = N * HKV * ceil_div(H / HKV, kMaxHeads);
  const int64_t keys = window < 0 ? C : (window + 1 < C ? window + 1 : C);
  const int64_t want = ceil_div(2 * static_cast<int64_t>(num_sms()), pairs);
  const int64_t cap = ceil_div(keys, kMinKeysPerSplit);
  int64_t s = want < cap ? want : cap;
  if (s > 1024) s = 1024;
  return static_cast<int>(s < 1 ? 1 : s);
}

int64_t swa_decode_workspace_floats(int64_t N, int H, int D, int num_splits) {
  return num_splits > 1 ? N * H * num_splits * (D + 2) : 0;
}

cudaError_t launch_swa_decode(const void* q, const void* kc, const void* vc, DType dtype, const void* lens,
                              bool lens64, const void* slots, bool slots64, void* o, int64_t N, int H, int HKV, int D,
                              int64_t C, int64_t num_slots, int window, float scale, int nsplit, float* ws, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (HKV <= 0 || H % HKV != 0 || nsplit < 1 || (nsplit > 1 && ws == nullptr)) return cudaErrorInvalidValue;
  if (!aligned_to(q, 16) || !aligned_to(kc, 16) || !aligned_to(vc, 16)) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::F32: return decode_dim<float>(D, q, kc, vc, lens, lens64, slots, slots64, o, N, H, HKV, C, num_slots, window, scale, nsplit, ws, stream);
    case DType::F16: return decode_dim<__half>(D, q, kc, vc, lens, lens64, slots, slots64, o, N, H, HKV, C, num_slots, window, scale, nsplit, ws, stream);
    case DType::BF16: return decode_dim<__nv_bfloat16>(D, q, kc, vc, lens, lens64, slots, slots64, o, N, H, HKV, C, num_slots, window, scale, nsplit, ws, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_swa_cache_write(const void* k, const void* v, void* kc, void* vc, DType dtype, const void* pos,
                                   bool pos64, const void* slots, bool slots64, int64_t N, int HKV, int D, int64_t C,
                                   int64_t num_slots, cudaStream_t stream) {
  const int64_t total = N * HKV * D;
  if (total == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  const unsigned grid = grid_for(total, kBlock);
  switch (dtype) {
#define SBOPS_CACHE_WRITE(T)                                                                                    \
  swa_cache_write_kernel<T><<<grid, kBlock, 0, stream>>>(static_cast<const T*>(k), static_cast<const T*>(v),    \
                                                         static_cast<T*>(kc), static_cast<T*>(vc), pos, pos64, \
                                                         slots, slots64, N, HKV, D, C, num_slots);              \
  return last_launch_error();
    case DType::F32: { SBOPS_CACHE_WRITE(float) }
    case DType::F16: { SBOPS_CACHE_WRITE(__half) }
    case DType::BF16: { SBOPS_CACHE_WRITE(__nv_bfloat16) }
#undef SBOPS_CACHE_WRITE
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sbops
