"""Load and save SpikingBrain checkpoints: the released SpikingBrain-7B Hugging Face format
(BICLab/SpikingBrain-7B `hf_7B_model/`, model_type "gla_swa", and its `W8ASpike/` variant) and
sbops' own format for models the released format cannot express.

    model = SpikingBrainForCausalLM.from_pretrained("path/to/SpikingBrain-7B")     # dtype="auto"
    model.save_pretrained("out/")                                                    # same format back

A folder holds config.json plus the weights: model.safetensors, sharded safetensors with
model.safetensors.index.json, pytorch_model.bin, or sharded .bin with pytorch_model.bin.index.json.

Released config -> SpikingBrainConfig: vocab_size, hidden_size, intermediate_size, rope_theta,
tie_word_embeddings, initializer_range carry over; num_attention_heads -> num_heads,
num_key_value_heads -> num_kv_heads, head_dim = hidden_size // num_attention_heads,
norm_eps -> rms_norm_eps, sliding_window -> window, num_hidden_layers + attn_layers ->
layer_types (an index in attn_layers is "swa", else "gla"; default attn_layers = odd layers);
gate low rank 16 and gate normaliser 16 are fixed in the released code.  A missing key takes the
released GLAswaConfig default (e.g. rope_theta 1e6).  Refused with an error naming the key:
use_short_conv=True, hidden_act other than swish/silu, attn_mode other than chunk / fused_chunk /
fused_recurrent, rope_scaling, a head_dim other than hidden/heads, and any key this loader does not
know (pass allow_unknown_config_keys=True to ignore those).  Ignored because the released model
ignores them at inference: attention_dropout, elementwise_affine (its norms are always affine),
max_position_embeddings (plain RoPE), conv_size, fuse_cross_entropy, use_cache.

Token ids: bos_token_id, eos_token_id (an int or a list) and pad_token_id that config.json states
are kept on the config (those it leaves out stay None), and a generation_config.json beside it
overrides them, as Hugging Face's generation_config does: generate() then stops on that eos id
by default.  save_pretrained writes them back (and the generation_config.json a model was loaded
with, its token ids updated).

State dict renames (released -> ours): model.embeddings. -> model.embed_tokens.,
.attn_norm. -> .input_layernorm., .mlp_norm. -> .post_attention_layernorm.,
.attn.g_norm. -> .self_attn.o_norm., any other .attn. -> .self_attn.; everything else
(q/k/v/o_proj, gk_proj.0/1, mlp.*, model.norm, lm_head) is unchanged.  A tensor left over or
missing is an error; nothing is dropped silently.

dtype="auto" (default) casts to config.json's torch_dtype (else the checkpoint's floating dtype: told by the
weight files' headers before any weight is read where they hold one; mixed, the first floating tensor's),
as Hugging Face's torch_dtype="auto"; dtype=torch.float32 reproduces transformers 4.x's default.
A model is built in float16, bfloat16, float32 or float64; any other dtype (float8 too) is refused.
config.json (and generation_config.json) are read and checked before any weight file is.

sbops' own format (model_type "sbops_spikingbrain") keeps the SpikingBrainConfig fields in config.json's
"sbops_config" object; a key there that this version does not know is refused, as for the released
format, unless allow_unknown_config_keys=True (then it is ignored).
Buffers are created in that dtype as under Hugging Face (so W8ASpike's int8 scales are applied
in the model dtype, as in the released code).

W8ASpike checkpoints (detected by `*.weight_quantizer.scales` tensors, or quant_weight_group_size
in config.json) load with spike_k=3, weight_quant="int8_static" (the checkpoint's scales, applied as
round(w / s) * s, never recomputed) and the W8ASpike options of _W8A_FIELDS: a full-rank gk_proj
(gate_low_rank_dim=0), spike-coded queries (k=3) and int8 keys/values inside SWA, and a plain
down_proj (mlp_down_quant=False; the release's swiglu_linear reads down_proj.weight directly, so its
scales are unused: they are kept aside and written back by save_pretrained).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from typing import Dict, Optional, Union

import torch

from .checkpoint_files import (checkpoint_float_dtypes, checkpoint_tensor_names, load_checkpoint_tensors, own_storage,
                               parse_size, write_tensors)
from .config import SpikingBrainConfig

RELEASED_MODEL_TYPE = "gla_swa"
RELEASED_ARCH = "GLAswaForCausalLM"
NATIVE_MODEL_TYPE = "sbops_spikingbrain"

# GLAswaConfig's defaults (configuration_gla_swa.py), used for keys a config.json leaves out.
RELEASED_DEFAULTS = dict(
    vocab_size=152064, hidden_size=3584, num_hidden_layers=28, attn_mode="chunk", num_attention_heads=28,
    num_key_value_heads=4, use_short_conv=False, conv_size=4, intermediate_size=18944, hidden_act="swish",
    max_position_embeddings=4096 * 32, sliding_window=4096, elementwise_affine=True, norm_eps=1e-6,
    rope_theta=1000000.0, attention_dropout=0.0, use_cache=True, pad_token_id=None, bos_token_id=151643,
    eos_token_id=151643, tie_word_embeddings=False, initializer_range=0.02, fuse_cross_entropy=True)
_USED_KEYS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "sliding_window", "norm_eps", "rope_theta", "tie_word_embeddings",
              "initializer_range", "attn_layers", "use_short_conv", "hidden_act", "attn_mode", "rope_scaling",
              "head_dim", "quant_weight_group_size", "bos_token_id", "eos_token_id", "pad_token_id"}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
GENERATION_CONFIG = "generation_config.json"
_IGNORED_KEYS = {"architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
                 "_name_or_path", "use_cache",
                 "max_position_embeddings", "fuse_cross_entropy", "conv_size", "elementwise_affine",
                 "attention_dropout", "output_attentions", "output_hidden_states", "return_dict",
                 "tokenizer_class", "keys_to_ignore_at_inference"}

# Model options a W8ASpike checkpoint needs (field: value); see the module docstring.
_W8A_FIELDS = {"gate_low_rank_dim": 0, "swa_q_spike_k": 3.0, "swa_kv_quant": "int8", "mlp_down_quant": False}
_W8A_SCALES = ".weight_quantizer.scales"

_TO_OURS = [(r"^model\.embeddings\.", "model.embed_tokens."), (r"\.attn_norm\.", ".input_layernorm."),
            (r"\.mlp_norm\.", ".post_attention_layernorm."), (r"\.attn\.g_norm\.", ".self_attn.o_norm."),
            (r"\.attn\.", ".self_attn.")]
_TO_RELEASED = [(r"^model\.embed_tokens\.", "model.embeddings."), (r"\.input_layernorm\.", ".attn_norm."),
                (r"\.post_attention_layernorm\.", ".mlp_norm."), (r"\.self_attn\.o_norm\.", ".attn.g_norm."),
                (r"\.self_attn\.", ".attn.")]


def _rename(name: str, rules) -> str:
    # the rules apply in order; a renamed norm no longer matches the generic attention rule after it
    for pat, rep in rules:
        name = re.sub(pat, rep, name, count=1)
    return name


def released_to_ours(name: str) -> str:
    return _rename(name, _TO_OURS)


def ours_to_released(name: str) -> str:
    return _rename(name, _TO_RELEASED)


# ------------------------------------------------------------------------------------------ config
def config_from_released(d: dict, allow_unknown_config_keys: bool = False, generation: Optional[dict] = None,
                         **overrides) -> SpikingBrainConfig:
    """SpikingBrainConfig of a released config.json dict (see the module docstring); generation: a
    generation_config.json dict whose token ids win over config.json's."""
    unknown = sorted(set(d) - _USED_KEYS - _IGNORED_KEYS)
    if unknown and not allow_unknown_config_keys:
        raise ValueError(f"from_pretrained: config.json has keys this loader does not know: {unknown} "
                         f"(pass allow_unknown_config_keys=True to ignore them)")
    c = {**RELEASED_DEFAULTS, **d}  # an explicit null stays None, as GLAswaConfig receives it
    if c.get("use_short_conv"):
        raise NotImplementedError("from_pretrained: use_short_conv=True (short convolutions on q/k/v) is not "
                                  "supported by sbops.models")
    if c.get("hidden_act") not in ("swish", "silu"):
        raise NotImplementedError(f"from_pretrained: hidden_act={c.get('hidden_act')!r} is not supported "
                                  f"(the FFN is SwiGLU: swish/silu)")
    if c.get("attn_mode") not in ("chunk", "fused_chunk", "fused_recurrent"):
        raise ValueError(f"from_pretrained: attn_mode={c.get('attn_mode')!r} is not one of the released modes "
                         f"chunk / fused_chunk / fused_recurrent")
    if c.get("rope_scaling") is not None:
        raise NotImplementedError(f"from_pretrained: rope_scaling={c['rope_scaling']!r} is not supported "
                                  f"(plain RoPE only)")
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    kv = int(c["num_key_value_heads"] or heads)
    if hidden % heads:
        raise ValueError(f"from_pretrained: hidden_size={hidden} must be a multiple of num_attention_heads={heads}")
    if c.get("head_dim") not in (None, hidden // heads):
        raise NotImplementedError(f"from_pretrained: head_dim={c['head_dim']} differs from hidden_size / "
                                  f"num_attention_heads = {hidden // heads}, which the released model uses")
    window = c.get("sliding_window")
    if not isinstance(window, int) or window < 0:
        raise NotImplementedError(f"from_pretrained: sliding_window={window!r} is not supported (need an int >= 0)")
    n = int(c["num_hidden_layers"])
    attn_layers = c.get("attn_layers")
    attn_layers = list(range(1, n, 2)) if attn_layers is None else [int(i) for i in attn_layers]
    bad = [i for i in attn_layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"from_pretrained: attn_layers {bad} are outside 0..num_hidden_layers-1 = 0..{n - 1}")
    if not isinstance(c["tie_word_embeddings"], bool):  # bool("false") would tie the weights
        raise ValueError(f"from_pretrained: config.json's tie_word_embeddings must be true or false, got "
                         f"{c['tie_word_embeddings']!r}")
    fields = dict(
        vocab_size=int(c["vocab_size"]), hidden_size=hidden, intermediate_size=int(c["intermediate_size"]),
        num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
        layer_types=tuple("swa" if i in attn_layers else "gla" for i in range(n)),
        rms_norm_eps=float(c["norm_eps"]), rope_theta=float(c["rope_theta"]), window=window,
        tie_word_embeddings=c["tie_word_embeddings"], initializer_range=float(c["initializer_range"]),
        qkv_bias=True, gate_low_rank_dim=16, gate_logit_normalizer=16.0)
    fields.update(token_ids(d, generation))   # only the keys the files state: a missing one stays None
    fields.update(overrides)
    return SpikingBrainConfig(**fields)


def token_ids(config: dict, generation: Optional[dict] = None) -> dict:
    """The token ids config.json states, with generation_config.json's winning, an explicit null too (as in
    Hugging Face, whose generate then has no such id); a bad value there is named with its file."""
    out = {k: config[k] for k in TOKEN_ID_KEYS if k in config}
    for k in TOKEN_ID_KEYS:
        if k in (generation or {}):
            v = generation[k]
            ok = v is None or (isinstance(v, int) and not isinstance(v, bool)) or (
                k == "eos_token_id" and isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                    for i in v))
            if not ok:
                raise ValueError(f"from_pretrained: {GENERATION_CONFIG}'s {k} must be an int"
                                 f"{' or a list of ints' if k == 'eos_token_id' else ''} or null, got {v!r}")
            out[k] = v
    return out


def read_generation_config(path: str) -> Optional[dict]:
    """generation_config.json of the folder as a dict, or None when there is none."""
    f = os.path.join(path, GENERATION_CONFIG)
    if not os.path.isfile(f):
        return None
    try:
        with open(f) as fh:
            g = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"from_pretrained: {f} is not valid JSON: {e}") from e
    if not isinstance(g, dict):
        raise ValueError(f"from_pretrained: {f} must hold a JSON object, got {type(g).__name__}")
    return g


def released_config_dict(cfg: SpikingBrainConfig, dtype: torch.dtype, w8a: bool = False) -> dict:
    """A released-format config.json dict for cfg (ValueError if the format cannot express cfg)."""
    why = _not_released_expressible(cfg, w8a)
    if why:
        raise ValueError(f"save_pretrained: the released SpikingBrain format cannot express this model: {why}")
    return {
        "architectures": [RELEASED_ARCH], "model_type": RELEASED_MODEL_TYPE,
        "attn_layers": [i for i, t in enumerate(cfg.layer_types) if t == "swa"], "attn_mode": "chunk",
        "hidden_act": "swish", "hidden_size": cfg.hidden_size, "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size, "norm_eps": cfg.rms_norm_eps,
        "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads, "rope_theta": cfg.rope_theta, "sliding_window": cfg.window,
        "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": _dtype_name(dtype),
        "use_short_conv": False, "vocab_size": cfg.vocab_size,
        **{k: getattr(cfg, k) for k in TOKEN_ID_KEYS if getattr(cfg, k, None) is not None}}


def _not_released_expressible(cfg: SpikingBrainConfig, w8a: bool) -> Optional[str]:
    if any(t not in ("gla", "swa") for t in cfg.layer_types):
        return f"layer_types {cfg.layer_types} (only gla/swa layers)"
    checks = [("num_experts", cfg.num_experts, 0), ("num_meta_tokens", cfg.num_meta_tokens, 0),
              ("full_attention_layers", cfg.full_attention_layers, ()), ("qkv_bias", cfg.qkv_bias, True),
              ("gate_logit_normalizer", cfg.gate_logit_normalizer, 16.0),
              ("head_dim", cfg.head_dim, cfg.hidden_size // cfg.num_heads)]
    if w8a:
        checks += [("spike_k", cfg.spike_k, 3.0), ("weight_quant", cfg.weight_quant, "int8_static")]
        checks += [(f, getattr(cfg, f, None), v) for f, v in _W8A_FIELDS.items()]
    else:  # the plain release: none of the W8ASpike options (a model with some of them keeps them in sbops' format)
        checks += [("gate_low_rank_dim", cfg.gate_low_rank_dim, 16), ("spike_k", cfg.spike_k, None),
                   ("weight_quant", cfg.weight_quant, None)]
        checks += [(f, getattr(cfg, f, None), plain) for f, plain in
                   (("swa_q_spike_k", None), ("swa_kv_quant", None), ("mlp_down_quant", True))]
    for name, have, want in checks:
        if have != want:
            return f"{name}={have!r} (the released format has {want!r})"
    if cfg.window < 0:
        return f"window={cfg.window} (full causal softmax layers; the released sliding_window is >= 0)"
    if cfg.hidden_size % cfg.num_heads:
        return "hidden_size not a multiple of num_heads"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# The dtypes a model loads in (float8 and other floating dtypes have no tensor storage to build a model in).
LOAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names() -> str:
    return ", ".join(_dtype_name(t) for t in LOAD_DTYPES)


def _parse_dtype(name, what: str = "dtype") -> torch.dtype:
    """A dtype a model loads in, from a torch.dtype or its name ("bfloat16", "torch.float16")."""
    if isinstance(name, torch.dtype):
        dt = name
    else:
        dt = getattr(torch, name.replace("torch.", ""), None) if isinstance(name, str) else None
    if dt not in LOAD_DTYPES:
        alt = "" if what.startswith("config.json") else "'auto' or "
        raise ValueError(f"from_pretrained: {what} {name!r} is not a dtype a model loads in: expected {alt}one "
                         f"of {_dtype_names()}")
    return dt


@contextlib.contextmanager
def _fast_init(dtype: torch.dtype, device):
    """Build modules directly in `dtype` on `device`, skipping random initialisation (every tensor is
    loaded afterwards; a missing one is an error), like Hugging Face's no_init_weights."""
    names = ("normal_", "uniform_", "zeros_", "ones_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
             "kaiming_normal_", "trunc_normal_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    old = torch.get_default_dtype()
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        torch.set_default_dtype(dtype)
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


# ------------------------------------------------------------------------------------------ load
def from_pretrained(cls, path, *, dtype="auto", torch_dtype=None, device="cpu", allow_unknown_config_keys=False,
                    drop_float_weights=False, **overrides):
    """Load a SpikingBrain checkpoint folder into `cls` (SpikingBrainForCausalLM).

    dtype: "auto" (config's torch_dtype, else the checkpoint's) or a torch dtype; torch_dtype is an
    alias (Hugging Face's name).  device: where the model is built.  overrides: SpikingBrainConfig
    fields to change (e.g. window=..., or spike_k=3.0, weight_quant="fp8" to run a float checkpoint on
    sbops.spike_linear) -- only for fields the checkpoint does not pin down.  drop_float_weights=True: an
    inference-only model that keeps just the 8-bit weights of its spike-coded layers
    (sbops.nn.drop_float_weights); refused where no layer runs on 8 bits.
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"from_pretrained: {path!r} is not a checkpoint folder with a config.json (only local "
                                f"folders are read; download a Hub repository first, e.g. huggingface_hub.snapshot_download)")
    try:
        with open(os.path.join(path, "config.json")) as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"from_pretrained: {os.path.join(path, 'config.json')} is not valid JSON: {e}") from e
    known = {f.name for f in dataclasses.fields(SpikingBrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"from_pretrained: unknown argument(s) {unknown}; keyword arguments other than dtype, "
                        f"torch_dtype, device and allow_unknown_config_keys must be SpikingBrainConfig fields "
                        f"(device_map is not supported: pass device=)")
    what = "dtype"
    if torch_dtype is not None:
        dtype, what = torch_dtype, "torch_dtype"
    if dtype is None:   # Hugging Face: None = the default
        dtype = "auto"
    if dtype != "auto":   # a torch dtype, or its name ("bfloat16", "torch.float16"), as Hugging Face accepts
        dtype = _parse_dtype(dtype, what)
    # config.json (and generation_config.json) first: a checkpoint they refuse costs no weight reading
    gen = read_generation_config(path)
    native = d.get("model_type") == NATIVE_MODEL_TYPE
    if not native and d.get("model_type") != RELEASED_MODEL_TYPE and RELEASED_ARCH not in (d.get("architectures") or []):
        raise ValueError(f"from_pretrained: config.json model_type={d.get('model_type')!r} is neither the released "
                         f"SpikingBrain-7B format ({RELEASED_MODEL_TYPE!r}) nor sbops' ({NATIVE_MODEL_TYPE!r})")
    name = d.get("torch_dtype") or d.get("dtype")
    if dtype == "auto" and name:
        dtype = _parse_dtype(name, "config.json's torch_dtype")
    if native:
        fields = native_config_fields(d, allow_unknown_config_keys)
        fields.update(token_ids({}, gen))
        fields.update(overrides)
        cfg = SpikingBrainConfig(**fields)
        w8a = False
    else:
        w8a = d.get("quant_weight_group_size") is not None   # else told by the tensors' names (before reading them)
        if not w8a:
            names = checkpoint_tensor_names(path)
            w8a = names is not None and any(k.endswith(_W8A_SCALES) for k in names)
        _check_w8a_overrides(overrides, w8a)
        cfg = config_from_released(d, allow_unknown_config_keys, gen, **overrides)

    if dtype == "auto":   # config.json names none: the checkpoint's floating dtype, from the files' headers where
        found = checkpoint_float_dtypes(path)   # they tell one (a dtype it cannot take is refused before reading)
        if found is not None and len(found) == 1:
            dtype = _checkpoint_dtype(next(iter(found)))
    sd = load_checkpoint_tensors(path)
    if dtype == "auto":   # mixed or untold: the first floating tensor's, as read
        dtype = _checkpoint_dtype(next((t.dtype for t in sd.values() if t.is_floating_point()), torch.float32))
    extra: Dict[str, torch.Tensor] = {}
    if native:
        renamed = dict(sd)
    else:
        if not w8a and any(k.endswith(_W8A_SCALES) for k in sd):
            w8a = True
            _check_w8a_overrides(overrides, w8a)
        if w8a:
            cfg = _w8a_config(cfg)
        renamed = {}
        for k, t in sd.items():
            ours = released_to_ours(k)
            if ours in renamed:
                raise ValueError(f"from_pretrained: two checkpoint tensors map to {ours}")
            renamed[ours] = t
        if w8a:  # the released FFN reads down_proj's weight directly (swiglu_linear): its scales are unused
            for k in [k for k in renamed if k.endswith(".mlp.down_proj" + _W8A_SCALES)]:
                t = renamed.pop(k)
                extra[ours_to_released(k)] = t.to(dtype) if t.is_floating_point() else t  # as the model's buffers

    with _fast_init(dtype, device):
        model = cls(cfg)
    _load_exact(model, renamed)
    model.eval()
    if drop_float_weights:
        from ..nn import drop_float_weights as drop
        if drop(model) == 0:
            raise ValueError(f"from_pretrained: drop_float_weights=True needs spike-coded layers that run on 8-bit "
                             f"weights (spike_k set with weight_quant 'fp8', 'int8_channel', or 'int8' over whole "
                             f"groups); this model "
                             f"has spike_k={cfg.spike_k}, weight_quant={cfg.weight_quant!r}")
    model._released_config = None if native else d
    model._released_extra = extra
    model._generation_config = gen
    return model


def _checkpoint_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype="auto"'s choice where config.json names no torch_dtype: the checkpoint's, if the model can take it."""
    if dtype not in LOAD_DTYPES:
        raise ValueError(f"from_pretrained: the checkpoint's tensors are {_dtype_name(dtype)} and config.json "
                         f"names no torch_dtype; pass dtype= one of {_dtype_names()}")
    return dtype


def _w8a_config(cfg: SpikingBrainConfig) -> SpikingBrainConfig:
    """The released W8ASpike model: QuantLinear everywhere in the blocks (k=3, checkpoint scales)."""
    return cfg.replace(spike_k=3.0, weight_quant="int8_static", **_W8A_FIELDS)


def _check_w8a_overrides(overrides: dict, w8a: bool) -> None:
    fixed = {"spike_k": 3.0, "weight_quant": "int8_static", **_W8A_FIELDS}
    pinned = sorted(k for k in overrides if k in fixed and overrides[k] != fixed[k]) if w8a else []
    if pinned:
        raise ValueError(f"from_pretrained: a released W8ASpike checkpoint pins {pinned} (spike_k=3, "
                         f"weight_quant='int8_static', {_W8A_FIELDS}); they cannot be overridden")


def native_config_fields(d: dict, allow_unknown_config_keys: bool = False) -> dict:
    """The SpikingBrainConfig fields of an sbops-format config.json dict (its "sbops_config" object); a key
    this version does not know is refused unless allow_unknown_config_keys (then it is ignored), as for
    the released format."""
    sb = d.get("sbops_config")
    if not isinstance(sb, dict):
        raise ValueError(f"from_pretrained: config.json has model_type {NATIVE_MODEL_TYPE!r} but its 'sbops_config' "
                         f"is {'missing' if sb is None else type(sb).__name__ + ', not an object'}: it must hold "
                         f"the SpikingBrainConfig fields, as save_pretrained writes them")
    fields = {f.name: f for f in dataclasses.fields(SpikingBrainConfig)}
    unknown = sorted(set(sb) - set(fields))
    if unknown and not allow_unknown_config_keys:
        raise ValueError(f"from_pretrained: config.json's sbops_config has keys this loader does not know: {unknown} "
                         f"(pass allow_unknown_config_keys=True to ignore them)")
    missing = sorted(n for n, f in fields.items() if n not in sb and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"from_pretrained: config.json's sbops_config lacks the required fields {missing}")
    return {k: v for k, v in sb.items() if k in fields}


def _load_exact(model, sd: Dict[str, torch.Tensor]):
    """Copy sd into model; leftover, missing or mis-shaped tensors are errors."""
    own = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    expected = set(own) - ({"lm_head.weight"} if tied else set())
    leftover = sorted(set(sd) - set(own))
    missing = sorted(expected - set(sd))
    if leftover or missing:
        msg = []
        if leftover:
            msg.append(f"checkpoint tensors with no place in the model: {_names(leftover, True)}")
        if missing:
            msg.append(f"model tensors the checkpoint does not have: {_names(missing, False)}")
        raise ValueError("from_pretrained: " + "; ".join(msg))
    for k, t in sd.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise ValueError(f"from_pretrained: {_names([k], True)} has shape {tuple(t.shape)} in the checkpoint but "
                             f"{tuple(own[k].shape)} in the model")
    if tied and "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"]):
        raise ValueError("from_pretrained: tie_word_embeddings=True but lm_head.weight differs from the embeddings")
    with torch.no_grad():
        for k, t in sd.items():
            own[k].copy_(t)


def _names(keys, released: bool):
    shown = [f"{k} ({ours_to_released(k)})" if released and ours_to_released(k) != k else k for k in keys[:8]]
    return ", ".join(shown) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


# ------------------------------------------------------------------------------------------ save
def save_pretrained(model, path, *, max_shard_size: Union[int, str] = 5 * 10 ** 9, safe_serialization: bool = True,
                    released_format: Optional[bool] = None):
    """Write `model` to the folder `path`: config.json + model.safetensors (or shards of at most
    max_shard_size bytes, an int or a string such as "5GB" / "200MB" as in Hugging Face, with
    model.safetensors.index.json; pytorch_model*.bin when
    safe_serialization=False).  The released format when it can express the model (default), else
    sbops' own format (config.json with model_type "sbops_spikingbrain" and our tensor names);
    released_format=True makes the former mandatory.  A checkpoint loaded with from_pretrained is
    written back with the same config.json (torch_dtype updated) and identical tensors."""
    max_shard_size = parse_size(max_shard_size, "save_pretrained: max_shard_size")
    from ..nn import SpikeLinear
    dropped = [n for n, m in model.named_modules() if isinstance(m, SpikeLinear) and m.weight is None]
    if dropped:
        raise ValueError(f"save_pretrained: the float weights of {len(dropped)} SpikeLinear layers (e.g. {dropped[0]}) "
                         "were dropped by sbops.nn.drop_float_weights; save the model before dropping them")
    cfg = model.config
    w8a = getattr(cfg, "weight_quant", None) == "int8_static"
    dtype = model.model.embed_tokens.weight.dtype
    why = _not_released_expressible(cfg, w8a)
    if released_format is None:
        released_format = why is None
    if released_format and why:
        raise ValueError(f"save_pretrained: the released SpikingBrain format cannot express this model: {why}")
    if safe_serialization:   # before anything in `path` is touched (an earlier save's weights are replaced)
        try:
            import safetensors.torch  # noqa: F401
        except ImportError as e:
            raise ImportError("save_pretrained writes safetensors by default and needs the safetensors package "
                              "(pip install safetensors); or pass safe_serialization=False for "
                              "pytorch_model.bin files") from e
    state = model.state_dict()
    if cfg.tie_word_embeddings and "lm_head.weight" in state:   # stored once, so it must be the embedding
        head, emb = state["lm_head.weight"], state["model.embed_tokens.weight"]
        same = head.data_ptr() == emb.data_ptr() and head.shape == emb.shape and head.stride() == emb.stride()
        if not (same or (head.shape == emb.shape and torch.equal(head, emb.to(head.device)))):
            raise ValueError("save_pretrained: config.tie_word_embeddings=True, but lm_head.weight is no longer the "
                             "embedding tensor and differs from it: saving would drop lm_head (tie them again, e.g. "
                             "model.lm_head.weight = model.model.embed_tokens.weight, or set "
                             "model.config.tie_word_embeddings=False to save both)")
    os.makedirs(path, exist_ok=True)
    sd = {}
    for k, t in state.items():
        if cfg.tie_word_embeddings and k == "lm_head.weight":
            continue  # tied: stored once, as Hugging Face does
        sd[ours_to_released(k) if released_format else k] = own_storage(t.detach().to("cpu"))
    if released_format:
        d = _released_config_for(model, cfg, dtype, w8a)
        sd.update({k: t.to("cpu").contiguous() for k, t in (getattr(model, "_released_extra", None) or {}).items()})
    else:
        d = {"architectures": ["SpikingBrainForCausalLM"], "model_type": NATIVE_MODEL_TYPE,
             "torch_dtype": _dtype_name(dtype), "sbops_config": dataclasses.asdict(cfg)}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(d, fh, indent=2, sort_keys=True)
    _write_generation_config(model, cfg, path)
    write_tensors(sd, path, max_shard_size, safe_serialization)


def _write_generation_config(model, cfg, path) -> None:
    """generation_config.json: the one the model was loaded with, its token ids set to the config's.
    A model that came without one writes none, but a file already in the folder (an earlier save's, or
    the user's own sampling settings) is kept, its token ids set to the config's (those the config
    leaves None removed), so it cannot override config.json's ids with stale ones on loading."""
    f = os.path.join(path, GENERATION_CONFIG)
    loaded = getattr(model, "_generation_config", None)
    if loaded is None:
        try:
            loaded = read_generation_config(path)
        except ValueError:
            loaded = None   # not a JSON object: left as it is
        if loaded is None:
            return
        for k in TOKEN_ID_KEYS:
            if getattr(cfg, k, None) is None:
                loaded.pop(k, None)
    g = dict(loaded)
    for k in TOKEN_ID_KEYS:
        if getattr(cfg, k, None) is not None:
            g[k] = getattr(cfg, k)
        elif g.get(k) is not None:
            g.pop(k)
    with open(f, "w") as fh:
        json.dump(g, fh, indent=2, sort_keys=True)


def _released_config_for(model, cfg, dtype, w8a) -> dict:
    """The config.json of a released-format save: the loaded one as it was when it still describes
    the model (a round trip rewrites it unchanged but for the dtype), else the loaded one's extra
    keys (token ids, auto_map, ...) under the fields that describe the model now."""
    loaded = getattr(model, "_released_config", None)
    fresh = released_config_dict(cfg, dtype, w8a)
    if not loaded:
        return fresh
    d = dict(loaded)
    try:
        same = (_w8a_config if w8a else (lambda c: c))(
            config_from_released(d, True, getattr(model, "_generation_config", None))) == cfg
    except (ValueError, NotImplementedError, TypeError):
        same = False
    if not same:   # overridden at load, or model.config changed since
        d.update(fresh)
        for k in TOKEN_ID_KEYS:   # an id unset since loading is not written back
            if getattr(cfg, k, None) is None:
                d.pop(k, None)
    d.pop("dtype", None)   # transformers >= 4.56 writes "dtype"; one key, the weights' dtype
    d["torch_dtype"] = _dtype_name(dtype)
    return d
