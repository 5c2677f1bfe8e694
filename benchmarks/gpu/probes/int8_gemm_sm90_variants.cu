// Times sbops' Hopper int8 GEMM (kernels/int8_gemm_sm90.cu, built from a copy with one change per variant by
// int8_gemm_sm90_variants.sh) at the 7B projection shapes, M = 16384 (or argv[1]): the launcher's default schedule and
// group 16, GPU time per call (median of 15 after 3 warm-ups).  Then a checksum of y on hashed operands (y first
// filled with a sentinel) at the 7B shapes and at odd ones (row / column tails; N = 1002 takes the stores from
// registers): every variant that writes y must print the same checksums as the shipped one.
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

__device__ uint32_t mix(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
__global__ void fill_i8(int8_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = static_cast<int8_t>(static_cast<int>(mix(i, seed) % 255u) - 127);
}
__global__ void fill_f32(float* p, int64_t n, uint32_t seed, float lo, float span) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = lo + span * (mix(i, seed) % 65536u) / 65536.f;
}
__global__ void checksum(const uint16_t* y, int64_t n, unsigned long long* out) {
  unsigned long long s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += (static_cast<unsigned long long>(y[i]) + 1) * static_cast<unsigned long long>(mix(i, 7) & 0xFFFF);
  atomicAdd(out, s);
}

int main(int argc, char** argv) {
  const int64_t M0 = argc > 1 ? std::atoll(argv[1]) : 16384;
  struct Shape { const char* name; int64_t M, N, K; bool timed; };
  const Shape shapes[] = {{"gate_up", M0, 37888, 3584, true}, {"qkv", M0, 4608, 3584, true},
                          {"o", M0, 3584, 3584, true},         {"down", M0, 3584, 18944, true},
                          {"odd", 1000, 1000, 400, false},      {"odd_n", 777, 1002, 272, false}};
  unsigned long long* sum;
  CK(cudaMalloc(&sum, sizeof(unsigned long long)));
  for (const Shape& s : shapes) {
    const int64_t M = s.M;
    int8_t *a, *b;
    float *vth, *scale;
    uint16_t* y;
    CK(cudaMalloc(&a, M * s.K));
    CK(cudaMalloc(&b, s.N * s.K));
    CK(cudaMalloc(&vth, M * 4));
    CK(cudaMalloc(&scale, s.N * 4));
    CK(cudaMalloc(&y, M * s.N * 2));
    fill_i8<<<1024, 256>>>(a, M * s.K, 1);
    fill_i8<<<1024, 256>>>(b, s.N * s.K, 2);
    fill_f32<<<256, 256>>>(vth, M, 3, 1e-3f, 0.1f);
    fill_f32<<<256, 256>>>(scale, s.N, 4, 1e-5f, 1e-3f);
    CK(cudaGetLastError());
    for (int group : {0, 16}) {
      auto run = [&] {
        CK(sbops::launch_int8_gemm_sm90(a, s.K, b, s.K, vth, scale, nullptr, sbops::DType::F32, y, s.N,
                                        sbops::DType::BF16, M, s.N, s.K, 2, 0, group, nullptr));
      };
      CK(cudaMemset(y, 0xFF, M * s.N * 2));
      run();
      CK(cudaMemset(sum, 0, sizeof(unsigned long long)));
      checksum<<<1024, 256>>>(y, M * s.N, sum);
      unsigned long long h = 0;
      CK(cudaMemcpy(&h, sum, sizeof h, cudaMemcpyDeviceToHost));
      if (!s.timed) {
        std::printf("  M=%lld %-7s %5lldx%-5lld group %2d: checksum %016llx\n", (long long)M, s.name, (long long)s.N,
                    (long long)s.K, group ? group : 8, h);
        continue;
      }
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
      std::printf("  M=%lld %-7s %5lldx%-5lld group %2d: %.3f ms (%.0f TOPS), checksum %016llx\n", (long long)M, s.name,
                  (long long)s.N, (long long)s.K, group ? group : 8, med, 2.0 * M * s.N * s.K / med / 1e9, h);
    }
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(vth));
    CK(cudaFree(scale));
    CK(cudaFree(y));
  }
  return 0;
}
