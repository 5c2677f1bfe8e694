// Torch bindings of the Hopper (sm_90a) SWA forward / backward kernels (swa_fwd_sm90.cu,
// swa_bwd_sm90.cu): the internal ops sbops_native::swa_attn_{fwd,bwd}_sm90, called from
// backends/cuda/sm90.py.  TMA needs dense 16-byte aligned operands: strided inputs are copied
// (tma_ready).

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "../kernels/swa_bwd.cuh"
#include "../kernels/swa_fwd.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;  // Tensor, checks, stream(), check_launch, stride helpers

// q [B,Tq,H,128] and k, v [B,T,HKV,128] on one device in one 16-bit dtype, and a resolved window: the inputs the
// sm_90 SWA kernels accept.  Tq == T, or (tail_q: the forward) 1 <= Tq <= T: q holds the last Tq positions.
// Returns {B, Tq, T, H, HKV}.
std::array<int64_t, 5> check_swa_sm90_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window,
                                          const char* op, bool tail_q = false) {
  check_cuda(q, op, "q");
  check_cuda(k, op, "k");
  check_cuda(v, op, "v");
  SBOPS_CHECK(q.device() == k.device() && q.device() == v.device(), op, ": q, k, v must be on one device");
  const auto s = q.scalar_type();
  SBOPS_CHECK(s == kBFloat16 || s == kHalf, op, ": q must be bfloat16 or float16, got ", s);
  SBOPS_CHECK(k.scalar_type() == s && v.scalar_type() == s, op, ": q, k, v must share a dtype");
  SBOPS_CHECK(q.dim() == 4 && k.dim() == 4 && sbops::same_sizes(k.sizes(), v.sizes()), op, ": q must be [B,T,H,D] and k, v [B,T,HKV,D]");
  const int64_t B = q.size(0), Tq = q.size(1), T = k.size(1), H = q.size(2), D = q.size(3), HKV = k.size(2);
  SBOPS_CHECK(D == sbops::kSwaFwdSm90HeadDim, op, ": head dim must be ", sbops::kSwaFwdSm90HeadDim, ", got ", D);
  SBOPS_CHECK(k.size(0) == B && k.size(3) == D && HKV >= 1 && H % HKV == 0, op,
              ": k, v must be [B,T,HKV,D] with q's B and D and H % HKV == 0");
  if (tail_q)
    SBOPS_CHECK(Tq <= T, op, ": q's length (", Tq, ") must not exceed k's (", T, "): q holds the last positions");
  else
    SBOPS_CHECK(Tq == T, op, ": q and k must have one length, got ", Tq, " and ", T);
  SBOPS_CHECK(window >= 0 && window <= INT32_MAX, op, ": window must be resolved to [0, 2^31), got ", window);
  SBOPS_CHECK(T <= INT32_MAX / 2 && B * T * H <= INT64_MAX / D, op, ": T too large");
  SBOPS_CHECK(sbops::swa_fwd_sm90_available(), op, ": needs an sm_90 device and an sm_90a build of sbops");
  return {B, Tq, T, H, HKV};
}

// The TMA descriptors describe dense [B*T*H, D] tensors from a 16-byte aligned base: strided views
// and dense views at an odd storage offset are copied first.
Tensor tma_ready(const Tensor& t) { return dense_aligned16(t); }

// sbops_native::swa_attn_fwd_sm90: the Hopper forward of sbops::swa_attn for the cases it serves (bf16/fp16,
// D = 128, no varlen, no sinks; window already resolved, >= 0).  Called from the Python CUDA kernel of
// sbops::swa_attn (backends/cuda/sm90.py), never a public op.  q may be shorter than k, v: it then holds their last
// q.size(1) positions (the model's prefill chunk after its cached window: nn.attention), o and lse q's rows only.
std::tuple<Tensor, Tensor> swa_attn_fwd_sm90_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                  int64_t window, double scale) {
  const char* op = "swa_attn (sm90)";
  DeviceGuard guard(q_in.get_device_index());
  const auto [B, Tq, T, H, HKV] = check_swa_sm90_qkv(q_in, k_in, v_in, window, op, /*tail_q=*/true);
  const int64_t D = sbops::kSwaFwdSm90HeadDim;
  const auto s = q_in.scalar_type();
  const Tensor q = tma_ready(q_in), k = tma_ready(k_in), v = tma_ready(v_in);
  Tensor o = empty_on({B, Tq, H, D}, q.scalar_type(), q);
  Tensor lse = empty_on({B, Tq, H}, kFloat, q);
  check_launch(sbops::launch_swa_fwd_sm90(q.data_ptr(), k.data_ptr(), v.data_ptr(), to_dtype(s, op, "q"), o.data_ptr(),
                                          lse.mutable_data_ptr<float>(), static_cast<int>(B), static_cast<int>(Tq),
                                          static_cast<int>(T), static_cast<int>(H), static_cast<int>(HKV),
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
  DeviceGuard guard(q_in.get_device_index());
  const auto [B, Tq, T, H, HKV] = check_swa_sm90_qkv(q_in, k_in, v_in, window, op);
  (void)Tq;  // == T
  const int64_t D = sbops::kSwaFwdSm90HeadDim;
  const auto s = q_in.scalar_type();
  check_cuda(o_in, op, "o");
  check_cuda(lse_in, op, "lse");
  check_cuda(grad_o_in, op, "grad_o");
  for (const Tensor* t : {&o_in, &lse_in, &grad_o_in})
    SBOPS_CHECK(t->device() == q_in.device(), op, ": every tensor must be on q's device ", q_in.device());
  SBOPS_CHECK(o_in.scalar_type() == s && grad_o_in.scalar_type() == s, op, ": o and grad_o must have q's dtype");
  SBOPS_CHECK(lse_in.scalar_type() == kFloat, op, ": lse must be float32");
  SBOPS_CHECK(sbops::same_sizes(o_in.sizes(), q_in.sizes()) && sbops::same_sizes(grad_o_in.sizes(), q_in.sizes()), op, ": o, grad_o must be q's shape");
  SBOPS_CHECK(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == T && lse_in.size(2) == H, op,
              ": lse must be [B,T,H]");
  if (grad_lse_in.has_value()) {
    check_cuda(*grad_lse_in, op, "grad_lse");
    SBOPS_CHECK(grad_lse_in->device() == q_in.device(), op, ": every tensor must be on q's device ", q_in.device());
    SBOPS_CHECK(sbops::same_sizes(grad_lse_in->sizes(), lse_in.sizes()), op, ": grad_lse must be [B,T,H]");
  }
  SBOPS_CHECK(B <= 65535 && HKV <= 65535, op, ": B and HKV must be <= 65535 (grid dimensions)");
  const Tensor q = tma_ready(q_in), k = tma_ready(k_in), v = tma_ready(v_in);
  const Tensor o = tma_ready(o_in), grad_o = tma_ready(grad_o_in), lse = contig(lse_in);
  Tensor glse;
  if (grad_lse_in.has_value()) glse = to_contig(*grad_lse_in, kFloat);
  const int64_t Tpad = sbops::swa_bwd_sm90_padded_len(T);
  Tensor lse2 = empty_on({B, H, Tpad}, kFloat, q), delta = empty_on({B, H, Tpad}, kFloat, q);
  const auto dt = to_dtype(s, op, "q");
  check_launch(sbops::launch_swa_bwd_sm90_prep(o.data_ptr(), grad_o.data_ptr(), dt, lse.mutable_data_ptr<float>(),
                                               glse.defined() ? glse.mutable_data_ptr<float>() : nullptr,
                                               lse2.mutable_data_ptr<float>(), delta.mutable_data_ptr<float>(), static_cast<int>(B),
                                               static_cast<int>(T), static_cast<int>(H), stream()),
               op);
  Tensor dq_acc = fuse_dq ? zeros_on({B, T, H, D}, kFloat, q) : Tensor();
  Tensor dk = empty_as(k), dv = empty_as(v);
  check_launch(sbops::launch_swa_bwd_sm90(q.data_ptr(), k.data_ptr(), v.data_ptr(), grad_o.data_ptr(), dt,
                                          lse2.mutable_data_ptr<float>(), delta.mutable_data_ptr<float>(),
                                          fuse_dq ? dq_acc.mutable_data_ptr<float>() : nullptr, dk.data_ptr(), dv.data_ptr(),
                                          static_cast<int>(B), static_cast<int>(T), static_cast<int>(H),
                                          static_cast<int>(HKV), static_cast<int>(window), static_cast<float>(scale),
                                          stream()),
               op);
  Tensor dq = fuse_dq ? cast(dq_acc, s) : empty_on({0}, q.scalar_type(), q);
  return {dq, dk, dv};
}

bool swa_attn_fwd_sm90_available_cuda(const Tensor& like) {
  DeviceGuard guard(like.get_device_index());
  return sbops::swa_fwd_sm90_available();
}

}  // namespace


// Internal kernels that serve a public op from Python (not part of the sbops API).
STABLE_TORCH_LIBRARY(sbops_native, m) {
  m.def("swa_attn_fwd_sm90(Tensor q, Tensor k, Tensor v, int window, float scale) -> (Tensor, Tensor)");
  m.def("swa_attn_fwd_sm90_available(Tensor like) -> bool");
  m.def(
      "swa_attn_bwd_sm90(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor grad_o, Tensor? grad_lse, "
      "int window, float scale, bool fuse_dq) -> (Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(sbops_native, CUDA, m) {
  m.impl("swa_attn_fwd_sm90", TORCH_BOX(&swa_attn_fwd_sm90_cuda));
  m.impl("swa_attn_fwd_sm90_available", TORCH_BOX(&swa_attn_fwd_sm90_available_cuda));
  m.impl("swa_attn_bwd_sm90", TORCH_BOX(&swa_attn_bwd_sm90_cuda));
}
