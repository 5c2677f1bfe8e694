// Helpers shared by the CPU reference kernels (backends/cpu/*.cpp): sequence ranges from
// cu_seqlens, shape checks and checked index vectors.  Torch-side, CPU only.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "sbops/check.h"

namespace sbops::cpu {

using OptTensor = std::optional<at::Tensor>;

// Row ranges of the sequences in the flattened [B * T] token dimension.
struct Sequences {
  std::vector<int64_t> start, len;
  int64_t count() const { return static_cast<int64_t>(start.size()); }
};

// Without cu_seqlens every batch row is one sequence; with it (B must be 1) sequence n covers
// tokens cu[n] .. cu[n+1]-1.  Tokens no sequence covers get zero outputs and gradients.
inline Sequences sequences(const OptTensor& cu_seqlens, int64_t B, int64_t T, const char* op) {
  Sequences s;
  if (!cu_seqlens.has_value()) {
    for (int64_t b = 0; b < B; ++b) {
      s.start.push_back(b * T);
      s.len.push_back(T);
    }
    return s;
  }
  const at::Tensor& cu = *cu_seqlens;
  SBOPS_CHECK_INDEX_DTYPE(cu);
  TORCH_CHECK(cu.dim() == 1 && cu.numel() >= 1, op, ": cu_seqlens must be 1-D [N+1], got shape ",
              cu.sizes());
  TORCH_CHECK(B == 1, op, ": with cu_seqlens the batch size must be 1, got B=", B);
  const at::Tensor c = cu.to(at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t n = 0; n + 1 < c.numel(); ++n) {
    TORCH_CHECK(0 <= p[n] && p[n] <= p[n + 1] && p[n + 1] <= T, op,
                ": cu_seqlens must be non-decreasing within [0, T=", T, "], got cu_seqlens[", n,
                "]=", p[n], ", cu_seqlens[", n + 1, "]=", p[n + 1]);
    s.start.push_back(p[n]);
    s.len.push_back(p[n + 1] - p[n]);
  }
  return s;
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

// Values of an int32/int64 index tensor [n] as int64, each checked to lie in [lo, hi).
inline std::vector<int64_t> index_vector(const at::Tensor& t, int64_t n, int64_t lo, int64_t hi,
                                         const char* op, const char* name) {
  SBOPS_CHECK_INDEX_DTYPE(t);
  TORCH_CHECK(t.dim() == 1 && t.numel() == n, op, ": ", name, " must have shape [", n, "], got ",
              t.sizes());
  const at::Tensor c = t.to(at::kLong).contiguous();
  std::vector<int64_t> idx(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + n);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(lo <= idx[i] && idx[i] < hi, op, ": ", name, "[", i, "]=", idx[i],
                " is out of range [", lo, ", ", hi, ")");
  return idx;
}

}  // namespace sbops::cpu
