// Where the sm_90 SWA backward's time goes: times the kernel (T = 32k, 28 / 4 heads, window 4096, bf16) with
// dQ off, on, and in diagnosis modes that each drop one part of the dQ path (their results are wrong; timing
// only): no global bulk reduction, no dQ MMA, no dS^T stores.  Medians of 9 launches (CUDA events).
//   nvcc -std=c++17 -arch=sm_90a -O3 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/swa_bwd_time_split.cu \
//        backends/cuda/kernels/swa_fwd_sm90.cu -o /tmp/swa_bwd_time_split && /tmp/swa_bwd_time_split
#include "common.cuh"
#include "../../../backends/cuda/kernels/swa_bwd_sm90.cu"

#include <cstdio>
#include <vector>

using probe::fill_bf16;
using probe::fill_f32;

int main() {
  using namespace sbops;
  const int B = 1, T = 32768, H = 28, HKV = 4, W = 4096;
  const float scale = 0.08838834764831845f;
  const int64_t nq = int64_t{B} * T * H * 128, nk = int64_t{B} * T * HKV * 128, Tpad = swa_bwd_sm90_padded_len(T);
  __nv_bfloat16 *q, *k, *v, *o, *dout, *dk, *dv;
  float *lse, *lse2, *delta, *dq;
  for (auto* p : {&q, &o, &dout}) PROBE_CHECK(cudaMalloc(p, nq * 2));
  for (auto* p : {&k, &v, &dk, &dv}) PROBE_CHECK(cudaMalloc(p, nk * 2));
  PROBE_CHECK(cudaMalloc(&lse, int64_t{B} * T * H * 4));
  PROBE_CHECK(cudaMalloc(&lse2, int64_t{B} * H * Tpad * 4));
  PROBE_CHECK(cudaMalloc(&delta, int64_t{B} * H * Tpad * 4));
  PROBE_CHECK(cudaMalloc(&dq, nq * 4));
  uint32_t seed = 1;
  for (auto* p : {q, o, dout}) fill_bf16<<<1024, 256>>>(p, nq, seed++);
  for (auto* p : {k, v}) fill_bf16<<<1024, 256>>>(p, nk, seed++);
  fill_f32<<<1024, 256>>>(lse, int64_t{B} * T * H, 9.f);
  PROBE_CHECK(launch_prep_typed<__nv_bfloat16>(o, dout, lse, nullptr, lse2, delta, B, T, H, 0));
  PROBE_CHECK(cudaDeviceSynchronize());

  using Launch = cudaError_t (*)(const void*, const void*, const void*, const void*, const float*, const float*,
                                 float*, void*, void*, int, int, int, int, int, float, cudaStream_t);
  const struct {
    const char* name;
    Launch fn;
  } modes[] = {{"dK/dV only (no dQ)", launch_typed<__nv_bfloat16, kNoDq>},
               {"with dQ", launch_typed<__nv_bfloat16, kWithDq>},
               {"with dQ, no global reduction", launch_typed<__nv_bfloat16, kProbeNoReduce>},
               {"with dQ, no dQ MMA", launch_typed<__nv_bfloat16, kProbeNoDqMma>},
               {"with dQ, no dS^T stores", launch_typed<__nv_bfloat16, kProbeNoDsStore>}};
  cudaEvent_t e0, e1;
  PROBE_CHECK(cudaEventCreate(&e0));
  PROBE_CHECK(cudaEventCreate(&e1));
  for (int round = 0; round < 2; ++round)
    for (const auto& m : modes) {
      std::vector<float> ms;
      for (int it = 0; it < 11; ++it) {
        PROBE_CHECK(cudaMemsetAsync(dq, 0, nq * 4));
        PROBE_CHECK(cudaEventRecord(e0));
        PROBE_CHECK(m.fn(q, k, v, dout, lse2, delta, dq, dk, dv, B, T, H, HKV, W, scale, 0));
        PROBE_CHECK(cudaEventRecord(e1));
        PROBE_CHECK(cudaEventSynchronize(e1));
        float t = 0;
        PROBE_CHECK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 2) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      std::printf("round %d  %-32s %.3f ms\n", round, m.name, ms[ms.size() / 2]);
    }
  return 0;
}
