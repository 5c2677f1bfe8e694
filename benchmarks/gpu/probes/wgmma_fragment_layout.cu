// Probe of the sm90.cuh building blocks on an H100 (diagnosis aid for swa_fwd_sm90.cu, not a test of sbops):
// one warpgroup computes S = A B^T (64 x 128 x 128, both operands K-major in shared memory, wgmma "ss") and
// O = P V (P = bf16(S / 64) from the accumulator registers as the A operand, V^T K-major in shared memory,
// wgmma "rs"; and again with V stored [keys][dims] read as an MN-major operand through desc_rows_as_k and the
// transpose-B flag, plus the same with the two descriptor offsets swapped, to tell which reading the hardware
// has), and writes them through the accumulator fragment layout that swa_fwd_sm90.cu assumes.  The host
// compares with float references (layout KMajorSw128Tile) and, on a mismatch, says where the first wrong values really came from.
//   nvcc -std=c++17 -arch=sm_90a -O2 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/wgmma_fragment_layout.cu -o /tmp/wgmma_fragment_layout
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sm90.cuh"

using namespace sbops::sm90;
using E = __nv_bfloat16;

template <template <int, int> class Tile>
__global__ void probe(const E* a, const E* b, const E* vt, const E* v, float* s_out, float* o_out, float* o2_out,
                      float* o3_out) {
#ifdef SBOPS_SM90A_DEVICE
  using ATile = Tile<64, 128>;
  using BTile = Tile<128, 128>;
  extern __shared__ __align__(1024) unsigned char sm[];
  const uint32_t sa = smem_addr(sm), sb = sa + ATile::kBytes, sv = sb + BTile::kBytes, sv2 = sv + BTile::kBytes;
  const int tid = threadIdx.x;
  for (int c = tid; c < 64 * 16; c += 128) {  // chunk (r, kg)
    const int r = c / 16, kg = c % 16;
    *reinterpret_cast<uint4*>(sm + ATile::chunk_offset(r, kg)) = *reinterpret_cast<const uint4*>(a + r * 128 + kg * 8);
  }
  for (int c = tid; c < 128 * 16; c += 128) {
    const int r = c / 16, kg = c % 16;
    *reinterpret_cast<uint4*>(sm + ATile::kBytes + BTile::chunk_offset(r, kg)) =
        *reinterpret_cast<const uint4*>(b + r * 128 + kg * 8);
    *reinterpret_cast<uint4*>(sm + ATile::kBytes + BTile::kBytes + BTile::chunk_offset(r, kg)) =
        *reinterpret_cast<const uint4*>(vt + r * 128 + kg * 8);
    *reinterpret_cast<uint4*>(sm + ATile::kBytes + 2 * BTile::kBytes + BTile::chunk_offset(r, kg)) =
        *reinterpret_cast<const uint4*>(v + r * 128 + kg * 8);
  }
  __syncthreads();
  fence_proxy_async();
  float s[64], o[64], o2[64], o3[64];
  for (int i = 0; i < 64; ++i) o[i] = o2[i] = o3[i] = 0.f;
  wgmma_fence();
  for (int ks = 0; ks < 8; ++ks) Wgmma<E>::ss(s, ATile::desc(sa, 0, ks), BTile::desc(sb, 0, ks), ks > 0);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(s);
  uint32_t p[8][4];
  for (int ks = 0; ks < 8; ++ks)
    for (int j = 0; j < 4; ++j) {
      __nv_bfloat162 v = __floats2bfloat162_rn(s[8 * ks + 2 * j] / 64.f, s[8 * ks + 2 * j + 1] / 64.f);
      p[ks][j] = *reinterpret_cast<uint32_t*>(&v);
    }
  wgmma_fence();
  for (int ks = 0; ks < 8; ++ks) Wgmma<E>::rs(o, p[ks], BTile::desc(sv, 0, ks), 1);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(o);
  wgmma_fence();
  for (int ks = 0; ks < 8; ++ks) Wgmma<E>::rs<1>(o2, p[ks], BTile::desc_rows_as_k(sv2, ks), 1);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(o2);
  wgmma_fence();
  for (int ks = 0; ks < 8; ++ks) {  // leading and stride offsets swapped
    const uint32_t addr = sv2 + ks * 16 * 128;
    const uint64_t d = (static_cast<uint64_t>((addr & 0x3FFFF) >> 4)) | (uint64_t{1024 >> 4} << 16) |
                       (uint64_t{(128 * 128) >> 4} << 32) | (uint64_t{1} << 62);
    Wgmma<E>::rs<1>(o3, p[ks], d, 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(o3);
  const int warp = tid / 32, lane = tid % 32;
  for (int i = 0; i < 16; ++i)
    for (int e = 0; e < 4; ++e) {
      const int r = 16 * warp + lane / 4 + 8 * (e >> 1), c = 8 * i + 2 * (lane % 4) + (e & 1);
      s_out[r * 128 + c] = s[4 * i + e];
      o_out[r * 128 + c] = o[4 * i + e];
      o2_out[r * 128 + c] = o2[4 * i + e];
      o3_out[r * 128 + c] = o3[4 * i + e];
    }
#endif
}

static float bf(E x) { return __bfloat162float(x); }

int main() {
  std::vector<E> a(64 * 128), b(128 * 128), vt(128 * 128), v(128 * 128);
  srand(1);
  auto rnd = [] { return (rand() % 17 - 8) / 8.f; };  // exact in bf16
  for (auto& x : a) x = __float2bfloat16(rnd());
  for (auto& x : b) x = __float2bfloat16(rnd());
  for (auto& x : vt) x = __float2bfloat16(rnd());
  for (int d = 0; d < 128; ++d)
    for (int key = 0; key < 128; ++key) v[key * 128 + d] = vt[d * 128 + key];
  E *da, *db, *dv, *dv2;
  float *ds, *dout, *dout2, *dout3;
  cudaMalloc(&da, a.size() * 2);
  cudaMalloc(&db, b.size() * 2);
  cudaMalloc(&dv, vt.size() * 2);
  cudaMalloc(&ds, 64 * 128 * 4);
  cudaMalloc(&dout, 64 * 128 * 4);
  cudaMalloc(&dout2, 64 * 128 * 4);
  cudaMalloc(&dout3, 64 * 128 * 4);
  cudaMalloc(&dv2, v.size() * 2);
  cudaMemcpy(dv2, v.data(), v.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, vt.data(), vt.size() * 2, cudaMemcpyHostToDevice);
  std::vector<float> s(64 * 128), o(64 * 128), o2(64 * 128), o3(64 * 128), sref(64 * 128), oref(64 * 128, 0.f);
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 128; ++c) {
      float acc = 0.f;
      for (int kk = 0; kk < 128; ++kk) acc += bf(a[r * 128 + kk]) * bf(b[c * 128 + kk]);
      sref[r * 128 + c] = acc;
    }
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 128; ++c) {
      float acc = 0.f;
      for (int kk = 0; kk < 128; ++kk) acc += bf(__float2bfloat16(sref[r * 128 + kk] / 64.f)) * bf(vt[c * 128 + kk]);
      oref[r * 128 + c] = acc;
    }
  int rc = 0;
  auto report = [&](const char* name, const std::vector<float>& got, const std::vector<float>& ref) {
    double err = 0;
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = fabs(got[i] - ref[i]) / (1.0 + fabs(ref[i]));
      err = fmax(err, e);
      if (e > 1e-2 && bad++ < 4) {
        int where = -1;
        for (size_t j = 0; j < ref.size() && where < 0; ++j)
          if (fabs(ref[j] - got[i]) < 1e-3 * (1 + fabs(got[i]))) where = static_cast<int>(j);
        printf("  %s[%zu,%zu] = %g, expected %g; that value is at [%d,%d] of the reference\n", name, i / 128,
               i % 128, got[i], ref[i], where < 0 ? -1 : where / 128, where < 0 ? -1 : where % 128);
      }
    }
    printf("probe %s: max rel err %.3g -> %s\n", name, err, err < 1e-2 ? "PASS" : "FAIL");
    if (err >= 1e-2) rc = 1;
  };
  const int smem = 64 * 128 * 2 + 3 * 128 * 128 * 2;
  auto run = [&](auto kernel, const char* name) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaMemset(ds, 0, 64 * 128 * 4);
    cudaMemset(dout, 0, 64 * 128 * 4);
    kernel<<<1, 128, smem>>>(da, db, dv, dv2, ds, dout, dout2, dout3);
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      printf("probe %s: launch failed: %s\n", name, cudaGetErrorString(err));
      rc = 2;
      return;
    }
    cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(o2.data(), dout2, o2.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(o3.data(), dout3, o3.size() * 4, cudaMemcpyDeviceToHost);
    printf("layout %s:\n", name);
    report("S=A.B^T (ss)", s, sref);
    report("O=P.V (rs)", o, oref);
    report("O=P.V (rs, V [keys][dims] MN-major: desc_rows_as_k)", o2, oref);
    const int rc_keep = rc;
    report("O=P.V (rs, V MN-major, offsets swapped: informational)", o3, oref);
    rc = rc_keep;
  };
  run(probe<KMajorSw128Tile>, "128B swizzle");
  return rc;
}
