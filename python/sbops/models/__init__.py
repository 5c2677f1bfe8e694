"""sbops.models: SpikingBrain-7B-style (GLA/SWA) and -76B-style (hybrid + MoE) causal LMs,
Qwen2 conversion and greedy generation with constant-memory caches."""
from .config import SpikingBrainConfig
from .convert import build_from_qwen2_config, convert_qwen2
from .generate import GenerateOutput, generate
from .spikingbrain import CausalLMOutput, DecoderLayer, ModelCache, SpikingBrainForCausalLM, SpikingBrainModel

__all__ = [
    "SpikingBrainConfig", "SpikingBrainForCausalLM", "SpikingBrainModel", "DecoderLayer", "ModelCache",
    "CausalLMOutput", "GenerateOutput", "build_from_qwen2_config", "convert_qwen2", "generate",
]
