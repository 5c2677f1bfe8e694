"""Build SpikingBrain-style models from a Qwen2 config, and convert Qwen2 weights (the paper's recipe)."""
from __future__ import annotations

import torch
from torch import nn

from ..nn import GatedLinearAttention, MoEBlock
from .config import SpikingBrainConfig
from .spikingbrain import SpikingBrainForCausalLM


def build_from_qwen2_config(qwen2_config, kind: str = "7b", **overrides) -> SpikingBrainForCausalLM:
    """A randomly initialised SpikingBrain-`kind` model shaped after `qwen2_config` (see
    SpikingBrainConfig.from_qwen2 for what kind and overrides mean)."""
    return SpikingBrainForCausalLM(SpikingBrainConfig.from_qwen2(qwen2_config, kind, **overrides))


@torch.no_grad()
def convert_qwen2(model: nn.Module, kind: str = "7b", **overrides) -> SpikingBrainForCausalLM:
    """Convert a Hugging Face Qwen2ForCausalLM into a SpikingBrain-`kind` model.

    Reused as they are: token embeddings, every RMSNorm, lm_head, and each layer's attention
    q/k/v (with biases) and o projections -- for GLA layers the same projections feed relu(q),
    relu(k) and v, for hybrid layers both branches share them.  Dense FFNs are copied; MoE FFNs
    (kind="76b") are upcycled from the layer's dense FFN (MoEBlock.upcycle_from, scale
    config.upcycle_scale).  New parameters start small: the GLA gate projections ~ N(0, 0.02^2)
    with a zero bias (so every channel starts with decay exp(logsigmoid(0) / 16) ~ 0.958), the
    per-head output norms at 1, meta tokens ~ N(0, 0.02^2).  The result has the source's dtype
    and device.  Every source tensor is either reused or upcycled; anything left over is an error.
    """
    ids = {}
    gen = getattr(model, "generation_config", None)   # Hugging Face's generate stops on these (Qwen2-Instruct:
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):   # <|im_end|> and <|endoftext|>)
        v = getattr(gen, name, None)
        if v is not None and name not in overrides:
            ids[name] = list(v) if isinstance(v, (list, tuple)) else v
    cfg = SpikingBrainConfig.from_qwen2(model.config, kind, **{**ids, **overrides})
    n_src = len(model.model.layers)
    if cfg.num_layers != n_src:   # the layer copy pairs them up one to one: extra layers would stay random
        raise ValueError(f"convert_qwen2: layer_types has {cfg.num_layers} entries but the source has "
                         f"num_hidden_layers={n_src}; give one layer type per source layer")
    if cfg.weight_quant == "int8_static":
        raise ValueError("convert_qwen2: weight_quant='int8_static' takes fixed scales from a released W8ASpike "
                         "checkpoint (SpikingBrainForCausalLM.from_pretrained); a float Qwen2 has none. Use "
                         "weight_quant='int8' / 'int8_channel' (scales from the weights) or 'fp8'")
    src_param = next(model.parameters())
    dst = SpikingBrainForCausalLM(cfg).to(device=src_param.device, dtype=src_param.dtype)

    src_sd = model.state_dict()
    dst_sd = dst.state_dict()
    if cfg.tie_word_embeddings and "lm_head.weight" in src_sd and \
            not torch.equal(src_sd["lm_head.weight"], src_sd["model.embed_tokens.weight"]):
        raise ValueError("convert_qwen2: tie_word_embeddings=True, but the source's lm_head differs from its "
                         "embeddings: one of the two would be dropped (convert with the source's untied setting)")
    used = set()
    for name, tensor in dst_sd.items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue   # the same tensor as the embeddings, copied under that name
        if name in src_sd and ".mlp." not in name:
            if src_sd[name].shape != tensor.shape:
                raise ValueError(f"convert_qwen2: {name} has shape {tuple(src_sd[name].shape)} in the source "
                                 f"but {tuple(tensor.shape)} in the SpikingBrain model")
            tensor.copy_(src_sd[name])
            used.add(name)

    for i, (src_layer, dst_layer) in enumerate(zip(model.model.layers, dst.model.layers)):
        prefix = f"model.layers.{i}.mlp."
        if isinstance(dst_layer.mlp, MoEBlock):
            dst_layer.mlp.upcycle_from(src_layer.mlp, cfg.upcycle_scale)
        else:
            dst_layer.mlp.load_state_dict(src_layer.mlp.state_dict())
        used.update(n for n in src_sd if n.startswith(prefix))
        attn = dst_layer.self_attn
        if isinstance(attn, GatedLinearAttention):
            for lin in (attn.gk_proj if isinstance(attn.gk_proj, nn.Sequential) else [attn.gk_proj]):
                nn.init.normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    if cfg.tie_word_embeddings:
        used.add("lm_head.weight")
    leftover = sorted(set(src_sd) - used)
    if leftover:
        raise ValueError(f"convert_qwen2: source tensors with no place in the SpikingBrain model: {leftover}")
    return dst
