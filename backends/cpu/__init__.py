"""Backend `cpu`: the C++ reference (backends/cpu/*.cpp, compiled into sbops._C for the CPU key).

Every op of the contract, forward and backward, float32 and float64 (float16/bfloat16 inputs are
computed in float32), parallel over batch/heads with torch::stable::parallel_for.
"""
import torch

from sbops._dispatch import Backend, OpCaps

F = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
I = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
IDX = (torch.int32, torch.int64)
# the features each op's frontend can ask for (sbops/ops/*.py), per op
LINEAR_ATTN = frozenset({"gate_per_head", "gate_per_key", "varlen", "initial_state"})
LINEAR_ATTN_DECODE = frozenset({"gate_per_head", "gate_per_key"})
SWA_ATTN = frozenset({"varlen", "sinks", "full_causal"})
SWA_DECODE = frozenset({"full_causal", "sinks"})
MOE = frozenset({"bias", "groups"})


def _probe(op):
    try:
        from sbops import _C  # noqa: F401
    except ImportError as e:
        return f"sbops._C is not built ({e})"
    return None


BACKEND = Backend(
    name="cpu",
    device_types=("cpu",),
    priority=0,
    probe=_probe,
    description="C++ reference kernels (float32/float64 math), always built",
    ops={
        "linear_attn": OpCaps(F, features=LINEAR_ATTN, impl="c++"),
        "linear_attn_decode": OpCaps(F, features=LINEAR_ATTN_DECODE, impl="c++"),
        "swa_attn": OpCaps(F, features=SWA_ATTN, impl="c++"),
        "swa_decode": OpCaps(F, features=SWA_DECODE, impl="c++"),
        "swa_cache_write": OpCaps(F, impl="c++"),
        "spike_encode": OpCaps(F, impl="c++"),
        "spike_quant": OpCaps(F, impl="c++"),
        "spike_linear": OpCaps(F, features=frozenset({"bias", "group", "fp8_weight"}),
                               impl="c++ (float64 accumulation)"),
        "spike_expand": OpCaps(I, impl="c++"),
        "spike_collapse": OpCaps(I, impl="c++"),
        "spike_stats": OpCaps(I, impl="c++"),
        "topk_gating": OpCaps(F, features=MOE, impl="c++"),
        "moe_permute": OpCaps(F, impl="c++"),
        "moe_unpermute": OpCaps(F, impl="c++"),
        "moe_align_block_size": OpCaps(IDX, impl="c++"),
        "expert_counts": OpCaps(IDX, impl="c++"),
    },
)


def register() -> None:
    """The C++ kernels register themselves when sbops._C loads; nothing to wire from Python."""
