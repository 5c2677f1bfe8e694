// MoE routing kernels: moe_permute (routing pass + row scatter), moe_align_block_size and
// expert_counts.  Torch-free; launchers declared in moe.cuh.
//
// Routing pass (permute and align): the T*k slots are cut into per-warp chunks.  (1) each warp
// counts its chunk's slots per bucket (expert e, or bucket E for dropped slots); (2) one block per
// bucket turns the chunk counts into exclusive prefixes over chunks; (3) one block scans the bucket
// totals into bucket bases; (4) each warp walks its chunk again in order and gives every slot
// `base[bucket] + prefix[chunk][bucket] + rank inside the chunk`, the rank coming from a warp
// match (lanes holding the same bucket) and a running per-warp counter.  The result is the
// deterministic (expert, token, slot) order with no atomics.
#include "moe_common.cuh"

namespace sbops {
namespace {

using namespace moe_detail;  // the shared row-mover helpers (moe_common.cuh)

// ------------------------------------------------------------------------------ routing pass
constexpr int kRouteWarps = 4;
constexpr int kRouteBlock = kRouteWarps * kWarpSize;
constexpr int kScanBlock = 256;
constexpr int64_t kTargetChunks = 1024;

struct RoutePlan {
  int64_t n;
  int buckets;          // E + 1 (bucket E: dropped slots)
  int tiles_per_chunk;  // warp-width tiles per chunk
  int64_t chunks;
  // workspace carve-up (ints)
  int64_t off_chunk_counts, off_totals, off_base, off_dst, total_ints;
};

RoutePlan make_plan(int64_t n, int E) {
  RoutePlan p{};
  p.n = n;
  p.buckets = E + 1;
  const int64_t tiles = ceil_div(n, kWarpSize);
  p.tiles_per_chunk = static_cast<int>(ceil_div(tiles, kTargetChunks) < 1 ? 1 : ceil_div(tiles, kTargetChunks));
  p.chunks = ceil_div(tiles, p.tiles_per_chunk);
  if (p.chunks < 1) p.chunks = 1;
  p.off_chunk_counts = 0;
  p.off_totals = p.chunks * p.buckets;
  p.off_base = p.off_totals + p.buckets;
  p.off_dst = p.off_base + p.buckets + 1;
  p.total_ints = p.off_dst + n;
  return p;
}

// Bucket of slot i: its expert, E when dropped (id < 0), -1 past n.  An id >= E (the frontend
// rejects those before dispatch) is treated like a dropped slot, so nothing is ever indexed by it.
__device__ __forceinline__ int slot_bucket(const void* ids, bool ids64, int64_t i, int64_t n, int E) {
  if (i >= n) return -1;
  const int64_t id = load_index(ids, ids64, i);
  return (id < 0 || id >= E) ? E : static_cast<int>(id);
}

__global__ void __launch_bounds__(kRouteBlock)
route_count_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E, int tiles_per_chunk, int64_t chunks,
                   int* __restrict__ chunk_counts) {
  extern __shared__ int route_smem[];
  const int NB = E + 1;
  int* cnt = route_smem + warp_id() * NB;
  const int lane = lane_id();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp_id();
  if (chunk >= chunks) return;  // warp-uniform
  for (int b = lane; b < NB; b += kWarpSize) cnt[b] = 0;
  warp_sync();
  const int64_t start = chunk * tiles_per_chunk * kWarpSize;
  for (int tile = 0; tile < tiles_per_chunk; ++tile) {
    const int64_t i = start + static_cast<int64_t>(tile) * kWarpSize + lane;
    const int b = slot_bucket(ids, ids64, i, n, E);
    const lane_mask_t peers = match_any(b);
    if (b >= 0 && (peers & lanes_below_mask()) == 0) cnt[b] += popc(peers);  // group leader
    warp_sync();
  }
  for (int b = lane; b < NB; b += kWarpSize) chunk_counts[chunk * NB + b] = cnt[b];
}

// One block per bucket: exclusive prefix over chunks (in place) and the bucket total.
__global__ void __launch_bounds__(kScanBlock)
route_scan_chunks_kernel(int* __restrict__ chunk_counts, int* __restrict__ totals, int64_t chunks, int NB) {
  __shared__ int scratch[kWarpSize];
  const int b = blockIdx.x;
  int carry = 0;
  for (int64_t base = 0; base < chunks; base += blockDim.x) {
    const int64_t c = base + threadIdx.x;
    const int v = c < chunks ? chunk_counts[c * NB + b] : 0;
    int tot;
    const int incl = block_inclusive_scan(v, scratch, tot);
    if (c < chunks) chunk_counts[c * NB + b] = carry + incl - v;
    carry += tot;
  }
  if (threadIdx.x == 0) totals[b] = carry;
}

// One block: bucket bases (each expert's count rounded up to block_size; the dropped bucket E is
// not padded) and the optional outputs of permute (expert_offsets) and align (fill, block experts).
__global__ void __launch_bounds__(kScanBlock)
route_bases_kernel(const int* __restrict__ totals, int E, int block_size, int* __restrict__ base,
                   int64_t* __restrict__ expert_offsets, int32_t* __restrict__ sorted_ids, int64_t sorted_len,
                   int32_t fill, int32_t* __restrict__ block_expert_ids, int64_t nblocks,
                   int32_t* __restrict__ num_post_pad) {
  extern __shared__ int bases_smem[];  // [E + 2]
  __shared__ int scratch[kWarpSize];
  const int NB = E + 1;
  int carry = 0;
  for (int b0 = 0; b0 < NB; b0 += blockDim.x) {
    const int b = b0 + threadIdx.x;
    int v = 0;
    if (b < NB) v = b < E ? static_cast<int>(ceil_div(totals[b], block_size) * block_size) : totals[b];
    int tot;
    const int incl = block_inclusive_scan(v, scratch, tot);
    if (b < NB) bases_smem[b] = carry + incl - v;
    carry += tot;
  }
  if (threadIdx.x == 0) bases_smem[NB] = carry;
  __syncthreads();
  for (int b = threadIdx.x; b <= NB; b += blockDim.x) {
    base[b] = bases_smem[b];
    if (expert_offsets && b <= E) expert_offsets[b] = bases_smem[b];
  }
  if (num_post_pad && threadIdx.x == 0) *num_post_pad = bases_smem[E];
  if (sorted_ids)
    for (int64_t i = threadIdx.x; i < sorted_len; i += blockDim.x) sorted_ids[i] = fill;
  if (block_expert_ids) {
    for (int64_t blk = threadIdx.x; blk < nblocks; blk += blockDim.x) {
      const int64_t pos = blk * block_size;
      int32_t e = -1;
      if (pos < bases_smem[E]) {  // largest expert whose base <= pos (binary search)
        int lo = 0, hi = E - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (bases_smem[mid] <= pos) lo = mid;
          else hi = mid - 1;
        }
        e = lo;
      }
      block_expert_ids[blk] = e;
    }
  }
}

// Second walk over each chunk: destination of every slot.  Permute mode writes dst (all slots,
// dropped ones into the zero rows after the routed ones) and row_map; align mode writes sorted_ids.
__global__ void __launch_bounds__(kRouteBlock)
route_rank_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E, int tiles_per_chunk, int64_t chunks,
                  const int* __restrict__ chunk_prefix, const int* __restrict__ base, int* __restrict__ dst,
                  int32_t* __restrict__ row_map, int32_t* __restrict__ sorted_ids) {
  extern __shared__ int route_smem[];
  const int NB = E + 1;
  int* next = route_smem + warp_id() * NB;
  const int lane = lane_id();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp_id();
  if (chunk >= chunks) return;
  for (int b = lane; b < NB; b += kWarpSize) next[b] = base[b] + chunk_prefix[chunk * NB + b];
  warp_sync();
  const int64_t start = chunk * tiles_per_chunk * kWarpSize;
  for (int tile = 0; tile < tiles_per_chunk; ++tile) {
    const int64_t i = start + static_cast<int64_t>(tile) * kWarpSize + lane;
    const int b = slot_bucket(ids, ids64, i, n, E);
    const lane_mask_t peers = match_any(b);
    if (b >= 0) {
      const int d = next[b] + popc(peers & lanes_below_mask());
      if (dst) {
        dst[i] = d;
        row_map[i] = b < E ? d : -1;
      } else if (b < E) {
        sorted_ids[d] = static_cast<int32_t>(i);
      }
    }
    warp_sync();
    if (b >= 0 && (peers & lanes_below_mask()) == 0) next[b] += popc(peers);
    warp_sync();
  }
}

cudaError_t run_routing(const void* ids, bool ids64, const RoutePlan& p, int E, int block_size, int* ws,
                        int64_t* expert_offsets, int32_t* row_map, int32_t* sorted_ids, int64_t sorted_len,
                        int32_t* block_expert_ids, int64_t nblocks, int32_t* num_post_pad, cudaStream_t st) {
  const size_t smem = static_cast<size_t>(kRouteWarps) * p.buckets * sizeof(int);
  const unsigned route_grid = static_cast<unsigned>(ceil_div(p.chunks, kRouteWarps));
  int* chunk_counts = ws + p.off_chunk_counts;
  route_count_kernel<<<route_grid, kRouteBlock, smem, st>>>(ids, ids64, p.n, E, p.tiles_per_chunk, p.chunks,
                                                            chunk_counts);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_scan_chunks_kernel<<<p.buckets, kScanBlock, 0, st>>>(chunk_counts, ws + p.off_totals, p.chunks, p.buckets);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_bases_kernel<<<1, kScanBlock, (E + 2) * sizeof(int), st>>>(ws + p.off_totals, E, block_size, ws + p.off_base,
                                                                   expert_offsets, sorted_ids, sorted_len,
                                                                   static_cast<int32_t>(p.n), block_expert_ids,
                                                                   nblocks, num_post_pad);
  SBOPS_RETURN_IF_ERROR(last_launch_error());
  route_rank_kernel<<<route_grid, kRouteBlock, smem, st>>>(ids, ids64, p.n, E, p.tiles_per_chunk, p.chunks,
                                                           chunk_counts, ws + p.off_base,
                                                           row_map ? ws + p.off_dst : nullptr, row_map, sorted_ids);
  return last_launch_error();
}

// One warp per token: read x[t] once (kRowUnroll vectors per lane at a time) and write it to the
// token's k destination rows (zeros for dropped slots, whose rows are the tail of x_perm).
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowBlock)
permute_scatter_kernel(const T* __restrict__ x, const int* __restrict__ dst, const int32_t* __restrict__ row_map,
                       T* __restrict__ x_perm, int64_t Tn, int k, int64_t Hd) {
  using V = Vec<T, VEC>;
  const int lane = lane_id();
  const int64_t nvec = Hd / VEC;
  V zero;
#pragma unroll
  for (int e = 0; e < VEC; ++e) zero.v[e] = from_float<T>(0.f);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp_id(); t < Tn;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const V* src = reinterpret_cast<const V*>(x + t * Hd);
    for (int64_t v0 = 0; v0 < nvec; v0 += kRowUnroll * kWarpSize) {
      V buf[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t vi = v0 + u * kWarpSize + lane;
        if (vi < nvec) buf[u] = src[vi];
      }
      for (int j = 0; j < k; ++j) {
        const int64_t slot = t * k + j;
        const bool routed = row_map[slot] >= 0;
        V* out = reinterpret_cast<V*>(x_perm + static_cast<int64_t>(dst[slot]) * Hd);
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const int64_t vi = v0 + u * kWarpSize + lane;
          if (vi < nvec) out[vi] = routed ? buf[u] : zero;
        }
      }
    }
  }
}
constexpr int kHistBlock = 256;

__global__ void __launch_bounds__(kHistBlock)
expert_hist_kernel(const void* __restrict__ ids, bool ids64, int64_t n, int E,
                   unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned int hist_smem[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist_smem[e] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = load_index(ids, ids64, i);
    if (id >= 0 && id < E) atomicAdd(&hist_smem[id], 1u);  // ids < 0 dropped, >= E skipped
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (hist_smem[e]) atomicAdd(&counts[e], static_cast<unsigned long long>(hist_smem[e]));
}
template <typename T, int VEC>
struct ScatterRun {
  static void run(unsigned g, cudaStream_t st, const void* x, const int* dst, const int32_t* rm, void* xp,
                  int64_t Tn, int k, int64_t Hd) {
    permute_scatter_kernel<T, VEC><<<g, kRowBlock, 0, st>>>(static_cast<const T*>(x), dst, rm, static_cast<T*>(xp),
                                                            Tn, k, Hd);
  }
};

template <typename T>
struct ScatterTyped {
  static cudaError_t run(bool vec_ok, const void* x, const int* dst, const int32_t* rm, void* xp, int64_t Tn, int k,
                         int64_t Hd, cudaStream_t st) {
    return launch_rows_vec<T, ScatterRun>(vec_ok, Tn, st, x, dst, rm, xp, Tn, k, Hd);
  }
};

}  // namespace

size_t moe_route_workspace_bytes(int64_t n, int E) {
  return static_cast<size_t>(make_plan(n, E).total_ints) * sizeof(int);
}

cudaError_t launch_moe_permute(const void* x, DType xt, const void* ids, bool ids64, int64_t T, int k, int64_t Hd,
                               int E, void* x_perm, int64_t* expert_offsets, int32_t* row_map, void* workspace,
                               cudaStream_t stream) {
  if (E < 1 || E > kMaxRouteExperts) return cudaErrorInvalidValue;
  const RoutePlan p = make_plan(T * k, E);
  int* ws = static_cast<int*>(workspace);
  SBOPS_RETURN_IF_ERROR(run_routing(ids, ids64, p, E, 1, ws, expert_offsets, row_map, nullptr, 0, nullptr, 0,
                                    nullptr, stream));
  if (T * k == 0 || Hd == 0) return cudaSuccess;
  const bool vec_ok = rows_vec_ok(Hd, xt, {x, x_perm});
  return dispatch_float<ScatterTyped>(xt, vec_ok, x, ws + p.off_dst, row_map, x_perm, T, k, Hd, stream);
}

cudaError_t launch_moe_align_block_size(const void* ids, bool ids64, int64_t n, int E, int block_size,
                                        int32_t* sorted_ids, int32_t* block_expert_ids, int32_t* num_post_pad,
                                        void* workspace, cudaStream_t stream) {
  if (E < 1 || E > kMaxRouteExperts || block_size < 1) return cudaErrorInvalidValue;
  const RoutePlan p = make_plan(n, E);
  const int64_t max_padded = n + static_cast<int64_t>(E) * (block_size - 1);
  return run_routing(ids, ids64, p, E, block_size, static_cast<int*>(workspace), nullptr, nullptr, sorted_ids,
                     max_padded, block_expert_ids, ceil_div(max_padded, block_size), num_post_pad, stream);
}

cudaError_t launch_expert_counts(const void* ids, bool ids64, int64_t n, int E, int64_t* counts, cudaStream_t stream) {
  SBOPS_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(int64_t) * E, stream));
  if (n == 0 || E == 0) return cudaSuccess;
  if (E > kMaxRouteExperts * 4) return cudaErrorInvalidValue;  // shared-memory histogram
  expert_hist_kernel<<<grid_for(n, kHistBlock, 2), kHistBlock, E * sizeof(unsigned int), stream>>>(
      ids, ids64, n, E, reinterpret_cast<unsigned long long*>(counts));
  return last_launch_error();
}

}  // namespace sbops
