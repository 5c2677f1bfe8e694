// Does prefetching the next weights into L2 during a decode step's small kernels pay? (issue 19, B = 1 decode)
//
// A B = 1 decode step of the 7B shape spends ~3.9 ms in cuBLAS GEMVs (HBM-bound) and ~0.8 ms in small kernels
// (norms, activations, the attention decodes, split-K reduces) during which HBM is mostly idle.  This probe models
// one step as 28 layers of
//   norm -> qkv GEMV -> act -> attention (reads 8 MB on odd "SWA" layers, 0.25 MB on even "GLA" ones) -> o_norm
//   -> o GEMV -> norm -> gate_up GEMV -> silu -> down GEMV
// (cuBLAS bf16 GEMVs at the 7B shapes, small kernels of the model's sizes), captured in one CUDA graph, and times it
// with and without side-stream L2 prefetches (cp.async.bulk.prefetch.L2, sm_90) forked at a small kernel and joined
// at the end of the layer.  Variants, alternated over rounds, median of rounds:
//   none | o: the o weight at `act` | o+gu<X>: also the first X MB of gate_up | o+gu16+next-qkv: also the next
//   layer's qkv at `silu` | read-o: the o weight by plain loads (a reduction kernel) instead of bulk prefetch.
// Build and run (repository root, sm_90):
//   nvcc -std=c++17 -arch=sm_90a -O3 benchmarks/gpu/probes/decode_l2_prefetch.cu -lcublas -o /tmp/l2p && /tmp/l2p
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <cublas_v2.h>

#include "common.cuh"

#define CUBLAS_CHECK(x)                                               \
  do {                                                                \
    cublasStatus_t s_ = (x);                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                \
      std::printf("%s failed: status %d\n", #x, static_cast<int>(s_)); \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)

namespace {

constexpr int kLayers = 28, kHid = 3584, kQkv = 4608, kInter = 18944;

// norm / act / silu stand-in: one block reads n bf16 and writes n (what RMSNorm at B = 1 moves)
__global__ void small_kernel(const __nv_bfloat16* x, __nv_bfloat16* y, int n) {
  __shared__ float s;
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += __bfloat162float(x[i]);
  if (threadIdx.x == 0) s = 0.f;
  __syncthreads();
  atomicAdd(&s, acc);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = __float2bfloat16(__bfloat162float(x[i]) * 0.5f + s * 1e-9f);
}

// attention stand-in: reads `bytes` with 16-byte loads over the whole GPU, one float out
__global__ void read_kernel(const uint4* p, int64_t n16, float* out) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n16; i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[0] = 1.f;  // keeps the loads
}

// L2 bulk prefetch of [p, p + bytes): each thread issues chunks of `chunk` bytes (16-byte multiples)
__global__ void prefetch_l2(const char* p, int64_t bytes, int64_t chunk) {
  for (int64_t off = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * chunk; off < bytes;
       off += int64_t{gridDim.x} * blockDim.x * chunk) {
    const uint32_t n = static_cast<uint32_t>(chunk < bytes - off ? chunk : bytes - off);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(n) : "memory");
  }
}

struct Layer {
  __nv_bfloat16 *qkv, *o, *gu, *down;
};

struct Prefetch {
  int at;  // 0 = at act (after the qkv GEMV), 1 = at silu (after the gate_up GEMV)
  const char* p;
  int64_t bytes;
  bool plain;  // plain loads (read_kernel) instead of the bulk prefetch
};

}  // namespace

int main(int argc, char** argv) {
  int dev = 0;
  PROBE_CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  PROBE_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf("{\"device\": \"%s\", \"l2_MB\": %.1f, \"sms\": %d}\n", prop.name, prop.l2CacheSize / 1048576.0,
              prop.multiProcessorCount);
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 15;

  std::vector<Layer> L(kLayers);
  auto alloc = [](int64_t n) {
    __nv_bfloat16* p;
    PROBE_CHECK(cudaMalloc(&p, n * 2));
    probe::fill_bf16<<<1024, 256>>>(p, n, static_cast<uint32_t>(n), 0.02f);
    return p;
  };
  for (auto& l : L) {
    l.qkv = alloc(int64_t{kQkv} * kHid);
    l.o = alloc(int64_t{kHid} * kHid);
    l.gu = alloc(int64_t{2} * kInter * kHid);
    l.down = alloc(int64_t{kHid} * kInter);
  }
  __nv_bfloat16 *x = alloc(kHid), *h = alloc(kHid), *qkv = alloc(kQkv), *gu = alloc(2 * kInter), *act = alloc(kInter);
  const int64_t kv_bytes = 8ll << 20, gla_bytes = 256ll << 10;
  __nv_bfloat16* kv = alloc(kv_bytes / 2 * kLayers);  // each layer its own buffer
  float* sink;
  PROBE_CHECK(cudaMalloc(&sink, 4));
  PROBE_CHECK(cudaDeviceSynchronize());

  cublasHandle_t hb;
  CUBLAS_CHECK(cublasCreate(&hb));
  void* ws;
  const size_t ws_bytes = 32 << 20;
  PROBE_CHECK(cudaMalloc(&ws, ws_bytes));
  CUBLAS_CHECK(cublasSetWorkspace(hb, ws, ws_bytes));
  const float one = 1.f, zero = 0.f;
  auto gemv = [&](const __nv_bfloat16* W, int N, int K, const __nv_bfloat16* in, __nv_bfloat16* out) {
    CUBLAS_CHECK(cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, N, 1, K, &one, W, CUDA_R_16BF, K, in, CUDA_R_16BF, K, &zero,
                              out, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };

  cudaStream_t st, side;
  PROBE_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  PROBE_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasSetStream(hb, st));
  std::vector<cudaEvent_t> evs(4 * kLayers + 8);
  for (auto& ev : evs) PROBE_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));

  // one decode step; prefetches(l) lists what layer l prefetches
  auto step = [&](const std::function<std::vector<Prefetch>(int)>& prefetches) {
    int ei = 0;
    for (int l = 0; l < kLayers; ++l) {
      const Layer& w = L[l];
      const std::vector<Prefetch> pf = prefetches(l);
      bool forked = false;
      auto issue = [&](int at) {
        for (const Prefetch& p : pf) {
          if (p.at != at || p.bytes <= 0) continue;
          // fork: the side stream starts after the main stream's work so far (again at a later fork point)
          PROBE_CHECK(cudaEventRecord(evs[ei], st));
          PROBE_CHECK(cudaStreamWaitEvent(side, evs[ei++], 0));
          forked = true;
          if (p.plain)
            read_kernel<<<prop.multiProcessorCount, 512, 0, side>>>(reinterpret_cast<const uint4*>(p.p), p.bytes / 16,
                                                                     sink);
          else
            prefetch_l2<<<8, 128, 0, side>>>(p.p, p.bytes, 64 << 10);
        }
      };
      small_kernel<<<1, 256, 0, st>>>(x, h, kHid);  // input norm
      gemv(w.qkv, kQkv, kHid, h, qkv);
      issue(0);
      small_kernel<<<1, 256, 0, st>>>(qkv, qkv, kQkv);  // activations / rope
      const char* kvl = reinterpret_cast<const char*>(kv) + static_cast<int64_t>(l) * kv_bytes;
      read_kernel<<<prop.multiProcessorCount, 256, 0, st>>>(reinterpret_cast<const uint4*>(kvl),
                                                            (l % 2 ? kv_bytes : gla_bytes) / 16, sink);
      small_kernel<<<1, 256, 0, st>>>(qkv, h, kHid);  // o_norm
      gemv(w.o, kHid, kHid, h, x);
      small_kernel<<<1, 256, 0, st>>>(x, h, kHid);  // post-attention norm
      gemv(w.gu, 2 * kInter, kHid, h, gu);
      issue(1);
      small_kernel<<<1, 256, 0, st>>>(gu, act, kInter);  // silu * up
      gemv(w.down, kHid, kInter, act, x);
      if (forked) {
        PROBE_CHECK(cudaEventRecord(evs[ei], side));
        PROBE_CHECK(cudaStreamWaitEvent(st, evs[ei++], 0));
      }
    }
    PROBE_CHECK(cudaGetLastError());
  };

  const int64_t MB = 1 << 20;
  auto o_w = [&](int l) { return reinterpret_cast<const char*>(L[l].o); };
  auto gu_w = [&](int l) { return reinterpret_cast<const char*>(L[l].gu); };
  auto qkv_w = [&](int l) { return reinterpret_cast<const char*>(L[l].qkv); };
  const int64_t o_bytes = int64_t{kHid} * kHid * 2, qkv_bytes = int64_t{kQkv} * kHid * 2;
  struct Variant {
    std::string name;
    std::function<std::vector<Prefetch>(int)> pf;
  };
  std::vector<Variant> vars = {
      {"none", [](int) { return std::vector<Prefetch>{}; }},
      {"o", [&](int l) { return std::vector<Prefetch>{{0, o_w(l), o_bytes, false}}; }},
      {"read-o", [&](int l) { return std::vector<Prefetch>{{0, o_w(l), o_bytes, true}}; }},
  };
  for (int x_mb : {8, 16, 32}) {
    vars.push_back({"o+gu" + std::to_string(x_mb), [&, x_mb](int l) {
                      return std::vector<Prefetch>{{0, o_w(l), o_bytes, false}, {0, gu_w(l), x_mb * MB, false}};
                    }});
  }
  vars.push_back({"o+gu16+next-qkv", [&](int l) {
                    std::vector<Prefetch> v{{0, o_w(l), o_bytes, false}, {0, gu_w(l), 16 * MB, false}};
                    if (l + 1 < kLayers) v.push_back({1, qkv_w(l + 1), qkv_bytes, false});
                    return v;
                  }});

  std::vector<cudaGraphExec_t> execs(vars.size());
  for (size_t v = 0; v < vars.size(); ++v) {
    // warm up eagerly (cuBLAS picks its kernels), then capture
    step(vars[v].pf);
    PROBE_CHECK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    PROBE_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    step(vars[v].pf);
    PROBE_CHECK(cudaStreamEndCapture(st, &g));
    PROBE_CHECK(cudaGraphInstantiate(&execs[v], g, 0));
    PROBE_CHECK(cudaGraphDestroy(g));
  }
  cudaEvent_t t0, t1;
  PROBE_CHECK(cudaEventCreate(&t0));
  PROBE_CHECK(cudaEventCreate(&t1));
  std::vector<std::vector<float>> ms(vars.size());
  const int reps = 10;
  for (int r = 0; r < rounds; ++r) {
    for (size_t v = 0; v < vars.size(); ++v) {
      PROBE_CHECK(cudaGraphLaunch(execs[v], st));  // one untimed replay
      PROBE_CHECK(cudaEventRecord(t0, st));
      for (int i = 0; i < reps; ++i) PROBE_CHECK(cudaGraphLaunch(execs[v], st));
      PROBE_CHECK(cudaEventRecord(t1, st));
      PROBE_CHECK(cudaEventSynchronize(t1));
      float t;
      PROBE_CHECK(cudaEventElapsedTime(&t, t0, t1));
      ms[v].push_back(t / reps);
    }
  }
  const double wbytes = kLayers * double(qkv_bytes + o_bytes + 2.0 * kInter * kHid * 2 + double(kHid) * kInter * 2);
  float base = 0.f;
  for (size_t v = 0; v < vars.size(); ++v) {
    std::sort(ms[v].begin(), ms[v].end());
    const float med = ms[v][ms[v].size() / 2];
    if (v == 0) base = med;
    std::printf("{\"variant\": \"%s\", \"ms_per_step\": %.4f, \"min\": %.4f, \"max\": %.4f, \"vs_none\": %.4f, "
                "\"weights_TBps\": %.3f}\n",
                vars[v].name.c_str(), med, ms[v].front(), ms[v].back(), base / med, wbytes / (med * 1e-3) * 1e-12);
  }
  return 0;
}
