// Times sbops' Hopper int8 GEMM (kernels/int8_gemm_sm90.cu, built from a copy with one change per variant by
// int8_gemm_sm90_variants.sh) at the 7B projection shapes, M = 16384 (or argv[1]): the launcher's default schedule and
// group 16, GPU time per call (median of 15 after 3 warm-ups).  Operands are constant bytes: only the time is read.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#include "int8_gemm.cuh"

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

int main(int argc, char** argv) {
  const int64_t M = argc > 1 ? std::atoll(argv[1]) : 16384;
  struct Shape { const char* name; int64_t N, K; };
  const Shape shapes[] = {{"gate_up", 37888, 3584}, {"qkv", 4608, 3584}, {"o", 3584, 3584}, {"down", 3584, 18944}};
  for (const Shape& s : shapes) {
    int8_t *a, *b;
    float *vth, *scale;
    void* y;
    CK(cudaMalloc(&a, M * s.K));
    CK(cudaMalloc(&b, s.N * s.K));
    CK(cudaMalloc(&vth, M * 4));
    CK(cudaMalloc(&scale, s.N * 4));
    CK(cudaMalloc(&y, M * s.N * 2));
    CK(cudaMemset(a, 3, M * s.K));
    CK(cudaMemset(b, 5, s.N * s.K));
    CK(cudaMemset(vth, 0, M * 4));
    CK(cudaMemset(scale, 0, s.N * 4));
    for (int group : {0, 16}) {
      auto run = [&] {
        CK(sbops::launch_int8_gemm_sm90(a, s.K, b, s.K, vth, scale, nullptr, sbops::DType::F32, y, s.N,
                                        sbops::DType::BF16, M, s.N, s.K, 2, 0, group, nullptr));
      };
      for (int i = 0; i < 3; ++i) run();
      std::vector<float> ms;
      cudaEvent_t e0, e1;
      CK(cudaEventCreate(&e0));
      CK(cudaEventCreate(&e1));
      for (int i = 0; i < 15; ++i) {
        CK(cudaEventRecord(e0));
        run();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      std::printf("  M=%lld %-7s %5lldx%-5lld group %2d: %.3f ms (%.0f TOPS)\n", (long long)M, s.name, (long long)s.N,
                  (long long)s.K, group ? group : 8, med, 2.0 * M * s.N * s.K / med / 1e9);
    }
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(vth));
    CK(cudaFree(scale));
    CK(cudaFree(y));
  }
  return 0;
}
