// Torch binding of the Hopper int8 GEMM with spike_linear's int_mm epilogue (kernels/int8_gemm_sm90.cu): the
// internal ops sbops_native::int8_gemm_sm90{,_available}, called from spike_linear's int_mm prefill path
// (backends/cuda/triton/spike_linear.py) instead of torch._int_mm + the Triton epilogue where the kernel exists, and
// int8_gemm_swiglu_sm90 (SwiGLU's gate / up with silu(g) * u in the epilogue: spike_linear_swiglu.py); and the same
// kernel with bfloat16 operands, bf16_gemm_sm90 and bf16_gemm_swiglu_sm90 (the bf16 model's gate / up: nn.common).
// a and b are read in place when TMA can (16-byte aligned base, unit column stride, row stride a multiple of 16
// bytes), else copied; vth and scale are made float32 and contiguous; the bias is read in y's dtype or float32.

#include <array>

#include "../kernels/int8_gemm.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;

constexpr int64_t kMaxK = ((int64_t{1} << 31) - 1) / (128 * 128);  // |sum| <= 128 * 128 * K fits int32

// rows TMA can read in place (16-byte aligned, row stride a multiple of 16 bytes and at least a row: no expanded or
// overlapping rows), else a dense aligned copy
Tensor rows_for_tma(const Tensor& t) {
  const Tensor r = rows16_or_copy(t);
  return r.size(0) > 1 && r.stride(0) < r.size(1) ? dense_aligned16(r) : r;
}

// The checks of both operand types' ops: a [M, K] and b [N, K] CUDA tensors of `dtype` (named dtype_name), the
// cluster and the group; returns {M, K, N}
std::array<int64_t, 3> gemm_operands(const char* op, const Tensor& a, const Tensor& b, ScalarType dtype,
                                     const char* dtype_name, int64_t cluster, int64_t group) {
  check_cuda(a, op, "a");
  check_cuda(b, op, "b");
  SBOPS_CHECK(a.scalar_type() == dtype && b.scalar_type() == dtype, op, ": a and b must be ", dtype_name, ", got ",
              a.scalar_type(), " and ", b.scalar_type());
  SBOPS_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), op, ": a [M, K] and b [N, K] expected, got ",
              a.sizes(), " and ", b.sizes());
  SBOPS_CHECK(cluster == 1 || cluster == 2, op, ": cluster must be 1 or 2, got ", cluster);
  SBOPS_CHECK(group >= 0, op, ": group must be >= 0 (0: the kernel's default), got ", group);
  return {a.size(0), a.size(1), b.size(0)};
}

// y [M, N] (or, with swiglu, h [M, N / 2] and side: see int8_gemm_swiglu_sm90_cuda)
std::tuple<Tensor, Tensor> run(const char* op, const Tensor& a_in, const Tensor& b_in, const Tensor& vth_in,
                               const Tensor& scale_in, const std::optional<Tensor>& bias_in, ScalarType out_dtype,
                               int64_t cluster, int64_t workers, int64_t group, bool swiglu,
                               const std::optional<Tensor>& flags_in, const std::optional<Tensor>& sums = std::nullopt) {
  const auto [M, K, N] = gemm_operands(op, a_in, b_in, kChar, "int8", cluster, group);
  check_cuda(vth_in, op, "vth");
  check_cuda(scale_in, op, "scale");
  SBOPS_CHECK(out_dtype == kBFloat16 || out_dtype == kHalf, op, ": out_dtype must be bfloat16 or float16, got ",
              out_dtype);
  SBOPS_CHECK(K % 16 == 0 && N % 2 == 0, op, ": K must be a multiple of 16 and N even, got K=", K, ", N=", N);
  SBOPS_CHECK(K <= kMaxK, op, ": K must be <= ", kMaxK, " (int32 sums of int8 products), got ", K);
  SBOPS_CHECK(vth_in.dim() == 1 && vth_in.size(0) == M, op, ": vth must be [M], got ", vth_in.sizes());
  SBOPS_CHECK(scale_in.dim() == 1 && scale_in.size(0) == N, op, ": scale must be [N], got ", scale_in.sizes());
  const auto dev = a_in.get_device_index();
  SBOPS_CHECK(b_in.get_device_index() == dev && vth_in.get_device_index() == dev &&
                  scale_in.get_device_index() == dev,
              op, ": a, b, vth and scale must be on one device");
  DeviceGuard guard(dev);
  SBOPS_CHECK(sbops::int8_gemm_sm90_available(), op, ": needs an sm_90 device and an sm_90a build of sbops");
  const Tensor a = rows_for_tma(a_in), b = rows_for_tma(b_in);
  const Tensor vth = to_contig(vth_in, kFloat), scale = to_contig(scale_in, kFloat);
  const Tensor bias = bias_operand(bias_in, a_in, "a", N, out_dtype, op);
  if (swiglu)
    SBOPS_CHECK(N % 256 == 0, op, ": b must hold 2 I rows (gate, then up) with I a multiple of 128, got ", N, " rows");
  Tensor flags;
  if (flags_in.has_value()) {
    check_cuda(*flags_in, op, "row_flags");
    SBOPS_CHECK(flags_in->scalar_type() == kInt && flags_in->dim() == 1 && flags_in->size(0) == (M + 15) / 16 &&
                    flags_in->get_device_index() == dev,
                op, ": row_flags must be int32 [ceil(M / 16)] on a's device, got ", flags_in->scalar_type(), " ",
                flags_in->sizes());
    flags = to_contig(*flags_in, kInt);
  }
  if (sums.has_value()) {  // written in place: float32 [M, >= I / 128], unit column stride
    check_cuda(*sums, op, "row_sums");
    SBOPS_CHECK(sums->scalar_type() == kFloat && sums->dim() == 2 && sums->size(0) == M &&
                    sums->size(1) >= N / 256 && (sums->size(1) <= 1 || sums->stride(1) == 1) &&
                    (M <= 1 || sums->stride(0) >= sums->size(1)) &&
                    sums->get_device_index() == dev,
                op, ": row_sums must be float32 [M, >= I / 128] = [", M, ", ", N / 256,
                "] with unit column stride and rows that do not overlap, on a's device, got ", sums->scalar_type(), " ",
                sums->sizes(), " strides ", sums->strides());
  }
  Tensor y = empty_on({M, swiglu ? N / 2 : N}, out_dtype, a);
  // the pre-activations of flagged row blocks: allocated (not written) only where flags may mark some
  Tensor side = empty_on({flags.defined() ? M : 0, N}, out_dtype, a);
  if (M == 0 || N == 0) return {y, side};
  const sbops::Int8GemmSwiglu sw{N / 2, flags.defined() ? flags.const_data_ptr<int32_t>() : nullptr,
                                 flags.defined() ? side.data_ptr() : nullptr, N,
                                 sums.has_value() ? sums->mutable_data_ptr<float>() : nullptr,
                                 sums.has_value() ? sums->stride(0) : 0};
  check_launch(sbops::launch_int8_gemm_sm90(
                   static_cast<const int8_t*>(a.data_ptr()), M > 1 ? a.stride(0) : K,
                   static_cast<const int8_t*>(b.data_ptr()), N > 1 ? b.stride(0) : K, vth.const_data_ptr<float>(),
                   scale.const_data_ptr<float>(), bias.defined() ? bias.data_ptr() : nullptr,
                   bias.defined() ? to_dtype(bias.scalar_type(), op, "bias") : sbops::DType::F32, y.data_ptr(),
                   y.size(1), to_dtype(out_dtype, op, "out_dtype"), M, N, K, static_cast<int>(cluster), workers,
                   group, stream(), swiglu ? &sw : nullptr),
               op);
  return {y, side};
}

Tensor int8_gemm_sm90_cuda(const Tensor& a, const Tensor& b, const Tensor& vth, const Tensor& scale,
                           const std::optional<Tensor>& bias, ScalarType out_dtype, int64_t cluster, int64_t workers,
                           int64_t group) {
  return std::get<0>(run("sbops_native::int8_gemm_sm90", a, b, vth, scale, bias, out_dtype, cluster, workers, group,
                         false, std::nullopt));
}

// SwiGLU's gate / up (b = [gate; up], 2 I rows): (h [M, I] = silu(g) * u, side [M or 0, 2 I]); with row_flags
// ([ceil(M / 16)] int32), the rows of blocks flagged > 0 get their g and u in side; with row_sums (float32 [M, >= I /
// 128], written in place), the sums of |h| over each 128-column tile of a row (see kernels/int8_gemm.cuh)
std::tuple<Tensor, Tensor> int8_gemm_swiglu_sm90_cuda(const Tensor& a, const Tensor& b, const Tensor& vth,
                                                      const Tensor& scale, const std::optional<Tensor>& bias,
                                                      ScalarType out_dtype, const std::optional<Tensor>& row_flags,
                                                      int64_t cluster, int64_t workers, int64_t group,
                                                      const std::optional<Tensor>& row_sums) {
  return run("sbops_native::int8_gemm_swiglu_sm90", a, b, vth, scale, bias, out_dtype, cluster, workers, group, true,
             row_flags, row_sums);
}

// The bfloat16 GEMM (session 41): y [M, N] = a [M, K] @ b [N, K]^T (+ bias), or with swiglu (b = [gate; up], 2 I
// rows, I a multiple of 128) h [M, I] = silu(g) * u; float32 accumulation, one rounding
Tensor run_bf16(const char* op, const Tensor& a_in, const Tensor& b_in, const std::optional<Tensor>& bias_in,
                int64_t cluster, int64_t workers, int64_t group, bool swiglu) {
  const auto [M, K, N] = gemm_operands(op, a_in, b_in, kBFloat16, "bfloat16", cluster, group);
  SBOPS_CHECK(K > 0 && K % 8 == 0 && N % 8 == 0, op, ": K must be a positive multiple of 8 and N a multiple of 8, got K=",
              K, ", N=", N);
  if (swiglu)
    SBOPS_CHECK(N % 256 == 0, op, ": b must hold 2 I rows (gate, then up) with I a multiple of 128, got ", N, " rows");
  SBOPS_CHECK(b_in.get_device_index() == a_in.get_device_index(), op, ": a and b must be on one device");
  DeviceGuard guard(a_in.get_device_index());
  SBOPS_CHECK(sbops::int8_gemm_sm90_available(), op, ": needs an sm_90 device and an sm_90a build of sbops");
  const Tensor a = rows_for_tma(a_in), b = rows_for_tma(b_in);
  const Tensor bias = bias_operand(bias_in, a_in, "a", N, kBFloat16, op);
  Tensor y = empty_on({M, swiglu ? N / 2 : N}, kBFloat16, a);
  if (M == 0 || N == 0) return y;
  check_launch(sbops::launch_bf16_gemm_sm90(
                   a.data_ptr(), M > 1 ? a.stride(0) : K, b.data_ptr(), N > 1 ? b.stride(0) : K,
                   bias.defined() ? bias.data_ptr() : nullptr,
                   bias.defined() ? to_dtype(bias.scalar_type(), op, "bias") : sbops::DType::F32, y.data_ptr(),
                   y.size(1), M, N, K, static_cast<int>(cluster), workers, group, swiglu ? N / 2 : 0, stream()),
               op);
  return y;
}

Tensor bf16_gemm_sm90_cuda(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias, int64_t cluster,
                           int64_t workers, int64_t group) {
  return run_bf16("sbops_native::bf16_gemm_sm90", a, b, bias, cluster, workers, group, false);
}

Tensor bf16_gemm_swiglu_sm90_cuda(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias,
                                  int64_t cluster, int64_t workers, int64_t group) {
  return run_bf16("sbops_native::bf16_gemm_swiglu_sm90", a, b, bias, cluster, workers, group, true);
}

bool int8_gemm_sm90_available_cuda(const Tensor& like) {
  DeviceGuard guard(like.get_device_index());
  return sbops::int8_gemm_sm90_available();
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(sbops_native, m) {
  m.def("int8_gemm_sm90(Tensor a, Tensor b, Tensor vth, Tensor scale, Tensor? bias, ScalarType out_dtype, "
        "int cluster=2, int workers=0, int group=0) -> Tensor");
  m.def("int8_gemm_swiglu_sm90(Tensor a, Tensor b, Tensor vth, Tensor scale, Tensor? bias, ScalarType out_dtype, "
        "Tensor? row_flags=None, int cluster=2, int workers=0, int group=0, Tensor(a!)? row_sums=None) "
        "-> (Tensor, Tensor)");
  m.def("int8_gemm_sm90_available(Tensor like) -> bool");
  m.def("bf16_gemm_sm90(Tensor a, Tensor b, Tensor? bias=None, int cluster=2, int workers=0, int group=0) -> Tensor");
  m.def("bf16_gemm_swiglu_sm90(Tensor a, Tensor b, Tensor? bias=None, int cluster=2, int workers=0, int group=0) "
        "-> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(sbops_native, CUDA, m) {
  m.impl("int8_gemm_sm90", TORCH_BOX(&int8_gemm_sm90_cuda));
  m.impl("int8_gemm_swiglu_sm90", TORCH_BOX(&int8_gemm_swiglu_sm90_cuda));
  m.impl("int8_gemm_sm90_available", TORCH_BOX(&int8_gemm_sm90_available_cuda));
  m.impl("bf16_gemm_sm90", TORCH_BOX(&bf16_gemm_sm90_cuda));
  m.impl("bf16_gemm_swiglu_sm90", TORCH_BOX(&bf16_gemm_swiglu_sm90_cuda));
}
