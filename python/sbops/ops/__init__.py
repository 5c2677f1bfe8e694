"""The public ops, one module per family (SPEC sections 1-4)."""
from .linear_attn import linear_attn, linear_attn_decode
from .moe import expert_counts, moe_align_block_size, moe_permute, moe_unpermute, topk_gating
from .spike import spike_collapse, spike_encode, spike_expand, spike_quant, spike_stats
from .spike_linear import quantize_weight, spike_linear
from .swa import swa_attn, swa_cache_write, swa_decode

# The ops that dispatch to a backend: the names sbops.explain knows.  quantize_weight (exported too)
# is plain torch code on the weight's device with no backend choice, so it is not one of them.
PUBLIC = {f.__name__: f for f in (
    linear_attn, linear_attn_decode, swa_attn, swa_decode, swa_cache_write,
    spike_encode, spike_quant, spike_expand, spike_collapse, spike_stats, spike_linear,
    topk_gating, moe_permute, moe_unpermute, moe_align_block_size, expert_counts)}

__all__ = [*PUBLIC, "quantize_weight"]
