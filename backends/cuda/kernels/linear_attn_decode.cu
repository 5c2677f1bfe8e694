// GQA-native gated linear attention decode step.  Torch-free.
//
// Operands are read in place through their element strides (LaDecodeStrides: views such as
// q[:, t] or splits of a fused projection need no copy); the state is updated in place through
// its strides with 16-byte vector accesses (the binding guarantees aligned rows).
// One block per (sequence, KV head, column slice of the state).  The [K, V] state tile is read
// once and written once; its H/HKV query heads share it.  Thread layout inside a warp: groups of
// kRowLanes consecutive lanes hold the same state columns for different rows, so the q.S row
// reduction is a warp_reduce_sum<kRowLanes>, followed by a small shared-memory sum over warps.
// With SBOPS_DECODE_PDL=all it launches on sm_90 as a programmatic dependent of the kernel before it
// (pdl_launch.cuh).
#include <cmath>

#include "common.cuh"
#include "decode.cuh"
#include "pdl_launch.cuh"

namespace sbops {
namespace {

constexpr int kLaBlock = 128;
constexpr int kRowLanes = 4;                          // lanes sharing columns (different rows)
constexpr int kColGroups = kWarpSize / kRowLanes;     // column groups per warp
constexpr int kLaWarps = kLaBlock / kWarpSize;
constexpr int kRowSubsets = kLaWarps * kRowLanes;     // row subsets per block
constexpr int kQRegs = 8;  // q values a thread stages: q goes through shared memory when G * K <= kQRegs * kLaBlock

template <typename ST, int K>
__global__ void __launch_bounds__(kLaBlock)
la_decode_kernel(const void* __restrict__ q, const void* __restrict__ k, const void* __restrict__ v, DType qt,
                 const void* __restrict__ g, DType gt, int gate_mode, ST* __restrict__ state,
                 const void* __restrict__ idx, bool idx64, int64_t num_slots, void* __restrict__ o, int HKV, int G, int V,
                 float scale, LaDecodeStrides st, int64_t nh0) {
  constexpr int VEC = vec16<ST>();
  constexpr int VB = kColGroups * VEC;  // state columns per block
  constexpr int ROWS = K / kRowSubsets;  // state rows per thread
  static_assert(K % kRowSubsets == 0, "K must be a multiple of the row subsets");
  extern __shared__ float la_smem[];
  float* la_red = la_smem;                  // [kLaWarps][G][VB]
  float* q_s = la_smem + kLaWarps * G * VB;  // [G][K] when q is staged

  grid_dependency_wait();    // launched as a programmatic dependent (pdl_launch.cuh): the kernels before are done
  grid_dependents_launch();  // what follows may launch now; it waits for this grid
  const int lane = lane_id(), w = warp_id();
  const int kq = lane % kRowLanes, cg = lane / kRowLanes;
  const int ksub = w * kRowLanes + kq;
  const int64_t nh = nh0 + blockIdx.y;  // n * HKV + hk (launched in slices of kMaxGridYZ)
  const int64_t n = nh / HKV;
  const int hk = static_cast<int>(nh % HKV);
  const int c0 = blockIdx.x * VB + cg * VEC;
  const bool active = c0 < V;  // V % VEC == 0 (checked by the launcher)
  const int64_t slot = idx ? load_index(idx, idx64, n) : n;
  // Bad-data guard: an invalid slot touches no state and outputs NaN (block-uniform).
  if (slot < 0 || slot >= num_slots) {
    for (int i = threadIdx.x; i < G * VB; i += blockDim.x) {
      const int col = blockIdx.x * VB + i % VB;
      if (col < V) store_float(o, qt, (nh * G + i / VB) * V + col, NAN);
    }
    return;
  }
  ST* S = state + slot * st.s0 + hk * st.s1;  // row kk at S + kk * st.s2
  const int64_t q_base = n * st.q0 + static_cast<int64_t>(hk) * G * st.q1;  // query head hk*G + h: + h * st.q1
  const int64_t k_base = n * st.k0 + hk * st.k1, v_base = n * st.v0 + hk * st.v1;
  const int64_t g_base = n * st.g0 + hk * st.g1;

  // The G query heads' q rows: loads issued here, before the state's, so their latencies overlap
  // (read inside the head loop below they were G dependent round trips: most of a B=1 step).
  const bool stage_q = G * K <= kQRegs * kLaBlock;
  float qr[kQRegs];
  if (stage_q) {
#pragma unroll
    for (int j = 0; j < kQRegs; ++j) {
      const int i = threadIdx.x + j * kLaBlock;
      qr[j] = i < G * K ? load_float(q, qt, q_base + (i / K) * st.q1 + i % K) : 0.f;
    }
  }

  float vv[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) vv[e] = active ? load_float(v, qt, v_base + c0 + e) : 0.f;
  const float head_decay = gate_mode == static_cast<int>(GateMode::PerHead) ? expf(load_float(g, gt, g_base)) : 1.f;

  // New state rows kk = r * kRowSubsets + ksub, kept in registers for the outputs.  Every load of
  // the pass (state rows, k, g) is issued before the first use: with the loads inside the update
  // loop (runtime-dtype branches between them) each row was its own memory round trip.
  const bool per_key = gate_mode == static_cast<int>(GateMode::PerKey);
  Vec<ST, VEC> old[ROWS];
  float kr[ROWS], gr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (active) old[r] = *reinterpret_cast<const Vec<ST, VEC>*>(S + static_cast<int64_t>(r * kRowSubsets + ksub) * st.s2 + c0);
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) kr[r] = load_float(k, qt, k_base + r * kRowSubsets + ksub);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) gr[r] = per_key ? load_float(g, gt, g_base + r * kRowSubsets + ksub) : 0.f;
  float s[ROWS][VEC];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int kk = r * kRowSubsets + ksub;
    if (active) {
      const float d = per_key ? expf(gr[r]) : head_decay;
      Vec<ST, VEC> nw;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        s[r][e] = d * to_float(old[r].v[e]) + kr[r] * vv[e];
        nw.v[e] = from_float<ST>(s[r][e]);
      }
      *reinterpret_cast<Vec<ST, VEC>*>(S + static_cast<int64_t>(kk) * st.s2 + c0) = nw;
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) s[r][e] = 0.f;
    }
  }

  if (stage_q) {
#pragma unroll
    for (int j = 0; j < kQRegs; ++j) {
      const int i = threadIdx.x + j * kLaBlock;
      if (i < G * K) q_s[i] = qr[j];
    }
    __syncthreads();  // uniform: stage_q and the slot test are the same for the whole block
  }

  // o[h, cols] = scale * sum_rows q[h, row] * S[row, cols]
  for (int h = 0; h < G; ++h) {
    const int64_t qrow = q_base + h * st.q1;  // query head hk * G + h of sequence n
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int kk = r * kRowSubsets + ksub;
      const float qv = stage_q ? q_s[h * K + kk] : load_float(q, qt, qrow + kk);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] += qv * s[r][e];
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = warp_reduce_sum<kRowLanes>(acc[e]);
    if (kq == 0) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) la_red[(w * G + h) * VB + cg * VEC + e] = acc[e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * VB; i += blockDim.x) {
    const int h = i / VB, c = i % VB;
    const int col = blockIdx.x * VB + c;
    if (col >= V) continue;
    float sum = 0.f;
#pragma unroll
    for (int ww = 0; ww < kLaWarps; ++ww) sum += la_red[(ww * G + h) * VB + c];
    store_float(o, qt, (nh * G + h) * V + col, scale * sum);
  }
}

template <typename ST, int K>
cudaError_t launch_typed(const void* q, const void* k, const void* v, DType qt, const void* g, DType gt, int gm,
                         void* state, const void* idx, bool idx64, int64_t ns, void* o, int64_t N, int HKV, int G,
                         int V, float scale, const LaDecodeStrides& strides, cudaStream_t st) {
  constexpr int VB = kColGroups * vec16<ST>();
  if (V % vec16<ST>() != 0 || !rows_aligned16(state, sizeof(ST), strides.s0, strides.s1, strides.s2))
    return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * (kLaWarps * G * VB + (G * K <= kQRegs * kLaBlock ? G * K : 0));
  if (smem > kDefaultDynamicSmem) {  // many query heads per KV head: opt in (fails cleanly past the device's limit)
    SBOPS_RETURN_IF_ERROR(cudaFuncSetAttribute(la_decode_kernel<ST, K>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
  }
  const auto kernel = la_decode_kernel<ST, K>;
  const bool pdl = pdl_plan(kernel, kPdlAll);
  return launch_y_slices(N * HKV, [&](int64_t nh0, unsigned rows) {
    const dim3 grid(static_cast<unsigned>(ceil_div(V, VB)), rows);
    return launch_kernel(kernel, grid, kLaBlock, smem, st, pdl, q, k, v, qt, g, gt, gm, static_cast<ST*>(state), idx,
                         idx64, ns, o, HKV, G, V, scale, strides, nh0);
  });
}

template <typename ST>
cudaError_t launch_state(int K, const void* q, const void* k, const void* v, DType qt, const void* g, DType gt,
                         int gm, void* state, const void* idx, bool idx64, int64_t ns, void* o, int64_t N, int HKV, int G,
                         int V, float scale, const LaDecodeStrides& sd, cudaStream_t st) {
  if (K == 128) return launch_typed<ST, 128>(q, k, v, qt, g, gt, gm, state, idx, idx64, ns, o, N, HKV, G, V, scale, sd, st);
  if (K == 64) return launch_typed<ST, 64>(q, k, v, qt, g, gt, gm, state, idx, idx64, ns, o, N, HKV, G, V, scale, sd, st);
  return cudaErrorInvalidValue;
}

}  // namespace

bool linear_attn_decode_supports(int K, int V) { return (K == 64 || K == 128) && V > 0 && V % 8 == 0; }

cudaError_t launch_linear_attn_decode(const void* q, const void* k, const void* v, DType qt, const void* g, DType gt,
                                      GateMode gate_mode, void* state, DType state_dtype, int64_t num_slots,
                                      const void* idx, bool idx64, void* o, int64_t N, int H, int HKV, int K, int V, float scale,
                                      const LaDecodeStrides& sd, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (HKV <= 0 || H % HKV != 0 || !linear_attn_decode_supports(K, V)) return cudaErrorInvalidValue;
  const int G = H / HKV;
  const int gm = static_cast<int>(gate_mode);
  switch (state_dtype) {
    case DType::F32:
      return launch_state<float>(K, q, k, v, qt, g, gt, gm, state, idx, idx64, num_slots, o, N, HKV, G, V, scale, sd,
                                 stream);
    case DType::BF16:
      return launch_state<__nv_bfloat16>(K, q, k, v, qt, g, gt, gm, state, idx, idx64, num_slots, o, N, HKV, G,
                                         V, scale, sd, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace sbops
