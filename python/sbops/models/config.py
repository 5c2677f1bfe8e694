"""SpikingBrainConfig: the hyper-parameters of a SpikingBrain-style model, derivable from a Qwen2Config."""
from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from ..nn.common import DOWN_WEIGHT_QUANTS   # sbops.nn.SwiGLU's down_weight_quant (None, "int8_channel")

LAYER_TYPES = ("gla", "swa", "hybrid")
KINDS = ("7b", "76b")
SWA_KV_QUANTS = (None, "int8")
# SpikeLinear's formats ("int8_channel": "int8" with one scale per output channel), or float weights
WEIGHT_QUANTS = (None, "int8", "int8_channel", "int8_static", "fp8")


@dataclass
class SpikingBrainConfig:
    """Model hyper-parameters.

    layer_types[i] is "gla" (GatedLinearAttention), "swa" (SlidingWindowAttention) or "hybrid"
    (HybridAttention). Softmax attention uses `window` except on `full_attention_layers` (full
    causal). num_experts > 0 makes every FFN a MoEBlock, else a dense SwiGLU. spike_k (None: off)
    spike-codes the inputs of every projection inside the blocks (attention and FFN; not the
    embeddings, the router or lm_head); weight_quant="int8" fake-quantises their weights per group of
    128 input channels, "int8_channel" with one scale per output channel (on Hopper its prefill runs
    every projection on sbops' int8 GEMM, counts past 127 only in the exact fix-up), "fp8" in e4m3 per
    channel ("int8_static": fixed checkpoint scales, SpikingBrain's W8ASpike).

    W8ASpike options (SpikingBrain's released W8ASpike model; all off by default):
      gate_low_rank_dim=0: GLA's gk_proj is one full-rank Linear(hidden, HKV * head_dim) with bias
        instead of the low-rank pair Linear(hidden, r) -> Linear(r, HKV * head_dim);
      swa_q_spike_k: SWA queries are spike-coded per head after RoPE with this k (released: 3);
      swa_kv_quant="int8": SWA keys/values are int8 fake-quantised per token and head (after RoPE);
      mlp_down_quant=False: the FFN's down_proj stays a plain linear (no spiking, no weight quant).

    down_weight_quant="int8_channel" (dense FFNs, with weight_quant "fp8", "int8" or "int8_channel"): the FFN's
    down_proj holds int8 weights with one scale per output channel instead of weight_quant's format
    (sbops.nn.SwiGLU): on CUDA its prefill runs one int8 count plane on an int8 GEMM instead of e4m3's two planes.

    Token ids (Hugging Face's meaning; None = unset): eos_token_id (an int or a list of ints) is what
    generate() stops on when its eos_token_id argument is None, pad_token_id what it pads stopped rows
    with; from_pretrained fills them from config.json, then generation_config.json (which wins).
    """
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: Tuple[str, ...]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    window: int = 4096
    full_attention_layers: Tuple[int, ...] = ()
    qkv_bias: bool = True
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    num_meta_tokens: int = 0
    key_clamp: float = 0.95
    num_experts: int = 0
    top_k: int = 1
    moe_renormalize: bool = True
    upcycle_scale: float = 0.98
    router_aux_loss_coef: float = 0.01
    spike_k: Optional[float] = None
    weight_quant: Optional[str] = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    swa_q_spike_k: Optional[float] = None
    swa_kv_quant: Optional[str] = None
    mlp_down_quant: bool = True
    down_weight_quant: Optional[str] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Union[None, int, List[int]] = None
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        self.layer_types = tuple(self.layer_types)
        self.full_attention_layers = tuple(self.full_attention_layers)
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise ValueError(f"SpikingBrainConfig: unknown layer types {bad}; expected {LAYER_TYPES}")
        if self.gate_low_rank_dim < 0:
            raise ValueError(f"SpikingBrainConfig: gate_low_rank_dim must be >= 0 (0: a full-rank gate), "
                             f"got {self.gate_low_rank_dim}")
        if self.swa_kv_quant not in SWA_KV_QUANTS:
            raise ValueError(f"SpikingBrainConfig: swa_kv_quant must be one of {SWA_KV_QUANTS}, got {self.swa_kv_quant!r}")
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")
        for name, lo in [(n, 1) for n in sizes] + [("num_experts", 0), ("num_meta_tokens", 0), ("top_k", 1)]:
            v = getattr(self, name)
            try:
                ok = not isinstance(v, bool) and operator.index(v) >= lo   # numpy ints too
            except TypeError:
                ok = False
            if not ok:
                want = "a positive int" if name in sizes else f"an int >= {lo}"
                raise ValueError(f"SpikingBrainConfig: {name} must be {want}, got {v!r}")
            setattr(self, name, operator.index(v))
        if self.num_experts and self.top_k > self.num_experts:
            raise ValueError(f"SpikingBrainConfig: top_k={self.top_k} must be at most num_experts={self.num_experts}")
        if isinstance(self.window, bool) or not isinstance(self.window, numbers.Integral):   # numpy ints too
            raise ValueError(f"SpikingBrainConfig: window must be an int (the keys before each query a softmax "
                             f"layer sees; < 0: full causal), got {self.window!r}")
        self.window = operator.index(self.window)
        for name in ("qkv_bias", "moe_renormalize", "tie_word_embeddings", "mlp_down_quant"):
            if not isinstance(getattr(self, name), bool):   # "false" or 0 would pass a truth test as something else
                raise ValueError(f"SpikingBrainConfig: {name} must be a bool (True or False), got {getattr(self, name)!r}")
        # name: (optional, lowest value, whether the lowest is allowed, highest); each a finite real (numpy too)
        reals = {"rms_norm_eps": (False, 0, False, None), "rope_theta": (False, 0, False, None),
                 "gate_logit_normalizer": (False, 0, False, None),   # divides the gate's log-decay
                 "key_clamp": (False, 0, False, None),               # hybrid layers' upper bound on sigmoid(k)
                 "upcycle_scale": (False, 0, True, 1),               # MoEBlock.upcycle_from's share, in [0, 1]
                 "router_aux_loss_coef": (False, 0, True, None), "initializer_range": (False, 0, True, None),
                 "spike_k": (True, 0, False, None), "swa_q_spike_k": (True, 0, False, None)}
        for name, (optional, lo, closed, hi) in reals.items():
            v = getattr(self, name)
            if v is None and optional:
                continue
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and (
                v >= lo if closed else v > lo) and (hi is None or v <= hi)
            if not ok:
                want = (f"a finite number in [{lo}, {hi}]" if hi is not None else
                        "a finite number >= 0" if closed else "a positive finite number")
                raise ValueError(f"SpikingBrainConfig: {name} must be {want}{' or None' if optional else ''}, "
                                 f"got {v!r}")
            setattr(self, name, float(v))   # plain floats: to_dict stays JSON
        bad = [i for i in self.full_attention_layers if not (isinstance(i, int) and 0 <= i < len(self.layer_types))]
        if bad:
            raise ValueError(f"SpikingBrainConfig: full_attention_layers {bad} are not layer indices "
                             f"(0 .. {len(self.layer_types) - 1})")
        if self.weight_quant not in WEIGHT_QUANTS:
            raise ValueError(f"SpikingBrainConfig: weight_quant must be one of {WEIGHT_QUANTS}, got {self.weight_quant!r}")
        if self.down_weight_quant not in DOWN_WEIGHT_QUANTS:
            raise ValueError(f"SpikingBrainConfig: down_weight_quant must be one of {DOWN_WEIGHT_QUANTS}, got "
                             f"{self.down_weight_quant!r}")
        if self.down_weight_quant is not None and (self.weight_quant not in ("fp8", "int8", "int8_channel")
                                                   or not self.mlp_down_quant or self.num_experts):
            raise ValueError(f"SpikingBrainConfig: down_weight_quant={self.down_weight_quant!r} takes a dense FFN "
                             f"(num_experts=0) with weight_quant 'fp8', 'int8' or 'int8_channel' and "
                             f"mlp_down_quant=True; got "
                             f"weight_quant={self.weight_quant!r}, mlp_down_quant={self.mlp_down_quant}, "
                             f"num_experts={self.num_experts}")
        for name in ("bos_token_id", "pad_token_id"):
            setattr(self, name, _token_id(getattr(self, name), name))
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            self.eos_token_id = [_token_id(e, "eos_token_id") for e in eos]
            if any(e is None for e in self.eos_token_id):
                raise ValueError(f"SpikingBrainConfig: eos_token_id must be an int or a list of ints, got {eos!r}")
        else:
            self.eos_token_id = _token_id(eos, "eos_token_id")
        if self.weight_quant == "int8_static":   # fixed scales per group of 128 input channels (W8ASpike)
            ins = {"hidden_size": self.hidden_size, "num_heads * head_dim": self.num_heads * self.head_dim}
            if self.mlp_down_quant:
                ins["intermediate_size"] = self.intermediate_size
            if self.gate_low_rank_dim and "gla" in self.layer_types:   # GLA's low-rank gate: Linear(rank, ..)
                ins["gate_low_rank_dim"] = self.gate_low_rank_dim
            bad = [f"{n}={v}" for n, v in ins.items() if v % 128]
            if bad:
                raise ValueError("SpikingBrainConfig: weight_quant='int8_static' quantises each linear's weight in "
                                 f"groups of 128 input channels: each of {', '.join(bad)} must be a multiple of 128"
                                 + (" (gate_low_rank_dim=0: a full-rank gate, as in W8ASpike)"
                                    if "gate_low_rank_dim" in ins and self.gate_low_rank_dim % 128 else ""))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"SpikingBrainConfig: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def layer_window(self, i: int) -> int:
        return -1 if i in self.full_attention_layers else self.window

    def replace(self, **changes) -> "SpikingBrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, JSON-serialisable (tuples become lists), as Hugging Face configs' to_dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SpikingBrainConfig":
        """The inverse of to_dict; unknown keys are an error naming them."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SpikingBrainConfig.from_dict: unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def from_qwen2(cls, qwen2_config, kind: str = "7b", **overrides) -> "SpikingBrainConfig":
        """Derive the config of a SpikingBrain-`kind` model from a Hugging Face Qwen2Config.

        kind="7b": layers alternate GLA (even) / SWA (odd), window 4096, dense FFN.
        kind="76b": every layer is HybridAttention with 128 meta tokens, FFNs are MoE with 16 routed
        experts (top-1, softmax) + 1 shared expert, upcycled with scale 0.98.
        Any field can be overridden by keyword (e.g. window=8, num_experts=4 for tiny models).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        q = qwen2_config
        n = q.num_hidden_layers
        head_dim = getattr(q, "head_dim", None) or q.hidden_size // q.num_attention_heads
        rope_theta = getattr(q, "rope_theta", None)
        rope_params = getattr(q, "rope_parameters", None) or {}   # transformers >= 5
        if rope_theta is None:
            rope_theta = rope_params.get("rope_theta", 10000.0)
        scaling = getattr(q, "rope_scaling", None)
        rope_type = rope_params.get("rope_type", (scaling or {}).get("rope_type", (scaling or {}).get("type")))
        act = getattr(q, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise NotImplementedError(f"from_qwen2: hidden_act={act!r} is not supported (the FFN is SwiGLU with "
                                      f"silu); converting would silently change the model")
        if rope_type not in (None, "default"):
            raise NotImplementedError(f"from_qwen2: RoPE scaling {scaling or rope_params!r} is not supported "
                                      f"(plain RoPE only); converting would silently change the model's positions")
        if getattr(q, "use_sliding_window", False):
            warnings.warn(f"from_qwen2: this Qwen2 limits its attention to a sliding window of "
                          f"{getattr(q, 'sliding_window', None)} tokens from layer {getattr(q, 'max_window_layers', None)} "
                          f"on; the converted layers do not reproduce that: they follow layer_types and window "
                          f"(pass window= to choose the SWA layers' window)", stacklevel=3)
        fields = dict(
            vocab_size=q.vocab_size, hidden_size=q.hidden_size, intermediate_size=q.intermediate_size,
            num_heads=q.num_attention_heads, num_kv_heads=q.num_key_value_heads, head_dim=head_dim,
            rms_norm_eps=q.rms_norm_eps, rope_theta=float(rope_theta),
            tie_word_embeddings=bool(getattr(q, "tie_word_embeddings", False)),
            initializer_range=getattr(q, "initializer_range", 0.02))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):   # generate() stops on the eos ids
            fields[name] = getattr(q, name, None)
        if kind == "7b":
            fields.update(layer_types=tuple("gla" if i % 2 == 0 else "swa" for i in range(n)))
        else:
            fields.update(layer_types=("hybrid",) * n, num_meta_tokens=128, num_experts=16, top_k=1)
        fields.update(overrides)
        return cls(**fields)


def _token_id(v, name: str) -> Optional[int]:
    """None or an int (numpy ints too; not a bool or a float) -> None or int; else ValueError naming `name`."""
    if v is None:
        return None
    try:
        if isinstance(v, bool):
            raise TypeError
        return operator.index(v)
    except TypeError:
        raise ValueError(f"SpikingBrainConfig: {name} must be an int{' or a list of ints' if name == 'eos_token_id' else ''}"
                         f" or None, got {v!r}") from None
