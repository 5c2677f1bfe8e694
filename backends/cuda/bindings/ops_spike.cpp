// Torch bindings of the spike-coding CUDA kernels (backends/cuda/kernels/spike.cu).
// spike_encode / spike_quant read x in place when its rows are one stride apart (x[:, t], splits of
// a fused projection) and, where the rows are whole 16-byte vectors, at 16-byte aligned row starts;
// other layouts are copied (so a view gives exactly the contiguous call's bits).  Outputs are dense.

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../kernels/spike.cuh"
#include "bind_common.h"

namespace {

using namespace sbops::bind;  // Tensor, checks, stream(), check_launch, stride helpers

// Minimum and largest |c| of an integer tensor: one reduction and ONE device-to-host copy (both
// extremes travel together).  Only the spike_expand / spike_stats data checks use it (DESIGN.md:
// the C++ side still checks what only data can tell there); the MoE ops skip out-of-range ids in
// the kernels instead of reading a flag back, so none of the routing ops synchronises.
std::pair<int64_t, int64_t> min_and_max_abs(const Tensor& c) {
  if (c.numel() == 0) return {0, 0};
  const auto [lo, hi] = aminmax(c);
  Tensor both = empty_on({2}, kLong, c);  // on the device; copy_ converts the dtype
  Tensor lo_slot = torch::stable::select(both, 0, 0), hi_slot = torch::stable::select(both, 0, 1);
  torch::stable::copy_(lo_slot, lo);
  torch::stable::copy_(hi_slot, hi);
  const Tensor host = torch::stable::to(both, Device(torch::headeronly::DeviceType::CPU));
  const int64_t mn = host.const_data_ptr<int64_t>()[0], mx = host.const_data_ptr<int64_t>()[1];
  const int64_t amn = mn < 0 ? -mn : mn, amx = mx < 0 ? -mx : mx;
  return {mn, amn > amx ? amn : amx};
}

sbops::SpikeMode spike_mode(const std::string& mode, const char* op) {
  if (mode == "binary") return sbops::SpikeMode::Binary;
  if (mode == "ternary") return sbops::SpikeMode::Ternary;
  if (mode == "bitwise") return sbops::SpikeMode::Bitwise;
  SBOPS_CHECK(false, op, ": mode must be 'binary', 'ternary' or 'bitwise', got '", mode, "'");
}


// x itself when its rows are one element stride apart (returned in xs), else a dense aligned copy.
// The kernels read 16-byte vectors when cols, the row stride and the base allow it, else scalars,
// and the two paths sum a row's |x| in different orders (another float32 rounding of vth).  A view
// must give its dense copy's bits, so one that would lose the vector path only through its row
// stride or base (padded rows, an odd split offset, a misaligned storage offset) is copied too.
Tensor rows_of(const Tensor& x_in, int64_t& xs) {
  xs = row_stride(x_in);
  const int64_t vec = 16 / x_in.element_size(), cols = x_in.size(-1);
  if (xs >= 0 && (cols % vec != 0 || (xs % vec == 0 && reinterpret_cast<uintptr_t>(x_in.data_ptr()) % 16 == 0)))
    return x_in;
  const Tensor x = dense_aligned16(x_in);
  xs = cols;
  return x;
}

std::tuple<Tensor, Tensor> spike_encode_cuda(const Tensor& x_in, double k, ScalarType out_dtype) {
  const char* op = "spike_encode";
  check_cuda(x_in, op, "x");
  const auto xt = float_dtype(x_in, op, "x");
  SBOPS_CHECK(out_dtype == kChar || out_dtype == kShort || out_dtype == kInt, op,
              ": out_dtype must be int8, int16 or int32 (got ", out_dtype, ")");
  SBOPS_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, op, ": x needs a non-empty last dimension");
  DeviceGuard guard(x_in.get_device_index());
  int64_t xs = 0;
  const Tensor x = rows_of(x_in, xs);
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  Tensor counts = empty_on(x.sizes(), out_dtype, x);
  auto vshape = x.sizes().vec();
  vshape.back() = 1;
  Tensor vth = empty_on(vshape, kFloat, x);
  check_launch(sbops::launch_spike_encode(x.data_ptr(), xs, xt, counts.data_ptr(), to_dtype(out_dtype, op, "out_dtype"),
                                          vth.mutable_data_ptr<float>(), rows, cols, static_cast<float>(k), stream()),
               op);
  return {counts, vth};
}

Tensor spike_quant_cuda(const Tensor& x_in, double k) {
  const char* op = "spike_quant";
  check_cuda(x_in, op, "x");
  const auto xt = float_dtype(x_in, op, "x");
  SBOPS_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, op, ": x needs a non-empty last dimension");
  DeviceGuard guard(x_in.get_device_index());
  int64_t xs = 0;
  const Tensor x = rows_of(x_in, xs);
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  Tensor x_hat = empty_on(x.sizes(), x.scalar_type(), x);
  check_launch(sbops::launch_spike_quant(x.data_ptr(), xs, xt, x_hat.data_ptr(), rows, cols, static_cast<float>(k),
                                         stream()),
               op);
  return x_hat;
}

Tensor spike_expand_cuda(const Tensor& counts_in, const std::string& mode_s, int64_t T) {
  const char* op = "spike_expand";
  check_cuda(counts_in, op, "counts");
  const auto ct = int_dtype(counts_in, op, "counts");
  const auto mode = spike_mode(mode_s, op);
  SBOPS_CHECK(T >= 1, op, ": T must be >= 1, got ", T);
  DeviceGuard guard(counts_in.get_device_index());
  const Tensor counts = contig(counts_in);
  const auto [mn, max_abs] = min_and_max_abs(counts);
  if (mode == sbops::SpikeMode::Binary)
    SBOPS_CHECK(mn >= 0, op, ": binary spike trains need counts >= 0 (found ", mn, ")");
  if (mode == sbops::SpikeMode::Bitwise) {
    SBOPS_CHECK(T <= 63, op, ": bitwise T must be <= 63, got ", T);
    SBOPS_CHECK(T == 63 || (max_abs >> T) == 0, op, ": the largest |count| ", max_abs, " needs more than T = ", T,
                " bits");
  } else {
    SBOPS_CHECK(max_abs <= T, op, ": the largest |count| ", max_abs, " does not fit in T = ", T, " steps");
  }
  std::vector<int64_t> shape{T};
  for (auto s : counts.sizes()) shape.push_back(s);
  Tensor trains = empty_on(shape, kChar, counts);
  check_launch(sbops::launch_spike_expand(counts.data_ptr(), ct, trains.mutable_data_ptr<int8_t>(), counts.numel(), mode,
                                          static_cast<int>(T), stream()),
               op);
  return trains;
}

Tensor spike_collapse_cuda(const Tensor& trains_in, const std::string& mode_s) {
  const char* op = "spike_collapse";
  check_cuda(trains_in, op, "trains");
  const auto tt = int_dtype(trains_in, op, "trains");
  const auto mode = spike_mode(mode_s, op);
  SBOPS_CHECK(trains_in.dim() >= 1, op, ": trains must have a leading time dimension");
  DeviceGuard guard(trains_in.get_device_index());
  const Tensor trains = contig(trains_in);
  const int64_t T = trains.size(0);
  Tensor counts = empty_on(trains.sizes().slice(1), kInt, trains);
  if (T == 0) return torch::stable::zero_(counts);
  check_launch(sbops::launch_spike_collapse(trains.data_ptr(), tt, counts.mutable_data_ptr<int32_t>(), counts.numel(),
                                            static_cast<int>(T), mode, stream()),
               op);
  return counts;
}

Tensor spike_stats_cuda(const Tensor& counts_in, int64_t max_abs) {
  const char* op = "spike_stats";
  check_cuda(counts_in, op, "counts");
  const auto ct = int_dtype(counts_in, op, "counts");
  SBOPS_CHECK(max_abs >= 0, op, ": max_abs must be >= 0, got ", max_abs);
  DeviceGuard guard(counts_in.get_device_index());
  const Tensor counts = contig(counts_in);
  const int64_t found = min_and_max_abs(counts).second;
  SBOPS_CHECK(found <= max_abs, op, ": found |count| = ", found, " above max_abs = ", max_abs);
  Tensor hist = empty_on({max_abs + 1}, kLong, counts);
  check_launch(sbops::launch_spike_hist(counts.data_ptr(), ct, hist.mutable_data_ptr<int64_t>(), counts.numel(), max_abs,
                                        stream()),
               op);
  return hist;
}
}  // namespace

// Every kernel must have exactly the C++ signature of the CPU backend's (backends/cpu/*.cpp): both
// live in sbops._C and torch rejects an op whose kernels disagree (str is `const std::string&`,
// mutable tensors `const Tensor&`).  tests/test_cuda_compile.py checks this without a GPU.
STABLE_TORCH_LIBRARY_IMPL(sbops, CUDA, m) {
  m.impl("spike_encode", TORCH_BOX(&spike_encode_cuda));
  m.impl("spike_quant", TORCH_BOX(&spike_quant_cuda));
  m.impl("spike_expand", TORCH_BOX(&spike_expand_cuda));
  m.impl("spike_collapse", TORCH_BOX(&spike_collapse_cuda));
  m.impl("spike_stats", TORCH_BOX(&spike_stats_cuda));
}
