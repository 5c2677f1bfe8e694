// Torch bindings of the MoE routing CUDA kernels (backends/cuda/kernels/moe_*.cu).  Strided
// inputs are made dense here (.contiguous() is free for dense ones); outputs are dense.  No binding
// reads data back: ids outside [0, E) and row_map entries outside [0, rows) are dropped slots in
// the kernels (bad-data guards).

#include <optional>
#include <string>
#include <tuple>

#include "../kernels/moe.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;  // Tensor, checks, stream(), check_launch, stride helpers

bool softmax_scoring(const std::string& scoring, const char* op) {
  if (scoring == "softmax") return true;
  if (scoring == "sigmoid") return false;
  SBOPS_CHECK(false, op, ": scoring must be 'softmax' or 'sigmoid', got '", scoring, "'");
}

// ------------------------------------------------------------------------------ MoE routing
std::tuple<Tensor, Tensor> topk_gating_cuda(const Tensor& logits_in, int64_t k, const std::string& scoring,
                                            bool renormalize, const std::optional<Tensor>& bias, int64_t num_groups,
                                            int64_t topk_groups, double scaling) {
  const char* op = "topk_gating";
  check_cuda(logits_in, op, "logits");
  const auto lt = float_dtype(logits_in, op, "logits");
  const bool sm = softmax_scoring(scoring, op);
  SBOPS_CHECK(logits_in.dim() == 2, op, ": logits must be [T, E]");
  const int64_t T = logits_in.size(0), E = logits_in.size(1);
  SBOPS_CHECK(E >= 1 && E <= sbops::max_gating_experts(), op, ": the cuda kernel takes 1..",
              sbops::max_gating_experts(), " experts, got ", E);
  SBOPS_CHECK(k >= 1 && k <= sbops::kMaxTopK && k <= E, op, ": k must be in [1, min(E, ", sbops::kMaxTopK,
              ")], got ", k);
  if (num_groups > 0) {
    SBOPS_CHECK(E % num_groups == 0, op, ": E = ", E, " is not divisible by num_groups = ", num_groups);
    SBOPS_CHECK(num_groups <= sbops::max_gating_groups(), op, ": the cuda kernel takes at most ",
                sbops::max_gating_groups(), " groups, got ", num_groups);
    SBOPS_CHECK(topk_groups >= 1 && topk_groups <= num_groups, op, ": topk_groups must be in [1, num_groups]");
    SBOPS_CHECK(k <= topk_groups * (E / num_groups), op, ": k = ", k, " exceeds the ", topk_groups * (E / num_groups),
                " experts of the chosen groups");
  }
  DeviceGuard guard(logits_in.get_device_index());
  const Tensor logits = contig(logits_in);
  Tensor b;
  if (bias.has_value()) {
    check_cuda(*bias, op, "bias");
    SBOPS_CHECK(bias->numel() == E, op, ": bias must have E = ", E, " elements");
    b = to_contig(*bias, kFloat);
  }
  Tensor weights = empty_on({T, k}, kFloat, logits);
  Tensor ids = empty_on({T, k}, kInt, logits);
  check_launch(sbops::launch_topk_gating(logits.data_ptr(), lt, b.defined() ? b.mutable_data_ptr<float>() : nullptr,
                                         weights.mutable_data_ptr<float>(), ids.mutable_data_ptr<int32_t>(), T, static_cast<int>(E),
                                         static_cast<int>(k), sm, renormalize, static_cast<int>(num_groups),
                                         static_cast<int>(topk_groups), static_cast<float>(scaling), stream()),
               op);
  return {weights, ids};
}

Tensor topk_gating_bwd_cuda(const Tensor& grad_weights, const Tensor& logits_in, const Tensor& ids_in,
                            const std::string& scoring, bool renormalize, double scaling) {
  const char* op = "topk_gating_bwd";
  check_cuda(logits_in, op, "logits");
  check_cuda(ids_in, op, "ids");
  check_cuda(grad_weights, op, "grad_weights");
  const auto lt = float_dtype(logits_in, op, "logits");
  const bool sm = softmax_scoring(scoring, op);
  const bool ids64 = index_is64(ids_in, op, "ids");
  SBOPS_CHECK(logits_in.dim() == 2 && ids_in.dim() == 2 && ids_in.size(0) == logits_in.size(0), op,
              ": logits [T, E] and ids [T, k] expected");
  SBOPS_CHECK(sbops::same_sizes(grad_weights.sizes(), ids_in.sizes()), op, ": grad_weights must match ids' shape");
  const int64_t T = logits_in.size(0), E = logits_in.size(1), k = ids_in.size(1);
  SBOPS_CHECK(E <= sbops::max_gating_experts() && k >= 1 && k <= sbops::kMaxTopK, op,
              ": the cuda kernel takes E <= ", sbops::max_gating_experts(), " and 1 <= k <= ", sbops::kMaxTopK);
  DeviceGuard guard(logits_in.get_device_index());
  const Tensor logits = contig(logits_in), ids = contig(ids_in);
  const Tensor gw = to_contig(grad_weights, kFloat);
  Tensor grad = empty_as(logits);
  check_launch(sbops::launch_topk_gating_bwd(gw.mutable_data_ptr<float>(), logits.data_ptr(), lt, ids.data_ptr(), ids64,
                                             grad.data_ptr(), T, static_cast<int>(E), static_cast<int>(k), sm,
                                             renormalize, static_cast<float>(scaling), stream()),
               op);
  return grad;
}

void check_experts(int64_t E, const char* op) {
  SBOPS_CHECK(E >= 1 && E <= sbops::kMaxRouteExperts, op, ": the cuda kernel takes 1..", sbops::kMaxRouteExperts,
              " experts, got ", E);
}

std::tuple<Tensor, Tensor, Tensor> moe_permute_cuda(const Tensor& x_in, const Tensor& ids_in, int64_t E) {
  const char* op = "moe_permute";
  check_cuda(x_in, op, "x");
  check_cuda(ids_in, op, "ids");
  const auto xt = float_dtype(x_in, op, "x");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  SBOPS_CHECK(x_in.dim() == 2 && ids_in.dim() == 2 && ids_in.size(0) == x_in.size(0), op,
              ": x [T, Hd] and ids [T, k] expected");
  DeviceGuard guard(x_in.get_device_index());
  const Tensor x = contig(x_in), ids = contig(ids_in);
  const int64_t T = x.size(0), Hd = x.size(1), k = ids.size(1);
  Tensor x_perm = empty_on({T * k, Hd}, x.scalar_type(), x);
  Tensor offsets = empty_on({E + 1}, kLong, x);
  Tensor row_map = empty_on({T, k}, kInt, x);
  Tensor ws = empty_on({static_cast<int64_t>(sbops::moe_route_workspace_bytes(T * k, static_cast<int>(E)))},
                           kByte, x);
  check_launch(sbops::launch_moe_permute(x.data_ptr(), xt, ids.data_ptr(), ids64, T, static_cast<int>(k), Hd,
                                         static_cast<int>(E), x_perm.data_ptr(), offsets.mutable_data_ptr<int64_t>(),
                                         row_map.mutable_data_ptr<int32_t>(), ws.data_ptr(), stream()),
               op);
  return {x_perm, offsets, row_map};
}

Tensor unpermute_impl(const Tensor& y_perm_in, const Tensor& row_map_in, const std::optional<Tensor>& weights,
                      const char* op) {
  check_cuda(y_perm_in, op, "y_perm");
  check_cuda(row_map_in, op, "row_map");
  const auto yt = float_dtype(y_perm_in, op, "y_perm");
  SBOPS_CHECK(row_map_in.scalar_type() == kInt && row_map_in.dim() == 2, op, ": row_map must be int32 [T, k]");
  SBOPS_CHECK(y_perm_in.dim() == 2, op, ": y_perm must be [rows, Hd]");
  DeviceGuard guard(y_perm_in.get_device_index());
  const Tensor y_perm = contig(y_perm_in), row_map = contig(row_map_in);
  const int64_t T = row_map.size(0), k = row_map.size(1), Hd = y_perm.size(1);
  Tensor w;
  if (weights.has_value()) {
    check_cuda(*weights, op, "weights");
    SBOPS_CHECK(sbops::same_sizes(weights->sizes(), row_map.sizes()), op, ": weights must match row_map's shape");
    w = to_contig(*weights, kFloat);
  }
  Tensor y = empty_on({T, Hd}, y_perm.scalar_type(), y_perm);
  check_launch(sbops::launch_moe_unpermute(y_perm.data_ptr(), yt, row_map.mutable_data_ptr<int32_t>(),
                                           w.defined() ? w.mutable_data_ptr<float>() : nullptr, y.data_ptr(), T,
                                           static_cast<int>(k), y_perm.size(0), Hd, stream()),
               op);
  return y;
}

Tensor moe_permute_bwd_cuda(const Tensor& grad_x_perm, const Tensor& row_map) {
  return unpermute_impl(grad_x_perm, row_map, std::nullopt, "moe_permute_bwd");
}

Tensor moe_unpermute_cuda(const Tensor& y_perm, const Tensor& row_map, const Tensor& weights) {
  return unpermute_impl(y_perm, row_map, weights, "moe_unpermute");
}

std::tuple<Tensor, Tensor> moe_unpermute_bwd_cuda(const Tensor& grad_y_in, const Tensor& y_perm_in,
                                                  const Tensor& row_map_in, const Tensor& weights) {
  const char* op = "moe_unpermute_bwd";
  check_cuda(grad_y_in, op, "grad_y");
  check_cuda(y_perm_in, op, "y_perm");
  check_cuda(row_map_in, op, "row_map");
  check_cuda(weights, op, "weights");
  const auto yt = float_dtype(y_perm_in, op, "y_perm");
  SBOPS_CHECK(grad_y_in.scalar_type() == y_perm_in.scalar_type(), op, ": grad_y must have y_perm's dtype");
  SBOPS_CHECK(row_map_in.scalar_type() == kInt && row_map_in.dim() == 2, op, ": row_map must be int32 [T, k]");
  SBOPS_CHECK(y_perm_in.dim() == 2 && grad_y_in.dim() == 2 && grad_y_in.size(0) == row_map_in.size(0) &&
                  grad_y_in.size(1) == y_perm_in.size(1),
              op, ": grad_y [T, Hd], y_perm [rows, Hd] expected");
  SBOPS_CHECK(sbops::same_sizes(weights.sizes(), row_map_in.sizes()), op, ": weights must match row_map's shape");
  DeviceGuard guard(y_perm_in.get_device_index());
  // 16-byte aligned copies of misaligned rows (a dense view at an odd storage offset): the kernel's
  // grad_w dot sums in another order on its scalar path, so a view would not give the contiguous
  // call's bits (the forward sums per element and needs no such copy).
  const Tensor grad_y = dense_aligned16(grad_y_in), y_perm = dense_aligned16(y_perm_in), row_map = contig(row_map_in);
  const Tensor w = to_contig(weights, kFloat);
  const int64_t T = row_map.size(0), k = row_map.size(1), R = y_perm.size(0), Hd = y_perm.size(1);
  Tensor grad_y_perm = empty_as(y_perm);
  Tensor grad_w = empty_on({T, k}, w.scalar_type(), w);
  Tensor ws = empty_on({R > 0 ? R : 1}, row_map.scalar_type(), row_map);
  check_launch(sbops::launch_moe_unpermute_bwd(grad_y.data_ptr(), y_perm.data_ptr(), yt, row_map.mutable_data_ptr<int32_t>(),
                                               w.mutable_data_ptr<float>(), grad_y_perm.data_ptr(), grad_w.mutable_data_ptr<float>(),
                                               T, static_cast<int>(k), R, Hd, ws.data_ptr(), stream()),
               op);
  return {grad_y_perm, cast(grad_w, weights.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> moe_align_block_size_cuda(const Tensor& ids_in, int64_t E, int64_t block_size) {
  const char* op = "moe_align_block_size";
  check_cuda(ids_in, op, "ids");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  SBOPS_CHECK(block_size >= 1, op, ": block_size must be >= 1");
  DeviceGuard guard(ids_in.get_device_index());
  const Tensor ids = contig(ids_in);
  const int64_t n = ids.numel();
  const int64_t max_padded = n + E * (block_size - 1);
  const int64_t nblocks = (max_padded + block_size - 1) / block_size;
  Tensor sorted_ids = empty_on({max_padded}, kInt, ids);
  Tensor block_experts = empty_on({nblocks}, kInt, ids);
  Tensor post_pad = empty_on({1}, kInt, ids);
  Tensor ws = empty_on({static_cast<int64_t>(sbops::moe_route_workspace_bytes(n, static_cast<int>(E)))},
                       kByte, ids);
  check_launch(sbops::launch_moe_align_block_size(ids.data_ptr(), ids64, n, static_cast<int>(E),
                                                  static_cast<int>(block_size), sorted_ids.mutable_data_ptr<int32_t>(),
                                                  block_experts.mutable_data_ptr<int32_t>(), post_pad.mutable_data_ptr<int32_t>(),
                                                  ws.data_ptr(), stream()),
               op);
  return {sorted_ids, block_experts, post_pad};
}

Tensor expert_counts_cuda(const Tensor& ids_in, int64_t E) {
  const char* op = "expert_counts";
  check_cuda(ids_in, op, "ids");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  DeviceGuard guard(ids_in.get_device_index());
  const Tensor ids = contig(ids_in);
  Tensor counts = empty_on({E}, kLong, ids);
  check_launch(sbops::launch_expert_counts(ids.data_ptr(), ids64, ids.numel(), static_cast<int>(E),
                                           counts.mutable_data_ptr<int64_t>(), stream()),
               op);
  return counts;
}
}  // namespace

// Signatures match the CPU backend's (see ops_spike.cpp).
STABLE_TORCH_LIBRARY_IMPL(sbops, CUDA, m) {
  m.impl("topk_gating", TORCH_BOX(&topk_gating_cuda));
  m.impl("topk_gating_bwd", TORCH_BOX(&topk_gating_bwd_cuda));
  m.impl("moe_permute", TORCH_BOX(&moe_permute_cuda));
  m.impl("moe_permute_bwd", TORCH_BOX(&moe_permute_bwd_cuda));
  m.impl("moe_unpermute", TORCH_BOX(&moe_unpermute_cuda));
  m.impl("moe_unpermute_bwd", TORCH_BOX(&moe_unpermute_bwd_cuda));
  m.impl("moe_align_block_size", TORCH_BOX(&moe_align_block_size_cuda));
  m.impl("expert_counts", TORCH_BOX(&expert_counts_cuda));
}
