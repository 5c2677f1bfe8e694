// The dense decode GEMV (kernels/dense_decode.cu) as the internal ops sbops_native::dense_decode{,_available}:
// y = x @ w^T (+ bias) for 1 <= M <= 32 rows of x, both float16 or both bfloat16.  Not a public sbops op: the
// model's linear layers (sbops.nn.common.linear) call it at decode on CUDA, F.linear elsewhere.
//
// x and w are read in place when their rows are 16-byte aligned with a unit last stride (else copied); the bias
// contiguous, in x's dtype as is, else float32.  No data is read back.

#include "../kernels/dense_decode.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;

Tensor dense_decode_cuda(const Tensor& x_in, const Tensor& w_in, const std::optional<Tensor>& bias_in,
                         int64_t layout) {
  const char* op = "sbops_native::dense_decode";
  check_cuda(x_in, op, "x");
  check_cuda(w_in, op, "weight");
  SBOPS_CHECK(x_in.scalar_type() == kBFloat16 || x_in.scalar_type() == kHalf, op,
              ": x must be bfloat16 or float16, got ", x_in.scalar_type());
  SBOPS_CHECK(w_in.scalar_type() == x_in.scalar_type(), op, ": weight must have x's dtype (", x_in.scalar_type(),
              "), got ", w_in.scalar_type());
  SBOPS_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && x_in.size(1) == w_in.size(1), op,
              ": x [M, K] and weight [N, K] expected, got ", x_in.sizes(), " and ", w_in.sizes());
  const int64_t M = x_in.size(0), K = x_in.size(1), N = w_in.size(0);
  SBOPS_CHECK(x_in.get_device_index() == w_in.get_device_index(), op, ": x and weight must be on one device");
  SBOPS_CHECK(layout >= -1 && layout < sbops::kDenseDecodeLayouts, op, ": layout must be -1 (default) or 0 .. ",
              sbops::kDenseDecodeLayouts - 1, ", got ", layout);
  if (bias_in.has_value()) {
    const auto bt = bias_in->scalar_type();
    SBOPS_CHECK(bt == x_in.scalar_type() || bt == kFloat, op, ": bias must have x's dtype (", x_in.scalar_type(),
                ") or float32, got ", bt);
  }
  DeviceGuard guard(x_in.get_device_index());
  SBOPS_CHECK(sbops::dense_decode_available(), op,
              ": not available here (needs an sm_80+ NVIDIA device and a build with code for it; not on MACA)");
  const Tensor bias = bias_operand(bias_in, x_in, "x", N, x_in.scalar_type(), op);
  if (M == 0 || N == 0) return empty_on({M, N}, x_in.scalar_type(), x_in);
  SBOPS_CHECK(sbops::dense_decode_supports(M, N, K), op, ": takes 1 <= M <= ", sbops::kDenseDecodeMaxRows,
              " rows of x and K a positive multiple of 8 below 2^31 (got M=", M, ", N=", N, ", K=", K, ")");
  const Tensor x = rows16_or_copy(x_in), w = rows16_or_copy(w_in);
  Tensor y = empty_on({M, N}, x.scalar_type(), x);
  sbops::DenseDecodeArgs a{};
  gemv_operands(a, x, w, bias, y);
  check_launch(sbops::launch_dense_decode(a, to_dtype(x.scalar_type(), op, "x"), static_cast<int>(layout), stream()),
               op);
  return y;
}

bool dense_decode_available_cuda(const Tensor& like) {
  DeviceGuard guard(like.get_device_index());
  return sbops::dense_decode_available();
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(sbops_native, m) {
  m.def("dense_decode(Tensor x, Tensor weight, Tensor? bias, int layout=-1) -> Tensor");
  m.def("dense_decode_available(Tensor like) -> bool");
}

STABLE_TORCH_LIBRARY_IMPL(sbops_native, CUDA, m) {
  m.impl("dense_decode", TORCH_BOX(&dense_decode_cuda));
  m.impl("dense_decode_available", TORCH_BOX(&dense_decode_available_cuda));
}
