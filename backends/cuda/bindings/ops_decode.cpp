// Torch bindings of the decode-time CUDA kernels (linear_attn_decode.cu, swa_decode.cu):
// linear_attn_decode, swa_decode, swa_cache_write.
//
// The hot path reads views in place: q / k / v / g need only a unit last stride (their outer
// strides go to the kernels; others are copied).  The tensors updated in place (the decode state,
// k_cache / v_cache) must have a unit last stride (an error otherwise); their outer strides go to
// the kernels too.  The vectorised kernels need 16-byte aligned rows of the state and of the
// caches / sinks: operands without them are copied (the state is then copied back).  No binding
// reads data back: bad slots, lengths and positions are guarded inside the kernels.

#include <optional>
#include <utility>

#include "../kernels/decode.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;  // Tensor, checks, stream(), check_launch, stride helpers

void check_inplace_rows(const Tensor& t, const char* op, const char* arg) {
  SBOPS_CHECK(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", arg,
              " is updated in place and must have a contiguous last dimension (stride 1), got strides ",
              t.strides());
  for (int64_t d = 0; d < t.dim(); ++d)  // an expanded tensor: its rows would share memory and the writes race
    SBOPS_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": ", arg,
                " is updated in place and must not be expanded (stride 0 in dimension ", d, " of size ", t.size(d),
                "), got strides ", t.strides());
}

// An optional int32/int64 [N] index tensor on the device: (data pointer or null, is int64).
std::pair<Tensor, bool> index_arg(const std::optional<Tensor>& t, int64_t N, const char* op, const char* arg) {
  if (!t.has_value()) return {Tensor(), false};
  check_cuda(*t, op, arg);
  const bool is64 = index_is64(*t, op, arg);
  SBOPS_CHECK(t->numel() == N, op, ": ", arg, " must have N = ", N, " elements, got ", t->numel());
  return {contig(*t), is64};
}

// ------------------------------------------------------------------------------ linear_attn_decode
Tensor linear_attn_decode_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                               const std::optional<Tensor>& g_in, const Tensor& state,
                               const std::optional<Tensor>& state_indices, double scale) {
  const char* op = "linear_attn_decode";
  for (auto [t, name] : {std::pair<const Tensor*, const char*>{&q_in, "q"}, {&k_in, "k"}, {&v_in, "v"}, {&state, "state"}})
    check_cuda(*t, op, name);
  const auto qt = float_dtype(q_in, op, "q");
  SBOPS_CHECK(k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(), op,
              ": q, k, v must share a dtype");
  SBOPS_CHECK(state.scalar_type() == kFloat || state.scalar_type() == kBFloat16, op,
              ": state must be float32 or bfloat16");
  SBOPS_CHECK(q_in.dim() == 3 && k_in.dim() == 3 && v_in.dim() == 3 && state.dim() == 4, op,
              ": q [N,H,K], k [N,HKV,K], v [N,HKV,V], state [S,HKV,K,V] expected");
  check_inplace_rows(state, op, "state");
  const int64_t N = q_in.size(0), H = q_in.size(1), K = q_in.size(2), HKV = k_in.size(1), V = v_in.size(2);
  SBOPS_CHECK(k_in.size(0) == N && v_in.size(0) == N && k_in.size(2) == K && v_in.size(1) == HKV, op,
              ": inconsistent q/k/v shapes");
  SBOPS_CHECK(HKV >= 1 && H % HKV == 0, op, ": H must be a multiple of HKV");
  SBOPS_CHECK(state.size(1) == HKV && state.size(2) == K && state.size(3) == V, op, ": state must be [S, HKV, K, V]");
  SBOPS_CHECK(sbops::linear_attn_decode_supports(static_cast<int>(K), static_cast<int>(V)), op,
              ": the cuda kernel takes K in {64, 128} and V a multiple of 8 (got K=", K, ", V=", V, ")");
  DeviceGuard guard(q_in.get_device_index());
  const Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  sbops::GateMode gm = sbops::GateMode::None;
  Tensor g;
  sbops::DType gt = sbops::DType::F32;
  if (g_in.has_value()) {
    check_cuda(*g_in, op, "g");
    gt = float_dtype(*g_in, op, "g");
    if (g_in->dim() == 2 && g_in->size(0) == N && g_in->size(1) == HKV) {
      gm = sbops::GateMode::PerHead;
      g = *g_in;  // read through both strides
    } else if (g_in->dim() == 3 && g_in->size(0) == N && g_in->size(1) == HKV && g_in->size(2) == K) {
      gm = sbops::GateMode::PerKey;
      g = unit_last_stride(*g_in);
    } else {
      SBOPS_CHECK(false, op, ": g must be [N, HKV] or [N, HKV, K], got ", g_in->sizes());
    }
  }
  const auto [idx, idx64] = index_arg(state_indices, N, op, "state_indices");
  if (!idx.defined())
    SBOPS_CHECK(state.size(0) >= N, op, ": without state_indices the state needs at least N slots");
  // The kernel updates 16-byte vectors of state rows; a state without aligned rows is updated
  // through an aligned dense copy, written back afterwards.
  const int64_t es = state.element_size();
  const bool state_direct = sbops::rows_aligned16(state.data_ptr(), es, state.stride(0), state.stride(1), state.stride(2));
  Tensor st = state_direct ? state : dense_aligned16(state);
  sbops::LaDecodeStrides sd{q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                            g.defined() ? g.stride(0) : 0, g.defined() ? g.stride(1) : 0,
                            st.stride(0), st.stride(1), st.stride(2)};
  Tensor o = empty_on({N, H, V}, q.scalar_type(), q);
  check_launch(sbops::launch_linear_attn_decode(q.data_ptr(), k.data_ptr(), v.data_ptr(), qt,
                                                g.defined() ? g.data_ptr() : nullptr, gt, gm, st.data_ptr(),
                                                to_dtype(state.scalar_type(), op, "state"), state.size(0),
                                                idx.defined() ? idx.data_ptr() : nullptr, idx64, o.data_ptr(), N,
                                                static_cast<int>(H), static_cast<int>(HKV), static_cast<int>(K),
                                                static_cast<int>(V), static_cast<float>(scale), sd, stream()),
               op);
  if (!state_direct) torch::stable::copy_(const_cast<Tensor&>(state), st);
  return o;
}

// ------------------------------------------------------------------------------ SWA ring buffer
void check_cache_pair(const Tensor& kc, const Tensor& vc, const char* op) {
  check_cuda(kc, op, "k_cache");
  check_cuda(vc, op, "v_cache");
  SBOPS_CHECK(kc.dim() == 4 && sbops::same_sizes(kc.sizes(), vc.sizes()), op, ": k_cache and v_cache must both be [S, C, HKV, D], got ",
              kc.sizes(), " and ", vc.sizes());
  SBOPS_CHECK(kc.scalar_type() == vc.scalar_type(), op, ": k_cache and v_cache must share a dtype");
  SBOPS_CHECK(kc.size(1) >= 1, op, ": the caches have no rows (C = 0)");
}

sbops::SwaCacheStrides cache_strides(const Tensor& kc, const Tensor& vc) {
  return {kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2)};
}

Tensor swa_decode_cuda(const Tensor& q_in, const Tensor& k_cache_in, const Tensor& v_cache_in,
                       const Tensor& seq_lens_in, int64_t window, double scale,
                       const std::optional<Tensor>& slot_indices, const std::optional<Tensor>& sink_k,
                       const std::optional<Tensor>& sink_v) {
  const char* op = "swa_decode";
  check_cuda(q_in, op, "q");
  check_cuda(seq_lens_in, op, "seq_lens");
  check_cache_pair(k_cache_in, v_cache_in, op);
  const auto dt = float_dtype(q_in, op, "q");
  SBOPS_CHECK(k_cache_in.scalar_type() == q_in.scalar_type(), op, ": q and the caches must share a dtype");
  SBOPS_CHECK(q_in.dim() == 3, op, ": q must be [N, H, D], got shape ", q_in.sizes());
  const int64_t N = q_in.size(0), H = q_in.size(1), D = q_in.size(2);
  const int64_t S = k_cache_in.size(0), C = k_cache_in.size(1), HKV = k_cache_in.size(2);
  SBOPS_CHECK(k_cache_in.size(3) == D, op, ": cache head dim ", k_cache_in.size(3), " != q head dim ", D);
  SBOPS_CHECK(HKV >= 1 && H % HKV == 0, op, ": H must be a multiple of HKV");
  SBOPS_CHECK(sbops::swa_decode_supports(static_cast<int>(D), dt), op, ": the cuda kernel takes D in {64, 128}, got ",
              D);
  const bool lens64 = index_is64(seq_lens_in, op, "seq_lens");
  SBOPS_CHECK(seq_lens_in.numel() == N, op, ": seq_lens must have N elements");
  SBOPS_CHECK(sink_k.has_value() == sink_v.has_value(), op, ": sink_k and sink_v must be given together");
  DeviceGuard guard(q_in.get_device_index());
  const Tensor q = unit_last_stride(q_in), seq_lens = contig(seq_lens_in);
  // The caches are only read here: views without 16-byte aligned rows are read from a copy.
  const Tensor k_cache = rows16_or_copy(k_cache_in), v_cache = rows16_or_copy(v_cache_in);
  const auto [slots, slots64] = index_arg(slot_indices, N, op, "slot_indices");
  sbops::SwaSinks sinks;
  Tensor sk, sv;
  if (sink_k.has_value()) {
    check_cuda(*sink_k, op, "sink_k");
    check_cuda(*sink_v, op, "sink_v");
    SBOPS_CHECK(sink_k->scalar_type() == q_in.scalar_type() && sink_v->scalar_type() == q_in.scalar_type(), op,
                ": sink_k and sink_v must have q's dtype ", q_in.scalar_type());
    SBOPS_CHECK(sink_k->dim() == 3 && sink_k->size(1) == HKV && sink_k->size(2) == D && sbops::same_sizes(sink_v->sizes(), sink_k->sizes()),
                op, ": sink_k and sink_v must be [M, ", HKV, ", ", D, "], got ", sink_k->sizes(), " and ",
                sink_v->sizes());
    if (sink_k->size(0) > 0) {
      sk = rows16_or_copy(*sink_k);
      sv = rows16_or_copy(*sink_v);
      sinks = sbops::SwaSinks{sk.data_ptr(), sv.data_ptr(), sk.size(0), sk.stride(0), sk.stride(1), sv.stride(0),
                              sv.stride(1)};
    }
  }
  Tensor o = empty_on({N, H, D}, q.scalar_type(), q);
  const int nsplit = sbops::swa_decode_num_splits(N, static_cast<int>(H), static_cast<int>(HKV),
                                                  static_cast<int>(window), C, sinks.M, dt);
  const int64_t wsf = sbops::swa_decode_workspace_floats(N, static_cast<int>(H), static_cast<int>(D), nsplit);
  Tensor ws = empty_on({wsf > 0 ? wsf : 1}, kFloat, q);
  check_launch(sbops::launch_swa_decode(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), dt, seq_lens.data_ptr(),
                                        lens64, slots.defined() ? slots.data_ptr() : nullptr, slots64, o.data_ptr(),
                                        N, static_cast<int>(H), static_cast<int>(HKV), static_cast<int>(D), C, S,
                                        static_cast<int>(window), static_cast<float>(scale), nsplit,
                                        ws.mutable_data_ptr<float>(), q.stride(0), q.stride(1),
                                        cache_strides(k_cache, v_cache), sinks, stream()),
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
  check_inplace_rows(k_cache, op, "k_cache");
  check_inplace_rows(v_cache, op, "v_cache");
  const auto dt = float_dtype(k_cache, op, "k_cache");
  SBOPS_CHECK(k_in.scalar_type() == k_cache.scalar_type() && v_in.scalar_type() == k_cache.scalar_type(), op,
              ": k, v must have the caches' dtype");
  SBOPS_CHECK(k_in.dim() == 3 && sbops::same_sizes(k_in.sizes(), v_in.sizes()), op, ": k and v must both be [N, HKV, D]");
  const int64_t N = k_in.size(0), HKV = k_in.size(1), D = k_in.size(2);
  SBOPS_CHECK(k_cache.size(2) == HKV && k_cache.size(3) == D, op, ": cache must be [S, C, HKV, D] matching k");
  const bool pos64 = index_is64(positions_in, op, "positions");
  SBOPS_CHECK(positions_in.numel() == N, op, ": positions must have N elements");
  DeviceGuard guard(k_in.get_device_index());
  const Tensor k = unit_last_stride(k_in), v = unit_last_stride(v_in), positions = contig(positions_in);
  const auto [slots, slots64] = index_arg(slot_indices, N, op, "slot_indices");
  check_launch(sbops::launch_swa_cache_write(k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), dt,
                                             positions.data_ptr(), pos64, slots.defined() ? slots.data_ptr() : nullptr,
                                             slots64, N, static_cast<int>(HKV), static_cast<int>(D), k_cache.size(1),
                                             k_cache.size(0), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                             cache_strides(k_cache, v_cache), stream()),
               op);
}

}  // namespace

// Signatures match the CPU backend's (see ops_spike.cpp).
STABLE_TORCH_LIBRARY_IMPL(sbops, CUDA, m) {
  m.impl("linear_attn_decode", TORCH_BOX(&linear_attn_decode_cuda));
  m.impl("swa_decode", TORCH_BOX(&swa_decode_cuda));
  m.impl("swa_cache_write", TORCH_BOX(&swa_cache_write_cuda));
}
