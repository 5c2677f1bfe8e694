// Thin torch bindings of the CUDA C++ kernels: TORCH_LIBRARY_IMPL(sbops, CUDA, m).
// Each op checks what the kernels rely on (device, dtypes, shapes, contiguity, data-dependent
// limits), allocates the outputs, and calls a torch-free launcher on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "../kernels/decode.cuh"
#include "../kernels/moe.cuh"
#include "../kernels/spike.cuh"
#include "../kernels/swa_bwd.cuh"
#include "../kernels/swa_fwd.cuh"

namespace {

using at::Tensor;

sbops::DType to_dtype(at::ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case at::kFloat: return sbops::DType::F32;
    case at::kHalf: return sbops::DType::F16;
    case at::kBFloat16: return sbops::DType::BF16;
    case at::kDouble: return sbops::DType::F64;
    case at::kChar: return sbops::DType::I8;
    case at::kShort: return sbops::DType::I16;
    case at::kInt: return sbops::DType::I32;
    case at::kLong: return sbops::DType::I64;
    default: TORCH_CHECK(false, op, ": ", arg, " has unsupported dtype ", t);
  }
}

void check_cuda(const Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor (got ", t.device(), ")");
}

// float32 / float16 / bfloat16 (the CUDA kernels do not take float64).
sbops::DType float_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", arg,
              " must be float32, float16 or bfloat16 on the cuda backend (got ", s, ")");
  return to_dtype(s, op, arg);
}

bool index_is64(const Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", arg,
              " must be int32 or int64 (got ", t.scalar_type(), ")");
  return t.scalar_type() == at::kLong;
}

sbops::DType int_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kChar || s == at::kShort || s == at::kInt || s == at::kLong, op, ": ", arg,
              " must be an integer tensor (int8, int16, int32 or int64), got ", s);
  return to_dtype(s, op, arg);
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err != cudaErrorInvalidValue, op, ": the cuda kernel does not support these inputs");
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Minimum and largest |c| of an integer tensor: one reduction and ONE device-to-host copy (both
// extremes travel together).  Only the spike_expand / spike_stats data checks use it (DESIGN.md:
// the C++ side still checks what only data can tell there); the MoE ops skip out-of-range ids in
// the kernels instead of reading a flag back, so none of the routing ops synchronises.
std::pair<int64_t, int64_t> min_and_max_abs(const Tensor& c) {
  if (c.numel() == 0) return {0, 0};
  auto mm = at::aminmax(c);
  const Tensor both = at::stack({std::get<0>(mm), std::get<1>(mm)}).to(at::kLong).cpu();
  const int64_t mn = both.data_ptr<int64_t>()[0], mx = both.data_ptr<int64_t>()[1];
  const int64_t amn = mn < 0 ? -mn : mn, amx = mx < 0 ? -mx : mx;
  return {mn, amn > amx ? amn : amx};
}

sbops::SpikeMode spike_mode(const std::string& mode, const char* op) {
  if (mode == "binary") return sbops::SpikeMode::Binary;
  if (mode == "ternary") return sbops::SpikeMode::Ternary;
  if (mode == "bitwise") return sbops::SpikeMode::Bitwise;
  TORCH_CHECK(false, op, ": mode must be 'binary', 'ternary' or 'bitwise', got '", mode, "'");
}

bool softmax_scoring(const std::string& scoring, const char* op) {
  if (scoring == "softmax") return true;
  if (scoring == "sigmoid") return false;
  TORCH_CHECK(false, op, ": scoring must be 'softmax' or 'sigmoid', got '", scoring, "'");
}

// ------------------------------------------------------------------------------ spike coding
std::tuple<Tensor, Tensor> spike_encode_cuda(const Tensor& x_in, double k, at::ScalarType out_dtype) {
  const char* op = "spike_encode";
  check_cuda(x_in, op, "x");
  const auto xt = float_dtype(x_in, op, "x");
  TORCH_CHECK(out_dtype == at::kChar || out_dtype == at::kShort || out_dtype == at::kInt, op,
              ": out_dtype must be int8, int16 or int32 (got ", out_dtype, ")");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, op, ": x needs a non-empty last dimension");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  Tensor counts = at::empty(x.sizes(), x.options().dtype(out_dtype));
  auto vshape = x.sizes().vec();
  vshape.back() = 1;
  Tensor vth = at::empty(vshape, x.options().dtype(at::kFloat));
  check_launch(sbops::launch_spike_encode(x.data_ptr(), xt, counts.data_ptr(), to_dtype(out_dtype, op, "out_dtype"),
                                          vth.data_ptr<float>(), rows, cols, static_cast<float>(k), stream()),
               op);
  return {counts, vth};
}

Tensor spike_quant_cuda(const Tensor& x_in, double k) {
  const char* op = "spike_quant";
  check_cuda(x_in, op, "x");
  const auto xt = float_dtype(x_in, op, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, op, ": x needs a non-empty last dimension");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  Tensor x_hat = at::empty_like(x);
  check_launch(sbops::launch_spike_quant(x.data_ptr(), xt, x_hat.data_ptr(), rows, cols, static_cast<float>(k),
                                         stream()),
               op);
  return x_hat;
}

Tensor spike_expand_cuda(const Tensor& counts_in, const std::string& mode_s, int64_t T) {
  const char* op = "spike_expand";
  check_cuda(counts_in, op, "counts");
  const auto ct = int_dtype(counts_in, op, "counts");
  const auto mode = spike_mode(mode_s, op);
  TORCH_CHECK(T >= 1, op, ": T must be >= 1, got ", T);
  c10::cuda::CUDAGuard guard(counts_in.device());
  const Tensor counts = counts_in.contiguous();
  const auto [mn, max_abs] = min_and_max_abs(counts);
  if (mode == sbops::SpikeMode::Binary)
    TORCH_CHECK(mn >= 0, op, ": binary spike trains need counts >= 0 (found ", mn, ")");
  if (mode == sbops::SpikeMode::Bitwise) {
    TORCH_CHECK(T <= 63, op, ": bitwise T must be <= 63, got ", T);
    TORCH_CHECK(T == 63 || (max_abs >> T) == 0, op, ": the largest |count| ", max_abs, " needs more than T = ", T,
                " bits");
  } else {
    TORCH_CHECK(max_abs <= T, op, ": the largest |count| ", max_abs, " does not fit in T = ", T, " steps");
  }
  std::vector<int64_t> shape{T};
  for (auto s : counts.sizes()) shape.push_back(s);
  Tensor trains = at::empty(shape, counts.options().dtype(at::kChar));
  check_launch(sbops::launch_spike_expand(counts.data_ptr(), ct, trains.data_ptr<int8_t>(), counts.numel(), mode,
                                          static_cast<int>(T), stream()),
               op);
  return trains;
}

Tensor spike_collapse_cuda(const Tensor& trains_in, const std::string& mode_s) {
  const char* op = "spike_collapse";
  check_cuda(trains_in, op, "trains");
  const auto tt = int_dtype(trains_in, op, "trains");
  const auto mode = spike_mode(mode_s, op);
  TORCH_CHECK(trains_in.dim() >= 1, op, ": trains must have a leading time dimension");
  c10::cuda::CUDAGuard guard(trains_in.device());
  const Tensor trains = trains_in.contiguous();
  const int64_t T = trains.size(0);
  Tensor counts = at::empty(trains.sizes().slice(1), trains.options().dtype(at::kInt));
  if (T == 0) return counts.zero_();
  check_launch(sbops::launch_spike_collapse(trains.data_ptr(), tt, counts.data_ptr<int32_t>(), counts.numel(),
                                            static_cast<int>(T), mode, stream()),
               op);
  return counts;
}

Tensor spike_stats_cuda(const Tensor& counts_in, int64_t max_abs) {
  const char* op = "spike_stats";
  check_cuda(counts_in, op, "counts");
  const auto ct = int_dtype(counts_in, op, "counts");
  TORCH_CHECK(max_abs >= 0, op, ": max_abs must be >= 0, got ", max_abs);
  c10::cuda::CUDAGuard guard(counts_in.device());
  const Tensor counts = counts_in.contiguous();
  const int64_t found = min_and_max_abs(counts).second;
  TORCH_CHECK(found <= max_abs, op, ": found |count| = ", found, " above max_abs = ", max_abs);
  Tensor hist = at::empty({max_abs + 1}, counts.options().dtype(at::kLong));
  check_launch(sbops::launch_spike_hist(counts.data_ptr(), ct, hist.data_ptr<int64_t>(), counts.numel(), max_abs,
                                        stream()),
               op);
  return hist;
}

// ------------------------------------------------------------------------------ MoE routing
std::tuple<Tensor, Tensor> topk_gating_cuda(const Tensor& logits_in, int64_t k, const std::string& scoring,
                                            bool renormalize, const std::optional<Tensor>& bias, int64_t num_groups,
                                            int64_t topk_groups, double scaling) {
  const char* op = "topk_gating";
  check_cuda(logits_in, op, "logits");
  const auto lt = float_dtype(logits_in, op, "logits");
  const bool sm = softmax_scoring(scoring, op);
  TORCH_CHECK(logits_in.dim() == 2, op, ": logits must be [T, E]");
  const int64_t T = logits_in.size(0), E = logits_in.size(1);
  TORCH_CHECK(E >= 1 && E <= sbops::max_gating_experts(), op, ": the cuda kernel takes 1..",
              sbops::max_gating_experts(), " experts, got ", E);
  TORCH_CHECK(k >= 1 && k <= sbops::kMaxTopK && k <= E, op, ": k must be in [1, min(E, ", sbops::kMaxTopK,
              ")], got ", k);
  if (num_groups > 0) {
    TORCH_CHECK(E % num_groups == 0, op, ": E = ", E, " is not divisible by num_groups = ", num_groups);
    TORCH_CHECK(num_groups <= sbops::max_gating_groups(), op, ": the cuda kernel takes at most ",
                sbops::max_gating_groups(), " groups, got ", num_groups);
    TORCH_CHECK(topk_groups >= 1 && topk_groups <= num_groups, op, ": topk_groups must be in [1, num_groups]");
    TORCH_CHECK(k <= topk_groups * (E / num_groups), op, ": k = ", k, " exceeds the ", topk_groups * (E / num_groups),
                " experts of the chosen groups");
  }
  c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous();
  Tensor b;
  if (bias.has_value()) {
    check_cuda(*bias, op, "bias");
    TORCH_CHECK(bias->numel() == E, op, ": bias must have E = ", E, " elements");
    b = bias->to(at::kFloat).contiguous();
  }
  Tensor weights = at::empty({T, k}, logits.options().dtype(at::kFloat));
  Tensor ids = at::empty({T, k}, logits.options().dtype(at::kInt));
  check_launch(sbops::launch_topk_gating(logits.data_ptr(), lt, b.defined() ? b.data_ptr<float>() : nullptr,
                                         weights.data_ptr<float>(), ids.data_ptr<int32_t>(), T, static_cast<int>(E),
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
  TORCH_CHECK(logits_in.dim() == 2 && ids_in.dim() == 2 && ids_in.size(0) == logits_in.size(0), op,
              ": logits [T, E] and ids [T, k] expected");
  TORCH_CHECK(grad_weights.sizes() == ids_in.sizes(), op, ": grad_weights must match ids' shape");
  const int64_t T = logits_in.size(0), E = logits_in.size(1), k = ids_in.size(1);
  TORCH_CHECK(E <= sbops::max_gating_experts() && k >= 1 && k <= sbops::kMaxTopK, op,
              ": the cuda kernel takes E <= ", sbops::max_gating_experts(), " and 1 <= k <= ", sbops::kMaxTopK);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous(), ids = ids_in.contiguous();
  const Tensor gw = grad_weights.to(at::kFloat).contiguous();
  Tensor grad = at::empty_like(logits);
  check_launch(sbops::launch_topk_gating_bwd(gw.data_ptr<float>(), logits.data_ptr(), lt, ids.data_ptr(), ids64,
                                             grad.data_ptr(), T, static_cast<int>(E), static_cast<int>(k), sm,
                                             renormalize, static_cast<float>(scaling), stream()),
               op);
  return grad;
}

void check_experts(int64_t E, const char* op) {
  TORCH_CHECK(E >= 1 && E <= sbops::kMaxRouteExperts, op, ": the cuda kernel takes 1..", sbops::kMaxRouteExperts,
              " experts, got ", E);
}

std::tuple<Tensor, Tensor, Tensor> moe_permute_cuda(const Tensor& x_in, const Tensor& ids_in, int64_t E) {
  const char* op = "moe_permute";
  check_cuda(x_in, op, "x");
  check_cuda(ids_in, op, "ids");
  const auto xt = float_dtype(x_in, op, "x");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  TORCH_CHECK(x_in.dim() == 2 && ids_in.dim() == 2 && ids_in.size(0) == x_in.size(0), op,
              ": x [T, Hd] and ids [T, k] expected");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), ids = ids_in.contiguous();
  const int64_t T = x.size(0), Hd = x.size(1), k = ids.size(1);
  Tensor x_perm = at::empty({T * k, Hd}, x.options());
  Tensor offsets = at::empty({E + 1}, x.options().dtype(at::kLong));
  Tensor row_map = at::empty({T, k}, x.options().dtype(at::kInt));
  Tensor ws = at::empty({static_cast<int64_t>(sbops::moe_route_workspace_bytes(T * k, static_cast<int>(E)))},
                        x.options().dtype(at::kByte));
  check_launch(sbops::launch_moe_permute(x.data_ptr(), xt, ids.data_ptr(), ids64, T, static_cast<int>(k), Hd,
                                         static_cast<int>(E), x_perm.data_ptr(), offsets.data_ptr<int64_t>(),
                                         row_map.data_ptr<int32_t>(), ws.data_ptr(), stream()),
               op);
  return {x_perm, offsets, row_map};
}

Tensor unpermute_impl(const Tensor& y_perm_in, const Tensor& row_map_in, const std::optional<Tensor>& weights,
                      const char* op) {
  check_cuda(y_perm_in, op, "y_perm");
  check_cuda(row_map_in, op, "row_map");
  const auto yt = float_dtype(y_perm_in, op, "y_perm");
  TORCH_CHECK(row_map_in.scalar_type() == at::kInt && row_map_in.dim() == 2, op, ": row_map must be int32 [T, k]");
  TORCH_CHECK(y_perm_in.dim() == 2, op, ": y_perm must be [rows, Hd]");
  c10::cuda::CUDAGuard guard(y_perm_in.device());
  const Tensor y_perm = y_perm_in.contiguous(), row_map = row_map_in.contiguous();
  const int64_t T = row_map.size(0), k = row_map.size(1), Hd = y_perm.size(1);
  Tensor w;
  if (weights.has_value()) {
    check_cuda(*weights, op, "weights");
    TORCH_CHECK(weights->sizes() == row_map.sizes(), op, ": weights must match row_map's shape");
    w = weights->to(at::kFloat).contiguous();
  }
  Tensor y = at::empty({T, Hd}, y_perm.options());
  check_launch(sbops::launch_moe_unpermute(y_perm.data_ptr(), yt, row_map.data_ptr<int32_t>(),
                                           w.defined() ? w.data_ptr<float>() : nullptr, y.data_ptr(), T,
                                           static_cast<int>(k), Hd, stream()),
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
  TORCH_CHECK(grad_y_in.scalar_type() == y_perm_in.scalar_type(), op, ": grad_y must have y_perm's dtype");
  TORCH_CHECK(row_map_in.scalar_type() == at::kInt && row_map_in.dim() == 2, op, ": row_map must be int32 [T, k]");
  TORCH_CHECK(y_perm_in.dim() == 2 && grad_y_in.dim() == 2 && grad_y_in.size(0) == row_map_in.size(0) &&
                  grad_y_in.size(1) == y_perm_in.size(1),
              op, ": grad_y [T, Hd], y_perm [rows, Hd] expected");
  TORCH_CHECK(weights.sizes() == row_map_in.sizes(), op, ": weights must match row_map's shape");
  c10::cuda::CUDAGuard guard(y_perm_in.device());
  const Tensor grad_y = grad_y_in.contiguous(), y_perm = y_perm_in.contiguous(), row_map = row_map_in.contiguous();
  const Tensor w = weights.to(at::kFloat).contiguous();
  const int64_t T = row_map.size(0), k = row_map.size(1), R = y_perm.size(0), Hd = y_perm.size(1);
  Tensor grad_y_perm = at::empty_like(y_perm);
  Tensor grad_w = at::empty({T, k}, w.options());
  Tensor ws = at::empty({R > 0 ? R : 1}, row_map.options());
  check_launch(sbops::launch_moe_unpermute_bwd(grad_y.data_ptr(), y_perm.data_ptr(), yt, row_map.data_ptr<int32_t>(),
                                               w.data_ptr<float>(), grad_y_perm.data_ptr(), grad_w.data_ptr<float>(),
                                               T, static_cast<int>(k), R, Hd, ws.data_ptr(), stream()),
               op);
  return {grad_y_perm, grad_w.to(weights.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> moe_align_block_size_cuda(const Tensor& ids_in, int64_t E, int64_t block_size) {
  const char* op = "moe_align_block_size";
  check_cuda(ids_in, op, "ids");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  TORCH_CHECK(block_size >= 1, op, ": block_size must be >= 1");
  c10::cuda::CUDAGuard guard(ids_in.device());
  const Tensor ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  const int64_t max_padded = n + E * (block_size - 1);
  const int64_t nblocks = (max_padded + block_size - 1) / block_size;
  auto iopt = ids.options().dtype(at::kInt);
  Tensor sorted_ids = at::empty({max_padded}, iopt);
  Tensor block_experts = at::empty({nblocks}, iopt);
  Tensor post_pad = at::empty({1}, iopt);
  Tensor ws = at::empty({static_cast<int64_t>(sbops::moe_route_workspace_bytes(n, static_cast<int>(E)))},
                        ids.options().dtype(at::kByte));
  check_launch(sbops::launch_moe_align_block_size(ids.data_ptr(), ids64, n, static_cast<int>(E),
                                                  static_cast<int>(block_size), sorted_ids.data_ptr<int32_t>(),
                                                  block_experts.data_ptr<int32_t>(), post_pad.data_ptr<int32_t>(),
                                                  ws.data_ptr(), stream()),
               op);
  return {sorted_ids, block_experts, post_pad};
}

Tensor expert_counts_cuda(const Tensor& ids_in, int64_t E) {
  const char* op = "expert_counts";
  check_cuda(ids_in, op, "ids");
  const bool ids64 = index_is64(ids_in, op, "ids");
  check_experts(E, op);
  c10::cuda::CUDAGuard guard(ids_in.device());
  const Tensor ids = ids_in.contiguous();
  Tensor counts = at::empty({E}, ids.options().dtype(at::kLong));
  check_launch(sbops::launch_expert_counts(ids.data_ptr(), ids64, ids.numel(), static_cast<int>(E),
                                           counts.data_ptr<int64_t>(), stream()),
               op);
  return counts;
}

// ------------------------------------------------------------------------------ decode attention
Tensor linear_attn_decode_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                               const std::optional<Tensor>& g_in, const Tensor& state,
                               const std::optional<Tensor>& state_indices, double scale) {
  const char* op = "linear_attn_decode";
  for (auto [t, name] : {std::pair<const Tensor*, const char*>{&q_in, "q"}, {&k_in, "k"}, {&v_in, "v"}, {&state, "state"}})
    check_cuda(*t, op, name);
  const auto qt = float_dtype(q_in, op, "q");
  TORCH_CHECK(k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(), op,
              ": q, k, v must share a dtype");
  TORCH_CHECK(state.scalar_type() == at::kFloat || state.scalar_type() == at::kBFloat16, op,
              ": state must be float32 or bfloat16");
  TORCH_CHECK(state.is_contiguous(), op, ": state must be contiguous (it is updated in place)");
  TORCH_CHECK(q_in.dim() == 3 && k_in.dim() == 3 && v_in.dim() == 3 && state.dim() == 4, op,
              ": q [N,H,K], k [N,HKV,K], v [N,HKV,V], state [S,HKV,K,V] expected");
  const int64_t N = q_in.size(0), H = q_in.size(1), K = q_in.size(2), HKV = k_in.size(1), V = v_in.size(2);
  TORCH_CHECK(k_in.size(0) == N && v_in.size(0) == N && k_in.size(2) == K && v_in.size(1) == HKV, op,
              ": inconsistent q/k/v shapes");
  TORCH_CHECK(HKV >= 1 && H % HKV == 0, op, ": H must be a multiple of HKV");
  TORCH_CHECK(state.size(1) == HKV && state.size(2) == K && state.size(3) == V, op, ": state must be [S, HKV, K, V]");
  TORCH_CHECK(sbops::linear_attn_decode_supports(static_cast<int>(K), static_cast<int>(V)), op,
              ": the cuda kernel takes K in {64, 128} and V a multiple of 8 (got K=", K, ", V=", V, ")");
  c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  sbops::GateMode gm = sbops::GateMode::None;
  Tensor g;
  sbops::DType gt = sbops::DType::F32;
  if (g_in.has_value()) {
    check_cuda(*g_in, op, "g");
    g = g_in->contiguous();
    gt = float_dtype(g, op, "g");
    if (g.dim() == 2 && g.size(0) == N && g.size(1) == HKV) gm = sbops::GateMode::PerHead;
    else if (g.dim() == 3 && g.size(0) == N && g.size(1) == HKV && g.size(2) == K) gm = sbops::GateMode::PerKey;
    else TORCH_CHECK(false, op, ": g must be [N, HKV] or [N, HKV, K]");
  }
  Tensor idx;
  bool idx64 = false;
  if (state_indices.has_value()) {
    check_cuda(*state_indices, op, "state_indices");
    idx64 = index_is64(*state_indices, op, "state_indices");
    TORCH_CHECK(state_indices->numel() == N, op, ": state_indices must have N elements");
    idx = state_indices->contiguous();
  } else {
    TORCH_CHECK(state.size(0) >= N, op, ": without state_indices the state needs at least N slots");
  }
  Tensor o = at::empty({N, H, V}, q.options());
  check_launch(sbops::launch_linear_attn_decode(q.data_ptr(), k.data_ptr(), v.data_ptr(), qt,
                                                g.defined() ? g.data_ptr() : nullptr, gt, gm, state.data_ptr(),
                                                to_dtype(state.scalar_type(), op, "state"), state.size(0),
                                                idx.defined() ? idx.data_ptr() : nullptr, idx64, o.data_ptr(), N,
                                                static_cast<int>(H), static_cast<int>(HKV), static_cast<int>(K),
                                                static_cast<int>(V), static_cast<float>(scale), stream()),
               op);
  return o;
}

void check_cache_pair(const Tensor& kc, const Tensor& vc, const char* op) {
  check_cuda(kc, op, "k_cache");
  check_cuda(vc, op, "v_cache");
  TORCH_CHECK(kc.dim() == 4 && kc.sizes() == vc.sizes(), op, ": k_cache and v_cache must both be [S, C, HKV, D]");
  TORCH_CHECK(kc.scalar_type() == vc.scalar_type(), op, ": k_cache and v_cache must share a dtype");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), op, ": the caches must be contiguous");
}

Tensor swa_decode_cuda(const Tensor& q_in, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq_lens_in,
                       int64_t window, double scale, const std::optional<Tensor>& slot_indices) {
  const char* op = "swa_decode";
  check_cuda(q_in, op, "q");
  check_cuda(seq_lens_in, op, "seq_lens");
  check_cache_pair(k_cache, v_cache, op);
  const auto dt = float_dtype(q_in, op, "q");
  TORCH_CHECK(k_cache.scalar_type() == q_in.scalar_type(), op, ": q and the caches must share a dtype");
  TORCH_CHECK(q_in.dim() == 3, op, ": q must be [N, H, D]");
  const int64_t N = q_in.size(0), H = q_in.size(1), D = q_in.size(2);
  const int64_t S = k_cache.size(0), C = k_cache.size(1), HKV = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == D, op, ": cache head dim ", k_cache.size(3), " != q head dim ", D);
  TORCH_CHECK(HKV >= 1 && H % HKV == 0, op, ": H must be a multiple of HKV");
  TORCH_CHECK(window < 0 || C >= window + 1, op, ": the ring buffer needs C >= window + 1 (C=", C, ", window=",
              window, ")");
  TORCH_CHECK(sbops::swa_decode_supports(static_cast<int>(D), dt), op, ": the cuda kernel takes D in {64, 128}, got ",
              D);
  const bool lens64 = index_is64(seq_lens_in, op, "seq_lens");
  TORCH_CHECK(seq_lens_in.numel() == N, op, ": seq_lens must have N elements");
  c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor q = q_in.contiguous(), seq_lens = seq_lens_in.contiguous();
  Tensor slots;
  bool slots64 = false;
  if (slot_indices.has_value()) {
    check_cuda(*slot_indices, op, "slot_indices");
    slots64 = index_is64(*slot_indices, op, "slot_indices");
    TORCH_CHECK(slot_indices->numel() == N, op, ": slot_indices must have N elements");
    slots = slot_indices->contiguous();
  }
  Tensor o = at::empty({N, H, D}, q.options());
  const int nsplit = sbops::swa_decode_num_splits(N, static_cast<int>(H), static_cast<int>(HKV),
                                                  static_cast<int>(window), C);
  const int64_t wsf = sbops::swa_decode_workspace_floats(N, static_cast<int>(H), static_cast<int>(D), nsplit);
  Tensor ws = at::empty({wsf > 0 ? wsf : 1}, q.options().dtype(at::kFloat));
  check_launch(sbops::launch_swa_decode(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), dt, seq_lens.data_ptr(),
                                        lens64, slots.defined() ? slots.data_ptr() : nullptr, slots64, o.data_ptr(),
                                        N, static_cast<int>(H), static_cast<int>(HKV), static_cast<int>(D), C, S,
                                        static_cast<int>(window), static_cast<float>(scale), nsplit,
                                        ws.data_ptr<float>(), stream()),
               op);
  return o;
}

void swa_cache_write_cuda(const Tensor& k_in, const Tensor& v_in, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& positions_in, const std::optional<Tensor>& slot_indices) {
  const char* op = "swa_cache_write";
  check_cuda(k_in, op, "k");
  check_cuda(v_in, op, "v");
  check_cuda(positions_in, op, "positions");
  check_cache_pair(k_cache, v_cache, op);
  const auto dt = float_dtype(k_cache, op, "k_cache");
  TORCH_CHECK(k_in.scalar_type() == k_cache.scalar_type() && v_in.scalar_type() == k_cache.scalar_type(), op,
              ": k, v must have the caches' dtype");
  TORCH_CHECK(k_in.dim() == 3 && k_in.sizes() == v_in.sizes(), op, ": k and v must both be [N, HKV, D]");
  const int64_t N = k_in.size(0), HKV = k_in.size(1), D = k_in.size(2);
  TORCH_CHECK(k_cache.size(2) == HKV && k_cache.size(3) == D, op, ": cache must be [S, C, HKV, D] matching k");
  const bool pos64 = index_is64(positions_in, op, "positions");
  TORCH_CHECK(positions_in.numel() == N, op, ": positions must have N elements");
  c10::cuda::CUDAGuard guard(k_in.device());
  const Tensor k = k_in.contiguous(), v = v_in.contiguous(), positions = positions_in.contiguous();
  Tensor slots;
  bool slots64 = false;
  if (slot_indices.has_value()) {
    check_cuda(*slot_indices, op, "slot_indices");
    slots64 = index_is64(*slot_indices, op, "slot_indices");
    TORCH_CHECK(slot_indices->numel() == N, op, ": slot_indices must have N elements");
    slots = slot_indices->contiguous();
  }
  check_launch(sbops::launch_swa_cache_write(k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), dt,
                                             positions.data_ptr(), pos64, slots.defined() ? slots.data_ptr() : nullptr,
                                             slots64, N, static_cast<int>(HKV), static_cast<int>(D), k_cache.size(1),
                                             k_cache.size(0), stream()),
               op);
}

// q [B,T,H,128] and k, v [B,T,HKV,128] on one device in one 16-bit dtype, and a resolved window: the inputs the
// sm_90 SWA kernels (forward and backward) accept.  Returns {B, T, H, HKV}.
std::array<int64_t, 4> check_swa_sm90_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window,
                                          const char* op) {
  check_cuda(q, op, "q");
  check_cuda(k, op, "k");
  check_cuda(v, op, "v");
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), op, ": q, k, v must be on one device");
  const auto s = q.scalar_type();
  TORCH_CHECK(s == at::kBFloat16 || s == at::kHalf, op, ": q must be bfloat16 or float16, got ", s);
  TORCH_CHECK(k.scalar_type() == s && v.scalar_type() == s, op, ": q, k, v must share a dtype");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes(), op, ": q must be [B,T,H,D] and k, v [B,T,HKV,D]");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), HKV = k.size(2);
  TORCH_CHECK(D == sbops::kSwaFwdSm90HeadDim, op, ": head dim must be ", sbops::kSwaFwdSm90HeadDim, ", got ", D);
  TORCH_CHECK(k.size(0) == B && k.size(1) == T && k.size(3) == D && HKV >= 1 && H % HKV == 0, op,
              ": k, v must be [B,T,HKV,D] with H % HKV == 0");
  TORCH_CHECK(window >= 0 && window <= INT32_MAX, op, ": window must be resolved to [0, 2^31), got ", window);
  TORCH_CHECK(T <= INT32_MAX / 2 && B * T * H <= INT64_MAX / D, op, ": T too large");
  TORCH_CHECK(sbops::swa_fwd_sm90_available(), op, ": needs an sm_90 device and an sm_90a build of sbops");
  return {B, T, H, HKV};
}

// TMA reads 16-byte-aligned bases: a contiguous view at an odd storage offset is copied first
Tensor tma_ready(const Tensor& t) {
  const Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone(at::MemoryFormat::Contiguous);
}

// sbops_native::swa_attn_fwd_sm90: the Hopper forward of sbops::swa_attn for the cases it serves (bf16/fp16,
// D = 128, no varlen, no sinks; window already resolved, >= 0).  Called from the Python CUDA kernel of
// sbops::swa_attn (backends/cuda/sm90.py), never a public op.
std::tuple<Tensor, Tensor> swa_attn_fwd_sm90_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                  int64_t window, double scale) {
  const char* op = "swa_attn (sm90)";
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto [B, T, H, HKV] = check_swa_sm90_qkv(q_in, k_in, v_in, window, op);
  const int64_t D = sbops::kSwaFwdSm90HeadDim;
  const auto s = q_in.scalar_type();
  const Tensor q = tma_ready(q_in), k = tma_ready(k_in), v = tma_ready(v_in);
  Tensor o = at::empty({B, T, H, D}, q.options());
  Tensor lse = at::empty({B, T, H}, q.options().dtype(at::kFloat));
  check_launch(sbops::launch_swa_fwd_sm90(q.data_ptr(), k.data_ptr(), v.data_ptr(), to_dtype(s, op, "q"), o.data_ptr(),
                                          lse.data_ptr<float>(), static_cast<int>(B), static_cast<int>(T),
                                          static_cast<int>(H), static_cast<int>(HKV),
                                          static_cast<int>(window), static_cast<float>(scale), stream()),
               op);
  return {o, lse};
}

// sbops_native::swa_attn_bwd_sm90: the Hopper backward of sbops::swa_attn for the cases the sm_90 forward serves
// (window resolved, >= 0).  Returns (dq, dk, dv); with fuse_dq false dq is an empty tensor (the caller computes it).
std::tuple<Tensor, Tensor, Tensor> swa_attn_bwd_sm90_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                          const Tensor& o_in, const Tensor& lse_in,
                                                          const Tensor& grad_o_in,
                                                          const std::optional<Tensor>& grad_lse_in, int64_t window,
                                                          double scale, bool fuse_dq) {
  const char* op = "swa_attn_bwd (sm90)";
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto [B, T, H, HKV] = check_swa_sm90_qkv(q_in, k_in, v_in, window, op);
  const int64_t D = sbops::kSwaFwdSm90HeadDim;
  const auto s = q_in.scalar_type();
  check_cuda(o_in, op, "o");
  check_cuda(lse_in, op, "lse");
  check_cuda(grad_o_in, op, "grad_o");
  for (const Tensor* t : {&o_in, &lse_in, &grad_o_in})
    TORCH_CHECK(t->device() == q_in.device(), op, ": every tensor must be on q's device ", q_in.device());
  TORCH_CHECK(o_in.scalar_type() == s && grad_o_in.scalar_type() == s, op, ": o and grad_o must have q's dtype");
  TORCH_CHECK(lse_in.scalar_type() == at::kFloat, op, ": lse must be float32");
  TORCH_CHECK(o_in.sizes() == q_in.sizes() && grad_o_in.sizes() == q_in.sizes(), op, ": o, grad_o must be q's shape");
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == T && lse_in.size(2) == H, op,
              ": lse must be [B,T,H]");
  if (grad_lse_in.has_value()) {
    check_cuda(*grad_lse_in, op, "grad_lse");
    TORCH_CHECK(grad_lse_in->device() == q_in.device(), op, ": every tensor must be on q's device ", q_in.device());
    TORCH_CHECK(grad_lse_in->sizes() == lse_in.sizes(), op, ": grad_lse must be [B,T,H]");
  }
  TORCH_CHECK(B <= 65535 && HKV <= 65535, op, ": B and HKV must be <= 65535 (grid dimensions)");
  const Tensor q = tma_ready(q_in), k = tma_ready(k_in), v = tma_ready(v_in);
  const Tensor o = tma_ready(o_in), grad_o = tma_ready(grad_o_in), lse = lse_in.contiguous();
  Tensor glse;
  if (grad_lse_in.has_value()) glse = grad_lse_in->to(at::kFloat).contiguous();
  const int64_t Tpad = sbops::swa_bwd_sm90_padded_len(T);
  const auto f32 = q.options().dtype(at::kFloat);
  Tensor lse2 = at::empty({B, H, Tpad}, f32), delta = at::empty({B, H, Tpad}, f32);
  const auto dt = to_dtype(s, op, "q");
  check_launch(sbops::launch_swa_bwd_sm90_prep(o.data_ptr(), grad_o.data_ptr(), dt, lse.data_ptr<float>(),
                                               glse.defined() ? glse.data_ptr<float>() : nullptr,
                                               lse2.data_ptr<float>(), delta.data_ptr<float>(), static_cast<int>(B),
                                               static_cast<int>(T), static_cast<int>(H), stream()),
               op);
  Tensor dq_acc = fuse_dq ? at::zeros({B, T, H, D}, f32) : Tensor();
  Tensor dk = at::empty_like(k), dv = at::empty_like(v);
  check_launch(sbops::launch_swa_bwd_sm90(q.data_ptr(), k.data_ptr(), v.data_ptr(), grad_o.data_ptr(), dt,
                                          lse2.data_ptr<float>(), delta.data_ptr<float>(),
                                          fuse_dq ? dq_acc.data_ptr<float>() : nullptr, dk.data_ptr(), dv.data_ptr(),
                                          static_cast<int>(B), static_cast<int>(T), static_cast<int>(H),
                                          static_cast<int>(HKV), static_cast<int>(window), static_cast<float>(scale),
                                          stream()),
               op);
  Tensor dq = fuse_dq ? dq_acc.to(s) : at::empty({0}, q.options());
  return {dq, dk, dv};
}

bool swa_attn_fwd_sm90_available_cuda(const Tensor& like) {
  c10::cuda::CUDAGuard guard(like.device());
  return sbops::swa_fwd_sm90_available();
}

}  // namespace

// Every kernel must have exactly the C++ signature of the CPU backend's (backends/cpu/*.cpp): both
// live in sbops._C and torch rejects an op whose kernels disagree (str is `const std::string&`,
// mutable tensors `const Tensor&`).  tests/test_cuda_compile.py checks this without a GPU.
TORCH_LIBRARY_IMPL(sbops, CUDA, m) {
  m.impl("spike_encode", &spike_encode_cuda);
  m.impl("spike_quant", &spike_quant_cuda);
  m.impl("spike_expand", &spike_expand_cuda);
  m.impl("spike_collapse", &spike_collapse_cuda);
  m.impl("spike_stats", &spike_stats_cuda);
  m.impl("topk_gating", &topk_gating_cuda);
  m.impl("topk_gating_bwd", &topk_gating_bwd_cuda);
  m.impl("moe_permute", &moe_permute_cuda);
  m.impl("moe_permute_bwd", &moe_permute_bwd_cuda);
  m.impl("moe_unpermute", &moe_unpermute_cuda);
  m.impl("moe_unpermute_bwd", &moe_unpermute_bwd_cuda);
  m.impl("moe_align_block_size", &moe_align_block_size_cuda);
  m.impl("expert_counts", &expert_counts_cuda);
  m.impl("linear_attn_decode", &linear_attn_decode_cuda);
  m.impl("swa_decode", &swa_decode_cuda);
  m.impl("swa_cache_write", &swa_cache_write_cuda);
}

// Internal kernels that serve a public op from Python (not part of the sbops API).
TORCH_LIBRARY(sbops_native, m) {
  m.def("swa_attn_fwd_sm90(Tensor q, Tensor k, Tensor v, int window, float scale) -> (Tensor, Tensor)");
  m.def("swa_attn_fwd_sm90_available(Tensor like) -> bool");
  m.def(
      "swa_attn_bwd_sm90(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor grad_o, Tensor? grad_lse, "
      "int window, float scale, bool fuse_dq) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sbops_native, CUDA, m) {
  m.impl("swa_attn_fwd_sm90", &swa_attn_fwd_sm90_cuda);
  m.impl("swa_attn_fwd_sm90_available", &swa_attn_fwd_sm90_available_cuda);
  m.impl("swa_attn_bwd_sm90", &swa_attn_bwd_sm90_cuda);
}
