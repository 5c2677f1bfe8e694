// The Hopper dense decode GEMM probe (dense_decode_sm90.cuh, session 38; not in the library) built with one set of its probe knobs
// (-D SBOPS_DD90_L2_PREFETCH / _PDL / _BLOCKS_PER_SM / _MMA_IN_FLIGHT / _TILE_ROWS / _GRID_TILES /
// _DEFER_FIRST / _CLUSTER_K / _TIMING_NO_REDUCE), timed at the bf16 7B decode shapes against
// the sm_80 GEMV of dense_decode.cu (its default layout) in the same process: GPU time per call under a CUDA graph of
// 20 calls over weight copies of > 200 MB, medians of 5 replays; plus one call alone (events around a single launch,
// median of 20) for the start-up cost.  Each output is checked against the GEMV's (max relative difference).
//   nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -Icsrc/include -Ibackends/cuda/kernels [-D...] \
//        benchmarks/gpu/probes/dense_decode_sm90_variants.cu -o /tmp/dd90 && /tmp/dd90 [M ...]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../../backends/cuda/kernels/dense_decode.cu"
#include "dense_decode_sm90.cuh"
#include "common.cuh"

using namespace sbops;

struct Shape {
  const char* name;
  int N, K;
};

template <typename F>
static float graph_us(F call, int n, int replays = 5) {
  cudaStream_t st;
  PROBE_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  call(0, st);
  PROBE_CHECK(cudaStreamSynchronize(st));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  PROBE_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < n; ++i) call(i, st);
  PROBE_CHECK(cudaStreamEndCapture(st, &g));
  PROBE_CHECK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> v;
  PROBE_CHECK(cudaGraphLaunch(ge, st));
  for (int r = 0; r < replays; ++r) {
    cudaEventRecord(a, st);
    PROBE_CHECK(cudaGraphLaunch(ge, st));
    cudaEventRecord(b, st);
    PROBE_CHECK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    v.push_back(ms * 1e3f / n);
  }
  std::sort(v.begin(), v.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  return v[v.size() / 2];
}

template <typename F>
static float single_us(F call) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> v;
  for (int r = 0; r < 21; ++r) {
    cudaEventRecord(a, 0);
    call(r, static_cast<cudaStream_t>(0));
    cudaEventRecord(b, 0);
    PROBE_CHECK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    if (r) v.push_back(ms * 1e3f);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

static float max_rel(const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
  float m = 0.f, s = 1e-6f;
  for (size_t i = 0; i < a.size(); ++i) s = std::max(s, std::abs(__bfloat162float(b[i])));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(__bfloat162float(a[i]) - __bfloat162float(b[i])));
  return m / s;
}

int main(int argc, char** argv) {
  std::vector<int> Ms;
  for (int i = 1; i < argc; ++i) Ms.push_back(std::atoi(argv[i]));
  if (Ms.empty()) Ms = {1, 32};
  const Shape shapes[] = {{"qkv", 4608, 3584}, {"o", 3584, 3584}, {"gate_up", 37888, 3584}, {"down", 3584, 18944}};
  std::printf("knobs: L2_PREFETCH=%d PDL=%d BLOCKS_PER_SM=%d MMA_IN_FLIGHT=%d TILE_ROWS=%d GRID_TILES=%d DEFER_FIRST=%d "
              "CLUSTER_K=%d TIMING_NO_REDUCE=%d\n", SBOPS_DD90_L2_PREFETCH, SBOPS_DD90_PDL, SBOPS_DD90_BLOCKS_PER_SM,
              SBOPS_DD90_MMA_IN_FLIGHT, SBOPS_DD90_TILE_ROWS, SBOPS_DD90_GRID_TILES, SBOPS_DD90_DEFER_FIRST,
              SBOPS_DD90_CLUSTER_K, SBOPS_DD90_TIMING_NO_REDUCE);
  float* ws;
  int* cnt;
  PROBE_CHECK(cudaMalloc(&ws, dense_decode_sm90_workspace(32) * 4));
  PROBE_CHECK(cudaMalloc(&cnt, 4096 * 4));
  PROBE_CHECK(cudaMemset(cnt, 0, 4096 * 4));
  for (const Shape& s : shapes) {
    const int64_t wn = int64_t{s.N} * s.K;
    const int copies = static_cast<int>((200LL << 20) / (2 * wn) + 2);
    std::vector<__nv_bfloat16*> w(copies);
    for (auto& p : w) {
      PROBE_CHECK(cudaMalloc(&p, wn * 2));
      probe::fill_bf16<<<1024, 256>>>(p, wn, 7u, 0.02f);
    }
    for (int M : Ms) {
      __nv_bfloat16 *x, *y0, *y1;
      PROBE_CHECK(cudaMalloc(&x, int64_t{M} * s.K * 2));
      PROBE_CHECK(cudaMalloc(&y0, int64_t{M} * s.N * 2));
      PROBE_CHECK(cudaMalloc(&y1, int64_t{M} * s.N * 2));
      probe::fill_bf16<<<256, 256>>>(x, int64_t{M} * s.K, 11u, 1.f);
      auto args = [&](int i, __nv_bfloat16* y) {
        DenseDecodeArgs a{};
        a.x = x, a.w = w[i % copies], a.bias = nullptr, a.y = y;
        a.ldx = s.K, a.ldw = s.K, a.ldy = s.N, a.M = M, a.N = s.N, a.K = s.K;
        return a;
      };
      auto gemv = [&](int i, cudaStream_t st) { PROBE_CHECK(launch_dense_decode(args(i, y0), DType::BF16, -1, st)); };
      auto hop = [&](int i, cudaStream_t st) {
        PROBE_CHECK(launch_dense_decode_sm90(args(i, y1), DType::BF16, ws, cnt, st));
      };
      const float g0 = graph_us(gemv, 20), g1 = graph_us(hop, 20), g0b = graph_us(gemv, 20), g1b = graph_us(hop, 20);
      const float s0 = single_us(gemv), s1 = single_us(hop);
      gemv(0, 0);
      hop(0, 0);
      PROBE_CHECK(cudaDeviceSynchronize());
      std::vector<__nv_bfloat16> h0(int64_t{M} * s.N), h1(h0.size());
      cudaMemcpy(h0.data(), y0, h0.size() * 2, cudaMemcpyDeviceToHost);
      cudaMemcpy(h1.data(), y1, h1.size() * 2, cudaMemcpyDeviceToHost);
      const double mb = 2.0 * wn / 1e6;
      std::printf("%-7s M=%-2d gemv %7.2f / %7.2f us (%.2f TB/s), sm90 %7.2f / %7.2f us (%.2f TB/s) | alone: gemv %.2f, "
                  "sm90 %.2f us | max rel diff %.1e\n",
                  s.name, M, g0, g0b, mb / std::min(g0, g0b), g1, g1b, mb / std::min(g1, g1b), s0, s1, max_rel(h1, h0));
      cudaFree(x);
      cudaFree(y0);
      cudaFree(y1);
    }
    for (auto& p : w) cudaFree(p);
  }
  return 0;
}
