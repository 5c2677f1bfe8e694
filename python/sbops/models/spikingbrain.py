"""SpikingBrain-style causal language models built from sbops.nn layers."""
from __future__ import annotations

import weakref
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import sbops.distributed as sbd
from sbops import _platform
from sbops._validate import checking_data
from sbops.distributed._collectives import all_gather_stack, all_reduce_sum

from ..nn import CacheBatch, GatedLinearAttention, HybridAttention, MoEBlock, RMSNorm, SlidingWindowAttention, SwiGLU
from ..nn.cache import _count
from ..nn.common import linear_module
from .config import SpikingBrainConfig
from .forward_args import (CausalLMOutput, check_attention_mask, check_flag, check_input_ids, check_labels,
                           check_logits_to_keep)


class ModelCache:
    """Slot-indexed decode cache of a whole model: one cache object per layer plus the lengths.

    S slots (new_cache(S)); a forward call names the slots of its sequences (slot_indices, default
    0..N-1), so sequences can join and leave a running batch.  seq_lens [S] int64: tokens each slot
    holds (the next token's position).  Layer caches are allocated once (GLA: [S, HKV, K, V] float32
    states; SWA: ring buffers of window + 1 rows) and updated in place, so their memory never grows.
    """

    # generate() leaves slot i holding sequence i of its call unless max_batch_size made later sequences take
    # freed slots; then a reuse_cache call cannot continue the sequences by position (a class default: caches
    # pickled before this flag have it too)
    slots_in_order = True

    def __init__(self, layers: list, batch_size: int, device=None):
        self.layers = layers
        with torch.inference_mode(False):  # a normal tensor even when made under inference_mode: its version
            # counter keeps the host bookkeeping below (and the full-attention room check with it) valid
            self.seq_lens = torch.zeros(batch_size, dtype=torch.int64, device=device)
        # Host bookkeeping of seq_lens (no device reads): the tokens of each slot as the host last knew
        # them (None: unknown, e.g. after a decode step given device slot indices); valid while
        # seq_lens' version counter is the one recorded (an outside write to seq_lens voids it; an
        # inference-mode tensor has no version counter, so there it is never valid).
        self._host_lens: List[Optional[int]] = [0] * batch_size
        self._host_version = _version(self.seq_lens)

    def host_lens(self) -> List[Optional[int]]:
        """The host's knowledge of seq_lens (a copy; None where unknown); no device read."""
        lens = self.__dict__.get("_host_lens")
        v = _version(self.seq_lens)
        if lens is None or v is None or self.__dict__.get("_host_version") != v or len(lens) != self.num_slots:
            return [None] * self.num_slots
        return list(lens)

    def _set_host_lens(self, lens: List[Optional[int]]) -> None:
        self._host_lens, self._host_version = list(lens), _version(self.seq_lens)

    def __getstate__(self):  # picklable (torch.save a conversation): the model-fit mark is a weak reference
        state = dict(self.__dict__)
        state.pop("_fits_model", None)
        state["_host_lens"], state["_host_version"] = self.host_lens(), None   # valid now; re-pinned on loading
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.seq_lens.is_inference():  # loaded under inference_mode: keep a version counter (see __init__)
            with torch.inference_mode(False):
                self.seq_lens = self.seq_lens.clone()
        if "_host_lens" in state:
            self._host_version = _version(self.seq_lens)

    @property
    def num_slots(self) -> int:
        return self.seq_lens.shape[0]

    def reset(self, slots=None) -> None:
        """Empty these slots (default: all) for new sequences: length 0 and zero linear-attention
        states (ring-buffer rows are never read beyond a slot's length, so they are left as they are)."""
        host = self.host_lens()
        if slots is None:
            host = [0] * self.num_slots
            self.slots_in_order = True
        elif isinstance(slots, torch.Tensor) and not slots.is_cpu:
            host = [None] * self.num_slots    # which slots: a device read; the bookkeeping is given up instead
        else:
            ids = torch.as_tensor(slots)
            if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
                raise ValueError(f"reset: slots must be integer slot indices, got dtype {ids.dtype}")
            for i in ids.to(torch.int64).reshape(-1).tolist():
                if not -self.num_slots <= i < self.num_slots:
                    raise ValueError(f"reset: slots must lie in [-{self.num_slots}, {self.num_slots}) (the cache's "
                                     f"slots), got {i}")
                host[i] = 0
        idx = slice(None) if slots is None else torch.as_tensor(slots, dtype=torch.int64, device=self.seq_lens.device)
        self.seq_lens[idx] = 0
        for c in self.layers:
            lin = c.linear if hasattr(c, "linear") else c
            if hasattr(lin, "state"):
                lin.state[idx] = 0
        self._set_host_lens(host)

    def tensors(self) -> List[torch.Tensor]:
        """Every cache tensor, layer by layer."""
        out = []
        for c in self.layers:
            for part in ([c.linear, c.softmax] if hasattr(c, "linear") else [c]):
                out += [part.state] if hasattr(part, "state") else [part.k, part.v]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def check_fits(self, model: "SpikingBrainForCausalLM") -> None:
        """Raise ValueError unless this cache was made for `model`'s layers (model.new_cache): layer count,
        slot counts, state / ring-buffer shapes (ring rows >= window + 1), dtypes and device.  Shapes only,
        no device reads; the model runs it once per cache."""
        layers = model.model.layers
        if len(self.layers) != len(layers):
            raise ValueError(f"cache: it has {len(self.layers)} layer caches but the model has {len(layers)} "
                             f"layers; allocate it with this model's new_cache")
        S, dev = self.num_slots, model.model.embed_tokens.weight.device
        for i, (have, layer) in enumerate(zip(self.layers, layers)):
            want = layer.self_attn.new_cache(1, 1, device="meta")
            pairs = [(have, want)]
            if hasattr(want, "linear"):  # a hybrid layer: both branches
                pairs = [(getattr(have, "linear", None), want.linear), (getattr(have, "softmax", None), want.softmax)]
            for part_have, part_want in pairs:
                names = ("state",) if hasattr(part_want, "state") else ("k", "v")
                for name in names:
                    t, w = getattr(part_have, name, None), getattr(part_want, name)
                    ok = (isinstance(t, torch.Tensor) and t.dim() == w.dim() and t.shape[0] == S
                          and t.dtype == w.dtype and t.device == dev)
                    if name == "state":
                        ok = ok and t.shape[1:] == w.shape[1:]
                        shape = ", ".join(map(str, (S,) + tuple(w.shape[1:])))
                    else:
                        window = layer.self_attn.window
                        ok = ok and t.shape[2:] == w.shape[2:] and (window < 0 or t.shape[1] >= window + 1)
                        rows = f">= {window + 1} rows" if window >= 0 else "max_length rows"
                        shape = f"{S}, {rows}, {w.shape[2]}, {w.shape[3]}"
                    if not ok:
                        got = (f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor)
                               else f"a {type(part_have).__name__}")
                        raise ValueError(f"cache: layer {i}'s {name} must be [{shape}] {w.dtype} on {dev} "
                                         f"(this model's new_cache), got {got}")
        if self.seq_lens.dtype != torch.int64 or self.seq_lens.device != dev:
            raise ValueError(f"cache: seq_lens must be int64 on {dev}, got {self.seq_lens.dtype} on {self.seq_lens.device}")
        full = [getattr(c, "softmax", c).rows for c, layer in zip(self.layers, layers)
                if getattr(layer.self_attn, "window", 0) < 0 and hasattr(getattr(c, "softmax", c), "rows")]
        self._full_rows = min(full) if full else None   # tokens a slot of the full-attention layers holds

    def _check_decode_room(self, slots: Optional[List[int]]) -> None:
        """A decode step adds a token to these slots: refuse it where the host knows a slot's full-attention
        layers are full (their kernels would otherwise overwrite a held row with data checks off)."""
        rows = self.__dict__.get("_full_rows")
        if rows is None or slots is None:
            return
        lens = self.host_lens()
        for s in slots:
            if 0 <= s < len(lens) and lens[s] is not None and lens[s] >= rows:
                raise ValueError(f"cache: slot {s} holds {lens[s]} tokens, as many as its full-attention layers hold "
                                 f"({rows} per slot), so it cannot take another token: allocate the cache with "
                                 f"model.new_cache(..., max_length=) of at least the whole sequence's length")

    def _note_forward(self, lens: List[Optional[int]], slots: Optional[List[int]], ends: Optional[List[int]],
                      decode: bool) -> None:
        """After a forward call updated seq_lens (lens: host_lens() before it): its slots now hold `ends`
        tokens (prefill), or one more (decode); slots None (device slot indices) makes every slot unknown."""
        if slots is None:
            lens = [None] * self.num_slots
        elif decode:
            for s in slots:
                if 0 <= s < len(lens):
                    lens[s] = None if lens[s] is None else lens[s] + 1
        else:
            for s, e in zip(slots, ends):
                if 0 <= s < len(lens):
                    lens[s] = e
        self._set_host_lens(lens)


def _version(t: torch.Tensor) -> Optional[int]:
    """t's version counter (bumped by every in-place write), None for an inference-mode tensor (none kept)
    or while torch.compile traces or a CUDA graph captures (the bookkeeping is then given up: a replay
    advances seq_lens without the host seeing it)."""
    if torch.compiler.is_compiling() or t.is_inference() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    return t._version


# tokens a cache made by forward(use_cache=True) can take beyond the prompt in full-attention layers
USE_CACHE_EXTRA = 2048

# token count above which an inference forward runs the dense FFN in chunks of this many tokens
FFN_CHUNK_TOKENS = 65536
# chain the layers without their last residual add (folded into the next norm: one launch fewer per layer, the
# same bits); SBOPS_DEFER_MLP_ADD=0, or setting this to False, adds in each layer (benchmarks' A/B)
DEFER_MLP_ADD = _platform.env_switch("SBOPS_DEFER_MLP_ADD")


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)). Qwen2 parameter names.

    The second norm takes the residual in fla's prenorm order (as the released SpikingBrain code:
    mlp_norm(attn_out, residual, prenorm=True)): the FFN input is normalised from the float32 sum
    x + attn_out, not from its copy rounded to x's dtype (identical in float32/float64)."""

    def __init__(self, cfg: SpikingBrainConfig, layer_idx: int):
        super().__init__()
        kind = cfg.layer_types[layer_idx]
        common = dict(hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                      head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, spike_k=cfg.spike_k,
                      weight_quant=cfg.weight_quant)
        if kind == "gla":
            self.self_attn = GatedLinearAttention(gate_low_rank_dim=cfg.gate_low_rank_dim,
                                                  gate_logit_normalizer=cfg.gate_logit_normalizer,
                                                  norm_eps=cfg.rms_norm_eps, **common)
        elif kind == "swa":
            self.self_attn = SlidingWindowAttention(window=cfg.layer_window(layer_idx), rope_theta=cfg.rope_theta,
                                                    q_spike_k=cfg.swa_q_spike_k, kv_quant=cfg.swa_kv_quant, **common)
        else:
            self.self_attn = HybridAttention(window=cfg.layer_window(layer_idx), num_meta_tokens=cfg.num_meta_tokens,
                                             rope_theta=cfg.rope_theta, key_clamp=cfg.key_clamp,
                                             norm_eps=cfg.rms_norm_eps, **common)
        if cfg.num_experts > 0:
            self.mlp = MoEBlock(cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.top_k,
                                renormalize=cfg.moe_renormalize, spike_k=cfg.spike_k, weight_quant=cfg.weight_quant)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.spike_k, cfg.weight_quant,
                              down_quant=cfg.mlp_down_quant, down_weight_quant=cfg.down_weight_quant)
        self._moe = isinstance(self.mlp, MoEBlock)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cache=None, positions=None, *, pending: Optional[torch.Tensor] = None,
                defer_mlp_add: bool = False):
        """Returns (x, aux_loss); aux_loss is the MoE load-balancing loss, None for a dense FFN.
        positions: a CacheBatch (see sbops.nn.cache), or the layers' legacy positions argument.
        Without gradients, a dense FFN over more than FFN_CHUNK_TOKENS tokens runs in token chunks
        added in place to the residual (a fresh tensor from the norm): a long sequence-parallel or
        cache-less prefill never holds the whole shard's [T, 2 * intermediate] activations.

        The model chains its layers without the last residual add (one launch fewer per layer): with
        defer_mlp_add=True the layer returns (x, mlp_out, aux_loss) where its output is x + mlp_out
        (mlp_out None when already added), and the next layer takes pending=mlp_out: its input norm
        adds it (input_layernorm(pending, residual=x, round_sum=True), the sum rounded to x's dtype as
        `x + mlp_out` is), so the results equal the unfused chain bit for bit."""
        if pending is None:
            attn = self.self_attn(self.input_layernorm(x), cache, positions)
        else:
            normed, x = self.input_layernorm(pending, residual=x, prenorm=True, round_sum=True)
            attn = self.self_attn(normed, cache, positions)
            del normed
        h, x = self.post_attention_layernorm(attn, residual=x, prenorm=True)
        del attn
        B, T = h.shape[:2]
        if not self._moe and B * T > FFN_CHUNK_TOKENS and not (torch.is_grad_enabled() and h.requires_grad):
            step = max(1, FFN_CHUNK_TOKENS // B)
            for s in range(0, T, step):
                x[:, s:s + step] += self.mlp(h[:, s:s + step])
            return (x, None, None) if defer_mlp_add else (x, None)
        h = self.mlp(h)
        aux = None
        if self._moe:
            h, aux = h
        if defer_mlp_add:
            return x, h, aux
        return x + h, aux


class SpikingBrainModel(nn.Module):
    """Embeddings, decoder layers, final norm (Qwen2Model's parameter names)."""

    def __init__(self, cfg: SpikingBrainConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class SpikingBrainForCausalLM(nn.Module):
    """A SpikingBrain-7B-style (GLA/SWA) or -76B-style (hybrid + MoE) causal LM.

    forward(input_ids, cache=None, labels=None, logits_to_keep=0, *, cu_seqlens=None,
    slot_indices=None, ...) -> CausalLMOutput (Hugging Face's ModelOutput order: out[0] is the loss
    when labels are given; see forward_args.CausalLMOutput).
      * input_ids [B, T], or [1, total] holding N sequences packed by cu_seqlens [N + 1].
      * cache (from new_cache): sequence i continues slot slot_indices[i] (default i).  A call with
        T == 1 (and no cu_seqlens) is a decode step (no host reads: CUDA-graph capturable); any
        other call is a prefill chunk appended to what the slots already hold (chunked prefill:
        splitting a prompt into any chunks gives the logits and cache of one prefill).
      * logits_to_keep: 0 = logits at every position; int n = the last n positions; a 1-D tensor =
        these positions of dim 1 (Hugging Face's meaning).  labels still give the loss over every
        position (labels [B, T] like input_ids, -100 ignored; packed sequences never predict across
        a boundary).

    Sequence / expert parallel training (no cache, no cu_seqlens): inside
    `sbops.distributed.sequence_parallel(group)` (and optionally `expert_parallel(group)`) each rank
    passes its contiguous shard input_ids[:, lo:hi] and labels[:, lo:hi] (SequenceParallel.shard).
    The loss and aux_loss it returns are then its additive shares: summed over the ranks they equal
    the single-process values (the last token of a shard predicts the next shard's first label).
    Train by all-reducing (summing) the gradients of every parameter over the SP group except the
    routed experts under EP (complete on their owner) and HybridAttention's meta tokens (the SWA
    halo exchange already sums them).  logits_to_keep applies to each rank's own shard (int n: the
    last n positions of this rank's shard, not of the whole sequence).  See docs/DISTRIBUTED.md.
    """

    def __init__(self, cfg: SpikingBrainConfig):
        super().__init__()
        self.config = cfg
        self.model = SpikingBrainModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight is not None:  # None: dropped (8-bit only)
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ checkpoints (sbops.models.pretrained)
    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SpikingBrainForCausalLM":
        from . import pretrained
        return pretrained.from_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path, **kwargs):
        from . import pretrained
        return pretrained.save_pretrained(self, path, **kwargs)

    # ------------------------------------------------------------------ caches
    def new_cache(self, batch_size: int, max_length: Optional[int] = None) -> ModelCache:
        """Allocate a decode cache of batch_size slots. max_length is only needed (and used) by
        full-attention layers, whose cache must hold every position."""
        batch_size = _count("new_cache: batch_size", batch_size, 0)
        if max_length is not None:
            max_length = _count("new_cache: max_length", max_length, 1)
        w = self.model.embed_tokens.weight
        layers = [layer.self_attn.new_cache(batch_size, max_length, device=w.device, dtype=w.dtype)
                  for layer in self.model.layers]
        return ModelCache(layers, batch_size, device=w.device)

    def _plan(self, input_ids, cache: Optional[ModelCache], cu_seqlens, slot_indices, start_positions
              ) -> Tuple[Optional[CacheBatch], Optional[torch.Tensor]]:
        """-> (CacheBatch or None, cu_seqlens as a device tensor or None)."""
        B, T = input_ids.shape
        dev = input_ids.device
        cu_dev = None
        sp = sbd.current_sp()
        if sp is not None:
            if cache is not None or cu_seqlens is not None:
                raise NotImplementedError("sequence parallelism runs without a cache and without cu_seqlens: "
                                          "pass this rank's [B, T_r] shard of input_ids")
            positions = sp.positions(T, dev)[None]  # global positions of this shard (RoPE), once per forward
            return CacheBatch(decode=False, positions=positions, starts=[0] * B, lens=[T] * B,
                              offsets=[i * T for i in range(B)]), None
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"with cu_seqlens, input_ids must be [1, total] (sequences packed along dim 1), "
                                 f"got {tuple(input_ids.shape)}")
            if isinstance(cu_seqlens, torch.Tensor):
                cu, cu_dev = [int(c) for c in cu_seqlens.tolist()], cu_seqlens.to(dev)
            else:
                cu = [int(c) for c in cu_seqlens]
                cu_dev = torch.tensor(cu, dtype=torch.int64).to(dev, non_blocking=True)
            if len(cu) < 2 or cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
                raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at T={T}, got {cu}")
            lens, offsets = [b - a for a, b in zip(cu, cu[1:])], cu[:-1]
        elif cache is None:
            return None, None
        else:   # the host lists only where a cache needs them: under torch.compile(dynamic=True) a list of B
            lens = offsets = None   # values would specialise the graph on the batch size
        N = B if lens is None else len(lens)
        if cache is None:
            return CacheBatch.prefill(lens, offsets, [0] * N, dev, None, cu_seqlens=cu_dev), cu_dev
        if cu_seqlens is None and T == 1:  # decode: device tensors only
            if slot_indices is None:
                slots = torch.arange(N, device=dev)
            elif isinstance(slot_indices, torch.Tensor):
                slots = slot_indices.to(dev, torch.int64)
            else:
                slots = torch.tensor(list(slot_indices), dtype=torch.int64).to(dev, non_blocking=True)
            if slots.shape != (N,):
                raise ValueError(f"slot_indices must be [N] = [{N}] (one cache slot per sequence), "
                                 f"got {tuple(slots.shape)}")
            if checking_data(slots) and N and (int(slots.min()) < 0 or int(slots.max()) >= cache.num_slots):
                raise ValueError(f"slot_indices must lie in [0, {cache.num_slots}) (the cache's slots), got "
                                 f"{slots.tolist()}")
            return CacheBatch.for_decode(cache.seq_lens.index_select(0, slots), slots), None
        if lens is None:
            lens, offsets = [T] * B, [i * T for i in range(B)]
        if slot_indices is None:
            slots = list(range(N))
        elif isinstance(slot_indices, torch.Tensor):
            slots = [int(i) for i in slot_indices.tolist()]
        else:
            slots = [int(i) for i in slot_indices]
        if len(slots) != N or len(set(slots)) != N or min(slots) < 0 or max(slots) >= cache.num_slots:
            raise ValueError(f"{N} sequences need {N} distinct cache slots in [0, {cache.num_slots}), got {slots}")
        if start_positions is None:  # one device read per prefill chunk
            starts = cache.seq_lens.index_select(0, torch.tensor(slots).to(dev, non_blocking=True)).tolist()
        else:
            starts = [int(p) for p in start_positions]
            if len(starts) != N or min(starts) < 0:
                raise ValueError(f"start_positions must hold N={N} values >= 0, got {starts}")
            if checking_data(cache.seq_lens):  # free where the cache lives on the host
                held = cache.seq_lens[slots].tolist()
                if held != starts:
                    raise ValueError(f"start_positions {starts} disagree with what the slots hold "
                                     f"(cache.seq_lens[{slots}] = {held})")
        batch = CacheBatch.prefill(lens, offsets, starts, dev, None if cu_seqlens is not None else T, slots, cu_dev)
        return batch, cu_dev

    def forward(self, input_ids: torch.Tensor, cache: Optional[ModelCache] = None,
                labels: Optional[torch.Tensor] = None, logits_to_keep: Union[int, torch.Tensor] = 0, *,
                cu_seqlens=None, slot_indices=None, start_positions: Optional[List[int]] = None,
                attention_mask: Optional[torch.Tensor] = None, use_cache: Optional[bool] = None,
                past_key_values: Optional[ModelCache] = None, return_dict: Optional[bool] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None):
        """See the class docstring.  cu_seqlens and slot_indices may be tensors or host lists (lists
        spare a device read in a prefill chunk); start_positions (host list: tokens each slot already
        holds, i.e. cache.seq_lens[slot]) spares another.

        Hugging Face's keywords: attention_mask without padding (all ones; with a cache it may be
        [B, held + T]; padding is refused: pack with cu_seqlens, or generate(attention_mask=) drops it);
        use_cache=True without a cache makes one (new_cache(N, max_length=T)), returned as
        out.past_key_values, and use_cache=False refuses a cache; past_key_values= is cache=;
        return_dict=False returns out.to_tuple(); output_attentions / output_hidden_states must be off."""
        check_input_ids(input_ids, self.model.embed_tokens.weight.device, self.model.embed_tokens.num_embeddings)
        for name, flag in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states)):
            if check_flag(flag, name):
                raise NotImplementedError(f"forward: {name}=True is not supported (no attention weights or hidden "
                                          f"states are returned)")
        use_cache, return_dict = check_flag(use_cache, "use_cache"), check_flag(return_dict, "return_dict")
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache once: cache= or past_key_values= (Hugging Face's name), not both")
            if not isinstance(past_key_values, ModelCache):
                raise TypeError(f"past_key_values must be a ModelCache (model.new_cache), got "
                                f"{type(past_key_values).__name__}")
            cache = past_key_values
        if cache is not None and use_cache is False:
            raise ValueError("use_cache=False but a cache was passed: pass no cache, or use_cache=None / True")
        if labels is not None:
            labels = check_labels(labels, input_ids)
        logits_to_keep = check_logits_to_keep(logits_to_keep, input_ids.device)
        if attention_mask is not None:
            check_attention_mask(attention_mask, input_ids, cache is not None)
        if cache is None and use_cache:
            n_seq = input_ids.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
            # room for USE_CACHE_EXTRA more tokens in full-attention layers (Hugging Face's cache grows; ours
            # is allocated once: new_cache(max_length=) for longer continuations)
            cache = self.new_cache(max(n_seq, 1), max_length=max(input_ids.shape[1], 1) + USE_CACHE_EXTRA)
        if cache is not None:
            if not isinstance(cache, ModelCache):
                raise TypeError(f"cache must be a ModelCache (model.new_cache), got {type(cache).__name__}")
            fits = cache.__dict__.get("_fits_model")
            if fits is None or fits() is not self:   # checked once per (cache, model)
                cache.check_fits(self)
                cache._fits_model = weakref.ref(self)
        elif slot_indices is not None or start_positions is not None:
            raise ValueError("slot_indices and start_positions name cache slots: they need a cache")
        batch, cu_dev = self._plan(input_ids, cache, cu_seqlens, slot_indices, start_positions)
        if cache is not None:
            host_before, host_slots = cache.host_lens(), _host_slots(slot_indices, input_ids.shape[0] if batch.decode else len(batch.lens))
            if batch.decode:
                cache._check_decode_room(host_slots)
        x = self.model.embed_tokens(input_ids)
        aux = pending = None
        for i, layer in enumerate(self.model.layers):
            if DEFER_MLP_ADD:
                x, pending, layer_aux = layer(x, None if cache is None else cache.layers[i], batch, pending=pending,
                                              defer_mlp_add=True)
            else:
                x, layer_aux = layer(x, None if cache is None else cache.layers[i], batch)
            if layer_aux is not None:
                aux = layer_aux if aux is None else aux + layer_aux
        if aux is None:
            aux = x.new_zeros((), dtype=torch.float32)
        if cache is not None:
            ends = None
            if batch.decode:
                cache.seq_lens.index_copy_(0, batch.slots, batch.seq_lens)
            else:
                ends = [s + n for s, n in zip(batch.starts, batch.lens)]
                cache.seq_lens.index_copy_(0, batch.slots, torch.tensor(ends, dtype=torch.int64).to(
                    cache.seq_lens.device, non_blocking=True))
            cache._note_forward(host_before, host_slots, ends, batch.decode)
        loss = None
        if labels is not None:
            logits_all = self.lm_head(_final_norm(self.model.norm, x, pending, 0))
            sp = sbd.current_sp()
            ce = self._loss(logits_all, labels, cu_dev) if sp is None else self._loss_share(logits_all, labels, sp)
            loss = ce + self.config.router_aux_loss_coef * aux
            logits = _keep(logits_all, logits_to_keep)
        else:
            # the final norm is per position: only the kept positions are normalised
            logits = linear_module(self.lm_head, _final_norm(self.model.norm, x, pending, logits_to_keep))
        out = CausalLMOutput(logits, aux, loss, cache)
        return out.to_tuple() if return_dict is False else out

    @staticmethod
    def _loss(logits, labels, cu_seqlens):
        target = labels[:, 1:]
        if cu_seqlens is not None and cu_seqlens.numel() > 2:
            # position cu[i] - 1 is a sequence's last token: it predicts nothing in the next sequence
            target = target.clone()
            # (empty sequences: a boundary at 0 or at T marks no position; T - 1 predicts nothing already)
            ends = cu_seqlens[1:-1].to(target.device, torch.int64) - 1
            target[:, ends[(ends >= 0) & (ends < target.shape[1])]] = -100
        return F.cross_entropy(_upcast(logits[:, :-1]).reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=-100)

    @staticmethod
    def _loss_share(logits, labels, sp):
        """Sequence parallel: this rank's share of the single-process mean cross-entropy.  The shard's
        last token predicts the first label of the next rank holding tokens (one all_gather of each
        rank's [B] first labels and whether it has any; empty shards, T_r = 0, predict nothing); the
        sum of the losses is divided by the count of valid targets over the whole group."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must be shaped like input_ids {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        r, P = sp.rank, sp.world_size                   # first: a clear error outside the group
        B, T = labels.shape
        first = labels[:, 0] if T else labels.new_full((B,), -100)
        packed = all_gather_stack(torch.cat([first, first.new_full((1,), 1 if T else 0)]), sp.group)  # [P, B+1]
        nxt = labels.new_full((B,), -100)
        for j in range(P - 1, r, -1):                   # the nearest later rank with tokens wins
            nxt = torch.where(packed[j, B] > 0, packed[j, :B], nxt)
        target = torch.cat([labels[:, 1:], nxt[:, None]], 1) if T else labels
        n_valid = all_reduce_sum((target != -100).sum().to(torch.float64), sp.group)
        ce = F.cross_entropy(_upcast(logits).reshape(-1, logits.shape[-1]), target.reshape(-1),
                             ignore_index=-100, reduction="sum")
        return ce / n_valid.to(ce.dtype)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        from .generate import generate
        return generate(self, input_ids, max_new_tokens, **kwargs)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """float32 for the loss (float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def _final_norm(norm, x: torch.Tensor, pending: Optional[torch.Tensor], logits_to_keep) -> torch.Tensor:
    """The final norm of x + pending (the last layer's deferred MLP output; None: already in x) at the
    kept positions only (the norm is per position)."""
    if pending is None:
        return norm(_keep(x, logits_to_keep))
    return norm(_keep(pending, logits_to_keep), residual=_keep(x, logits_to_keep), round_sum=True)


def _keep(t: torch.Tensor, logits_to_keep) -> torch.Tensor:
    """Hugging Face's logits_to_keep on dim 1: 0 = all, int n = the last n, a tensor = an index of dim 1 as
    HF applies it (t[:, logits_to_keep]: positions, negative ones counted from the end, or a bool mask)."""
    if isinstance(logits_to_keep, torch.Tensor):
        idx = logits_to_keep.reshape(1) if logits_to_keep.dim() == 0 else logits_to_keep
        if idx.dim() != 1 or not (idx.dtype == torch.bool or not (idx.is_floating_point() or idx.is_complex())):
            raise ValueError(f"logits_to_keep must be an int or a 1-D integer or bool tensor, got "
                             f"{idx.dtype} of shape {tuple(idx.shape)}")
        if idx.dtype == torch.bool and idx.shape[0] != t.shape[1]:
            raise ValueError(f"a bool logits_to_keep must have one entry per position ({t.shape[1]}), "
                             f"got {idx.shape[0]}")
        return t[:, idx.to(t.device, non_blocking=True)]
    n = check_logits_to_keep(logits_to_keep, t.device)
    if isinstance(n, torch.Tensor):
        return _keep(t, n)
    return t if n == 0 else t[:, -n:]


def _host_slots(slot_indices, n: int) -> Optional[List[int]]:
    """The slots of a forward call as host ints, or None where that needs a device read, or while torch.compile
    traces (the host's view of seq_lens is given up then anyway, and a list of n values would specialise the
    graph on the batch size)."""
    if torch.compiler.is_compiling():
        return None
    if slot_indices is None:
        return list(range(n))
    if isinstance(slot_indices, torch.Tensor):
        return [int(i) for i in slot_indices.reshape(-1).tolist()] if slot_indices.is_cpu else None
    return [int(i) for i in slot_indices]
