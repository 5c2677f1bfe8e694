// C++ reference for spike coding (SPEC section 3; DESIGN.md "spike_*" conventions).
//
// Straightforward loops over raw pointers: inputs are converted to the compute dtype and made
// contiguous, results are converted to the output dtype at the end.  Rows (or count elements)
// are independent, so they are split over threads with at::parallel_for.  Everything that only
// the data can tell (negative binary counts, a T too small, a histogram overflow) is checked
// serially before the parallel loops, so errors are raised with a clear message and never from
// inside a worker thread.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "sbops/check.h"

namespace {

using namespace sbops;

enum class SpikeMode { Binary, Ternary, Bitwise };

SpikeMode parse_mode(const std::string& mode, const char* op) {
  if (mode == "binary") return SpikeMode::Binary;
  if (mode == "ternary") return SpikeMode::Ternary;
  if (mode == "bitwise") return SpikeMode::Bitwise;
  SBOPS_CHECK(false, op, ": unknown mode '", mode,
              "'; expected one of 'binary', 'ternary', 'bitwise'");
}

// |c| as an unsigned 64-bit value (exact even for INT64_MIN).
template <typename int_t>
uint64_t magnitude(int_t c) {
  if constexpr (std::is_signed_v<int_t>) {
    return c < 0 ? uint64_t{0} - static_cast<uint64_t>(static_cast<int64_t>(c))
                 : static_cast<uint64_t>(c);
  } else {
    return static_cast<uint64_t>(c);
  }
}

template <typename int_t>
int sign_of(int_t c) {
  return (c > 0) - (c < 0);
}

// Rows are the last dim; a grain of roughly 32K elements per task.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

void check_x_and_k(const Tensor& x, double k, const char* op) {
  SBOPS_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension");
  SBOPS_CHECK(x.size(-1) > 0, op, ": x's last dimension (the channel dim) must be non-empty");
  SBOPS_CHECK(is_floating(x.scalar_type()), op, ": x must be a floating tensor, got ",
              x.scalar_type());
  SBOPS_CHECK(k > 0, op, ": k must be > 0, got ", k);
}

// vth of one row of D values: clamp(mean(|x|) / k, 1e-5, 1e4) in scalar_t.  The sum of |x| is
// accumulated in double (ATen's CPU accumulation type for float), then the mean is rounded to
// scalar_t before the division by k, as in float32 `x.abs().mean(-1) / k`.  A NaN mean passes
// through the clamp unchanged, as torch.clamp does.
template <typename scalar_t>
scalar_t row_vth(const scalar_t* x, int64_t D, double k) {
  double sum = 0.0;
  for (int64_t i = 0; i < D; ++i) sum += std::abs(static_cast<double>(x[i]));
  const scalar_t mean = static_cast<scalar_t>(sum / static_cast<double>(D));
  scalar_t vth = mean / static_cast<scalar_t>(k);
  const scalar_t lo = static_cast<scalar_t>(1e-5), hi = static_cast<scalar_t>(1e4);
  if (vth < lo) vth = lo;
  else if (vth > hi) vth = hi;
  return vth;
}

// counts = nearbyint(x / vth) saturated to count_t's range.  The saturation is done in double,
// where every int32 bound is exact; a NaN quotient gives count 0 (casting NaN is undefined).
template <typename count_t>
count_t saturate_round(float q) {
  const double r = std::nearbyint(static_cast<double>(q));  // round half to even: q is a float,
                                                            // so this equals nearbyintf(q)
  if (std::isnan(r)) return 0;
  const double lo = static_cast<double>(std::numeric_limits<count_t>::min());
  const double hi = static_cast<double>(std::numeric_limits<count_t>::max());
  return static_cast<count_t>(r < lo ? lo : (r > hi ? hi : r));
}

template <typename count_t>
void encode_rows(const float* x, count_t* counts, float* vth, int64_t rows, int64_t D, double k) {
  torch::stable::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * D;
      const float v = row_vth(xr, D, k);
      vth[r] = v;
      for (int64_t i = 0; i < D; ++i) counts[r * D + i] = saturate_round<count_t>(xr[i] / v);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// spike_encode(x, k, out_dtype) -> (counts, vth).  Always float32 math (SPEC: "computed in
// float32 whatever x's dtype"), counts saturated to out_dtype, vth float32 [*x.shape[:-1], 1].
std::tuple<Tensor, Tensor> spike_encode_cpu(const Tensor& x, double k,
                                                    ScalarType out_dtype) {
  check_x_and_k(x, k, "spike_encode");
  SBOPS_CHECK(out_dtype == kChar || out_dtype == kShort || out_dtype == kInt,
              "spike_encode: out_dtype must be torch.int8, torch.int16 or torch.int32, got ",
              out_dtype);
  const Tensor xf = to_contig(x, kFloat);
  const int64_t D = x.size(-1);
  const int64_t rows = x.numel() / D;

  Tensor counts = empty_on(x.sizes(), out_dtype, x);
  std::vector<int64_t> vth_shape(x.sizes().begin(), x.sizes().end());
  vth_shape.back() = 1;
  Tensor vth = empty_on(vth_shape, kFloat, x);

  const float* xp = xf.const_data_ptr<float>();
  float* vp = vth.mutable_data_ptr<float>();
  switch (out_dtype) {
    case kChar: encode_rows(xp, counts.mutable_data_ptr<int8_t>(), vp, rows, D, k); break;
    case kShort: encode_rows(xp, counts.mutable_data_ptr<int16_t>(), vp, rows, D, k); break;
    default: encode_rows(xp, counts.mutable_data_ptr<int32_t>(), vp, rows, D, k); break;
  }
  return {counts, vth};
}

// ---------------------------------------------------------------------------------------------
// spike_quant(x, k) -> nearbyint(x / vth) * vth in x.dtype (no saturation).  float32 math, or
// float64 for float64 x.  The straight-through gradient is registered in Python.
Tensor spike_quant_cpu(const Tensor& x, double k) {
  check_x_and_k(x, k, "spike_quant");
  const ScalarType cdt = x.scalar_type() == kDouble ? kDouble : kFloat;
  const Tensor xc = to_contig(x, cdt);
  Tensor out = empty_on(x.sizes(), cdt, x);
  const int64_t D = x.size(-1);
  const int64_t rows = x.numel() / D;

  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "spike_quant_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* xr = xp + r * D;
        const scalar_t v = row_vth(xr, D, k);
        for (int64_t i = 0; i < D; ++i) op[r * D + i] = std::nearbyint(xr[i] / v) * v;
      }
    });
  });
  return cast(out, x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// spike_expand(counts, mode, T) -> int8 trains [T, *counts.shape].
//   binary:  s_t = (t < c),                       needs c >= 0 and c <= T
//   ternary: s_t = sign(c) * (t < |c|),            needs |c| <= T
//   bitwise: s_t = sign(c) * bit_{T-1-t}(|c|),     needs |c| < 2^T  (MSB first)
Tensor spike_expand_cpu(const Tensor& counts, const std::string& mode_str, int64_t T) {
  const SpikeMode mode = parse_mode(mode_str, "spike_expand");
  SBOPS_CHECK(T >= 1, "spike_expand: T must be >= 1, got ", T);
  SBOPS_CHECK(is_integral(counts.scalar_type()),
              "spike_expand: counts must be an integer tensor, got ", counts.scalar_type());
  const Tensor c = contig(counts);
  const int64_t n = c.numel();

  std::vector<int64_t> shape{T};
  shape.insert(shape.end(), counts.sizes().begin(), counts.sizes().end());
  Tensor trains = empty_on(shape, kChar, counts);
  int8_t* out = trains.mutable_data_ptr<int8_t>();

  SBOPS_DISPATCH_INTEGRAL_TYPES(c.scalar_type(), "spike_expand_cpu", [&] {
    const scalar_t* cp = c.const_data_ptr<scalar_t>();

    // Validation pass: the most negative count (binary) and the largest |count| (capacity).
    int64_t most_negative = 0;
    uint64_t max_abs = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (cp[i] < 0) most_negative = std::min<int64_t>(most_negative, static_cast<int64_t>(cp[i]));
      max_abs = std::max(max_abs, magnitude(cp[i]));
    }
    SBOPS_CHECK(mode != SpikeMode::Binary || most_negative >= 0,
                "spike_expand(mode='binary'): counts must be >= 0, found ", most_negative,
                " (use mode='ternary' or 'bitwise' for signed counts)");
    if (mode == SpikeMode::Bitwise) {
      // T >= 64 bits hold any 64-bit magnitude.
      SBOPS_CHECK(T >= 64 || max_abs < (uint64_t{1} << T), "spike_expand(mode='bitwise'): the "
                  "largest |count| is ", max_abs, " but T = ", T, " bits hold at most ",
                  (uint64_t{1} << T) - 1);
    } else {
      SBOPS_CHECK(max_abs <= static_cast<uint64_t>(T), "spike_expand(mode='", mode_str,
                  "'): the largest |count| is ", max_abs, " but T = ", T,
                  " steps hold at most ", T);
    }

    // Fill pass: for each step t, a contiguous slice of n outputs.
    torch::stable::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t t = 0; t < T; ++t) {
        int8_t* row = out + t * n;
        for (int64_t i = i0; i < i1; ++i) {
          const uint64_t mag = magnitude(cp[i]);
          int spike;
          if (mode == SpikeMode::Bitwise) {
            const int64_t bit = T - 1 - t;  // MSB first
            spike = bit < 64 ? static_cast<int>((mag >> bit) & 1u) : 0;
          } else {
            spike = static_cast<uint64_t>(t) < mag ? 1 : 0;
          }
          row[i] = static_cast<int8_t>(sign_of(cp[i]) * spike);
        }
      }
    });
  });
  return trains;
}

// ---------------------------------------------------------------------------------------------
// spike_collapse(trains, mode) -> int32 counts [*trains.shape[1:]]: sum_t s_t (binary, ternary)
// or sum_t 2^(T-1-t) s_t (bitwise, evaluated MSB first as acc = 2 * acc + s_t).  Train values are
// summed as given; a value or result outside int32 is an error.
Tensor spike_collapse_cpu(const Tensor& trains, const std::string& mode_str) {
  const SpikeMode mode = parse_mode(mode_str, "spike_collapse");
  SBOPS_CHECK(trains.dim() >= 1, "spike_collapse: trains must have at least 1 dimension [T, ...]");
  SBOPS_CHECK(is_integral(trains.scalar_type()),
              "spike_collapse: trains must be an integer tensor, got ", trains.scalar_type());
  const Tensor s = contig(trains);
  const int64_t T = trains.size(0);
  const int64_t n = T > 0 ? s.numel() / T : 0;
  Tensor counts = empty_on(trains.sizes().slice(1), kInt, trains);
  if (T == 0) return torch::stable::zero_(counts);
  int32_t* out = counts.mutable_data_ptr<int32_t>();
  std::atomic<bool> overflow{false};
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int32_t>::min();

  SBOPS_DISPATCH_INTEGRAL_TYPES(s.scalar_type(), "spike_collapse_cpu", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        int64_t acc = 0;
        bool fits = true;
        for (int64_t t = 0; t < T && fits; ++t) {
          const int64_t v = static_cast<int64_t>(sp[t * n + i]);
          // With |acc| and |v| both within int32 nothing below overflows int64.  In bitwise
          // mode an |acc| past int32 can only grow (|2 acc + v| > 2^31), so stopping is exact;
          // a binary/ternary sum may come back into range, so only the final value counts.
          if (v < kMin || v > kMax) {
            fits = false;
            break;
          }
          if (mode == SpikeMode::Bitwise) {
            acc = 2 * acc + v;
            fits = acc >= kMin && acc <= kMax;
          } else {
            acc += v;  // |acc| <= T * 2^31: no int64 overflow for any realistic T
          }
        }
        fits = fits && acc >= kMin && acc <= kMax;
        if (!fits) overflow = true;
        out[i] = fits ? static_cast<int32_t>(acc) : 0;
      }
    });
  });
  SBOPS_CHECK(!overflow, "spike_collapse(mode='", mode_str, "'): a train value or a collapsed "
              "count does not fit int32 (T = ", T, ")");
  return counts;
}

// ---------------------------------------------------------------------------------------------
// spike_stats(counts, max_abs) -> int64 histogram [max_abs + 1] of |counts|.
Tensor spike_stats_cpu(const Tensor& counts, int64_t max_abs) {
  SBOPS_CHECK(max_abs >= 0, "spike_stats: max_abs must be >= 0, got ", max_abs);
  SBOPS_CHECK(is_integral(counts.scalar_type()),
              "spike_stats: counts must be an integer tensor, got ", counts.scalar_type());
  const Tensor c = contig(counts);
  Tensor hist = zeros_on({max_abs + 1}, kLong, counts);
  int64_t* h = hist.mutable_data_ptr<int64_t>();
  uint64_t largest = 0;  // the largest |count|, reported if it exceeds max_abs
  SBOPS_DISPATCH_INTEGRAL_TYPES(c.scalar_type(), "spike_stats_cpu", [&] {
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < c.numel(); ++i) {
      const uint64_t mag = magnitude(cp[i]);
      largest = std::max(largest, mag);
      if (mag <= static_cast<uint64_t>(max_abs)) ++h[mag];
    }
  });
  SBOPS_CHECK(largest <= static_cast<uint64_t>(max_abs), "spike_stats: a count has |count| = ",
              largest, ", larger than max_abs = ", max_abs);
  return hist;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sbops, CPU, m) {
  m.impl("spike_encode", TORCH_BOX(&spike_encode_cpu));
  m.impl("spike_quant", TORCH_BOX(&spike_quant_cpu));
  m.impl("spike_expand", TORCH_BOX(&spike_expand_cpu));
  m.impl("spike_collapse", TORCH_BOX(&spike_collapse_cpu));
  m.impl("spike_stats", TORCH_BOX(&spike_stats_cpu));
}
