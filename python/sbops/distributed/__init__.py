"""sbops.distributed: sequence-parallel linear attention and SWA, expert-parallel MoE on torch.distributed.

    import sbops.distributed as sbd     # any torch.distributed process group; group=None: the default group
    o, final_state = sbd.linear_attn(q, k, v, g=None, scale=None, initial_state=None,
                                     output_final_state=False, group=None)
    o = sbd.swa_attn(q, k, v, window, scale=None, sink_k=None, sink_v=None, group=None)
    x_local, expert_offsets, handle = sbd.moe_dispatch(x, ids, weights, num_experts, group=None)
    y = sbd.moe_combine(y_local, handle)

Sequence parallel: rank r holds the r-th contiguous shard of every sequence, [B, T_r, ...] (T_r >= 0,
shards may differ or be empty). Expert parallel: rank r owns experts [r*E/P, (r+1)*E/P). Results and gradients
equal the single-process ops (docs/SPEC.md sections 1, 2, 4) on the concatenated shards / batches.
The simulate_* functions run the same math for P ranks in one process (lists of shards in and out),
with whatever kernels the shards' device has. See docs/DISTRIBUTED.md.
"""
from .linear_attn import linear_attn, simulate_linear_attn
from .moe import MoEHandle, moe_combine, moe_dispatch, simulate_moe_combine, simulate_moe_dispatch
from .swa import simulate_swa_attn, swa_attn
from .context import SequenceParallel, ExpertParallel, sequence_parallel, expert_parallel, current_sp, current_ep

__all__ = ["linear_attn", "swa_attn", "moe_dispatch", "moe_combine", "MoEHandle",
           "simulate_linear_attn", "simulate_swa_attn", "simulate_moe_dispatch", "simulate_moe_combine",
           "SequenceParallel", "ExpertParallel", "sequence_parallel", "expert_parallel", "current_sp", "current_ep"]
