// spike_linear at decode on the CUDA C++ kernel (kernels/spike_decode.cu).  Not a public sbops op: the
// Triton registration of sbops::spike_linear (backends/cuda/triton/spike_linear.py) calls it for the cases
// it covers (e4m3 or int8 weights, per-channel scales, 16-bit x, M <= 8), so it is one of the internal kernels in
// the sbops_native library (ops_swa_sm90.cpp defines it), with a CUDA kernel only.
//
// x is read in place when its rows are 16-byte aligned with a unit last stride (else copied); the weight
// likewise; the scale is made float32 and contiguous, the bias contiguous (in x's dtype as is, else float32).
// No data is read back.

#include "../kernels/spike.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;

Tensor spike_linear_decode_cuda(const Tensor& x_in, const Tensor& w_in, const Tensor& scale_in, double k,
                                const std::optional<Tensor>& bias_in) {
  const char* op = "sbops_native::spike_linear_decode";
  check_cuda(x_in, op, "x");
  check_cuda(w_in, op, "weight_q");
  check_cuda(scale_in, op, "weight_scale");
  SBOPS_CHECK(x_in.scalar_type() == kBFloat16 || x_in.scalar_type() == kHalf, op,
              ": x must be bfloat16 or float16, got ", x_in.scalar_type());
  SBOPS_CHECK(w_in.scalar_type() == ScalarType::Float8_e4m3fn || w_in.scalar_type() == kChar, op,
              ": weight_q must be float8_e4m3fn or int8, got ", w_in.scalar_type());
  const bool w_int8 = w_in.scalar_type() == kChar;
  SBOPS_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && x_in.size(1) == w_in.size(1), op,
              ": x [M, K] and weight_q [N, K] expected, got ", x_in.sizes(), " and ", w_in.sizes());
  const int64_t M = x_in.size(0), K = x_in.size(1), N = w_in.size(0);
  SBOPS_CHECK(scale_in.dim() == 1 && scale_in.size(0) == N, op, ": weight_scale must be [N] (per channel), got ",
              scale_in.sizes());
  SBOPS_CHECK(x_in.get_device_index() == w_in.get_device_index() &&
                  x_in.get_device_index() == scale_in.get_device_index(),
              op, ": x, weight_q and weight_scale must be on one device");
  SBOPS_CHECK(k > 0, op, ": k must be positive, got ", k);
  SBOPS_CHECK(sbops::spike_decode_supports(M, N, K), op, ": takes 1 <= M <= ", sbops::kSpikeDecodeMaxRows,
              " rows and K a multiple of 16 (got M=", M, ", K=", K, ")");
  DeviceGuard guard(x_in.get_device_index());
  const Tensor x = rows16_or_copy(x_in), w = rows16_or_copy(w_in);
  const Tensor scale = to_contig(scale_in, kFloat);
  const Tensor bias = bias_operand(bias_in, x_in, "x", N, x.scalar_type(), op);
  Tensor y = empty_on({M, N}, x.scalar_type(), x);
  sbops::SpikeDecodeArgs a{};
  gemv_operands(a, x, w, bias, y);
  a.scale = scale.const_data_ptr<float>();
  a.k = static_cast<float>(k);
  a.w_int8 = w_int8;
  Tensor ws;  // the encode's planes; none where the GEMVs compute the counts themselves (SBOPS_DECODE_ENCODE=fused)
  const int layout = sbops::spike_decode_default_layout(M, N, K, w_int8);
  if (!sbops::spike_decode_layout_fused(layout)) {
    ws = empty_on({sbops::spike_decode_workspace_bytes(M, K)}, kByte, x);
    sbops::spike_decode_workspace(a, ws.data_ptr());
  }
  check_launch(sbops::launch_spike_decode(a, to_dtype(x.scalar_type(), op, "x"), layout, stream()), op);
  return y;
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(sbops_native, m) {
  m.def("spike_linear_decode(Tensor x, Tensor weight_q, Tensor weight_scale, float k, Tensor? bias) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(sbops_native, CUDA, m) {
  m.impl("spike_linear_decode", TORCH_BOX(&spike_linear_decode_cuda));
}
