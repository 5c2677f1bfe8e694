// Spike-coding kernels: encode / quant (row reduction + quantisation in one pass), expand,
// collapse and the |count| histogram.  Torch-free.
#include "common.cuh"
#include "spike.cuh"
#include "spike_count.cuh"

namespace sbops {
namespace {

constexpr int kEncodeWarpsPerBlock = 8;
// 16-byte vectors a lane keeps in registers between the reduction and the quantisation; rows
// with more vectors than kCacheVecs * kWarpSize are read twice (the second read hits L1/L2).
constexpr int kCacheVecs = 16;

template <typename C> struct SatRange;
template <> struct SatRange<int8_t> { static constexpr float lo = -128.f, hi = 127.f; };
template <> struct SatRange<int16_t> { static constexpr float lo = -32768.f, hi = 32767.f; };

template <typename C>
__device__ __forceinline__ C saturate_count(float r) {
  r = fminf(fmaxf(r, SatRange<C>::lo), SatRange<C>::hi);
  return static_cast<C>(r);
}
// float -> int32 conversion saturates on NVIDIA (2^31 itself is not representable as int32).
template <>
__device__ __forceinline__ int32_t saturate_count<int32_t>(float r) {
  return __float2int_rn(r);
}

// Output policy of the row kernel: integer counts (encode) or the dequantised value (quant).
template <typename T, typename C>
struct EncodeOut {
  C* counts;
  float* vth;
  __device__ __forceinline__ void row_threshold(int64_t row, float t) const { vth[row] = t; }
  template <int VEC>
  __device__ __forceinline__ void store(int64_t row, int64_t cols, int64_t vi, const Vec<T, VEC>& xv,
                                        float t, float r) const {
    Vec<C, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = saturate_count<C>(rintf(quotient_rn(to_float(xv.v[e]), t, r)));
    reinterpret_cast<Vec<C, VEC>*>(counts + row * cols)[vi] = o;
  }
};

template <typename T>
struct QuantOut {
  T* x_hat;
  __device__ __forceinline__ void row_threshold(int64_t, float) const {}
  template <int VEC>
  __device__ __forceinline__ void store(int64_t row, int64_t cols, int64_t vi, const Vec<T, VEC>& xv,
                                        float t, float r) const {
    Vec<T, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(rintf(quotient_rn(to_float(xv.v[e]), t, r)) * t);
    reinterpret_cast<Vec<T, VEC>*>(x_hat + row * cols)[vi] = o;
  }
};

// One warp per row.  Pass 1 sums |x| (float32) while keeping the row's vectors in registers when
// it fits (CACHED); pass 2 quantises with the row threshold.  VEC elements per access: 16 bytes,
// or 1 when the row is not a whole number of aligned vectors.
template <typename T, int VEC, bool CACHED, typename Out>
__global__ void __launch_bounds__(kEncodeWarpsPerBlock * kWarpSize)
spike_row_kernel(const T* __restrict__ x, int64_t xs, Out out, int64_t rows, int64_t cols, float k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kEncodeWarpsPerBlock + warp_id();
  if (row >= rows) return;  // whole warps exit together
  const int lane = lane_id();
  const int64_t nvec = cols / VEC;
  const Vec<T, VEC>* xr = reinterpret_cast<const Vec<T, VEC>*>(x + row * xs);

  Vec<T, VEC> cache[CACHED ? kCacheVecs : 1];
  float s = 0.f;
  if (CACHED) {
#pragma unroll
    for (int j = 0; j < kCacheVecs; ++j) {
      const int64_t i = lane + static_cast<int64_t>(j) * kWarpSize;
      if (i < nvec) {
        cache[j] = xr[i];
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += fabsf(to_float(cache[j].v[e]));
      }
    }
  } else {
    for (int64_t i = lane; i < nvec; i += kWarpSize) {
      const Vec<T, VEC> v = xr[i];
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += fabsf(to_float(v.v[e]));
    }
  }
  s = warp_reduce_sum<kWarpSize>(s);
  // Same operation order as the contract: mean, then / k, then clamp (IEEE divisions).
  const float t = spike_threshold(s, static_cast<float>(cols), k);
  if (lane == 0) out.row_threshold(row, t);
  const float r = __frcp_rn(t);  // one reciprocal per row (see quotient_rn)

  if (CACHED) {
#pragma unroll
    for (int j = 0; j < kCacheVecs; ++j) {
      const int64_t i = lane + static_cast<int64_t>(j) * kWarpSize;
      if (i < nvec) out.template store<VEC>(row, cols, i, cache[j], t, r);
    }
  } else {
    for (int64_t i = lane; i < nvec; i += kWarpSize) out.template store<VEC>(row, cols, i, xr[i], t, r);
  }
}

// Block-per-row kernel: the default for rows of kRowMinVecs .. kRowCache * kRowThreadsMax 16-byte vectors.
// The warp-per-row kernel keeps up to 16 vectors per lane and needs 160 registers on sm_90 (ptxas),
// so one block of 8 warps fits an SM and the load / reduce / store phases of blocks barely overlap:
// 104.9 us at [16384, 3584] bf16 on the H100 against 65.0 us for this kernel (58.7 us floor).  Here
// THREADS threads share a row with at most kRowCache vectors each (46 registers at 128 threads), the
// row sum goes through shared memory, and up to 16 blocks share an SM.
constexpr int kRowCache = 4;
constexpr int kRowThreadsMax = 256;
constexpr int kRowMinVecs = 64;  // shorter rows: a warp per row (most of a block would idle)

template <typename T, int VEC, int THREADS, typename Out>
__global__ void __launch_bounds__(THREADS)
spike_row_block_kernel(const T* __restrict__ x, int64_t xs, Out out, int64_t cols, float k) {
  constexpr int kWarps = THREADS / kWarpSize;
  __shared__ float s_part[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t nvec = cols / VEC;
  const Vec<T, VEC>* xr = reinterpret_cast<const Vec<T, VEC>*>(x + row * xs);
  Vec<T, VEC> cache[kRowCache];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kRowCache; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * THREADS;
    if (i < nvec) {
      cache[j] = xr[i];
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += fabsf(to_float(cache[j].v[e]));
    }
  }
  s = warp_reduce_sum<kWarpSize>(s);
  if (lane_id() == 0) s_part[warp_id()] = s;
  __syncthreads();
  float tot = 0.f;  // every thread adds the partials in the same order: one threshold per row
#pragma unroll
  for (int w = 0; w < kWarps; ++w) tot += s_part[w];
  const float t = spike_threshold(tot, static_cast<float>(cols), k);
  if (threadIdx.x == 0) out.row_threshold(row, t);
  const float r = __frcp_rn(t);
#pragma unroll
  for (int j = 0; j < kRowCache; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * THREADS;
    if (i < nvec) out.template store<VEC>(row, cols, i, cache[j], t, r);
  }
}

template <typename T, typename Out>
cudaError_t launch_rows(const T* x, int64_t xs, Out out, bool out_aligned, int64_t rows, int64_t cols, float k,
                        cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  constexpr int V = vec16<T>();
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, kEncodeWarpsPerBlock)));
  const dim3 block(kEncodeWarpsPerBlock * kWarpSize);
  const bool vec_ok = cols % V == 0 && xs % V == 0 && aligned_to(x, 16) && out_aligned;
  const int64_t nvec = cols / (vec_ok ? V : 1);
  const int64_t per_lane = ceil_div(nvec, kWarpSize);
  const unsigned nrows = static_cast<unsigned>(rows);
  if (vec_ok && nvec >= kRowMinVecs && nvec <= kRowThreadsMax * kRowCache && rows <= 0x7fffffff) {
    if (nvec <= kRowThreadsMax / 2 * kRowCache)
      spike_row_block_kernel<T, V, kRowThreadsMax / 2><<<nrows, kRowThreadsMax / 2, 0, stream>>>(x, xs, out, cols, k);
    else
      spike_row_block_kernel<T, V, kRowThreadsMax><<<nrows, kRowThreadsMax, 0, stream>>>(x, xs, out, cols, k);
  } else if (vec_ok) {
    if (per_lane <= kCacheVecs)
      spike_row_kernel<T, V, true><<<grid, block, 0, stream>>>(x, xs, out, rows, cols, k);
    else
      spike_row_kernel<T, V, false><<<grid, block, 0, stream>>>(x, xs, out, rows, cols, k);
  } else {
    spike_row_kernel<T, 1, false><<<grid, block, 0, stream>>>(x, xs, out, rows, cols, k);
  }
  return last_launch_error();
}

template <typename T>
cudaError_t encode_typed(const void* x, int64_t xs, void* counts, DType ct, float* vth, int64_t rows, int64_t cols,
                         float k, cudaStream_t stream) {
  const T* xp = static_cast<const T*>(x);
  constexpr int V = vec16<T>();
  switch (ct) {
    case DType::I8:
      return launch_rows<T>(xp, xs, EncodeOut<T, int8_t>{static_cast<int8_t*>(counts), vth},
                            aligned_to(counts, V * sizeof(int8_t)), rows, cols, k, stream);
    case DType::I16:
      return launch_rows<T>(xp, xs, EncodeOut<T, int16_t>{static_cast<int16_t*>(counts), vth},
                            aligned_to(counts, V * sizeof(int16_t)), rows, cols, k, stream);
    case DType::I32:
      return launch_rows<T>(xp, xs, EncodeOut<T, int32_t>{static_cast<int32_t*>(counts), vth},
                            aligned_to(counts, V * sizeof(int32_t)), rows, cols, k, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// ---------------------------------------------------------------- expand / collapse / histogram
template <typename CT>
__global__ void spike_expand_kernel(const CT* __restrict__ counts, int8_t* __restrict__ trains, int64_t n,
                                    int mode, int T) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = static_cast<int64_t>(counts[i]);
    const int64_t a = c < 0 ? -c : c;
    const int sgn = c > 0 ? 1 : (c < 0 ? -1 : 0);
    for (int t = 0; t < T; ++t) {
      int s;
      if (mode == static_cast<int>(SpikeMode::Binary)) s = t < c ? 1 : 0;
      else if (mode == static_cast<int>(SpikeMode::Ternary)) s = t < a ? sgn : 0;
      else s = static_cast<int>((a >> (T - 1 - t)) & 1) * sgn;
      trains[static_cast<int64_t>(t) * n + i] = static_cast<int8_t>(s);
    }
  }
}

template <typename TT>
__global__ void spike_collapse_kernel(const TT* __restrict__ trains, int32_t* __restrict__ counts, int64_t n,
                                      int T, int mode) {
  const bool bitwise = mode == static_cast<int>(SpikeMode::Bitwise);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t acc = 0;
    for (int t = 0; t < T; ++t) {
      const int64_t s = static_cast<int64_t>(trains[static_cast<int64_t>(t) * n + i]);
      acc = bitwise ? acc * 2 + s : acc + s;  // Horner form of sum_t 2^(T-1-t) s_t
    }
    counts[i] = static_cast<int32_t>(acc);
  }
}

constexpr int kSharedHistBins = 8192;

template <typename CT>
__global__ void spike_hist_kernel(const CT* __restrict__ counts, unsigned long long* __restrict__ hist,
                                  int64_t n, int64_t bins) {
  __shared__ unsigned int local[kSharedHistBins];
  const bool use_shared = bins <= kSharedHistBins;
  if (use_shared) {
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = static_cast<int64_t>(counts[i]);
    // |c| in unsigned arithmetic (exact for INT64_MIN).  Bad-data guard: |c| past the bins is not counted.
    const uint64_t a = c < 0 ? 0ull - static_cast<uint64_t>(c) : static_cast<uint64_t>(c);
    if (a < static_cast<uint64_t>(bins)) {
      if (use_shared) atomicAdd(&local[a], 1u);
      else atomicAdd(&hist[a], 1ull);
    }
  }
  if (use_shared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x)
      if (local[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(local[b]));
  }
}

constexpr int kElemBlock = 256;

template <template <typename> class F, typename... Args>
cudaError_t dispatch_int(DType t, Args... args) {
  switch (t) {
    case DType::I8: return F<int8_t>::run(args...);
    case DType::I16: return F<int16_t>::run(args...);
    case DType::I32: return F<int32_t>::run(args...);
    case DType::I64: return F<int64_t>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

template <typename CT>
struct ExpandRun {
  static cudaError_t run(const void* c, int8_t* tr, int64_t n, int mode, int T, cudaStream_t s) {
    spike_expand_kernel<CT><<<grid_for(n, kElemBlock), kElemBlock, 0, s>>>(static_cast<const CT*>(c), tr, n,
                                                                           mode, T);
    return last_launch_error();
  }
};

template <typename TT>
struct CollapseRun {
  static cudaError_t run(const void* tr, int32_t* c, int64_t n, int T, int mode, cudaStream_t s) {
    spike_collapse_kernel<TT><<<grid_for(n, kElemBlock), kElemBlock, 0, s>>>(static_cast<const TT*>(tr), c, n,
                                                                             T, mode);
    return last_launch_error();
  }
};

template <typename CT>
struct HistRun {
  static cudaError_t run(const void* c, int64_t* hist, int64_t n, int64_t bins, cudaStream_t s) {
    spike_hist_kernel<CT><<<grid_for(n, kElemBlock, 2), kElemBlock, 0, s>>>(
        static_cast<const CT*>(c), reinterpret_cast<unsigned long long*>(hist), n, bins);
    return last_launch_error();
  }
};

}  // namespace

cudaError_t launch_spike_encode(const void* x, int64_t xs, DType xt, void* counts, DType ct, float* vth, int64_t rows,
                                int64_t cols, float k, cudaStream_t stream) {
  switch (xt) {
    case DType::F32: return encode_typed<float>(x, xs, counts, ct, vth, rows, cols, k, stream);
    case DType::F16: return encode_typed<__half>(x, xs, counts, ct, vth, rows, cols, k, stream);
    case DType::BF16: return encode_typed<__nv_bfloat16>(x, xs, counts, ct, vth, rows, cols, k, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_spike_quant(const void* x, int64_t xs, DType xt, void* x_hat, int64_t rows, int64_t cols,
                               float k, cudaStream_t stream) {
  const bool al = aligned_to(x_hat, 16);
  switch (xt) {
    case DType::F32:
      return launch_rows<float>(static_cast<const float*>(x), xs, QuantOut<float>{static_cast<float*>(x_hat)}, al,
                                rows, cols, k, stream);
    case DType::F16:
      return launch_rows<__half>(static_cast<const __half*>(x), xs, QuantOut<__half>{static_cast<__half*>(x_hat)},
                                 al, rows, cols, k, stream);
    case DType::BF16:
      return launch_rows<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(x), xs,
                                        QuantOut<__nv_bfloat16>{static_cast<__nv_bfloat16*>(x_hat)}, al, rows,
                                        cols, k, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_spike_expand(const void* counts, DType ct, int8_t* trains, int64_t n, SpikeMode mode, int T,
                                cudaStream_t stream) {
  if (n == 0 || T <= 0) return cudaSuccess;
  return dispatch_int<ExpandRun>(ct, counts, trains, n, static_cast<int>(mode), T, stream);
}

cudaError_t launch_spike_collapse(const void* trains, DType tt, int32_t* counts, int64_t n, int T,
                                  SpikeMode mode, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return dispatch_int<CollapseRun>(tt, trains, counts, n, T, static_cast<int>(mode), stream);
}

cudaError_t launch_spike_hist(const void* counts, DType ct, int64_t* hist, int64_t n, int64_t max_abs,
                              cudaStream_t stream) {
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(hist, 0, sizeof(int64_t) * (max_abs + 1), stream));
  if (n == 0) return cudaSuccess;
  return dispatch_int<HistRun>(ct, counts, hist, n, max_abs + 1, stream);
}

}  // namespace sbops
