"""SpikingBrain-style causal language models built from sbops.nn layers."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GatedLinearAttention, HybridAttention, MoEBlock, RMSNorm, SlidingWindowAttention, SwiGLU
from .config import SpikingBrainConfig


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor            # [B, T, vocab]
    aux_loss: torch.Tensor          # summed MoE load-balancing losses (0 without MoE), unscaled
    loss: Optional[torch.Tensor]    # next-token cross-entropy + router_aux_loss_coef * aux_loss, if labels given


class ModelCache:
    """Per-sequence decode cache of a whole model: one cache object per layer plus the lengths.

    seq_lens [N] int64: tokens seen so far by each sequence (the next token's position). Layer
    caches are allocated once (GLA: [N, HKV, K, V] states; SWA: ring buffers of window + 1 rows)
    and updated in place, so their memory does not grow while decoding.
    """

    def __init__(self, layers: list, batch_size: int, device=None):
        self.layers = layers
        self.seq_lens = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.length = 0  # host copy of the (common) length: prefill needs a fresh cache

    def tensors(self) -> List[torch.Tensor]:
        """Every cache tensor, layer by layer."""
        out = []
        for c in self.layers:
            for part in ([c.linear, c.softmax] if hasattr(c, "linear") else [c]):
                out += [part.state] if hasattr(part, "state") else [part.k, part.v]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)). Qwen2 parameter names."""

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
                                                    **common)
        else:
            self.self_attn = HybridAttention(window=cfg.layer_window(layer_idx), num_meta_tokens=cfg.num_meta_tokens,
                                             rope_theta=cfg.rope_theta, key_clamp=cfg.key_clamp,
                                             norm_eps=cfg.rms_norm_eps, **common)
        if cfg.num_experts > 0:
            self.mlp = MoEBlock(cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.top_k,
                                renormalize=cfg.moe_renormalize, spike_k=cfg.spike_k, weight_quant=cfg.weight_quant)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.spike_k, cfg.weight_quant)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cache=None, positions: Optional[torch.Tensor] = None):
        """Returns (x, aux_loss); aux_loss is a 0-d zero for a dense FFN."""
        x = x + self.self_attn(self.input_layernorm(x), cache, positions)
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(self.mlp, MoEBlock):
            h, aux = h
        else:
            aux = x.new_zeros((), dtype=torch.float32)
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

    forward(input_ids [B, T], cache=None, labels=None) -> CausalLMOutput. With a cache (from
    new_cache) a call with T > 1 prefills a fresh cache and a call with T == 1 decodes one token
    per sequence; see sbops.models.generate.
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
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None) -> ModelCache:
        """Allocate a decode cache for batch_size sequences. max_length is only needed (and used)
        by full-attention layers, whose cache must hold every position."""
        w = self.model.embed_tokens.weight
        layers = [layer.self_attn.new_cache(batch_size, max_length, device=w.device, dtype=w.dtype)
                  for layer in self.model.layers]
        return ModelCache(layers, batch_size, device=w.device)

    def forward(self, input_ids: torch.Tensor, cache: Optional[ModelCache] = None,
                labels: Optional[torch.Tensor] = None) -> CausalLMOutput:
        B, T = input_ids.shape
        positions = None
        if cache is not None:
            if T > 1 and cache.length != 0:
                raise ValueError("a cache holding tokens can only be extended one token at a time (T == 1); "
                                 "prefill (T > 1) needs a fresh cache")
            if T == 1:
                positions = cache.seq_lens[:, None]
        x = self.model.embed_tokens(input_ids)
        aux = x.new_zeros((), dtype=torch.float32)
        for i, layer in enumerate(self.model.layers):
            x, layer_aux = layer(x, None if cache is None else cache.layers[i], positions)
            aux = aux + layer_aux
        logits = self.lm_head(self.model.norm(x))
        if cache is not None:
            cache.seq_lens += T
            cache.length += T
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
            loss = loss + self.config.router_aux_loss_coef * aux
        return CausalLMOutput(logits, aux, loss)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs):
        from .generate import generate
        return generate(self, input_ids, max_new_tokens, **kwargs)
