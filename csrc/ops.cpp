// The sbops operator schemas: the single source of truth for every op's signature.
// Implementations register per dispatch key elsewhere (backends/cpu, backends/cuda/bindings,
// Triton kernels from Python); fake (meta) kernels and autograd are registered once in
// python/sbops/_registration.py.  Backward passes are ops too, so torch.compile traces them.
// Registered through the LibTorch stable ABI (TORCH_TARGET_VERSION 2.10): one binary, every torch >= 2.10.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(sbops, m) {
  // ---- 1. linear attention (GLA family), layout [B, T, H, K] -------------------------------
  // g: None | [B,T,HKV] | [B,T,HKV,K].  final_state is always computed: [N,HKV,K,V] float32.
  m.def("linear_attn(Tensor q, Tensor k, Tensor v, Tensor? g, float scale, Tensor? initial_state, "
        "Tensor? cu_seqlens) -> (Tensor o, Tensor final_state)");
  // Gradients; dg / dinitial_state are empty (numel 0) when g / initial_state is None.
  m.def("linear_attn_bwd(Tensor q, Tensor k, Tensor v, Tensor? g, float scale, Tensor? initial_state, "
        "Tensor? cu_seqlens, Tensor grad_o, Tensor? grad_final_state) "
        "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dinitial_state)");
  // One recurrence step per sequence; updates state[state_indices[i]] in place.
  m.def("linear_attn_decode(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor(a!) state, "
        "Tensor? state_indices, float scale) -> Tensor");

  // ---- 2. sliding-window attention -------------------------------------------------------
  // window < 0: full causal.  lse: [B,T,H] float32, natural log.
  m.def("swa_attn(Tensor q, Tensor k, Tensor v, int window, float scale, Tensor? cu_seqlens, "
        "Tensor? sink_k, Tensor? sink_v) -> (Tensor o, Tensor lse)");
  // dsink_k / dsink_v are empty when there are no sinks.  grad_lse may be None.
  m.def("swa_attn_bwd(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor grad_o, "
        "Tensor? grad_lse, int window, float scale, Tensor? cu_seqlens, Tensor? sink_k, "
        "Tensor? sink_v) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dsink_k, Tensor dsink_v)");
  // sink_k / sink_v [M, HKV, D]: keys every query also attends, in the same softmax (as swa_attn).
  m.def("swa_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor seq_lens, int window, "
        "float scale, Tensor? slot_indices, Tensor? sink_k=None, Tensor? sink_v=None) -> Tensor");
  m.def("swa_cache_write(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor positions, Tensor? slot_indices) -> ()");

  // ---- 3. spike coding -------------------------------------------------------------------
  m.def("spike_encode(Tensor x, float k, ScalarType out_dtype) -> (Tensor counts, Tensor vth)");
  m.def("spike_quant(Tensor x, float k) -> Tensor");
  // T is resolved by the caller; a count that T steps cannot represent is an error.
  m.def("spike_expand(Tensor counts, str mode, int T) -> Tensor");
  m.def("spike_collapse(Tensor trains, str mode) -> Tensor");
  // Histogram of |counts| as int64 [max_abs + 1]; the public spike_stats derives the rest.
  m.def("spike_stats(Tensor counts, int max_abs) -> Tensor");

  // W8ASpike linear: y = vth * (round(x / vth) @ dequant(weight_q, weight_scale)^T) + bias, x [M, K];
  // weight_scale [N] (group_size <= 0: per output channel) or [N, K / group_size].  Counts never saturate.
  m.def("spike_linear(Tensor x, Tensor weight_q, Tensor weight_scale, float k, Tensor? bias, "
        "int group_size) -> Tensor");

  // ---- 4. MoE routing --------------------------------------------------------------------
  // num_groups <= 0: no group restriction.
  m.def("topk_gating(Tensor logits, int k, str scoring, bool renormalize, Tensor? bias, "
        "int num_groups, int topk_groups, float scaling) -> (Tensor weights, Tensor ids)");
  m.def("topk_gating_bwd(Tensor grad_weights, Tensor logits, Tensor ids, str scoring, "
        "bool renormalize, float scaling) -> Tensor");
  m.def("moe_permute(Tensor x, Tensor ids, int num_experts) "
        "-> (Tensor x_perm, Tensor expert_offsets, Tensor row_map)");
  // grad_x[t] = sum over routed slots j of grad_x_perm[row_map[t, j]]
  m.def("moe_permute_bwd(Tensor grad_x_perm, Tensor row_map) -> Tensor");
  m.def("moe_unpermute(Tensor y_perm, Tensor row_map, Tensor weights) -> Tensor");
  m.def("moe_unpermute_bwd(Tensor grad_y, Tensor y_perm, Tensor row_map, Tensor weights) "
        "-> (Tensor grad_y_perm, Tensor grad_weights)");
  m.def("moe_align_block_size(Tensor ids, int num_experts, int block_size) "
        "-> (Tensor sorted_ids, Tensor block_expert_ids, Tensor num_tokens_post_pad)");
  m.def("expert_counts(Tensor ids, int num_experts) -> Tensor");
}
