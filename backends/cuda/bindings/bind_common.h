// Helpers shared by the torch bindings of the CUDA C++ kernels (ops_*.cpp in this folder): dtype
// mapping, argument checks that name the argument, the current stream, launch-error reporting and
// the stride helpers of the hot paths.  Torch-side, on the LibTorch stable ABI only (sbops/check.h):
// no ATen or c10::cuda header; the device guard, the current stream and the op calls go through the
// stable C shim.  Internal to the native library.
#pragma once

#include <cuda_runtime_api.h>
#include <torch/csrc/stable/accelerator.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "sbops/check.h"
#include "sbops/launch.cuh"

// The CUDA part of the stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h declares it only under
// USE_CUDA), exported by libtorch_cuda since torch 2.x.
extern "C" AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace sbops::bind {

using namespace sbops;  // Tensor, ScalarType, k*, SBOPS_CHECK helpers, cast/contig/empty_on/zeros_on
using torch::stable::accelerator::DeviceGuard;

// (min, max) of t through the dispatcher's aten::aminmax (no stable wrapper exists for it).
inline std::pair<Tensor, Tensor> aminmax(const Tensor& t) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(t),
                                    torch::stable::detail::from(std::optional<int64_t>()),
                                    torch::stable::detail::from(false)};
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::aminmax", "", stack.data(), TORCH_ABI_VERSION));
  return {torch::stable::detail::to<Tensor>(stack[0]), torch::stable::detail::to<Tensor>(stack[1])};
}

inline sbops::DType to_dtype(ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case kFloat: return sbops::DType::F32;
    case kHalf: return sbops::DType::F16;
    case kBFloat16: return sbops::DType::BF16;
    case kDouble: return sbops::DType::F64;
    case kChar: return sbops::DType::I8;
    case kShort: return sbops::DType::I16;
    case kInt: return sbops::DType::I32;
    case kLong: return sbops::DType::I64;
    default: throw std::runtime_error(str(op, ": ", arg, " has unsupported dtype ", t));
  }
}

inline void check_cuda(const Tensor& t, const char* op, const char* arg) {
  SBOPS_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor (got ", t.device(), ")");
}

// float32 / float16 / bfloat16 (the CUDA kernels do not take float64).
inline sbops::DType float_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  SBOPS_CHECK(s == kFloat || s == kHalf || s == kBFloat16, op, ": ", arg,
              " must be float32, float16 or bfloat16 on the cuda backend (got ", s, ")");
  return to_dtype(s, op, arg);
}

inline bool index_is64(const Tensor& t, const char* op, const char* arg) {
  SBOPS_CHECK(t.scalar_type() == kInt || t.scalar_type() == kLong, op, ": ", arg,
              " must be int32 or int64 (got ", t.scalar_type(), ")");
  return t.scalar_type() == kLong;
}

inline sbops::DType int_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  SBOPS_CHECK(s == kChar || s == kShort || s == kInt || s == kLong, op, ": ", arg,
              " must be an integer tensor (int8, int16, int32 or int64), got ", s);
  return to_dtype(s, op, arg);
}

// The current stream of the current device (set by the DeviceGuard each binding opens), from the
// stable shim's CUDA part.
inline cudaStream_t stream() {
  void* s = nullptr;
  const int32_t dev = torch::stable::accelerator::getCurrentDeviceIndex();
  SBOPS_CHECK(aoti_torch_get_current_cuda_stream(dev, &s) == AOTI_TORCH_SUCCESS,
              "sbops: could not get the current CUDA stream of device ", dev);
  return static_cast<cudaStream_t>(s);
}

inline void check_launch(cudaError_t err, const char* op) {
  SBOPS_CHECK(err != cudaErrorInvalidValue, op, ": the cuda kernel does not support these inputs");
  SBOPS_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
  const cudaError_t last = cudaGetLastError();
  SBOPS_CHECK(last == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(last));
}

// t itself when its last dimension is contiguous (the kernels read the outer dimensions through
// strides), else a dense copy.
inline Tensor unit_last_stride(const Tensor& t) {
  return (t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1) ? t : contig(t);
}

// A dense copy of t whose base is 16-byte aligned (a dense view at an odd storage offset is cloned).
inline Tensor dense_aligned16(const Tensor& t) {
  const Tensor c = contig(t);
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : torch::stable::clone(c);
}

// t when it can be read in place with 16-byte row vectors: unit last stride, 16-byte aligned base
// and outer strides that are whole multiples of 16 bytes; else dense_aligned16(t).
inline Tensor rows16_or_copy(const Tensor& t) {
  if (t.dim() >= 1 && (t.size(-1) <= 1 || t.stride(-1) == 1) &&
      reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) {
    bool ok = true;
    for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && (t.stride(d) * t.element_size()) % 16 == 0;
    if (ok) return t;
  }
  return dense_aligned16(t);
}

// The optional bias [N] of a GEMV / GEMM binding, on the device of its input `like` (named like_name in errors):
// contiguous, in `dtype` as it is (the models' 16-bit biases: no conversion launch per call), else float32.  An
// undefined tensor without a bias.
inline Tensor bias_operand(const std::optional<Tensor>& bias, const Tensor& like, const char* like_name, int64_t N,
                           ScalarType dtype, const char* op) {
  if (!bias.has_value()) return Tensor();
  check_cuda(*bias, op, "bias");
  SBOPS_CHECK(bias->get_device_index() == like.get_device_index(), op, ": bias must be on ", like_name, "'s device");
  SBOPS_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N], got ", bias->sizes());
  return bias->scalar_type() == dtype ? contig(*bias) : to_contig(*bias, kFloat);
}

// The operands a decode GEMV's argument struct holds (SpikeDecodeArgs, DenseDecodeArgs): x [M, K] and w [N, K] with
// their row strides (rows16_or_copy'd), the optional bias (bias_operand; read in x's dtype where it has it), y [M, N]
// dense, the sizes.
template <typename Args>
void gemv_operands(Args& a, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  a.x = x.data_ptr();
  a.w = w.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.bias_x_dtype = bias.defined() && bias.scalar_type() == x.scalar_type();
  a.y = y.data_ptr();
  a.ldx = M > 1 ? x.stride(0) : K;
  a.ldw = N > 1 ? w.stride(0) : K;
  a.ldy = N;
  a.M = static_cast<int>(M);
  a.N = static_cast<int>(N);
  a.K = static_cast<int>(K);
}

// Element stride between consecutive rows of t viewed as [numel / size(-1), size(-1)] when that
// view exists in place (unit last stride; the outer dimensions collapse to one stride, as for
// x[:, t] or a split of a fused projection), else -1.
inline int64_t row_stride(const Tensor& t) {
  if (t.dim() == 0) return -1;
  if (t.size(-1) > 1 && t.stride(-1) != 1) return -1;
  int64_t rs = -1, span = 0;  // stride of the innermost non-trivial outer dim; its extent so far
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (rs < 0) {
      rs = t.stride(d);
    } else if (t.stride(d) != span) {
      return -1;
    }
    span = t.stride(d) * t.size(d);
  }
  if (rs < 0) rs = t.size(-1);  // a single row
  return rs >= t.size(-1) ? rs : -1;  // rows must not overlap
}

}  // namespace sbops::bind
