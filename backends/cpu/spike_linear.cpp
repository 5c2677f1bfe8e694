// C++ reference for spike_linear (W8ASpike): y = vth * (s @ dequant(weight_q, weight_scale)^T) + bias,
// with vth and s = nearbyint(x / vth) exactly as spike_encode computes them (float32 threshold and
// quotient), and the products accumulated in double.  Counts are never saturated: they are used as
// doubles.  Inputs of any strides (made contiguous here: this is the reference, not the hot path).

#include <cmath>
#include <cstdint>
#include <vector>

#include "sbops/check.h"

namespace {

using namespace sbops;

Tensor spike_linear_cpu(const Tensor& x_in, const Tensor& weight_q_in,
                            const Tensor& weight_scale_in, double k,
                            const std::optional<Tensor>& bias_in, int64_t group_size) {
  SBOPS_CHECK(x_in.dim() == 2, "spike_linear: x must be [M, K] (the wrapper flattens leading dims)");
  SBOPS_CHECK(is_floating(x_in.scalar_type()), "spike_linear: x must be a floating tensor");
  SBOPS_CHECK(k > 0, "spike_linear: k must be > 0, got ", k);
  const int64_t M = x_in.size(0), K = x_in.size(1), N = weight_q_in.size(0);
  SBOPS_CHECK(weight_q_in.dim() == 2 && weight_q_in.size(1) == K, "spike_linear: weight_q must be [N, ", K, "]");
  const bool per_group = group_size > 0;
  const int64_t G = per_group ? K / group_size : 1;
  SBOPS_CHECK(!per_group || K % group_size == 0, "spike_linear: K=", K, " must be a multiple of group_size=", group_size);
  SBOPS_CHECK(weight_q_in.scalar_type() == kChar || weight_q_in.scalar_type() == ScalarType::Float8_e4m3fn,
              "spike_linear: weight_q must be int8 or float8_e4m3fn");
  const bool scale_ok = per_group ? weight_scale_in.dim() == 2 && weight_scale_in.size(0) == N &&
                                        weight_scale_in.size(1) == G
                                  : weight_scale_in.dim() == 1 && weight_scale_in.size(0) == N;
  if (per_group)
    SBOPS_CHECK(scale_ok, "spike_linear: weight_scale must be [N, K // group_size] = [", N, ", ", G, "], got shape ",
                weight_scale_in.sizes());
  else
    SBOPS_CHECK(scale_ok, "spike_linear: weight_scale must be [N] = [", N, "] (per output channel), got shape ",
                weight_scale_in.sizes());
  SBOPS_CHECK(is_floating(weight_scale_in.scalar_type()), "spike_linear: weight_scale must be a floating tensor");
  const Tensor x = to_contig(x_in, kFloat);
  const Tensor wq = to_contig(weight_q_in, kDouble);  // int8 or float8 values, exact in double
  const Tensor sc = torch::stable::reshape(to_contig(weight_scale_in, kDouble), {N, G});
  Tensor y = empty_on({M, N}, kDouble, x_in);
  const float* xp = x.const_data_ptr<float>();
  const double* wp = wq.const_data_ptr<double>();
  const double* sp = sc.const_data_ptr<double>();
  double* yp = y.mutable_data_ptr<double>();
  std::vector<double> bias;
  if (bias_in.has_value()) {
    const Tensor b = to_contig(*bias_in, kDouble);
    SBOPS_CHECK(b.numel() == N, "spike_linear: bias must have ", N, " elements");
    bias.assign(b.const_data_ptr<double>(), b.const_data_ptr<double>() + N);
  }
  const int64_t gs = per_group ? group_size : K;
  torch::stable::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
    std::vector<double> c(K);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * K;
      double sum = 0.0;  // as spike_encode: |x| summed in double, mean rounded to float, / k, clamp
      for (int64_t i = 0; i < K; ++i) sum += std::fabs(static_cast<double>(xr[i]));
      float vth = static_cast<float>(sum / static_cast<double>(K)) / static_cast<float>(k);
      vth = std::fmin(std::fmax(vth, 1e-5f), 1e4f);
      for (int64_t i = 0; i < K; ++i) c[i] = std::nearbyint(static_cast<double>(xr[i] / vth));
      for (int64_t n = 0; n < N; ++n) {
        const double* wr = wp + n * K;
        double acc = 0.0;
        for (int64_t g = 0; g < G; ++g) {
          double part = 0.0;
          for (int64_t i = g * gs; i < (g + 1) * gs; ++i) part += c[i] * wr[i];
          acc += part * sp[n * G + g];
        }
        yp[r * N + n] = static_cast<double>(vth) * acc + (bias.empty() ? 0.0 : bias[n]);
      }
    }
  });
  return cast(y, x_in.scalar_type());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sbops, CPU, m) { m.impl("spike_linear", TORCH_BOX(&spike_linear_cpu)); }
