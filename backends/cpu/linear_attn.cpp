// CPU reference for linear attention (GLA family):
// linear_attn, linear_attn_bwd, linear_attn_decode.
//
// Straightforward and exact: inputs are converted to the compute dtype (float32, or float64 when q
// is float64) and made contiguous, every recurrence step is a plain loop over raw pointers, and the
// outputs are converted to their dtypes at the end.  GQA-native: one [K, V] state per (sequence,
// KV head), shared by the H / HKV query heads on it; work is parallelised over (sequence, KV head).
//
// Math (docs/DESIGN.md, SPEC.md section 1), per sequence and KV head:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          S: [K, V], g_t: scalar (per head) or [K]
//   o_t[h] = scale * q_t[h] S_t                       for every query head h on this KV head

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "sbops/check.h"

namespace {

using namespace sbops;
using namespace sbops::cpu;  // OptTensor, Sequences, sequences, check_shape, slot_values

// How g is laid out: absent, one log-decay per (token, KV head), or one per key channel.
enum class GateMode { kNone, kPerHead, kPerKey };

// Gate mode of g, checking its shape against the token dims `lead` (e.g. {B, T} or {N}).
GateMode gate_mode(const OptTensor& g, IntArrayRef lead, int64_t HKV, int64_t K,
                   const char* op) {
  if (!g.has_value()) return GateMode::kNone;
  std::vector<int64_t> per_head(lead.begin(), lead.end());
  per_head.push_back(HKV);
  std::vector<int64_t> per_key = per_head;
  per_key.push_back(K);
  if (same_sizes(g->sizes(), IntArrayRef(per_head))) return GateMode::kPerHead;
  SBOPS_CHECK(same_sizes(g->sizes(), IntArrayRef(per_key)), op, ": g must have shape ",
              IntArrayRef(per_head), " (per head) or ", IntArrayRef(per_key),
              " (per key channel), got ", g->sizes());
  return GateMode::kPerKey;
}

// ---------------------------------------------------------------------------- shared steps
// Problem sizes of one call; rows are tokens of the flattened [B*T] (or [N]) dimension.
struct Dims {
  int64_t H, HKV, K, V;
  int64_t group() const { return H / HKV; }
};

// Pointer to g for token row r and KV head kh (nullptr when there is no gate).
template <typename acc_t>
const acc_t* gate_at(const acc_t* g, GateMode mode, int64_t r, int64_t kh, const Dims& d) {
  switch (mode) {
    case GateMode::kNone: return nullptr;
    case GateMode::kPerHead: return g + r * d.HKV + kh;
    case GateMode::kPerKey: return g + (r * d.HKV + kh) * d.K;
  }
  return nullptr;
}

// exp of the log-decay of key row i (1 without gate).
template <typename acc_t>
acc_t decay_of(const acc_t* gt, GateMode mode, int64_t i) {
  if (mode == GateMode::kNone) return acc_t(1);
  return std::exp(mode == GateMode::kPerHead ? gt[0] : gt[i]);
}

// One recurrence step in place: S = diag(exp(g_t)) S + k_t^T v_t.
template <typename acc_t>
void recurrence_step(acc_t* S, const acc_t* kt, const acc_t* vt, const acc_t* gt, GateMode mode,
                     int64_t K, int64_t V) {
  for (int64_t i = 0; i < K; ++i) {
    const acc_t decay = decay_of(gt, mode, i);
    const acc_t ki = kt[i];
    acc_t* row = S + i * V;
    for (int64_t j = 0; j < V; ++j) row[j] = decay * row[j] + ki * vt[j];
  }
}

// o = scale * q S   (q: [K], S: [K, V], o: [V]).
template <typename acc_t>
void readout(const acc_t* S, const acc_t* qt, acc_t scale, acc_t* ot, int64_t K, int64_t V) {
  std::fill(ot, ot + V, acc_t(0));
  for (int64_t i = 0; i < K; ++i) {
    const acc_t qi = scale * qt[i];
    const acc_t* row = S + i * V;
    for (int64_t j = 0; j < V; ++j) ot[j] += qi * row[j];
  }
}

// ---------------------------------------------------------------------------- forward
template <typename acc_t>
std::tuple<Tensor, Tensor> linear_attn_impl(const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const OptTensor& g,
                                                    double scale_d, const OptTensor& initial_state,
                                                    const OptTensor& cu_seqlens) {
  const char* op = "linear_attn";
  const int64_t B = q.size(0), T = q.size(1);
  const Dims d{q.size(2), k.size(2), q.size(3), v.size(3)};
  const GateMode mode = gate_mode(g, {B, T}, d.HKV, d.K, op);
  const Sequences seqs = sequences(cu_seqlens, B, T, op);
  const int64_t N = seqs.count();
  if (initial_state.has_value())
    check_shape(*initial_state, {N, d.HKV, d.K, d.V}, op, "initial_state");

  const auto acc = q.scalar_type() == kDouble ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc), kc = to_contig(k, acc),
                   vc = to_contig(v, acc);
  const Tensor gc = g.has_value() ? to_contig(*g, acc) : Tensor();
  const Tensor h0 =
      initial_state.has_value() ? to_contig(*initial_state, acc) : Tensor();
  Tensor o = zeros_on({B, T, d.H, d.V}, acc, q);
  Tensor hT = empty_on({N, d.HKV, d.K, d.V}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const acc_t* kp = kc.mutable_data_ptr<acc_t>();
  const acc_t* vp = vc.mutable_data_ptr<acc_t>();
  const acc_t* gp = g.has_value() ? gc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* h0p = initial_state.has_value() ? h0.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* out_p = o.mutable_data_ptr<acc_t>();
  acc_t* hTp = hT.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t KV = d.K * d.V, G = d.group();

  torch::stable::parallel_for(0, N * d.HKV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.HKV, kh = item % d.HKV;
      acc_t* S = hTp + item * KV;  // the running state lives in final_state directly
      if (h0p) std::copy(h0p + item * KV, h0p + (item + 1) * KV, S);
      else std::fill(S, S + KV, acc_t(0));
      for (int64_t t = 0; t < seqs.len[n]; ++t) {
        const int64_t r = seqs.start[n] + t;
        recurrence_step(S, kp + (r * d.HKV + kh) * d.K, vp + (r * d.HKV + kh) * d.V,
                        gate_at(gp, mode, r, kh, d), mode, d.K, d.V);
        for (int64_t h = kh * G; h < (kh + 1) * G; ++h)
          readout(S, qp + (r * d.H + h) * d.K, scale, out_p + (r * d.H + h) * d.V, d.K, d.V);
      }
    }
  });
  return {cast(o, q.scalar_type()), cast(hT, kFloat)};
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t lead_dims,
               const char* op) {
  const int64_t nd = lead_dims + 2;  // lead dims, heads, feature dim
  SBOPS_CHECK(q.dim() == nd, op, ": q must have ", nd, " dimensions, got shape ", q.sizes());
  SBOPS_CHECK(k.dim() == nd, op, ": k must have ", nd, " dimensions, got shape ", k.sizes());
  SBOPS_CHECK(v.dim() == nd, op, ": v must have ", nd, " dimensions, got shape ", v.sizes());
  for (int64_t i = 0; i < lead_dims; ++i) {
    SBOPS_CHECK(k.size(i) == q.size(i), op, ": k shape ", k.sizes(), " does not match q shape ",
                q.sizes(), " in dim ", i);
    SBOPS_CHECK(v.size(i) == q.size(i), op, ": v shape ", v.sizes(), " does not match q shape ",
                q.sizes(), " in dim ", i);
  }
  const int64_t H = q.size(lead_dims), HKV = k.size(lead_dims);
  SBOPS_CHECK(HKV > 0 && H % HKV == 0, op, ": the number of query heads (", H,
              ") must be a multiple of the number of KV heads (", HKV, ")");
  SBOPS_CHECK(v.size(lead_dims) == HKV, op, ": v has ", v.size(lead_dims), " heads, k has ", HKV);
  SBOPS_CHECK(k.size(lead_dims + 1) == q.size(lead_dims + 1), op, ": k key dim ",
              k.size(lead_dims + 1), " does not match q key dim ", q.size(lead_dims + 1));
}

std::tuple<Tensor, Tensor> linear_attn_cpu(const Tensor& q, const Tensor& k,
                                                   const Tensor& v, const OptTensor& g,
                                                   double scale, const OptTensor& initial_state,
                                                   const OptTensor& cu_seqlens) {
  check_qkv(q, k, v, 2, "linear_attn");
  if (q.scalar_type() == kDouble)
    return linear_attn_impl<double>(q, k, v, g, scale, initial_state, cu_seqlens);
  return linear_attn_impl<float>(q, k, v, g, scale, initial_state, cu_seqlens);
}

// ---------------------------------------------------------------------------- backward
// Gradients walk the sequence backwards with the running state gradient dS (= dL/dS_t):
//   dq_t[h] = scale * do_t[h] S_t^T
//   dS     += scale * sum_h q_t[h]^T do_t[h]         (o_t depends on S_t)
//   dk_t    = dS v_t,  dv_t = dS^T k_t               (S_t = ... + k_t^T v_t)
//   dg_t[i] = exp(g_t[i]) * sum_j S_{t-1}[i,j] dS[i,j]   (summed over i for a per-head gate)
//   dS      = diag(exp(g_t)) dS                      (now dL/dS_{t-1})
// dinitial_state is dS after the first step.  The states S_t are needed backwards; instead of
// storing all T of them, a forward pass keeps the state at the start of every kChunk-th step, and
// each chunk's states are recomputed from its checkpoint when the backward walk reaches it.  This
// only ever multiplies by exp(g) (never divides), so it stays exact for strong decay.
constexpr int64_t kChunk = 64;

template <typename acc_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> linear_attn_bwd_impl(
    const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& g,
    double scale_d, const OptTensor& initial_state, const OptTensor& cu_seqlens,
    const Tensor& grad_o, const OptTensor& grad_final_state) {
  const char* op = "linear_attn_bwd";
  const int64_t B = q.size(0), T = q.size(1);
  const Dims d{q.size(2), k.size(2), q.size(3), v.size(3)};
  const GateMode mode = gate_mode(g, {B, T}, d.HKV, d.K, op);
  const Sequences seqs = sequences(cu_seqlens, B, T, op);
  const int64_t N = seqs.count();
  if (initial_state.has_value())
    check_shape(*initial_state, {N, d.HKV, d.K, d.V}, op, "initial_state");
  if (grad_final_state.has_value())
    check_shape(*grad_final_state, {N, d.HKV, d.K, d.V}, op, "grad_final_state");
  check_shape(grad_o, {B, T, d.H, d.V}, op, "grad_o");

  const auto acc = q.scalar_type() == kDouble ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc), kc = to_contig(k, acc),
                   vc = to_contig(v, acc), doc = to_contig(grad_o, acc);
  const Tensor gc = g.has_value() ? to_contig(*g, acc) : Tensor();
  const Tensor h0 =
      initial_state.has_value() ? to_contig(*initial_state, acc) : Tensor();
  const Tensor dhT =
      grad_final_state.has_value() ? to_contig(*grad_final_state, acc) : Tensor();
  Tensor dq = zeros_on({B, T, d.H, d.K}, acc, q);
  Tensor dk = zeros_on({B, T, d.HKV, d.K}, acc, q);
  Tensor dv = zeros_on({B, T, d.HKV, d.V}, acc, q);
  Tensor dg = g.has_value() ? zeros_on(g->sizes(), acc, q) : Tensor();
  Tensor dh0 = empty_on({N, d.HKV, d.K, d.V}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const acc_t* kp = kc.mutable_data_ptr<acc_t>();
  const acc_t* vp = vc.mutable_data_ptr<acc_t>();
  const acc_t* dop = doc.mutable_data_ptr<acc_t>();
  const acc_t* gp = g.has_value() ? gc.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* h0p = initial_state.has_value() ? h0.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* dhTp = grad_final_state.has_value() ? dhT.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* dqp = dq.mutable_data_ptr<acc_t>();
  acc_t* dkp = dk.mutable_data_ptr<acc_t>();
  acc_t* dvp = dv.mutable_data_ptr<acc_t>();
  acc_t* dgp = g.has_value() ? dg.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* dh0p = dh0.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t KV = d.K * d.V, G = d.group();

  torch::stable::parallel_for(0, N * d.HKV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.HKV, kh = item % d.HKV;
      const int64_t L = seqs.len[n], r0 = seqs.start[n];
      const int64_t n_chunks = (L + kChunk - 1) / kChunk;
      auto k_at = [&](int64_t t) { return kp + ((r0 + t) * d.HKV + kh) * d.K; };
      auto v_at = [&](int64_t t) { return vp + ((r0 + t) * d.HKV + kh) * d.V; };
      auto g_at = [&](int64_t t) { return gate_at(gp, mode, r0 + t, kh, d); };

      // Forward pass keeping checkpoint c = the state before step c * kChunk.
      std::vector<acc_t> ckpt(n_chunks * KV);
      std::vector<acc_t> S(KV, acc_t(0));
      if (h0p) std::copy(h0p + item * KV, h0p + (item + 1) * KV, S.begin());
      for (int64_t t = 0; t < L; ++t) {
        if (t % kChunk == 0) std::copy(S.begin(), S.end(), ckpt.begin() + (t / kChunk) * KV);
        recurrence_step(S.data(), k_at(t), v_at(t), g_at(t), mode, d.K, d.V);
      }

      // dS starts at grad_final_state (zero when absent).
      acc_t* dS = dh0p + item * KV;  // the running gradient ends up as dinitial_state
      if (dhTp) std::copy(dhTp + item * KV, dhTp + (item + 1) * KV, dS);
      else std::fill(dS, dS + KV, acc_t(0));

      // states[s] = state before step t0 + s of the current chunk (states[s + 1] after it).
      std::vector<acc_t> states((kChunk + 1) * KV);
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
        std::copy(ckpt.begin() + c * KV, ckpt.begin() + (c + 1) * KV, states.begin());
        for (int64_t t = t0; t < t1; ++t) {
          acc_t* next = states.data() + (t - t0 + 1) * KV;
          std::copy(next - KV, next, next);
          recurrence_step(next, k_at(t), v_at(t), g_at(t), mode, d.K, d.V);
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const acc_t* S_prev = states.data() + (t - t0) * KV;
          const acc_t* S_t = S_prev + KV;
          const int64_t r = r0 + t;
          for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
            const acc_t* qt = qp + (r * d.H + h) * d.K;
            const acc_t* do_t = dop + (r * d.H + h) * d.V;
            acc_t* dqt = dqp + (r * d.H + h) * d.K;
            for (int64_t i = 0; i < d.K; ++i) {
              const acc_t* Srow = S_t + i * d.V;
              acc_t* dSrow = dS + i * d.V;
              const acc_t sqi = scale * qt[i];
              acc_t sum = 0;
              for (int64_t j = 0; j < d.V; ++j) {
                sum += do_t[j] * Srow[j];
                dSrow[j] += sqi * do_t[j];
              }
              dqt[i] = scale * sum;
            }
          }
          const acc_t* kt = k_at(t);
          const acc_t* vt = v_at(t);
          acc_t* dkt = dkp + (r * d.HKV + kh) * d.K;
          acc_t* dvt = dvp + (r * d.HKV + kh) * d.V;
          const acc_t* gt = g_at(t);
          for (int64_t i = 0; i < d.K; ++i) {
            acc_t* dSrow = dS + i * d.V;
            const acc_t* Sprow = S_prev + i * d.V;
            acc_t dk_i = 0, dg_i = 0;
            for (int64_t j = 0; j < d.V; ++j) {
              dk_i += dSrow[j] * vt[j];
              dvt[j] += dSrow[j] * kt[i];
              dg_i += Sprow[j] * dSrow[j];
            }
            dkt[i] = dk_i;
            if (mode == GateMode::kNone) continue;
            const acc_t decay = decay_of(gt, mode, i);
            if (mode == GateMode::kPerKey) dgp[(r * d.HKV + kh) * d.K + i] = decay * dg_i;
            else dgp[r * d.HKV + kh] += decay * dg_i;
            for (int64_t j = 0; j < d.V; ++j) dSrow[j] *= decay;
          }
        }
      }
    }
  });

  // absent inputs get an empty float32 tensor each (the schema's outputs never alias one another)
  return {cast(dq, q.scalar_type()), cast(dk, k.scalar_type()), cast(dv, v.scalar_type()),
          g.has_value() ? cast(dg, g->scalar_type()) : empty_on({0}, kFloat, q),
          initial_state.has_value() ? cast(dh0, kFloat) : empty_on({0}, kFloat, q)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> linear_attn_bwd_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& g,
    double scale, const OptTensor& initial_state, const OptTensor& cu_seqlens,
    const Tensor& grad_o, const OptTensor& grad_final_state) {
  check_qkv(q, k, v, 2, "linear_attn_bwd");
  if (q.scalar_type() == kDouble)
    return linear_attn_bwd_impl<double>(q, k, v, g, scale, initial_state, cu_seqlens, grad_o,
                                        grad_final_state);
  return linear_attn_bwd_impl<float>(q, k, v, g, scale, initial_state, cu_seqlens, grad_o,
                                     grad_final_state);
}

// ---------------------------------------------------------------------------- decode
// One recurrence step per sequence on its state slot, updated in place in the state's dtype.
// The state is addressed through its strides (only its last dimension must be contiguous).
// Bad-data guard: a sequence whose slot lies outside [0, S) touches no state and gets a NaN
// output row (the frontend range-checks state_indices on CPU tensors by default).
template <typename acc_t, typename state_t>
Tensor linear_attn_decode_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const OptTensor& g, const Tensor& state,
                                   const std::vector<int64_t>& slots, GateMode mode,
                                   double scale_d) {
  const int64_t N = q.size(0), S_slots = state.size(0);
  const Dims d{q.size(1), k.size(1), q.size(2), v.size(2)};
  const auto acc = std::is_same<acc_t, double>::value ? kDouble : kFloat;
  const Tensor qc = to_contig(q, acc), kc = to_contig(k, acc),
                   vc = to_contig(v, acc);
  const Tensor gc = g.has_value() ? to_contig(*g, acc) : Tensor();
  Tensor o = empty_on({N, d.H, d.V}, acc, q);

  const acc_t* qp = qc.mutable_data_ptr<acc_t>();
  const acc_t* kp = kc.mutable_data_ptr<acc_t>();
  const acc_t* vp = vc.mutable_data_ptr<acc_t>();
  const acc_t* gp = g.has_value() ? gc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* out_p = o.mutable_data_ptr<acc_t>();
  state_t* sp = state.mutable_data_ptr<state_t>();
  const int64_t ss0 = state.stride(0), ss1 = state.stride(1), ss2 = state.stride(2);
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t KV = d.K * d.V, G = d.group();

  torch::stable::parallel_for(0, N * d.HKV, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> S(KV);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / d.HKV, kh = item % d.HKV;
      if (slots[i] < 0 || slots[i] >= S_slots) {  // bad slot: NaN rows, no state touched
        for (int64_t h = kh * G; h < (kh + 1) * G; ++h)
          std::fill(out_p + (i * d.H + h) * d.V, out_p + (i * d.H + h + 1) * d.V,
                    std::numeric_limits<acc_t>::quiet_NaN());
        continue;
      }
      state_t* slot = sp + slots[i] * ss0 + kh * ss1;
      for (int64_t a = 0; a < d.K; ++a)
        for (int64_t b = 0; b < d.V; ++b) S[a * d.V + b] = static_cast<acc_t>(slot[a * ss2 + b]);
      recurrence_step(S.data(), kp + item * d.K, vp + item * d.V, gate_at(gp, mode, i, kh, d),
                      mode, d.K, d.V);
      for (int64_t a = 0; a < d.K; ++a)
        for (int64_t b = 0; b < d.V; ++b) slot[a * ss2 + b] = static_cast<state_t>(S[a * d.V + b]);
      for (int64_t h = kh * G; h < (kh + 1) * G; ++h)
        readout(S.data(), qp + (i * d.H + h) * d.K, scale, out_p + (i * d.H + h) * d.V, d.K, d.V);
    }
  });
  return cast(o, q.scalar_type());
}

Tensor linear_attn_decode_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const OptTensor& g, const Tensor& state,
                                  const OptTensor& state_indices, double scale) {
  const char* op = "linear_attn_decode";
  check_qkv(q, k, v, 1, op);
  const int64_t N = q.size(0), HKV = k.size(1), K = q.size(2), V = v.size(2);
  const GateMode mode = gate_mode(g, {N}, HKV, K, op);
  SBOPS_CHECK(state.dim() == 4 && state.size(1) == HKV && state.size(2) == K && state.size(3) == V,
              op, ": state must have shape [S, ", HKV, ", ", K, ", ", V, "], got ", state.sizes());
  check_inplace(state, op, "state");
  const int64_t S = state.size(0);
  const std::vector<int64_t> slots = slot_values(state_indices, N, S, op, "state_indices");
  // Two sequences on one slot would race on the in-place update (a host check: CPU data).
  std::vector<bool> used(S, false);
  for (int64_t i = 0; i < N; ++i) {
    if (slots[i] < 0 || slots[i] >= S) continue;
    SBOPS_CHECK(!used[slots[i]], op, ": state_indices holds slot ", slots[i], " twice");
    used[slots[i]] = true;
  }
  Tensor o;
  const auto state_dtype = state.scalar_type();
  SBOPS_DISPATCH_FLOATING_AND_HALF_TYPES(state_dtype, "linear_attn_decode", [&] {
    if (q.scalar_type() == kDouble)
      o = linear_attn_decode_impl<double, scalar_t>(q, k, v, g, state, slots, mode, scale);
    else
      o = linear_attn_decode_impl<float, scalar_t>(q, k, v, g, state, slots, mode, scale);
  });
  return o;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sbops, CPU, m) {
  m.impl("linear_attn", TORCH_BOX(&linear_attn_cpu));
  m.impl("linear_attn_bwd", TORCH_BOX(&linear_attn_bwd_cpu));
  m.impl("linear_attn_decode", TORCH_BOX(&linear_attn_decode_cpu));
}
