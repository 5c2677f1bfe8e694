"""sbops.models: SpikingBrain-7B-style (GLA/SWA) and -76B-style (hybrid + MoE) causal LMs,
Qwen2 conversion, and generate(): chunked packed prefill, slot-indexed constant-memory caches,
CUDA-graph decode and sampling."""
from .config import SpikingBrainConfig
from .convert import build_from_qwen2_config, convert_qwen2
from .generate import GenerateOutput, generate
from .graphs import DecodeGraphs
from .sampling import process_logits, select_next
from .spike_report import spike_report
from .spikingbrain import CausalLMOutput, DecoderLayer, ModelCache, SpikingBrainForCausalLM, SpikingBrainModel

__all__ = [
    "SpikingBrainConfig", "SpikingBrainForCausalLM", "SpikingBrainModel", "DecoderLayer", "ModelCache",
    "CausalLMOutput", "GenerateOutput", "DecodeGraphs", "build_from_qwen2_config", "convert_qwen2", "generate",
    "process_logits", "select_next", "spike_report",
]
