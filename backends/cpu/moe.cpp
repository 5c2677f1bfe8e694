// C++ reference for MoE routing (SPEC section 4; DESIGN.md "topk_gating" .. "expert_counts").
//
// Straightforward loops over raw pointers: float inputs are converted to the compute dtype
// (float32, or float64 when an input is float64) and made contiguous, index inputs to int64;
// results are converted to the output dtype at the end.  Independent rows (tokens) are split
// over threads with at::parallel_for.  Index data is never trusted: expert ids outside [0, E) and
// row_map entries outside [0, R) are treated as dropped slots (routed_expert_ids, routed_row_map).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "sbops/check.h"

namespace {

using namespace sbops;

enum class Scoring { Softmax, Sigmoid };

Scoring parse_scoring(const std::string& scoring, const char* op) {
  if (scoring == "softmax") return Scoring::Softmax;
  if (scoring == "sigmoid") return Scoring::Sigmoid;
  SBOPS_CHECK(false, op, ": unknown scoring '", scoring, "'; expected one of 'softmax', 'sigmoid'");
}

// float64 if any of the given float tensors is float64, else float32.
ScalarType compute_dtype(std::initializer_list<Tensor> ts) {
  for (const Tensor& t : ts)
    if (t.defined() && t.scalar_type() == kDouble) return kDouble;
  return kFloat;
}

void check_index_dtype(const Tensor& t, const char* op, const char* name) {
  SBOPS_CHECK(t.scalar_type() == kInt || t.scalar_type() == kLong, op, ": ", name,
              " must be int32 or int64, got ", t.scalar_type());
}

// A new contiguous int64 tensor holding t's values.  Always a copy: to_contig returns t itself
// when it is already contiguous int64, and the callers below write into the result (an op must
// never write into its inputs).
Tensor long_copy(const Tensor& t) {
  Tensor c = empty_on(t.sizes(), kLong, t);
  torch::stable::copy_(c, t);
  return c;
}

// Expert ids as a contiguous int64 copy in which every id outside [0, num_experts) reads -1.
// Bad-data guard: ids < 0 mark dropped slots; ids >= num_experts are treated the same way (the
// frontend range-checks ids on CPU tensors by default), so no index leaves the expert range.
Tensor routed_expert_ids(const Tensor& ids, int64_t num_experts, const char* op) {
  check_index_dtype(ids, op, "ids");
  SBOPS_CHECK(num_experts >= 1, op, ": num_experts must be >= 1, got ", num_experts);
  Tensor flat = long_copy(ids);
  int64_t* p = flat.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < flat.numel(); ++i)
    if (p[i] >= num_experts || p[i] < 0) p[i] = -1;
  return flat;
}

// row_map as a contiguous int64 copy in which every entry outside [0, rows) reads -1.
// Bad-data guard: -1 marks a dropped slot; entries < -1 or >= rows are treated the same way.
Tensor routed_row_map(const Tensor& row_map, int64_t rows, const char* op) {
  check_index_dtype(row_map, op, "row_map");
  SBOPS_CHECK(row_map.dim() == 2, op, ": row_map must be [T, k], got shape ", row_map.sizes());
  Tensor rm = long_copy(row_map);
  int64_t* p = rm.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < rm.numel(); ++i)
    if (p[i] >= rows || p[i] < 0) p[i] = -1;
  return rm;
}

// Token-parallel grain: about 32K elements of work per task.
int64_t token_grain(int64_t work_per_token) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_token, 1));
}

// scores[e] = softmax(logits)[e] (max-subtracted) or sigmoid(logits[e]), for one token.
template <typename scalar_t>
void router_scores(const scalar_t* logits, scalar_t* scores, int64_t E, Scoring scoring) {
  if (scoring == Scoring::Softmax) {
    scalar_t mx = logits[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, logits[e]);
    scalar_t sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      scores[e] = std::exp(logits[e] - mx);
      sum += scores[e];
    }
    for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) scores[e] = scalar_t(1) / (scalar_t(1) + std::exp(-logits[e]));
  }
}

// Index of the largest value among candidates (mask[i] true), ties to the lower index.
// Scanning in ascending order with a strict '>' gives the tie rule directly.
template <typename scalar_t>
int64_t argmax_lowest(const scalar_t* v, const std::vector<char>& mask, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i)
    if (mask[i] && (best < 0 || v[i] > v[best])) best = i;
  return best;
}

// ---------------------------------------------------------------------------------------------
// topk_gating(logits [T,E], k, scoring, renormalize, bias?, num_groups, topk_groups, scaling)
//   -> (weights [T,k] float32, ids [T,k] int32)
std::tuple<Tensor, Tensor> topk_gating_cpu(const Tensor& logits, int64_t k,
                                                   const std::string& scoring_str,
                                                   bool renormalize,
                                                   const std::optional<Tensor>& bias,
                                                   int64_t num_groups, int64_t topk_groups,
                                                   double scaling) {
  const char* op = "topk_gating";
  const Scoring scoring = parse_scoring(scoring_str, op);
  SBOPS_CHECK(logits.dim() == 2, op, ": logits must be [T, E], got shape ", logits.sizes());
  SBOPS_CHECK(is_floating(logits.scalar_type()), op, ": logits must be floating, got ",
              logits.scalar_type());
  const int64_t T = logits.size(0), E = logits.size(1);
  SBOPS_CHECK(E >= 1 && k >= 1 && k <= E, op, ": k must be in [1, E] with E = ", E, ", got k = ", k);
  if (bias.has_value()) {
    SBOPS_CHECK(bias->dim() == 1 && bias->size(0) == E, op, ": bias must be [E] = [", E,
                "], got shape ", bias->sizes());
  }
  const bool grouped = num_groups > 0;
  if (grouped) {
    SBOPS_CHECK(E % num_groups == 0, op, ": num_groups = ", num_groups,
                " must divide the number of experts E = ", E);
    SBOPS_CHECK(topk_groups >= 1 && topk_groups <= num_groups, op, ": topk_groups must be in [1, ",
                "num_groups = ", num_groups, "], got ", topk_groups);
    SBOPS_CHECK(topk_groups * (E / num_groups) >= k, op, ": topk_groups * E / num_groups = ",
                topk_groups, " * ", E, " / ", num_groups, " = ", topk_groups * (E / num_groups),
                " eligible experts is fewer than k = ", k);
  }
  const int64_t G = grouped ? num_groups : 1;
  const int64_t group_size = E / G;

  const ScalarType cdt = compute_dtype({logits});
  const Tensor lc = to_contig(logits, cdt);
  const Tensor bc = bias.has_value() ? to_contig(*bias, cdt) : Tensor();
  Tensor weights = empty_on({T, k}, cdt, logits);
  Tensor ids = empty_on({T, k}, kInt, logits);
  int32_t* idp = ids.mutable_data_ptr<int32_t>();

  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "topk_gating_cpu", [&] {
    const scalar_t* lp = lc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* wp = weights.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, T, token_grain(E * k), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> scores(E), choice(E), group_score(G);
      std::vector<char> eligible(E), group_ok(G);
      for (int64_t t = t0; t < t1; ++t) {
        router_scores(lp + t * E, scores.data(), E, scoring);
        for (int64_t e = 0; e < E; ++e) choice[e] = bp ? scores[e] + bp[e] : scores[e];

        // Eligible experts: all of them, or those of the best topk_groups groups, each group
        // scored by its best choice score (ties: lower group index).
        std::fill(eligible.begin(), eligible.end(), char(1));
        if (grouped) {
          for (int64_t g = 0; g < G; ++g) {
            const scalar_t* c = choice.data() + g * group_size;
            group_score[g] = *std::max_element(c, c + group_size);
          }
          std::vector<char> remaining(G, 1);
          std::fill(group_ok.begin(), group_ok.end(), char(0));
          for (int64_t i = 0; i < topk_groups; ++i) {
            const int64_t g = argmax_lowest(group_score.data(), remaining, G);
            group_ok[g] = 1;
            remaining[g] = 0;
          }
          for (int64_t e = 0; e < E; ++e) eligible[e] = group_ok[e / group_size];
        }

        // The k picks in descending choice score (ties: lower expert index).
        scalar_t z = 0;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t e = argmax_lowest(choice.data(), eligible, E);
          eligible[e] = 0;
          idp[t * k + j] = static_cast<int32_t>(e);
          wp[t * k + j] = scores[e];  // the unbiased score
          z += scores[e];
        }
        for (int64_t j = 0; j < k; ++j) {
          scalar_t w = wp[t * k + j];
          if (renormalize) w /= z;
          wp[t * k + j] = w * static_cast<scalar_t>(scaling);
        }
      }
    });
  });
  return {cast(weights, kFloat), ids};
}

// ---------------------------------------------------------------------------------------------
// topk_gating_bwd(grad_weights [T,k], logits [T,E], ids [T,k], scoring, renormalize, scaling)
//   -> grad_logits [T,E] in logits.dtype.  With s the scores and Z = sum_i s_{p_i}:
//   renormalize: w_j = c s_{p_j} / Z  =>  ds_{p_j} += c (gw_j / Z - sum_i gw_i s_{p_i} / Z^2)
//   otherwise:   w_j = c s_{p_j}      =>  ds_{p_j} += c gw_j
//   softmax: dlogits = s (ds - sum(ds s));  sigmoid: dlogits = ds s (1 - s).
// The bias only steers the choice, so it gets no gradient (and is not an input here).
Tensor topk_gating_bwd_cpu(const Tensor& grad_weights, const Tensor& logits,
                               const Tensor& ids, const std::string& scoring_str,
                               bool renormalize, double scaling) {
  const char* op = "topk_gating_bwd";
  const Scoring scoring = parse_scoring(scoring_str, op);
  SBOPS_CHECK(logits.dim() == 2, op, ": logits must be [T, E], got shape ", logits.sizes());
  const int64_t T = logits.size(0), E = logits.size(1);
  SBOPS_CHECK(ids.dim() == 2 && ids.size(0) == T, op, ": ids must be [T, k] with T = ", T,
              ", got shape ", ids.sizes());
  const int64_t k = ids.size(1);
  SBOPS_CHECK(same_sizes(grad_weights.sizes(), ids.sizes()), op, ": grad_weights must have ids' shape ",
              ids.sizes(), ", got ", grad_weights.sizes());
  // Bad-data guard: a slot whose id lies outside [0, E) (never produced by topk_gating) is
  // skipped: it contributes neither to Z nor to any gradient.
  const Tensor idc = routed_expert_ids(ids, E, op);
  const int64_t* ip = idc.const_data_ptr<int64_t>();

  const ScalarType cdt = compute_dtype({logits, grad_weights});
  const Tensor lc = to_contig(logits, cdt);
  const Tensor gc = to_contig(grad_weights, cdt);
  Tensor grad_logits = empty_on({T, E}, cdt, logits);

  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "topk_gating_bwd_cpu", [&] {
    const scalar_t* lp = lc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* dp = grad_logits.mutable_data_ptr<scalar_t>();
    const scalar_t c = static_cast<scalar_t>(scaling);
    torch::stable::parallel_for(0, T, token_grain(E), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> s(E), ds(E);
      for (int64_t t = t0; t < t1; ++t) {
        router_scores(lp + t * E, s.data(), E, scoring);
        const int64_t* pick = ip + t * k;
        const scalar_t* gw = gp + t * k;

        // d loss / d scores (zero for experts not picked).
        std::fill(ds.begin(), ds.end(), scalar_t(0));
        if (renormalize) {
          scalar_t z = 0, gws = 0;  // Z and sum_i gw_i s_{p_i}
          for (int64_t j = 0; j < k; ++j) {
            if (pick[j] < 0) continue;
            z += s[pick[j]];
            gws += gw[j] * s[pick[j]];
          }
          for (int64_t j = 0; j < k; ++j)
            if (pick[j] >= 0) ds[pick[j]] += c * (gw[j] / z - gws / (z * z));
        } else {
          for (int64_t j = 0; j < k; ++j)
            if (pick[j] >= 0) ds[pick[j]] += c * gw[j];
        }

        // d loss / d logits through softmax or sigmoid.
        scalar_t* dl = dp + t * E;
        if (scoring == Scoring::Softmax) {
          scalar_t dot = 0;
          for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
          for (int64_t e = 0; e < E; ++e) dl[e] = s[e] * (ds[e] - dot);
        } else {
          for (int64_t e = 0; e < E; ++e) dl[e] = ds[e] * s[e] * (scalar_t(1) - s[e]);
        }
      }
    });
  });
  return cast(grad_logits, logits.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// moe_permute(x [T,Hd], ids [T,k], E) -> (x_perm [T*k,Hd], expert_offsets [E+1] int64,
// row_map [T,k] int32).  Routed (token, slot) pairs are grouped by expert in ascending order and,
// within an expert, by flat index t*k+j (i.e. by (token, slot)); the rows after the routed ones
// (one per dropped slot) are zero.  Rows are copied as bytes, so any x dtype works.
std::tuple<Tensor, Tensor, Tensor> moe_permute_cpu(const Tensor& x,
                                                               const Tensor& ids,
                                                               int64_t num_experts) {
  const char* op = "moe_permute";
  SBOPS_CHECK(x.dim() == 2, op, ": x must be [T, Hd], got shape ", x.sizes());
  SBOPS_CHECK(ids.dim() == 2 && ids.size(0) == x.size(0), op, ": ids must be [T, k] with T = ",
              x.size(0), ", got shape ", ids.sizes());
  const int64_t T = ids.size(0), k = ids.size(1), Hd = x.size(1), E = num_experts;
  const Tensor idc = routed_expert_ids(ids, E, op);
  const int64_t* ip = idc.const_data_ptr<int64_t>();

  // Offsets: exclusive prefix sum of the per-expert counts.
  Tensor offsets = zeros_on({E + 1}, kLong, ids);
  int64_t* off = offsets.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < T * k; ++i)
    if (ip[i] >= 0) ++off[ip[i] + 1];
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];

  // Rows in ascending flat index within each expert.
  Tensor row_map = empty_on({T, k}, kInt, ids);
  int32_t* rm = row_map.mutable_data_ptr<int32_t>();
  std::vector<int64_t> cursor(off, off + E);
  for (int64_t i = 0; i < T * k; ++i) rm[i] = ip[i] < 0 ? -1 : static_cast<int32_t>(cursor[ip[i]]++);

  const Tensor xc = contig(x);
  Tensor x_perm = empty_on({T * k, Hd}, x.scalar_type(), x);
  const int64_t routed = off[E];
  const int64_t row_bytes = Hd * static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(xc.const_data_ptr());
  char* dst = static_cast<char*>(x_perm.mutable_data_ptr());
  std::memset(dst + routed * row_bytes, 0, static_cast<size_t>((T * k - routed) * row_bytes));  // unrouted rows
  torch::stable::parallel_for(0, T * k, token_grain(Hd), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      if (rm[i] >= 0) std::memcpy(dst + rm[i] * row_bytes, src + (i / k) * row_bytes, row_bytes);
  });
  return {x_perm, offsets, row_map};
}

// ---------------------------------------------------------------------------------------------
// moe_permute_bwd(grad_x_perm [R,Hd], row_map [T,k]) -> grad_x [T,Hd] in grad_x_perm.dtype:
// grad_x[t] = sum over routed j of grad_x_perm[row_map[t,j]].
Tensor moe_permute_bwd_cpu(const Tensor& grad_x_perm, const Tensor& row_map) {
  const char* op = "moe_permute_bwd";
  SBOPS_CHECK(grad_x_perm.dim() == 2, op, ": grad_x_perm must be [R, Hd], got shape ",
              grad_x_perm.sizes());
  const int64_t R = grad_x_perm.size(0), Hd = grad_x_perm.size(1);
  const Tensor rmc = routed_row_map(row_map, R, op);
  const int64_t T = rmc.size(0), k = rmc.size(1);
  const int64_t* rm = rmc.const_data_ptr<int64_t>();

  const ScalarType cdt = compute_dtype({grad_x_perm});
  const Tensor gc = to_contig(grad_x_perm, cdt);
  Tensor grad_x = zeros_on({T, Hd}, cdt, grad_x_perm);
  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "moe_permute_bwd_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, T, token_grain(k * Hd), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = rm[t * k + j];
          if (r < 0) continue;
          for (int64_t c = 0; c < Hd; ++c) out[t * Hd + c] += gp[r * Hd + c];
        }
    });
  });
  return cast(grad_x, grad_x_perm.scalar_type());
}

void check_unpermute_shapes(const Tensor& y_perm, const Tensor& row_map,
                            const Tensor& weights, const char* op) {
  SBOPS_CHECK(y_perm.dim() == 2, op, ": y_perm must be [R, Hd], got shape ", y_perm.sizes());
  SBOPS_CHECK(same_sizes(weights.sizes(), row_map.sizes()), op, ": weights must have row_map's shape ",
              row_map.sizes(), ", got ", weights.sizes());
  SBOPS_CHECK(is_floating(weights.scalar_type()), op, ": weights must be floating, got ",
              weights.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// moe_unpermute(y_perm [R,Hd], row_map [T,k], weights [T,k]) -> y [T,Hd] in y_perm.dtype:
// y[t] = sum over routed j of weights[t,j] * y_perm[row_map[t,j]], accumulated in float32.
Tensor moe_unpermute_cpu(const Tensor& y_perm, const Tensor& row_map,
                             const Tensor& weights) {
  const char* op = "moe_unpermute";
  check_unpermute_shapes(y_perm, row_map, weights, op);
  const int64_t R = y_perm.size(0), Hd = y_perm.size(1);
  const Tensor rmc = routed_row_map(row_map, R, op);
  const int64_t T = rmc.size(0), k = rmc.size(1);
  const int64_t* rm = rmc.const_data_ptr<int64_t>();

  const ScalarType cdt = compute_dtype({y_perm, weights});
  const Tensor yc = to_contig(y_perm, cdt);
  const Tensor wc = to_contig(weights, cdt);
  Tensor y = zeros_on({T, Hd}, cdt, y_perm);
  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "moe_unpermute_cpu", [&] {
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, T, token_grain(k * Hd), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = rm[t * k + j];
          if (r < 0) continue;
          const scalar_t w = wp[t * k + j];
          for (int64_t c = 0; c < Hd; ++c) out[t * Hd + c] += w * yp[r * Hd + c];
        }
    });
  });
  return cast(y, y_perm.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// moe_unpermute_bwd(grad_y [T,Hd], y_perm [R,Hd], row_map [T,k], weights [T,k])
//   -> (grad_y_perm [R,Hd] in y_perm.dtype, zero for rows no slot maps to,
//       grad_weights [T,k] in weights.dtype: dot(grad_y[t], y_perm[row_map[t,j]]), 0 if dropped)
std::tuple<Tensor, Tensor> moe_unpermute_bwd_cpu(const Tensor& grad_y,
                                                         const Tensor& y_perm,
                                                         const Tensor& row_map,
                                                         const Tensor& weights) {
  const char* op = "moe_unpermute_bwd";
  check_unpermute_shapes(y_perm, row_map, weights, op);
  const int64_t R = y_perm.size(0), Hd = y_perm.size(1);
  const Tensor rmc = routed_row_map(row_map, R, op);
  const int64_t T = rmc.size(0), k = rmc.size(1);
  SBOPS_CHECK(grad_y.dim() == 2 && grad_y.size(0) == T && grad_y.size(1) == Hd, op,
              ": grad_y must be [T, Hd] = [", T, ", ", Hd, "], got shape ", grad_y.sizes());
  const int64_t* rm = rmc.const_data_ptr<int64_t>();

  const ScalarType cdt = compute_dtype({grad_y, y_perm, weights});
  const Tensor gc = to_contig(grad_y, cdt);
  const Tensor yc = to_contig(y_perm, cdt);
  const Tensor wc = to_contig(weights, cdt);
  Tensor grad_y_perm = zeros_on({R, Hd}, cdt, y_perm);
  Tensor grad_w = empty_on({T, k}, cdt, weights);
  SBOPS_DISPATCH_FLOATING_TYPES(cdt, "moe_unpermute_bwd_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* gyp = grad_y_perm.mutable_data_ptr<scalar_t>();
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();

    // grad_y_perm[row_map[t,j]] += weights[t,j] * grad_y[t].  Split over columns rather than
    // tokens, so that two slots mapping to the same row (never produced by moe_permute, but
    // allowed here) cannot race.
    torch::stable::parallel_for(0, Hd, std::max<int64_t>(1, 32768 / std::max<int64_t>(T * k, 1)),
                     [&](int64_t c0, int64_t c1) {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = rm[t * k + j];
          if (r < 0) continue;
          const scalar_t w = wp[t * k + j];
          for (int64_t c = c0; c < c1; ++c) gyp[r * Hd + c] += w * gp[t * Hd + c];
        }
    });

    torch::stable::parallel_for(0, T, token_grain(k * Hd), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = rm[t * k + j];
          scalar_t dot = 0;
          if (r >= 0)
            for (int64_t c = 0; c < Hd; ++c) dot += gp[t * Hd + c] * yp[r * Hd + c];
          gw[t * k + j] = dot;
        }
    });
  });
  return {cast(grad_y_perm, y_perm.scalar_type()), cast(grad_w, weights.scalar_type())};
}

// ---------------------------------------------------------------------------------------------
// moe_align_block_size(ids, E, block_size) -> (sorted_ids int32 [n + E*(block_size-1)],
// block_expert_ids int32 [ceil(max_padded / block_size)], num_tokens_post_pad int32 [1]).
// vLLM's semantics: experts in ascending order, each expert's flat indices (ascending) starting
// at its block-aligned offset, each expert's count rounded up to a multiple of block_size;
// padding entries hold n = ids.numel(); unused blocks have expert -1.
std::tuple<Tensor, Tensor, Tensor> moe_align_block_size_cpu(const Tensor& ids,
                                                                        int64_t num_experts,
                                                                        int64_t block_size) {
  const char* op = "moe_align_block_size";
  SBOPS_CHECK(block_size >= 1, op, ": block_size must be >= 1, got ", block_size);
  const int64_t E = num_experts;
  const Tensor idc = routed_expert_ids(ids, E, op);
  const int64_t* ip = idc.const_data_ptr<int64_t>();
  const int64_t n = idc.numel();
  const int64_t max_padded = n + E * (block_size - 1);
  SBOPS_CHECK(max_padded <= std::numeric_limits<int32_t>::max(), op, ": n + E * (block_size - 1) = ",
              max_padded, " does not fit the int32 outputs");
  const int64_t num_blocks = (max_padded + block_size - 1) / block_size;

  std::vector<int64_t> count(E, 0);
  for (int64_t i = 0; i < n; ++i)
    if (ip[i] >= 0) ++count[ip[i]];

  Tensor sorted_ids = full_on({max_padded}, n, kInt, ids);
  Tensor block_expert = full_on({num_blocks}, -1, kInt, ids);
  int32_t* sp = sorted_ids.mutable_data_ptr<int32_t>();
  int32_t* bp = block_expert.mutable_data_ptr<int32_t>();

  // Block-aligned start of each expert; its blocks are labelled with the expert.
  std::vector<int64_t> cursor(E);
  int64_t pos = 0;
  for (int64_t e = 0; e < E; ++e) {
    cursor[e] = pos;
    const int64_t padded = (count[e] + block_size - 1) / block_size * block_size;
    for (int64_t b = pos / block_size; b < (pos + padded) / block_size; ++b)
      bp[b] = static_cast<int32_t>(e);
    pos += padded;
  }
  for (int64_t i = 0; i < n; ++i)
    if (ip[i] >= 0) sp[cursor[ip[i]]++] = static_cast<int32_t>(i);

  Tensor post_pad = full_on({1}, pos, kInt, ids);
  return {sorted_ids, block_expert, post_pad};
}

// ---------------------------------------------------------------------------------------------
// expert_counts(ids, E) -> int64 [E]: histogram of routed ids (ids < 0 skipped).
Tensor expert_counts_cpu(const Tensor& ids, int64_t num_experts) {
  const Tensor idc = routed_expert_ids(ids, num_experts, "expert_counts");
  const int64_t* ip = idc.const_data_ptr<int64_t>();
  Tensor counts = zeros_on({num_experts}, kLong, ids);
  int64_t* cp = counts.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < idc.numel(); ++i)
    if (ip[i] >= 0) ++cp[ip[i]];
  return counts;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sbops, CPU, m) {
  m.impl("topk_gating", TORCH_BOX(&topk_gating_cpu));
  m.impl("topk_gating_bwd", TORCH_BOX(&topk_gating_bwd_cpu));
  m.impl("moe_permute", TORCH_BOX(&moe_permute_cpu));
  m.impl("moe_permute_bwd", TORCH_BOX(&moe_permute_bwd_cpu));
  m.impl("moe_unpermute", TORCH_BOX(&moe_unpermute_cpu));
  m.impl("moe_unpermute_bwd", TORCH_BOX(&moe_unpermute_bwd_cpu));
  m.impl("moe_align_block_size", TORCH_BOX(&moe_align_block_size_cpu));
  m.impl("expert_counts", TORCH_BOX(&expert_counts_cpu));
}
