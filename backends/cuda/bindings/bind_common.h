// Helpers shared by the torch bindings of the CUDA C++ kernels (ops_*.cpp in this folder): dtype
// mapping, argument checks that name the argument, the current stream, launch-error reporting and
// the stride helpers of the hot paths.  Torch-side; internal to sbops._C.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <string>
#include <utility>

#include "sbops/launch.cuh"

namespace sbops::bind {

using at::Tensor;

inline sbops::DType to_dtype(at::ScalarType t, const char* op, const char* arg) {
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

inline void check_cuda(const Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor (got ", t.device(), ")");
}

// float32 / float16 / bfloat16 (the CUDA kernels do not take float64).
inline sbops::DType float_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", arg,
              " must be float32, float16 or bfloat16 on the cuda backend (got ", s, ")");
  return to_dtype(s, op, arg);
}

inline bool index_is64(const Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", arg,
              " must be int32 or int64 (got ", t.scalar_type(), ")");
  return t.scalar_type() == at::kLong;
}

inline sbops::DType int_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kChar || s == at::kShort || s == at::kInt || s == at::kLong, op, ": ", arg,
              " must be an integer tensor (int8, int16, int32 or int64), got ", s);
  return to_dtype(s, op, arg);
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err != cudaErrorInvalidValue, op, ": the cuda kernel does not support these inputs");
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// t itself when its last dimension is contiguous (the kernels read the outer dimensions through
// strides), else a dense copy.
inline Tensor unit_last_stride(const Tensor& t) {
  return (t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

// A dense copy of t whose base is 16-byte aligned (a dense view at an odd storage offset is cloned).
inline Tensor dense_aligned16(const Tensor& t) {
  const Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone(at::MemoryFormat::Contiguous);
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
