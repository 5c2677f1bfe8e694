// Where the sm_90 SWA forward's time goes under the H100's power cap: times its variants (B = 1, 28 / 4 heads,
// D = 128, window 4096, bf16) in the modes of swa_fwd_sm90.cu's SwaFwdMode: the kernel without clusters (kFwd, mode
// 0), the K/V multicast kernel that serves even head counts (kFwdMcast, 6), the clusters without multicast (7), the
// previous kernel that reads Q from shared memory (5), and diagnosis modes that each remove one kind of work
// (outputs wrong; timing only): half the K/V tile loads (1), no K/V loads after the first stages (2), a quarter of
// the MMAs (3), no exp2 (4).  First checks that modes 5 and 6 give kFwd's o and lse bit for bit on 9 shapes.  The
// kernel runs at the ~700 W cap, so modes alternate within each round after a 1.5 s warm-up that brings the GPU to
// that state.  Medians of `launches` launches per mode and round (CUDA events).
//   nvcc -std=c++17 -arch=sm_90a -O3 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/swa_fwd_time_split.cu \
//        -o /tmp/swa_fwd_time_split && /tmp/swa_fwd_time_split [rounds [modes, e.g. 0,6 [launches [0: 128k+32k, 1: 128k, 2: 32k]]]]
#include "common.cuh"
#include "../../../backends/cuda/kernels/swa_fwd_sm90.cu"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <vector>

using probe::fill_bf16;

namespace {
using Launch = cudaError_t (*)(const void*, const void*, const void*, void*, float*, int, int, int, int, int, float,
                               cudaStream_t, int);
}  // namespace

int main(int argc, char** argv) {
  using namespace sbops;
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const int B = 1, H = 28, HKV = 4, W = 4096, iters = argc > 3 ? std::atoi(argv[3]) : 20;  // argv[3]: launches per median
  std::vector<int> lens;  // argv[4]: 0 = T 128k and 32k (default), 1 = 128k only, 2 = 32k only
  const int which = argc > 4 ? std::atoi(argv[4]) : 0;
  if (which != 2) lens.push_back(131072);
  if (which != 1) lens.push_back(32768);
  const float scale = 0.08838834764831845f;
  const struct {
    const char* name;
    Launch fn;
  } modes[] = {{"no clusters (kFwd)", launch_typed<__nv_bfloat16, kFwd>},
               {"half the K/V loads", launch_typed<__nv_bfloat16, kProbeHalfLoads>},
               {"no K/V loads", launch_typed<__nv_bfloat16, kProbeNoLoads>},
               {"4 of 8 P V k-steps", launch_typed<__nv_bfloat16, kProbeHalfPv>},
               {"no exp2", launch_typed<__nv_bfloat16, kProbeNoExp>},
               {"Q from smem", launch_typed<__nv_bfloat16, kProbeQSmem>},
               {"K/V multicast", launch_typed<__nv_bfloat16, kFwdMcast>},
               {"clusters, no multicast", launch_typed<__nv_bfloat16, kProbeMcastLocal>}};
  constexpr int kAll = static_cast<int>(sizeof(modes) / sizeof(modes[0]));
  std::vector<int> sel;  // argv[2]: the modes to time, e.g. 0,5 (default: all)
  for (const char* c = argc > 2 ? argv[2] : ""; *c;) {
    const int m = std::atoi(c);
    if (m < 0 || m >= kAll) {
      std::printf("mode %d: expected 0 .. %d\n", m, kAll - 1);
      return 2;
    }
    sel.push_back(m);
    while (*c && *c != ',') ++c;
    if (*c) ++c;
  }
  if (sel.empty())
    for (int m = 0; m < kAll; ++m) sel.push_back(m);
  const int kModes = static_cast<int>(sel.size());
  // the previous kernel (Q from shared memory) and the multicast one compute kFwd's result: o and lse must match
  // bit for bit (heads 2j, 2j + 1 of one KV head share their tiles; H=28 / HKV=4 also has pairs across KV heads)
  const struct {
    int B, T, H, HKV, window;
  } shapes[] = {{1, 1, 2, 1, 0},     {2, 63, 4, 2, 1},      {1, 129, 4, 1, 7},       {1, 1000, 4, 2, 200},
                {2, 777, 2, 2, 5000}, {1, 5000, 7, 1, 4096}, {1, 1000, 28, 4, 200},   {1, 3000, 28, 4, 4096},
                {1, 300, 4, 4, 100}};
  for (const auto& c : shapes) {
    const int64_t nq = int64_t{c.B} * c.T * c.H * 128, nk = int64_t{c.B} * c.T * c.HKV * 128, nl = nq / 128;
    __nv_bfloat16 *q, *k, *v, *o;
    float* lse;
    PROBE_CHECK(cudaMalloc(&q, nq * 2));
    PROBE_CHECK(cudaMalloc(&o, nq * 4));  // two outputs
    PROBE_CHECK(cudaMalloc(&k, nk * 2));
    PROBE_CHECK(cudaMalloc(&v, nk * 2));
    PROBE_CHECK(cudaMalloc(&lse, nl * 8));
    fill_bf16<<<1024, 256>>>(q, nq, 11, 2.f);
    fill_bf16<<<1024, 256>>>(k, nk, 12, 2.f);
    fill_bf16<<<1024, 256>>>(v, nk, 13, 2.f);
    for (int other : {kProbeQSmem, kFwdMcast}) {  // SwaFwdMode values index `modes`
      if (other == kFwdMcast && c.H % 2 != 0) continue;
      PROBE_CHECK(cudaMemset(o, 0xFF, nq * 4));
      PROBE_CHECK(cudaMemset(lse, 0xFF, nl * 8));
      PROBE_CHECK((launch_typed<__nv_bfloat16, kFwd>)(q, k, v, o, lse, c.B, c.T, c.H, c.HKV, c.window, scale, 0, c.T));
      PROBE_CHECK(modes[other].fn(q, k, v, o + nq, lse + nl, c.B, c.T, c.H, c.HKV, c.window, scale, 0, c.T));
      std::vector<uint16_t> ho(2 * nq);
      std::vector<uint32_t> hl(2 * nl);
      PROBE_CHECK(cudaMemcpy(ho.data(), o, nq * 4, cudaMemcpyDeviceToHost));
      PROBE_CHECK(cudaMemcpy(hl.data(), lse, nl * 8, cudaMemcpyDeviceToHost));
      const bool same = std::memcmp(ho.data(), ho.data() + nq, nq * 2) == 0 &&
                        std::memcmp(hl.data(), hl.data() + nl, nl * 4) == 0;
      std::printf("%s vs kernel, B=%d T=%d H=%d HKV=%d window=%d: o and lse %s\n", modes[other].name, c.B, c.T, c.H,
                  c.HKV, c.window, same ? "identical" : "DIFFER");
      if (!same) return 1;
    }
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(o),
                    static_cast<void*>(lse)})
      cudaFree(p);
  }

  cudaEvent_t e0, e1;
  PROBE_CHECK(cudaEventCreate(&e0));
  PROBE_CHECK(cudaEventCreate(&e1));
  for (int T : lens) {
    const int64_t nq = int64_t{B} * T * H * 128, nk = int64_t{B} * T * HKV * 128;
    __nv_bfloat16 *q, *k, *v, *o;
    float* lse;
    PROBE_CHECK(cudaMalloc(&q, nq * 2));
    PROBE_CHECK(cudaMalloc(&o, nq * 2));
    PROBE_CHECK(cudaMalloc(&k, nk * 2));
    PROBE_CHECK(cudaMalloc(&v, nk * 2));
    PROBE_CHECK(cudaMalloc(&lse, int64_t{B} * T * H * 4));
    fill_bf16<<<1024, 256>>>(q, nq, 1, 2.f);
    fill_bf16<<<1024, 256>>>(k, nk, 2, 2.f);
    fill_bf16<<<1024, 256>>>(v, nk, 3, 2.f);
    auto time_mode = [&](int m) {
      std::vector<float> t;
      for (int i = 0; i < iters; ++i) {
        PROBE_CHECK(cudaEventRecord(e0));
        PROBE_CHECK(modes[sel[m]].fn(q, k, v, o, lse, B, T, H, HKV, W, scale, 0, T));
        PROBE_CHECK(cudaEventRecord(e1));
        PROBE_CHECK(cudaEventSynchronize(e1));
        float ms = 0.f;
        PROBE_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    // warm-up: 1.5 s of the kernel, past the clock dip at the start of a load
    for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500);) {
      PROBE_CHECK(modes[0].fn(q, k, v, o, lse, B, T, H, HKV, W, scale, 0, T));
      PROBE_CHECK(cudaDeviceSynchronize());
    }
    std::vector<std::vector<float>> med(kModes);
    for (int r = 0; r < rounds; ++r) {
      std::printf("T=%d round %d:", T, r);
      for (int j = 0; j < kModes; ++j) {
        const int m = (r % 2 == 0) ? j : kModes - 1 - j;
        med[m].push_back(time_mode(m));
      }
      for (int m = 0; m < kModes; ++m) std::printf("  %s %.3f", modes[sel[m]].name, med[m].back());
      std::printf("\n");
    }
    float base = 0.f;
    for (int m = 0; m < kModes; ++m) {
      std::vector<float> s = med[m];
      std::sort(s.begin(), s.end());
      if (m == 0) base = s[s.size() / 2];
      std::printf("T=%d %-20s median %.3f ms (%.3f .. %.3f), %.3fx the first\n", T, modes[sel[m]].name, s[s.size() / 2],
                  s.front(), s.back(), s[s.size() / 2] / base);
    }
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(o),
                    static_cast<void*>(lse)})
      cudaFree(p);
  }
  return 0;
}
