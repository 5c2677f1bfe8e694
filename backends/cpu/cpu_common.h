// Helpers shared by the CPU reference kernels (backends/cpu/*.cpp): sequence ranges from
// cu_seqlens, shape checks and checked index vectors.  Torch-side, CPU only.
#pragma once

#include <algorithm>

#include <cstdint>
#include <optional>
#include <vector>

#include "sbops/check.h"

namespace sbops::cpu {

using OptTensor = std::optional<Tensor>;

// Row ranges of the sequences in the flattened [B * T] token dimension.
struct Sequences {
  std::vector<int64_t> start, len;
  int64_t count() const { return static_cast<int64_t>(start.size()); }
};

// Without cu_seqlens every batch row is one sequence; with it (B must be 1) sequence n covers
// tokens cu[n] .. cu[n+1]-1.  Tokens no sequence covers get zero outputs and gradients.
// Bad-data guard: the frontend checks cu_seqlens on CPU tensors by default; unchecked, each offset
// is clamped into [0, T] and raised to the previous one (a running max), so every range lies in
// [0, T] and nothing is read or written out of bounds (the result for such input is unspecified).
inline Sequences sequences(const OptTensor& cu_seqlens, int64_t B, int64_t T, const char* op) {
  Sequences s;
  if (!cu_seqlens.has_value()) {
    for (int64_t b = 0; b < B; ++b) {
      s.start.push_back(b * T);
      s.len.push_back(T);
    }
    return s;
  }
  const Tensor& cu = *cu_seqlens;
  SBOPS_CHECK_INDEX_DTYPE(cu);
  SBOPS_CHECK(cu.dim() == 1 && cu.numel() >= 1, op, ": cu_seqlens must be 1-D [N+1], got shape ",
              cu.sizes());
  SBOPS_CHECK(B == 1, op, ": with cu_seqlens the batch size must be 1, got B=", B);
  const Tensor c = to_contig(cu, kLong);
  const int64_t* p = c.mutable_data_ptr<int64_t>();
  int64_t prev = std::min<int64_t>(std::max<int64_t>(p[0], 0), T);
  for (int64_t n = 0; n + 1 < c.numel(); ++n) {
    const int64_t next = std::max(prev, std::min<int64_t>(std::max<int64_t>(p[n + 1], 0), T));
    s.start.push_back(prev);
    s.len.push_back(next - prev);
    prev = next;
  }
  return s;
}

inline void check_shape(const Tensor& t, IntArrayRef expected, const char* op, const char* name) {
  SBOPS_CHECK(sbops::same_sizes(t.sizes(), expected), op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

// Values of an int32/int64 index tensor [n] as int64, unchecked: the kernels guard each value
// themselves (the frontend range-checks them on CPU tensors by default).
inline std::vector<int64_t> index_values(const Tensor& t, int64_t n, const char* op,
                                         const char* name) {
  SBOPS_CHECK_INDEX_DTYPE(t);
  SBOPS_CHECK(t.dim() == 1 && t.numel() == n, op, ": ", name, " must have shape [", n, "], got ",
              t.sizes());
  const Tensor c = to_contig(t, kLong);
  return std::vector<int64_t>(c.mutable_data_ptr<int64_t>(), c.mutable_data_ptr<int64_t>() + n);
}

// Slot of each of N sequences: `indices` (unchecked values), or i when absent (then N <= S).
inline std::vector<int64_t> slot_values(const OptTensor& indices, int64_t N, int64_t S,
                                        const char* op, const char* name) {
  if (indices.has_value()) return index_values(*indices, N, op, name);
  SBOPS_CHECK(N <= S, op, ": without ", name, " sequence i uses slot i, but there are only ", S,
              " slots for ", N, " sequences");
  std::vector<int64_t> slots(N);
  for (int64_t i = 0; i < N; ++i) slots[i] = i;
  return slots;
}

// A tensor updated in place (decode state, KV caches) is addressed through its strides; only its
// last dimension must be contiguous.
inline void check_inplace(const Tensor& t, const char* op, const char* name) {
  SBOPS_CHECK(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " is updated in place and must have a contiguous last dimension (stride 1), got "
              "strides ", t.strides());
  for (int64_t d = 0; d < t.dim(); ++d)  // an expanded tensor: its rows would share memory and the writes race
    SBOPS_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": ", name,
                " is updated in place and must not be expanded (stride 0 in dimension ", d, " of size ", t.size(d),
                "), got strides ", t.strides());
}

}  // namespace sbops::cpu
