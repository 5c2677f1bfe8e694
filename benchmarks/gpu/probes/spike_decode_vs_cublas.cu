// spike_linear's CUDA C++ decode kernel (backends/cuda/kernels/spike_decode.cu: encode + GEMV, e4m3 weights per
// channel, M <= 8) against a float64 host reference on odd shapes (float32 bias, padded rows, counts past 2048 and
// past 2048^2, the launcher's refusal of M > 8) for every warp layout, then timed against cuBLAS bf16 (the same weight
// in bf16) at the 7B decode shapes, M = 1 and 8, and M = 1 with a count past 2048 ("hi": the second count plane), weights rotated over > 400 MB of copies; 60 calls captured in one
// CUDA graph, medians of 5 replays; prints every layout (0-3 the library's register-staged GEMV after its encode, 4-7
// the same GEMVs with the encode fused in (no encode launch, no workspace; each also checked bit for bit against
// layout - 4), 8 the library's 32-row warps after its encode (session 36), 9-12 session 23's bulk-copy GEMV of
// spike_decode_tma.cuh, sm_90 only, 13-16 the per-warp cp.async GEMV of spike_decode_cpasync.cuh) and the launcher's
// default.
//   nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -Icsrc/include -Ibackends/cuda/kernels \
//        benchmarks/gpu/probes/spike_decode_vs_cublas.cu -lcublas -o /tmp/spike_decode_vs_cublas && /tmp/spike_decode_vs_cublas
#include <cublas_v2.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstring>
#include "../../../backends/cuda/kernels/spike_decode.cu"
#include "../../../backends/cuda/kernels/sm90.cuh"  // the bulk-copy probe's mbarriers
#include <cuda_pipeline.h>                          // the cp.async probe's copies
namespace sbops {
namespace {
#include "spike_decode_tma.cuh"      // layouts 9-12: the session 23 bulk-copy GEMV (not in the library)
#include "spike_decode_cpasync.cuh"  // layouts 13-16: per-warp cp.async rings (session 23)
}  // namespace
// layouts 0-8 through the library's launcher, 9-12 the probe's bulk-copy GEMV, 13-16 its cp.async GEMV (bf16 x; their
// own numbering is 8-15)
constexpr int kLib = kSpikeDecodeLayouts;
cudaError_t launch_probe(const SpikeDecodeArgs& a, DType x_dtype, int layout, cudaStream_t st) {
  if (layout < kLib || a.M < 1 || a.M > kSpikeDecodeMaxRows) return launch_spike_decode(a, x_dtype, layout, st);
  const int own = layout - kLib + 8;
  return own < 12 ? launch_tma_probe(a, own, st) : launch_cpasync_probe(a, own, st);
}
// layouts 4-7 (the fused encode) read no workspace
bool needs_workspace(int layout) { return !spike_decode_layout_fused(layout); }
}  // namespace sbops
using namespace sbops;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s line %d\n", cudaGetErrorString(e), __LINE__); exit(1);} } while (0)
typedef __nv_bfloat16 bf;
static double e4m3(uint8_t b) {
  int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return s ? -v : v;
}
static uint8_t rand_e4m3() { uint8_t b; do { b = rand() & 0xFF; } while ((b & 0x7F) == 0x7F || ((b >> 3) & 15) > 12); return b; }
static void* g_ws = nullptr;
constexpr int kProbeLayouts = kLib + 8;
int check(int M, int N, int K, bool bias, int layout, bool big, unsigned seed) {
  srand(seed);
  int ldx = K + 16;
  std::vector<bf> hx((size_t)M * ldx); std::vector<float> hb(N); std::vector<uint8_t> hw((size_t)N * K); std::vector<float> hs(N);
  for (auto& v : hx) v = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f) * 4);
  if (big) hx[5] = __float2bfloat16(3.0e4f), hx[(size_t)(M - 1) * ldx + K - 1] = __float2bfloat16(-5.0e4f);
  if (big && M >= 3) hx[(size_t)1 * ldx + 7] = __float2bfloat16(5.0e12f);  // vth clamped at 1e4: a count of ~5e8
  for (auto& v : hw) v = rand_e4m3();
  for (auto& v : hs) v = 0.001f + rand() / (float)RAND_MAX * 0.01f;
  for (auto& v : hb) v = rand() / (float)RAND_MAX - 0.5f;
  bf *x, *y; float* b; uint8_t* w; float* sc;
  CK(cudaMalloc(&x, hx.size() * 2)); CK(cudaMalloc(&b, N * 4)); CK(cudaMalloc(&y, (size_t)M * N * 2)); CK(cudaMalloc(&w, hw.size())); CK(cudaMalloc(&sc, N * 4));
  cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice); cudaMemcpy(b, hb.data(), N * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(w, hw.data(), hw.size(), cudaMemcpyHostToDevice); cudaMemcpy(sc, hs.data(), N * 4, cudaMemcpyHostToDevice);
  SpikeDecodeArgs a{x, w, sc, bias ? b : nullptr, y, ldx, K, N, M, N, K, 3.0f};
  if (needs_workspace(layout)) spike_decode_workspace(a, g_ws);
  if (M > kSpikeDecodeMaxRows) {  // past the kernel's rows: the launcher must refuse, not compute
    const bool refused = launch_probe(a, DType::BF16, layout, 0) == cudaErrorInvalidValue;
    printf("check M=%d: launcher %s\n", M, refused ? "refuses (OK)" : "did not refuse FAIL");
    cudaFree(x); cudaFree(b); cudaFree(y); cudaFree(w); cudaFree(sc);
    return refused ? 0 : 1;
  }
  CK(launch_probe(a, DType::BF16, layout, 0)); CK(cudaDeviceSynchronize());
  std::vector<bf> hy((size_t)M * N); cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost);
  double maxerr = 0, maxref = 0, maxc = 0, worst = 0;  // worst: the largest per-row relative error
  for (int m = 0; m < M; ++m) {
    double rerr = 0, rref = 0;
    double sa = 0; for (int k = 0; k < K; ++k) sa += std::fabs((double)__bfloat162float(hx[(size_t)m * ldx + k]));
    double vth = std::min(std::max(sa / K / 3.0, 1e-5), 1e4);
    std::vector<double> s(K); for (int k = 0; k < K; ++k) { s[k] = std::nearbyint(__bfloat162float(hx[(size_t)m * ldx + k]) / vth); maxc = std::max(maxc, std::fabs(s[k])); }
    for (int n = 0; n < N; ++n) {
      double acc = 0; for (int k = 0; k < K; ++k) acc += s[k] * e4m3(hw[(size_t)n * K + k]);
      double ref = vth * hs[n] * acc + (bias ? (double)hb[n] : 0.0);
      const double e = std::fabs(ref - __bfloat162float(hy[(size_t)m * N + n]));
      maxerr = std::max(maxerr, e); maxref = std::max(maxref, std::fabs(ref));
      rerr = std::max(rerr, e); rref = std::max(rref, std::fabs(ref));
    }
    worst = std::max(worst, rerr / std::max(rref, 1e-30));
  }
  bool ok = worst <= 1e-2;
  const char* bits = "";
  if (layout >= 4 && layout < 8) {  // the fused encode: the bits of the same GEMV after the encode kernel
    bf* y0; CK(cudaMalloc(&y0, (size_t)M * N * 2));
    SpikeDecodeArgs a0 = a; a0.y = y0; spike_decode_workspace(a0, g_ws);
    CK(launch_probe(a0, DType::BF16, layout - 4, 0)); CK(cudaDeviceSynchronize());
    std::vector<bf> hy0((size_t)M * N); cudaMemcpy(hy0.data(), y0, hy0.size() * 2, cudaMemcpyDeviceToHost); cudaFree(y0);
    const bool same = memcmp(hy0.data(), hy.data(), hy.size() * 2) == 0;
    bits = same ? ", bits = layout - 4" : ", bits differ from layout - 4";
    ok = ok && same;
  }
  printf("check M=%d N=%d K=%d bias=%d layout=%d big=%d (max count %.0f): max err %.3e of max |ref| %.3e, worst row %.1e%s %s\n", M, N, K, bias, layout, big, maxc, maxerr, maxref, worst, bits, ok ? "OK" : "FAIL");
  cudaFree(x); cudaFree(b); cudaFree(y); cudaFree(w); cudaFree(sc);
  return ok ? 0 : 1;
}
int main() {
  int fails = 0;
  CK(cudaMalloc(&g_ws, spike_decode_workspace_bytes(16, 20000)));
  for (int l = 0; l < kProbeLayouts; ++l) {
    fails += check(1, 100, 208, true, l, false, 1);
    fails += check(3, 77, 4112, false, l, false, 2);
    fails += check(13, 129, 1040, true, l, false, 3);
    fails += check(16, 50, 16, true, l, false, 4);
    fails += check(2, 300, 3584, true, l, true, 5);
    fails += check(9, 40, 18944, false, l, true, 6);
    fails += check(8, 40, 18944, false, l, true, 7);
    fails += check(7, 129, 1040, true, l, false, 8);
  }
  cublasHandle_t h; cublasCreate(&h);
  cudaStream_t cs; CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking)); cublasSetStream(h, cs);
  struct S { const char* name; int N, K; } shapes[] = {{"qkv", 4624, 3584}, {"o", 3584, 3584}, {"gate_up", 37888, 3584}, {"down", 3584, 18944}};
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  for (auto& s : shapes) {
    size_t wn = (size_t)s.N * s.K;
    int copies = (int)std::max<size_t>(2, std::min<size_t>(16, (400ull << 20) / wn + 1));
    std::vector<uint8_t*> ws(copies); std::vector<bf*> wb(copies);
    std::vector<uint8_t> hw(wn); for (auto& v : hw) v = rand_e4m3();
    for (int i = 0; i < copies; ++i) { CK(cudaMalloc(&ws[i], wn)); cudaMemcpy(ws[i], hw.data(), wn, cudaMemcpyHostToDevice); CK(cudaMalloc(&wb[i], wn * 2)); cudaMemset(wb[i], 0, wn * 2); }
    std::vector<float> hs(s.N, 0.01f); float* sc; CK(cudaMalloc(&sc, s.N * 4)); cudaMemcpy(sc, hs.data(), s.N * 4, cudaMemcpyHostToDevice);
    std::vector<bf> hx((size_t)16 * s.K); for (auto& v : hx) v = __float2bfloat16(rand() / (float)RAND_MAX - 0.5f);
    bf *x0, *xbig, *y, *y2; CK(cudaMalloc(&x0, hx.size() * 2)); CK(cudaMalloc(&xbig, hx.size() * 2)); CK(cudaMalloc(&y, (size_t)16 * s.N * 2)); CK(cudaMalloc(&y2, (size_t)16 * s.N * 2));
    cudaMemcpy(x0, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice);
    hx[7] = __float2bfloat16(3.0e3f);  // a count past 2048 in row 0 (~8e3 at K = 3584, ~2e4 at K = 18944): the hi plane
    cudaMemcpy(xbig, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice);
    for (int run = 0; run < 3; ++run) {
      const int M = run == 1 ? 8 : 1;
      bf* x = run == 2 ? xbig : x0;
      const int reps = 60;
      // reps calls (weights rotated over the copies) captured in one CUDA graph, as the model's decode step runs
      // them; medians of 5 replays
      auto timeit = [&](auto fn) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < reps; ++i) fn(i % copies);
        CK(cudaStreamEndCapture(cs, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaGraphLaunch(ge, cs)); CK(cudaStreamSynchronize(cs));
        std::vector<float> ts;
        for (int rep = 0; rep < 5; ++rep) {
          cudaEventRecord(e0, cs); cudaGraphLaunch(ge, cs); cudaEventRecord(e1, cs); cudaEventSynchronize(e1);
          float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms * 1000 / reps);
        }
        cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
        std::sort(ts.begin(), ts.end()); return ts[2];
      };
      float alpha = 1, beta = 0;
      float tc = timeit([&](int i) { cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &alpha, wb[i], CUDA_R_16BF, s.K, x, CUDA_R_16BF, s.K,
                                                  &beta, y2, CUDA_R_16BF, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); });
      printf("%-8s N=%6d K=%5d M=%2d%s cublas-bf16 %7.2f us (%.2f TB/s)", s.name, s.N, s.K, M, run == 2 ? " hi" : "   ", tc, wn * 2 / tc * 1e-6);
      float best = 1e9; int bl = -1;
      for (int l = 0; l < kProbeLayouts; ++l) {
        float t = timeit([&](int i) { SpikeDecodeArgs a{x, ws[i], sc, nullptr, y, s.K, s.K, s.N, M, s.N, s.K, 3.0f}; if (needs_workspace(l)) spike_decode_workspace(a, g_ws); launch_probe(a, DType::BF16, l, cs); });
        printf(" | L%d %.2f", l, t);
        if (t < best) { best = t; bl = l; }
      }
      int dl = spike_decode_default_layout(M, s.N, s.K);
      printf(" || best L%d %.2f us (%.2f TB/s of e4m3, %.2fx bf16 cublas) default L%d\n", bl, best, wn / best * 1e-6, tc / best, dl);
      CK(cudaDeviceSynchronize());
    }
    for (int i = 0; i < copies; ++i) { cudaFree(ws[i]); cudaFree(wb[i]); } cudaFree(sc); cudaFree(x0); cudaFree(xbig); cudaFree(y); cudaFree(y2);
  }
  printf("fails=%d\n", fails);
  return fails != 0;
}
