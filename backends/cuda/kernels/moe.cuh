// Launchers for the MoE routing kernels (moe_gating.cu, moe_route.cu, moe_unpermute.cu).  Torch-free: raw pointers, sizes, a stream.
// Index tensors (ids) are int32 or int64 (`ids64`).  Ids < 0 are dropped; ids >= num_experts (which
// the Python frontend rejects before dispatch) are skipped like dropped ones: never an out-of-bounds
// access, and no device-to-host read-back (these launchers never synchronise).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Largest expert count the routing kernels support (per-warp shared-memory counters).
constexpr int kMaxRouteExperts = 2048;
// Largest k for topk_gating / topk_gating_bwd, and largest expert count for topk_gating.
constexpr int kMaxTopK = 16;
int max_gating_experts();
// Largest num_groups for topk_gating (group scores live one per lane).
int max_gating_groups();

// weights [T,k] float32, ids [T,k] int32.  bias: float32 [E] or null.  num_groups <= 0: no groups.
cudaError_t launch_topk_gating(const void* logits, DType logits_dtype, const float* bias, float* weights,
                               int32_t* ids, int64_t T, int E, int k, bool softmax, bool renormalize,
                               int num_groups, int topk_groups, float scaling, cudaStream_t stream);

// grad_logits [T,E] in logits' dtype from grad_weights [T,k] float32.
cudaError_t launch_topk_gating_bwd(const float* grad_weights, const void* logits, DType logits_dtype,
                                   const void* ids, bool ids64, void* grad_logits, int64_t T, int E, int k,
                                   bool softmax, bool renormalize, float scaling, cudaStream_t stream);

// Bytes of device workspace the routing pass needs for n = T*k slots and E experts.
size_t moe_route_workspace_bytes(int64_t n, int E);

// x_perm [T*k, Hd], expert_offsets int64 [E+1], row_map int32 [T,k].
cudaError_t launch_moe_permute(const void* x, DType x_dtype, const void* ids, bool ids64, int64_t T, int k,
                               int64_t Hd, int E, void* x_perm, int64_t* expert_offsets, int32_t* row_map,
                               void* workspace, cudaStream_t stream);

// y[t] = sum_j w[t,j] * y_perm[row_map[t,j]] (float32 accumulation); weights null means all ones
// (that is moe_permute_bwd).  y_perm has R rows; row_map entries outside [0, R) are dropped slots.
cudaError_t launch_moe_unpermute(const void* y_perm, DType dtype, const int32_t* row_map, const float* weights,
                                 void* y, int64_t T, int k, int64_t R, int64_t Hd, cudaStream_t stream);

// grad_y_perm [R,Hd] (dtype; zero rows where no slot maps) and grad_weights float32 [T,k] (0 for
// slots whose row_map entry lies outside [0, R)).
// workspace: R ints.
cudaError_t launch_moe_unpermute_bwd(const void* grad_y, const void* y_perm, DType dtype, const int32_t* row_map,
                                     const float* weights, void* grad_y_perm, float* grad_weights, int64_t T,
                                     int k, int64_t R, int64_t Hd, void* workspace, cudaStream_t stream);

// vLLM moe_align_block_size.  sorted_ids [n + E*(bs-1)], block_expert_ids [ceil(that / bs)],
// num_tokens_post_pad [1], all int32.  workspace: moe_route_workspace_bytes(n, E).
cudaError_t launch_moe_align_block_size(const void* ids, bool ids64, int64_t n, int E, int block_size,
                                        int32_t* sorted_ids, int32_t* block_expert_ids, int32_t* num_tokens_post_pad,
                                        void* workspace, cudaStream_t stream);

// counts int64 [E] histogram of the ids >= 0.
cudaError_t launch_expert_counts(const void* ids, bool ids64, int64_t n, int E, int64_t* counts, cudaStream_t stream);

}  // namespace sbops
