// NVIDIA Hopper (sm_90a) building blocks: warpgroup MMA (wgmma) on shared-memory descriptors, TMA tensor
// copies, mbarriers and named barriers.  Inline PTX: NVIDIA only, never compiled under USE_MACA (the
// kernels that use this header fall back to their portable Triton / CUDA-core versions there).
//
// Shared-memory operand layout: KMajorSw128Tile (K-major, 128-byte swizzle, the layout TMA writes).  The
// no-swizzle core-matrix layout (8 x 16-byte core matrices) was measured too: the SWA forward ran 1.46x slower
// with it on an H100 (6.71 ms against 4.61 ms at T = 32k, benchmarks/gpu/NOTES_swa.md).
#pragma once

// Everything below is compiled out under USE_MACA (the header is then empty).
#if !defined(USE_MACA)

#include <cstdint>
#include <cuda.h>  // CUtensorMap (types only: the encoder is reached through the runtime's driver entry point)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include "warp_mma.cuh"

// Device code of the sm_90a kernels exists only in the sm_90a pass of nvcc.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SBOPS_SM90A_DEVICE 1
#endif

namespace sbops {
namespace sm90 {

// K-major with the 128-byte swizzle (the hardware's Swizzle<3,4,3>): the tile is cut along K into atoms of 64
// columns (128 bytes); an atom holds all R rows at 128 bytes per row, and 16-byte chunk c of row r sits at
// chunk position c ^ (r % 8).  Atoms must start 1024-byte aligned.  Descriptor: layout type 1, stride-dimension
// byte offset 1024 (8 rows), leading-dimension offset unused (1); K slice ks starts in atom ks / 4 at byte
// 32 * (ks % 4) of the row (the hardware applies the XOR to the address bits).
template <int R, int C>
struct KMajorSw128Tile {
  static_assert(R % 8 == 0 && C % 64 == 0, "rows must be a multiple of 8, K columns of 64");
  static constexpr int kBytes = R * C * 2;
  __device__ static constexpr uint32_t chunk_offset(int r, int kg) {
    return static_cast<uint32_t>((kg >> 3) * (R * 128) + r * 128 + (((kg & 7) ^ (r & 7)) << 4));
  }
  __device__ static uint64_t desc(uint32_t tile_addr, int row0, int ks) {
    const uint32_t a = tile_addr + static_cast<uint32_t>((ks >> 2) * (R * 128) + row0 * 128 + (ks & 3) * 32);
    return make_desc(a, 16);
  }
  // The same tile read as an MN-major operand whose K runs down the rows (B of O = P V with V stored [keys][dims]:
  // K = keys = rows, N = dims = columns; used with the wgmma's transpose-B flag).  K slice ks is rows 16 ks ..
  // 16 ks + 15; leading-dimension offset = the next 64-column atom (R rows down), stride offset = the next 8 rows.
  __device__ static uint64_t desc_rows_as_k(uint32_t tile_addr, int ks) {
    return make_desc(tile_addr + static_cast<uint32_t>(ks * 16 * 128), R * 128);
  }

 private:
  __device__ static uint64_t make_desc(uint32_t a, uint32_t lbo_bytes) {
    return (static_cast<uint64_t>((a & 0x3FFFF) >> 4)) | (static_cast<uint64_t>(lbo_bytes >> 4) << 16) |
           (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifdef SBOPS_SM90A_DEVICE
using warp_mma::ldmatrix_x4;  // the fragment of a 16 x 16 A operand (warp_mma.cuh)
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
// generic-proxy writes to shared memory (st.shared) become visible to wgmma's async proxy
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// TMA (cp.async.bulk.tensor): one thread copies a box of a tensor map into shared memory; the copy's bytes
// complete the transaction count of `mbar` (see mbar_expect_tx).  Coordinates are element indices, innermost
// first; rows outside the tensor are filled with zeros.  The tensor map is a __grid_constant__ kernel parameter.
__device__ __forceinline__ void tma_prefetch_map(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* map, uint32_t mbar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(mbar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// the same box written to the same shared-memory offset of every CTA of the cluster in `mask` (bit i: rank i),
// completing the transaction count of the mbarrier at `mbar`'s offset in each of them
__device__ __forceinline__ void tma_load_4d_multicast(uint32_t dst, const void* map, uint32_t mbar, int c0, int c1,
                                                      int c2, int c3, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
      "[%1, {%3, %4, %5, %6}], [%2], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(mbar), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "h"(mask)
      : "memory");
}

// the 2-D versions (coordinates innermost first: column, row), the multicast one into the same offset of every CTA of
// the cluster in `mask` (int8_gemm_sm90.cu's row-major operands)
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, uint32_t mbar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(mbar), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const void* map, uint32_t mbar, int c0, int c1,
                                                      uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, "
      "%4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(mbar), "r"(c0), "r"(c1), "h"(mask)
      : "memory");
}

// thread block clusters: this CTA's rank, a barrier of every thread of the cluster, the shared::cluster
// address of a shared-memory address in the CTA of rank `rank`, an arrival on an mbarrier there
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {  // not .aligned: the threads of a warp may arrive apart
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ void fence_mbarrier_init_cluster() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t map_to_rank(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
// (default semantics, release at CTA scope, as CUTLASS's cluster pipelines use it: a .cluster-scope release per
// arrival measured 1.14-1.19x slower in the SWA forward's multicast probe)
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t cluster_addr) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr) : "memory");
}

// rows row .. row + R - 1 of head `head`, batch row b, of a [B, L, heads, 128] 16-bit tensor (the boxes of
// encode_rows_map with box_rows = R) into a KMajorSw128Tile<R, 128>: two boxes of 64 dims, one per swizzle atom
template <int R>
__device__ __forceinline__ void tma_rows(uint32_t dst, const void* map, uint32_t mbar, int head, int row, int b) {
#pragma unroll
  for (int a = 0; a < 2; ++a) tma_load_4d(dst + a * (R * 128), map, mbar, 64 * a, head, row, b);
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

using warp_mma::pack2;  // two floats as one register of packed bf16 / fp16 (the A-operand layout of wgmma)

// 1-D bulk copy (no tensor map) of `bytes` contiguous bytes, a multiple of 16, from a 16-byte-aligned global
// address into shared memory; completes transaction bytes of `mbar` like the tensor copies.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t mbar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(mbar)
               : "memory");
}

// TMA reduction: the box at `src` in shared memory (the tensor map's box, in its swizzled layout) is added as
// float32 into the tensor at the given coordinates (innermost first; parts outside the tensor are skipped), in
// the calling thread's bulk group.  bulk_commit closes the group, bulk_wait_read<N> waits until at most N groups
// still read shared memory, bulk_wait<N> until at most N are not complete.
__device__ __forceinline__ void tma_reduce_add_4d(const void* map, uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// TMA store: the box at `src` in shared memory (the tensor map's box, in its swizzled layout) written to the tensor at
// (c0, c1) (innermost first; parts outside the tensor are skipped), in the calling thread's bulk group
__device__ __forceinline__ void tma_store_2d(const void* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// mbarriers (shared memory, 8 bytes each)
__device__ __forceinline__ void mbar_init(uint32_t mbar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mbar), "r"(count) : "memory");
}
// The stage barriers of a TMA ring of `stages` (8 bytes apart): full[st] takes one arrival (the producer's expect_tx,
// then the copies' bytes); empty[st] one per consumer thread, or, where the two CTAs of a cluster refill each other's
// stages by multicast (kShared), one per consumer warp of both CTAs.
template <bool kShared>
__device__ __forceinline__ void ring_barriers_init(uint32_t full, uint32_t empty, int stages, int consumer_threads) {
  for (int st = 0; st < stages; ++st) {
    mbar_init(full + 8 * st, 1);
    mbar_init(empty + 8 * st, kShared ? 2 * consumer_threads / 32 : consumer_threads);
  }
}
// Every thread, once `initializer` has set the block's mbarriers up: in a cluster (kCluster) a release fence by the
// initializer and a cluster-wide barrier (the peer's barriers are initialised before any multicast or remote
// arrival), else __syncthreads.
template <bool kCluster>
__device__ __forceinline__ void barriers_ready(bool initializer) {
  if constexpr (kCluster) {
    if (initializer) fence_mbarrier_init_cluster();
    cluster_sync();
  } else {
    __syncthreads();
  }
}
// one arrival that also expects `bytes` more transaction bytes (the TMA copies of this phase)
__device__ __forceinline__ void mbar_expect_tx(uint32_t mbar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(mbar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t mbar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(mbar) : "memory");
}
// wait until the barrier's phase with the given parity (0 for its first phase, then 1, 0, ...) completed
__device__ __forceinline__ void mbar_wait(uint32_t mbar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(mbar), "r"(parity)
        : "memory");
  } while (!done);
}

// named barriers (ids 1..15; id 0 is __syncthreads): sync waits for `count` threads to arrive or sync,
// arrive signals without waiting
__device__ __forceinline__ void named_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// warpgroup register reallocation (producer warpgroups give registers to the MMA warpgroups)
template <int N>
__device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// Keep the registers an in-flight wgmma reads or writes where they are: the compiler does not know the
// instruction is asynchronous, so every operand is "touched" right after the wait.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}

template <typename T>
struct Wgmma;

// One specialization per input type; TY is the PTX type name (bf16 / f16).
#define SBOPS_WGMMA_M64N128K16(T, TY)                                                                          \
  template <>                                                                                                  \
  struct Wgmma<T> {                                                                                            \
    /* D[64 x 128] (+)= A[64 x 16] B[128 x 16]^T, A and B K-major in shared memory */                          \
    __device__ static void ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {                 \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                \
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                                \
                   "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                                     \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                                    \
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                                  \
    }                                                                                                          \
    /* D[64 x 128] (+)= A[64 x 16] B[128 x 16]^T, A in registers (accumulator fragment layout, packed pairs); \
       B K-major, or MN-major with kTransB = 1 */                                                              \
    template <int kTransB = 0>                                                                                 \
    __device__ static void rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {          \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                \
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                                \
                   "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"                                     \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                                    \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB));     \
    }                                                                                                          \
  };

SBOPS_WGMMA_M64N128K16(__nv_bfloat16, "bf16")
SBOPS_WGMMA_M64N128K16(__half, "f16")
#undef SBOPS_WGMMA_M64N128K16

template <typename T>
struct Wgmma64;

// m64n64k16 with both operands in shared memory (the backward's S^T = K Q^T, dP^T = V dO^T and dQ = dS K).
#define SBOPS_WGMMA_M64N64K16(T, TY)                                                                           \
  template <>                                                                                                  \
  struct Wgmma64<T> {                                                                                          \
    /* D[64 x 64] (+)= A[64 x 16] B[64 x 16]^T; kTransA / kTransB = 1: that operand is MN-major            \
       (KMajorSw128Tile::desc_rows_as_k), else K-major (desc) */                                               \
    template <int kTransA, int kTransB>                                                                        \
    __device__ static void ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {                 \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                \
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                                 \
                   "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"                                                  \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                                                                      \
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB));                      \
    }                                                                                                          \
  };

SBOPS_WGMMA_M64N64K16(__nv_bfloat16, "bf16")
SBOPS_WGMMA_M64N64K16(__half, "f16")
#undef SBOPS_WGMMA_M64N64K16

#endif  // SBOPS_SM90A_DEVICE

// ---- host side: availability, TMA tensor maps

// True when the current device is sm_90 and the binary of `kernel` picked for it is the sm_90a build (an sm_80 build
// holds an empty kernel).  Asked once per device: `cache` is the caller's static array (0 unknown, 1 yes, -1 no),
// since the bindings and the launchers ask on every call.
template <typename Kernel>
inline bool sm90a_kernel_available(Kernel kernel, signed char (&cache)[64]) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cache[dev] == 0) {
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
              minor == 0;
    cudaFuncAttributes attr;
    if (ok && cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      cudaGetLastError();
      ok = false;
    }
    cache[dev] = ok && attr.binaryVersion == 90 ? 1 : -1;
  }
  return cache[dev] > 0;
}

// cuTensorMapEncodeTiled through the runtime (no link against libcuda); null when the driver lacks it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult res{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &res) !=
            cudaSuccess ||
        res != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// Tensor map of a 2-D [rows, cols] matrix of `type` (esize-byte elements) with a row stride of ld_bytes, in boxes of
// 128 bytes of columns x box_rows rows with the 128-byte swizzle (a box is one swizzle atom of a KMajorSw128Tile);
// elements past the matrix read as zeros, or are skipped by stores.  promote: L2 promotion of the loads.
inline cudaError_t encode_matrix_map(CUtensorMap* map, CUtensorMapDataType type, int esize, const void* base,
                                     int64_t rows, int64_t cols, int64_t ld_bytes, int box_rows,
                                     CUtensorMapL2promotion promote = CU_TENSOR_MAP_L2_PROMOTION_L2_256B) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld_bytes)};
  const cuuint32_t box[2] = {cuuint32_t(128 / esize), cuuint32_t(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promote,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// Tensor map of a contiguous [B, T, heads, 128] tensor of 16-bit (or, with FLOAT32, 32-bit) elements in boxes of
// 128 bytes of dims (64 or 32, the 128-byte swizzle) x 1 head x box_rows rows x 1 batch row: for 16-bit data one
// swizzle atom of a KMajorSw128Tile<box_rows, 128>.
inline cudaError_t encode_rows_map(CUtensorMap* map, CUtensorMapDataType type, const void* base, int B, int T,
                                   int heads, int box_rows) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  constexpr int kRank = 4, kDim = 128;
  const cuuint64_t esize = type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4 : 2;
  const cuuint64_t dims[kRank] = {kDim, cuuint64_t(heads), cuuint64_t(T), cuuint64_t(B)};
  const cuuint64_t strides[kRank - 1] = {kDim * esize, dims[1] * kDim * esize, dims[2] * dims[1] * kDim * esize};
  const cuuint32_t box[kRank] = {cuuint32_t(128 / esize), 1, cuuint32_t(box_rows), 1};
  const cuuint32_t elem_strides[kRank] = {1, 1, 1, 1};
  const CUresult r = encode(map, type, kRank, const_cast<void*>(base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace sm90
}  // namespace sbops

#endif  // !USE_MACA
