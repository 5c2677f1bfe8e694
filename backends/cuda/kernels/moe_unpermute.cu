// MoE row movers of the combine side: moe_unpermute (= moe_permute_bwd without weights) and
// moe_unpermute_bwd.  Torch-free; launchers declared in moe.cuh.
#include "moe_common.cuh"

namespace sbops {
namespace {

using namespace moe_detail;  // the shared row-mover helpers (moe_common.cuh)

// Bad-data guard of both forward kernels: a row_map entry outside [0, R) (R = y_perm's rows) is a
// dropped slot, like -1: it reads nothing and adds nothing.

// One warp per token: y[t] = sum_j w[t,j] y_perm[row_map[t,j]] in float32 (w = 1 when null).
// The token's row_map / weights entries (k <= warp width: one per lane, broadcast by shuffles) are
// loaded one token ahead, so a token's row loads do not wait behind its own index load.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
unpermute_kernel(const T* __restrict__ y_perm, const int32_t* __restrict__ row_map, const float* __restrict__ weights,
                 T* __restrict__ y, int64_t Tn, int k, int64_t R, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  const bool lane_slots = k <= kWarpSize;
  auto fetch = [&](int64_t t, int32_t& r, float& w) {
    const bool ok = lane_slots && t < Tn && lane < k;
    r = ok ? row_map[t * k + lane] : -1;
    w = ok && weights ? weights[t * k + lane] : 1.f;
  };
  int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id();
  int32_t r_next;
  float w_next;
  fetch(t, r_next, w_next);
  for (; t < Tn; t += stride) {
    const int32_t r_lane = r_next;
    const float w_lane = w_next;
    fetch(t + stride, r_next, w_next);
    for (int64_t v0 = 0; v0 < nvec; v0 += kRowUnroll * kWarpSize) {
      float acc[kRowUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[u][e] = 0.f;
      for (int j = 0; j < k; ++j) {
        const int32_t r = lane_slots ? shfl(r_lane, j) : row_map[t * k + j];
        if (r < 0 || r >= R) continue;  // dropped (or out of range: bad-data guard)
        const float w = lane_slots ? shfl(w_lane, j) : (weights ? weights[t * k + j] : 1.f);
        const V* src = reinterpret_cast<const V*>(y_perm + static_cast<int64_t>(r) * Hd);
        V buf[kRowUnroll];
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const int64_t vi = v0 + u * kWarpSize + lane;
          if (vi < nvec) buf[u] = src[vi];
        }
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[u][e] += w * to_float(buf[u].v[e]);
      }
      V* out = reinterpret_cast<V*>(y + t * Hd);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t vi = v0 + u * kWarpSize + lane;
        if (vi < nvec) {
          V o;
#pragma unroll
          for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(acc[u][e]);
          out[vi] = o;
        }
      }
    }
  }
}

// k = 1: y[t] = w[t] y_perm[row_map[t]] is a gather of whole rows plus a scale, so the kernel maps
// threads onto the flat [Tn, nvec] vector grid of y (row = i / nvec) instead of a warp per row: every
// lane is busy whatever Hd is (a warp per row left a quarter of the lanes idle on the second pass at
// Hd = 3584), each thread keeps kFlatUnroll independent 16-byte loads in flight, and the few
// registers this needs leave the SM fully occupied.  IndexT is uint32_t when Tn * nvec fits
// (32-bit division), int64_t otherwise.
constexpr int kFlatUnroll = 4;
template <typename T, int VEC, typename IndexT>
__global__ void __launch_bounds__(kRowBlock)
unpermute_k1_kernel(const T* __restrict__ y_perm, const int32_t* __restrict__ row_map,
                    const float* __restrict__ weights, T* __restrict__ y, IndexT total, IndexT nvec, int64_t R) {
  using V = Vec<T, VEC>;
  const V* src = reinterpret_cast<const V*>(y_perm);
  V* dst = reinterpret_cast<V*>(y);
  const IndexT step = static_cast<IndexT>(gridDim.x) * (kRowBlock * kFlatUnroll);
  for (IndexT base = static_cast<IndexT>(blockIdx.x) * (kRowBlock * kFlatUnroll) + threadIdx.x; base < total;
       base += step) {
    int32_t r[kFlatUnroll];
    float w[kFlatUnroll];
    IndexT col[kFlatUnroll];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u) {
      const IndexT i = base + static_cast<IndexT>(u * kRowBlock);
      const IndexT t = i < total ? i / nvec : 0;
      col[u] = i - t * nvec;
      r[u] = i < total ? row_map[t] : -1;
      if (r[u] >= R) r[u] = -1;  // out of range: dropped (bad-data guard)
      w[u] = i < total && weights ? weights[t] : 1.f;
    }
    V buf[kFlatUnroll];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u)
      if (r[u] >= 0) buf[u] = src[static_cast<int64_t>(r[u]) * static_cast<int64_t>(nvec) + col[u]];
#pragma unroll
    for (int u = 0; u < kFlatUnroll; ++u) {
      const IndexT i = base + static_cast<IndexT>(u * kRowBlock);
      if (i < total) {
        V o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(r[u] >= 0 ? w[u] * to_float(buf[u].v[e]) : 0.f);
        dst[i] = o;
      }
    }
  }
}

__global__ void invert_row_map_kernel(const int32_t* __restrict__ row_map, int64_t n, int64_t R,
                                      int* __restrict__ inv) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t r = row_map[i];
    if (r >= 0 && r < R) inv[r] = static_cast<int>(i);  // bad-data guard: entries outside [0, R) dropped
  }
}

// One warp per y_perm row r, fed by slot i = inv[r] (token t = i / k):
// grad_y_perm[r] = w[i] * grad_y[t] and grad_w[i] = dot(grad_y[t], y_perm[r]); zero rows otherwise.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
unpermute_bwd_kernel(const T* __restrict__ grad_y, const T* __restrict__ y_perm, const int* __restrict__ inv,
                     const float* __restrict__ weights, T* __restrict__ grad_y_perm, float* __restrict__ grad_w,
                     int k, int64_t R, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id(); r < R;
       r += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int i = inv[r];
    V* out = reinterpret_cast<V*>(grad_y_perm + r * Hd);
    if (i < 0) {
      V zero;
#pragma unroll
      for (int e = 0; e < VEC; ++e) zero.v[e] = from_float<T>(0.f);
      for (int64_t vi = lane; vi < nvec; vi += kWarpSize) out[vi] = zero;
      continue;
    }
    const float w = weights[i];
    const V* gy = reinterpret_cast<const V*>(grad_y + static_cast<int64_t>(i / k) * Hd);
    const V* yp = reinterpret_cast<const V*>(y_perm + r * Hd);
    float dot = 0.f;
    for (int64_t vi = lane; vi < nvec; vi += kWarpSize) {
      const V g = gy[vi], y = yp[vi];
      V o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float gf = to_float(g.v[e]);
        dot += gf * to_float(y.v[e]);
        o.v[e] = from_float<T>(w * gf);
      }
      out[vi] = o;
    }
    dot = warp_reduce_sum<kWarpSize>(dot);
    if (lane == 0) grad_w[i] = dot;
  }
}

template <typename T, int VEC>
struct UnpermuteRun {
  static void run(unsigned g, cudaStream_t st, const void* yp, const int32_t* rm, const float* w, void* y,
                  int64_t Tn, int k, int64_t R, int64_t Hd) {
    if (k == 1) {
      const int64_t nvec = Hd / VEC, total = Tn * nvec;
      const unsigned gf = grid_for(total, kRowBlock * kFlatUnroll, 16);
      if (total + static_cast<int64_t>(gf) * kRowBlock * kFlatUnroll <= static_cast<int64_t>(UINT32_MAX))
        unpermute_k1_kernel<T, VEC, uint32_t><<<gf, kRowBlock, 0, st>>>(
            static_cast<const T*>(yp), rm, w, static_cast<T*>(y), static_cast<uint32_t>(total),
            static_cast<uint32_t>(nvec), R);
      else
        unpermute_k1_kernel<T, VEC, int64_t><<<gf, kRowBlock, 0, st>>>(static_cast<const T*>(yp), rm, w,
                                                                       static_cast<T*>(y), total, nvec, R);
    } else
      unpermute_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(yp), rm, w, static_cast<T*>(y), Tn, k,
                                                        R, Hd);
  }
};

template <typename T, int VEC>
struct UnpermuteBwdRun {
  static void run(unsigned g, cudaStream_t st, const void* gy, const void* yp, const int* inv, const float* w,
                  void* gyp, float* gw, int k, int64_t R, int64_t Hd) {
    unpermute_bwd_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(gy), static_cast<const T*>(yp), inv,
                                                          w, static_cast<T*>(gyp), gw, k, R, Hd);
  }
};

template <typename T>
struct UnpermuteTyped {
  static cudaError_t run(bool vec_ok, const void* yp, const int32_t* rm, const float* w, void* y, int64_t Tn, int k,
                         int64_t R, int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, UnpermuteRun>(vec_ok, Tn, st, yp, rm, w, y, Tn, k, R, Hd);
  }
};

template <typename T>
struct UnpermuteBwdTyped {
  static cudaError_t run(bool vec_ok, const void* gy, const void* yp, const int* inv, const float* w, void* gyp,
                         float* gw, int k, int64_t R, int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, UnpermuteBwdRun>(vec_ok, R, st, gy, yp, inv, w, gyp, gw, k, R, Hd);
  }
};

}  // namespace

cudaError_t launch_moe_unpermute(const void* y_perm, DType t, const int32_t* row_map, const float* weights, void* y,
                                 int64_t T, int k, int64_t R, int64_t Hd, cudaStream_t stream) {
  if (Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, t, {y_perm, y});
  return dispatch_float<UnpermuteTyped>(t, vec_ok, y_perm, row_map, weights, y, T, k, R, Hd, stream);
}

cudaError_t launch_moe_unpermute_bwd(const void* grad_y, const void* y_perm, DType t, const int32_t* row_map,
                                     const float* weights, void* grad_y_perm, float* grad_weights, int64_t T, int k,
                                     int64_t R, int64_t Hd, void* workspace, cudaStream_t stream) {
  int* inv = static_cast<int*>(workspace);
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(grad_weights, 0, sizeof(float) * T * k, stream));
  if (R == 0) return cudaSuccess;
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(inv, 0xff, sizeof(int) * R, stream));  // -1 everywhere
  if (T * k > 0) {
    invert_row_map_kernel<<<grid_for(T * k, kRowBlock), kRowBlock, 0, stream>>>(row_map, T * k, R, inv);
    SBOPS_RETURN_IF_ERROR(last_launch_error());
  }
  if (Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, t, {grad_y, y_perm, grad_y_perm});
  return dispatch_float<UnpermuteBwdTyped>(t, vec_ok, grad_y, y_perm, inv, weights, grad_y_perm, grad_weights, k, R,
                                           Hd, stream);
}

}  // namespace sbops
