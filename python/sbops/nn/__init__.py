"""sbops.nn: SpikingBrain-style layers built on the sbops ops.

GatedLinearAttention (SpikingBrain-7B's linear layers), SlidingWindowAttention (Qwen2 attention in
a window), HybridAttention (SpikingBrain-76B: linear + softmax branches in parallel), SpikeLinear
(spike-coded input, optional int8 weights), MoEBlock (routed + shared SwiGLU experts), and the
decode caches they use.
"""
from .attention import GatedLinearAttention, HybridAttention, SlidingWindowAttention
from .cache import CacheBatch, HybridCache, LinearAttnCache, SWACache
from .common import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope, make_linear
from .moe import MoEBlock
from .spike import SpikeLinear, clear_weight_caches, dequantize_weight_int8, drop_float_weights, quantize_weight_int8

__all__ = [
    "GatedLinearAttention", "SlidingWindowAttention", "HybridAttention", "SpikeLinear", "MoEBlock", "SwiGLU",
    "RMSNorm", "RotaryEmbedding", "apply_rope", "make_linear", "LinearAttnCache", "SWACache", "HybridCache",
    "CacheBatch",
    "quantize_weight_int8", "dequantize_weight_int8", "clear_weight_caches", "drop_float_weights",
]
