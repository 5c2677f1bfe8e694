// CPU reference for sliding-window attention:
// swa_attn, swa_attn_bwd, swa_decode, swa_cache_write.
//
// Straightforward and exact: inputs are converted to the compute dtype (float32, or float64 when q
// is float64) and made contiguous, each query row is a plain loop over its visible keys, and the
// outputs are converted to their dtypes at the end.  Query i of a sequence sees keys j with
// i - window <= j <= i (window < 0: j <= i) plus all M sink keys, in one softmax computed safely
// (row max subtracted).  GQA: query head h reads KV head h / (H / HKV).

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "sbops/check.h"

namespace {

using namespace sbops;
using namespace sbops::cpu;  // OptTensor, Sequences, sequences, check_shape, slot_values, check_inplace

// First key a query at (sequence-local) position i sees.
int64_t first_key(int64_t i, int64_t window) {
  return window < 0 ? 0 : std::max<int64_t>(0, i - window);
}

// Most keys (without sinks) any query of a length-L sequence sees.
int64_t max_keys(int64_t L, int64_t window) {
  return (window < 0 || window >= L) ? L : window + 1;
}

template <typename acc_t, typename x_t>
acc_t dot(const acc_t* a, const x_t* b, int64_t D) {
  acc_t s = 0;
  for (int64_t e = 0; e < D; ++e) s += a[e] * static_cast<acc_t>(b[e]);
  return s;
}

// Softmax of one query row over n keys: p[s] = softmax_s(scale * q . key(s)).  Returns the
// log-sum-exp of the scaled scores.  The row max is subtracted before exp (n >= 1 always: a query
// sees at least itself).
template <typename acc_t, typename KeyAt>
acc_t softmax_row(const acc_t* qrow, KeyAt key_at, int64_t n, int64_t D, acc_t scale, acc_t* p) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t s = 0; s < n; ++s) {
    p[s] = scale * dot(qrow, key_at(s), D);
    m = std::max(m, p[s]);
  }
  acc_t l = 0;
  for (int64_t s = 0; s < n; ++s) {
    p[s] = std::exp(p[s] - m);
    l += p[s];
  }
  for (int64_t s = 0; s < n; ++s) p[s] /= l;
  return m + std::log(l);
}

// Problem sizes: H query heads, HKV KV heads, D key dim, DV value dim, M sinks.
struct Dims {
  int64_t H, HKV, D, DV, M;
  int64_t group() const { return H / HKV; }
};

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                  const OptTensor& sink_k, const OptTensor& sink_v, const char* op) {
  SBOPS_CHECK(q.dim() == 4, op, ": q must be [B, T, H, D], got shape ", q.sizes());
  SBOPS_CHECK(k.dim() == 4 && k.size(0) == q.size(0) && k.size(1) == q.size(1) &&
                  k.size(3) == q.size(3),
              op, ": k must be [B, T, HKV, D] matching q ", q.sizes(), ", got ", k.sizes());
  SBOPS_CHECK(v.dim() == 4 && v.size(0) == q.size(0) && v.size(1) == q.size(1) &&
                  v.size(2) == k.size(2),
              op, ": v must be [B, T, HKV, DV] matching k ", k.sizes(), ", got ", v.sizes());
  const int64_t H = q.size(2), HKV = k.size(2);
  SBOPS_CHECK(HKV > 0 && H % HKV == 0, op, ": the number of query heads (", H,
              ") must be a multiple of the number of KV heads (", HKV, ")");
  SBOPS_CHECK(sink_k.has_value() == sink_v.has_value(), op,
              ": sink_k and sink_v must be given together");
  if (sink_k.has_value()) {
    SBOPS_CHECK(sink_k->dim() == 3 && sink_k->size(1) == HKV && sink_k->size(2) == q.size(3), op,
                ": sink_k must be [M, ", HKV, ", ", q.size(3), "], got ", sink_k->sizes());
    check_shape(*sink_v, {sink_k->size(0), HKV, v.size(3)}, op, "sink_v");
  }
}

// ---------------------------------------------------------------------------- forward
template <typename acc_t>
std::tuple<Tensor, Tensor> swa_attn_impl(const Tensor& q, const Tensor& k,
                                                 const Tensor& v, int64_t window,
                                                 double scale_d, const OptTensor& cu_seqlens,
                                                 const OptTensor& sink_k, const OptTensor& sink_v) {
  const int64_t B = q.size(0), T = q.size(1);
  const Dims d{q.size(2), k.size(2), q.size(3), v.size(3), sink_k ? sink_k->size(0) : 0};
  const Sequences seqs = sequences(cu_seqlens, B, T, "swa_attn");
  const int64_t N = seqs.count();

  const auto acc = q.scalar_type() == kDouble ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc), kc = to_contig(k, acc),
                   vc = to_contig(v, acc);
  const Tensor skc = d.M ? to_contig(*sink_k, acc) : Tensor();
  const Tensor svc = d.M ? to_contig(*sink_v, acc) : Tensor();
  Tensor o = zeros_on({B, T, d.H, d.DV}, acc, q);
  Tensor lse = zeros_on({B, T, d.H}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const acc_t* kp = kc.mutable_data_ptr<acc_t>();
  const acc_t* vp = vc.mutable_data_ptr<acc_t>();
  const acc_t* skp = d.M ? skc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* svp = d.M ? svc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* out_p = o.mutable_data_ptr<acc_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);

  torch::stable::parallel_for(0, N * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.H, h = item % d.H, kh = h / d.group();
      const int64_t L = seqs.len[n], r0 = seqs.start[n];
      std::vector<acc_t> p(d.M + max_keys(L, window));
      for (int64_t i = 0; i < L; ++i) {
        const int64_t r = r0 + i, j0 = first_key(i, window);
        // Visible key s: the M sinks first, then sequence keys j0 .. i.
        auto key_at = [&](int64_t s) {
          return s < d.M ? skp + (s * d.HKV + kh) * d.D
                         : kp + ((r0 + j0 + s - d.M) * d.HKV + kh) * d.D;
        };
        auto val_at = [&](int64_t s) {
          return s < d.M ? svp + (s * d.HKV + kh) * d.DV
                         : vp + ((r0 + j0 + s - d.M) * d.HKV + kh) * d.DV;
        };
        const int64_t n_keys = d.M + i - j0 + 1;
        lse_p[r * d.H + h] =
            softmax_row(qp + (r * d.H + h) * d.D, key_at, n_keys, d.D, scale, p.data());
        acc_t* orow = out_p + (r * d.H + h) * d.DV;
        for (int64_t s = 0; s < n_keys; ++s) {
          const acc_t* vrow = val_at(s);
          for (int64_t e = 0; e < d.DV; ++e) orow[e] += p[s] * vrow[e];
        }
      }
    }
  });
  return {cast(o, q.scalar_type()), cast(lse, kFloat)};
}

std::tuple<Tensor, Tensor> swa_attn_cpu(const Tensor& q, const Tensor& k,
                                                const Tensor& v, int64_t window, double scale,
                                                const OptTensor& cu_seqlens,
                                                const OptTensor& sink_k, const OptTensor& sink_v) {
  check_inputs(q, k, v, sink_k, sink_v, "swa_attn");
  if (q.scalar_type() == kDouble)
    return swa_attn_impl<double>(q, k, v, window, scale, cu_seqlens, sink_k, sink_v);
  return swa_attn_impl<float>(q, k, v, window, scale, cu_seqlens, sink_k, sink_v);
}

// ---------------------------------------------------------------------------- backward
// Per query row i with probabilities P_s over its visible keys s (sinks included):
//   dP_s = dO_i . v_s,   delta_i = sum_s P_s dP_s - grad_lse_i,   dZ_s = P_s (dP_s - delta_i)
//   dq_i = scale * sum_s dZ_s k_s,   dk_s += scale * dZ_s q_i,   dv_s += P_s dO_i
// (sum_s P_s dP_s equals rowsum(dO * O) of the flash formulation; grad_lse_i adds P_s grad_lse_i
// to each score's gradient since d lse / d score_s = P_s).  The softmax is recomputed here in the
// compute dtype rather than read back from the saved o (possibly bfloat16) and lse (float32), so
// the gradients are exact in that dtype; o and lse are only shape-checked.
// Work items are (sequence, KV head): each owns its rows of dk / dv and its query heads' rows of
// dq; sink gradients, shared by all sequences, go to per-sequence partial sums added at the end.
template <typename acc_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> swa_attn_bwd_impl(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& grad_o,
    const OptTensor& grad_lse, int64_t window, double scale_d, const OptTensor& cu_seqlens,
    const OptTensor& sink_k, const OptTensor& sink_v) {
  const int64_t B = q.size(0), T = q.size(1);
  const Dims d{q.size(2), k.size(2), q.size(3), v.size(3), sink_k ? sink_k->size(0) : 0};
  const Sequences seqs = sequences(cu_seqlens, B, T, "swa_attn_bwd");
  const int64_t N = seqs.count();

  const auto acc = q.scalar_type() == kDouble ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc), kc = to_contig(k, acc),
                   vc = to_contig(v, acc), doc = to_contig(grad_o, acc);
  const Tensor dlc = grad_lse.has_value() ? to_contig(*grad_lse, acc) : Tensor();
  const Tensor skc = d.M ? to_contig(*sink_k, acc) : Tensor();
  const Tensor svc = d.M ? to_contig(*sink_v, acc) : Tensor();
  Tensor dq = zeros_on({B, T, d.H, d.D}, acc, q);
  Tensor dk = zeros_on({B, T, d.HKV, d.D}, acc, q);
  Tensor dv = zeros_on({B, T, d.HKV, d.DV}, acc, q);
  Tensor dsk_part = zeros_on({N, d.M, d.HKV, d.D}, acc, q);  // per-sequence sink gradients
  Tensor dsv_part = zeros_on({N, d.M, d.HKV, d.DV}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const acc_t* kp = kc.mutable_data_ptr<acc_t>();
  const acc_t* vp = vc.mutable_data_ptr<acc_t>();
  const acc_t* dop = doc.mutable_data_ptr<acc_t>();
  const acc_t* dlp = grad_lse.has_value() ? dlc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* skp = d.M ? skc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* svp = d.M ? svc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* dqp = dq.mutable_data_ptr<acc_t>();
  acc_t* dkp = dk.mutable_data_ptr<acc_t>();
  acc_t* dvp = dv.mutable_data_ptr<acc_t>();
  acc_t* dskp = dsk_part.mutable_data_ptr<acc_t>();
  acc_t* dsvp = dsv_part.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t G = d.group();

  torch::stable::parallel_for(0, N * d.HKV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.HKV, kh = item % d.HKV;
      const int64_t L = seqs.len[n], r0 = seqs.start[n];
      acc_t* dsk = dskp + n * d.M * d.HKV * d.D;
      acc_t* dsv = dsvp + n * d.M * d.HKV * d.DV;
      std::vector<acc_t> p(d.M + max_keys(L, window)), dp(p.size());
      for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
        for (int64_t i = 0; i < L; ++i) {
          const int64_t r = r0 + i, j0 = first_key(i, window);
          const int64_t n_keys = d.M + i - j0 + 1;
          // Offsets of visible key s (the M sinks first, then keys j0 .. i) in the key-side
          // buffers: sinks index the sink tensors, the rest index k / v (and dk / dv).
          auto key_off = [&](int64_t s) {
            return s < d.M ? (s * d.HKV + kh) * d.D : ((r0 + j0 + s - d.M) * d.HKV + kh) * d.D;
          };
          auto val_off = [&](int64_t s) {
            return s < d.M ? (s * d.HKV + kh) * d.DV : ((r0 + j0 + s - d.M) * d.HKV + kh) * d.DV;
          };
          auto key_at = [&](int64_t s) { return (s < d.M ? skp : kp) + key_off(s); };
          const acc_t* qrow = qp + (r * d.H + h) * d.D;
          const acc_t* dorow = dop + (r * d.H + h) * d.DV;
          softmax_row(qrow, key_at, n_keys, d.D, scale, p.data());

          acc_t delta = dlp ? -dlp[r * d.H + h] : acc_t(0);
          for (int64_t s = 0; s < n_keys; ++s) {
            dp[s] = dot(dorow, (s < d.M ? svp : vp) + val_off(s), d.DV);
            delta += p[s] * dp[s];
          }
          acc_t* dqrow = dqp + (r * d.H + h) * d.D;
          for (int64_t s = 0; s < n_keys; ++s) {
            const acc_t dz = p[s] * (dp[s] - delta);
            const acc_t* krow = key_at(s);
            acc_t* dkrow = (s < d.M ? dsk : dkp) + key_off(s);
            acc_t* dvrow = (s < d.M ? dsv : dvp) + val_off(s);
            for (int64_t e = 0; e < d.D; ++e) {
              dqrow[e] += scale * dz * krow[e];
              dkrow[e] += scale * dz * qrow[e];
            }
            for (int64_t e = 0; e < d.DV; ++e) dvrow[e] += p[s] * dorow[e];
          }
        }
      }
    }
  });

  Tensor dsink_k = empty_on({0}, kFloat, q), dsink_v = empty_on({0}, kFloat, q);
  if (sink_k.has_value()) {
    dsink_k = cast(torch::stable::sum(dsk_part, std::vector<int64_t>{0}), sink_k->scalar_type());
    dsink_v = cast(torch::stable::sum(dsv_part, std::vector<int64_t>{0}), sink_v->scalar_type());
  }
  return {cast(dq, q.scalar_type()), cast(dk, k.scalar_type()), cast(dv, v.scalar_type()), dsink_k,
          dsink_v};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> swa_attn_bwd_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
    const Tensor& lse, const Tensor& grad_o, const OptTensor& grad_lse, int64_t window,
    double scale, const OptTensor& cu_seqlens, const OptTensor& sink_k, const OptTensor& sink_v) {
  const char* op = "swa_attn_bwd";
  check_inputs(q, k, v, sink_k, sink_v, op);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), DV = v.size(3);
  check_shape(o, {B, T, H, DV}, op, "o");
  check_shape(lse, {B, T, H}, op, "lse");
  check_shape(grad_o, {B, T, H, DV}, op, "grad_o");
  if (grad_lse.has_value()) check_shape(*grad_lse, {B, T, H}, op, "grad_lse");
  if (q.scalar_type() == kDouble)
    return swa_attn_bwd_impl<double>(q, k, v, grad_o, grad_lse, window, scale, cu_seqlens, sink_k,
                                     sink_v);
  return swa_attn_bwd_impl<float>(q, k, v, grad_o, grad_lse, window, scale, cu_seqlens, sink_k,
                                  sink_v);
}

// ---------------------------------------------------------------------------- decode
// Sequence i (length L, the current token already written) attends the M sink keys and its cached
// positions lo .. L-1, lo = max(0, L-1-window, L-C): position p lives at row p % C of its slot, so
// a sequence longer than the ring's capacity C attends the positions the ring still holds.
// The caches are addressed through their strides (read in place, in their dtype).
// Bad-data guard: a sequence whose slot lies outside [0, S) or whose seq_len is < 1 gets a NaN
// output row and reads nothing (the frontend checks both on CPU tensors by default).
template <typename acc_t, typename cache_t>
Tensor swa_decode_impl(const Tensor& q, const Tensor& k_cache,
                           const Tensor& v_cache, const std::vector<int64_t>& seq_lens,
                           const std::vector<int64_t>& slots, int64_t window, double scale_d,
                           const OptTensor& sink_k, const OptTensor& sink_v) {
  const int64_t N = q.size(0), S = k_cache.size(0), C = k_cache.size(1);
  const Dims d{q.size(1), k_cache.size(2), q.size(2), v_cache.size(3), sink_k ? sink_k->size(0) : 0};
  const auto acc = std::is_same<acc_t, double>::value ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc);
  const Tensor skc = d.M ? to_contig(*sink_k, acc) : Tensor();
  const Tensor svc = d.M ? to_contig(*sink_v, acc) : Tensor();
  Tensor o = zeros_on({N, d.H, d.DV}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const cache_t* kp = k_cache.mutable_data_ptr<cache_t>();
  const cache_t* vp = v_cache.mutable_data_ptr<cache_t>();
  const acc_t* skp = d.M ? skc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* svp = d.M ? svc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* out_p = o.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);
  const auto ks = k_cache.strides(), vs = v_cache.strides();

  torch::stable::parallel_for(0, N * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> krow(d.D), p;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / d.H, h = item % d.H, kh = h / d.group();
      acc_t* orow = out_p + item * d.DV;
      const int64_t L = seq_lens[i], slot = slots[i];
      if (L < 1 || slot < 0 || slot >= S) {  // bad length or slot: NaN row, nothing read
        std::fill(orow, orow + d.DV, std::numeric_limits<acc_t>::quiet_NaN());
        continue;
      }
      const int64_t lo = std::max(first_key(L - 1, window), L - C), n_keys = d.M + L - lo;
      // Visible key s: the M sinks first, then cached positions lo .. L-1.
      auto cache_off = [&](int64_t s, IntArrayRef st) {
        return slot * st[0] + ((lo + s - d.M) % C) * st[1] + kh * st[2];
      };
      auto key_at = [&](int64_t s) -> const acc_t* {
        if (s < d.M) return skp + (s * d.HKV + kh) * d.D;
        const cache_t* kr = kp + cache_off(s, ks);
        for (int64_t e = 0; e < d.D; ++e) krow[e] = static_cast<acc_t>(kr[e * ks[3]]);
        return krow.data();
      };
      p.resize(n_keys);
      softmax_row(qp + item * d.D, key_at, n_keys, d.D, scale, p.data());
      for (int64_t s = 0; s < n_keys; ++s) {
        if (s < d.M) {
          const acc_t* vrow = svp + (s * d.HKV + kh) * d.DV;
          for (int64_t e = 0; e < d.DV; ++e) orow[e] += p[s] * vrow[e];
        } else {
          const cache_t* vrow = vp + cache_off(s, vs);
          for (int64_t e = 0; e < d.DV; ++e) orow[e] += p[s] * static_cast<acc_t>(vrow[e * vs[3]]);
        }
      }
    }
  });
  return cast(o, q.scalar_type());
}

void check_caches(const Tensor& k_cache, const Tensor& v_cache, const char* op) {
  SBOPS_CHECK(k_cache.dim() == 4, op, ": k_cache must be [S, C, HKV, D], got shape ",
              k_cache.sizes());
  SBOPS_CHECK(v_cache.dim() == 4 && v_cache.size(0) == k_cache.size(0) &&
                  v_cache.size(1) == k_cache.size(1) && v_cache.size(2) == k_cache.size(2),
              op, ": v_cache must be [S, C, HKV, DV] matching k_cache ", k_cache.sizes(), ", got ",
              v_cache.sizes());
  SBOPS_CHECK(k_cache.size(1) > 0, op, ": the caches have no rows (C = 0)");
}

Tensor swa_decode_cpu(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& seq_lens, int64_t window, double scale,
                          const OptTensor& slot_indices, const OptTensor& sink_k,
                          const OptTensor& sink_v) {
  const char* op = "swa_decode";
  check_caches(k_cache, v_cache, op);
  SBOPS_CHECK(q.dim() == 3 && q.size(2) == k_cache.size(3), op, ": q must be [N, H, ",
              k_cache.size(3), "], got shape ", q.sizes());
  const int64_t N = q.size(0), HKV = k_cache.size(2);
  SBOPS_CHECK(q.size(1) % HKV == 0, op, ": the number of query heads (", q.size(1),
              ") must be a multiple of the number of KV heads (", HKV, ")");
  SBOPS_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), op,
              ": k_cache and v_cache must have the same dtype, got ", k_cache.scalar_type(),
              " and ", v_cache.scalar_type());
  SBOPS_CHECK(sink_k.has_value() == sink_v.has_value(), op,
              ": sink_k and sink_v must be given together");
  if (sink_k.has_value()) {
    SBOPS_CHECK(sink_k->dim() == 3 && sink_k->size(1) == HKV && sink_k->size(2) == q.size(2), op,
                ": sink_k must be [M, ", HKV, ", ", q.size(2), "], got ", sink_k->sizes());
    check_shape(*sink_v, {sink_k->size(0), HKV, v_cache.size(3)}, op, "sink_v");
  }
  const std::vector<int64_t> lens = index_values(seq_lens, N, op, "seq_lens");
  const std::vector<int64_t> slots = slot_values(slot_indices, N, k_cache.size(0), op, "slot_indices");
  Tensor o;
  const auto cache_dtype = k_cache.scalar_type();
  SBOPS_DISPATCH_FLOATING_AND_HALF_TYPES(cache_dtype, "swa_decode", [&] {
    if (q.scalar_type() == kDouble)
      o = swa_decode_impl<double, scalar_t>(q, k_cache, v_cache, lens, slots, window, scale,
                                            sink_k, sink_v);
    else
      o = swa_decode_impl<float, scalar_t>(q, k_cache, v_cache, lens, slots, window, scale,
                                           sink_k, sink_v);
  });
  return o;
}

// k/v of the token at positions[i] go to row positions[i] % C of slot slot_indices[i], converted
// to the caches' dtype.  Rows are written in order i = 0 .. N-1 (a later row wins on a clash).
// The caches are addressed through their strides; their last dimension must be contiguous.
// Bad-data guard: a row whose slot lies outside [0, S) or whose position is < 0 is not written
// (the frontend checks both on CPU tensors by default).
void swa_cache_write_cpu(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                         const Tensor& v_cache, const Tensor& positions,
                         const OptTensor& slot_indices) {
  const char* op = "swa_cache_write";
  check_caches(k_cache, v_cache, op);
  const int64_t S = k_cache.size(0), C = k_cache.size(1), HKV = k_cache.size(2);
  SBOPS_CHECK(k.dim() == 3 && k.size(1) == HKV && k.size(2) == k_cache.size(3), op,
              ": k must be [N, ", HKV, ", ", k_cache.size(3), "], got shape ", k.sizes());
  const int64_t N = k.size(0);
  check_shape(v, {N, HKV, v_cache.size(3)}, op, "v");
  check_inplace(k_cache, op, "k_cache");
  check_inplace(v_cache, op, "v_cache");
  const std::vector<int64_t> pos = index_values(positions, N, op, "positions");
  const std::vector<int64_t> slots = slot_values(slot_indices, N, S, op, "slot_indices");

  // One token's [HKV, D] block of a cache: HKV rows of D elements, byte-copied from the input
  // converted to the cache's dtype.
  auto write = [&](const Tensor& x, const Tensor& cache) {
    const Tensor xc = to_contig(x, cache.scalar_type());
    const int64_t es = cache.element_size(), row_bytes = cache.size(3) * es;
    const char* src = static_cast<const char*>(xc.const_data_ptr());
    char* dst = static_cast<char*>(cache.mutable_data_ptr());
    for (int64_t i = 0; i < N; ++i) {
      if (slots[i] < 0 || slots[i] >= S || pos[i] < 0) continue;  // bad row: not written
      char* base = dst + (slots[i] * cache.stride(0) + (pos[i] % C) * cache.stride(1)) * es;
      for (int64_t kh = 0; kh < HKV; ++kh)
        std::memcpy(base + kh * cache.stride(2) * es, src + (i * HKV + kh) * row_bytes, row_bytes);
    }
  };
  write(k, k_cache);
  write(v, v_cache);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sbops, CPU, m) {
  m.impl("swa_attn", TORCH_BOX(&swa_attn_cpu));
  m.impl("swa_attn_bwd", TORCH_BOX(&swa_attn_bwd_cpu));
  m.impl("swa_decode", TORCH_BOX(&swa_decode_cpu));
  m.impl("swa_cache_write", TORCH_BOX(&swa_cache_write_cpu));
}
