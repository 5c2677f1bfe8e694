"""MoEBlock: SpikingBrain-76B's mixture-of-experts FFN on top of the sbops routing ops."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

import sbops
import sbops.distributed as sbd
from sbops.distributed._collectives import all_reduce_sum

from .common import SwiGLU, check_arg


class MoEBlock(nn.Module):
    """Routed SwiGLU experts plus one always-on shared expert.

        y = shared(x) + sum_j w_j * expert_{id_j}(x)

    Router: logits = router(x) (a plain linear, not spike-coded), then
    sbops.topk_gating(logits, top_k, "softmax", renormalize) picks experts and weights.
    Tokens are grouped by expert with sbops.moe_permute, each expert runs on its contiguous rows,
    and sbops.moe_unpermute scatters the weighted results back.  Grouping rows needs the expert
    offsets on the host: one device-to-host sync per forward (so this block is not fullgraph-
    traceable by torch.compile).  Inference on at most `sync_free_max_tokens` tokens (decode) runs
    every expert on every token instead, weighted by the routing: no sync (CUDA-graph capturable).

    forward returns (y, aux_loss): the Switch-Transformer load-balancing loss
        aux = E * sum_e f_e * P_e,
    f_e = fraction of routed (token, slot) pairs sent to expert e (sbops.expert_counts, no
    gradient), P_e = mean router softmax probability of expert e (differentiable). It is 1 for a
    perfectly balanced router; the model scales it by its aux-loss coefficient.

    Expert parallelism: inside `sbops.distributed.expert_parallel(group)` the routed rows go to the
    ranks owning their experts (sbd.moe_dispatch / moe_combine; rank r runs experts
    [r*E/P, (r+1)*E/P), the other experts' parameters are unused there).  Under sequence
    parallelism (with or without EP, whatever group EP runs on) the aux loss each rank returns is
    its additive share of the SP group's loss: f_e from the SP group's all-reduced expert counts,
    P_e summed over this rank's tokens divided by the group's token count, so the sum over the SP
    group equals the loss of one process holding the whole sequence, in value and gradient (as the
    model's cross-entropy share).  Under EP alone the EP group's ranks are taken to hold one batch
    between them (data parallel): the aux loss is the share of the EP group's loss (summed over the
    EP group: the loss of the concatenated batches), while the model's cross-entropy stays each
    rank's own mean; with gradients averaged over the ranks, the aux loss then weighs 1/P of the
    single-process coefficient.

    Note on renormalize: with top-1 and renormalize=True every weight is exactly 1, so the router
    learns from the aux loss only; renormalize=False (Switch style, w = router probability) lets
    the language-model loss train it too.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int = 16, top_k: int = 1,
                 shared_intermediate_size: Optional[int] = None, renormalize: bool = True,
                 spike_k: Optional[float] = None, weight_quant: Optional[str] = None):
        super().__init__()
        num_experts = check_arg("MoEBlock", "num_experts", num_experts, integer=True, lo=1)
        top_k = check_arg("MoEBlock", "top_k", top_k, integer=True, lo=1)
        if top_k > num_experts:
            raise ValueError(f"MoEBlock: top_k={top_k} must be at most num_experts={num_experts}")
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, intermediate_size, spike_k, weight_quant)
                                     for _ in range(num_experts))
        self.shared_expert = SwiGLU(hidden_size, shared_intermediate_size or intermediate_size, spike_k, weight_quant)

    @torch.no_grad()
    def upcycle_from(self, dense: nn.Module, scale: float = 0.98) -> "MoEBlock":
        """Initialise from a dense SwiGLU FFN (anything with gate_proj/up_proj/down_proj, e.g. Qwen2MLP).

        Every routed expert and the shared expert are copies of the dense FFN. Interpretation of the
        paper's upcycling scale (0.98 for 16 experts, top-1): `scale` is the share of the dense
        FFN's output given to the routed experts, i.e. it multiplies the routed experts'
        down_proj weight, and the shared expert's down_proj is multiplied by (1 - scale). With
        routing weights that sum to 1 (renormalize=True, any top_k) the upcycled block then computes
        exactly the dense FFN at initialisation: y = (1 - s) FFN(x) + s FFN(x); with renormalize=False
        the weights are the router's probabilities (about top_k / E at first), so it starts as
        (1 - s) FFN(x) + s p FFN(x). The router is initialised small (std 0.02), so early routing is
        near-uniform. The dense projections must have no biases (Qwen2MLP has none; a bias would be lost).
        """
        if not 0.0 <= scale <= 1.0:
            raise ValueError(f"MoEBlock.upcycle_from: scale must lie in [0, 1], got {scale}")
        for mod, what in [(m, "this block's") for m in self.modules()] + [(m, "dense") for m in dense.modules()]:
            if isinstance(mod, nn.Linear) and mod.weight is None:
                raise ValueError(f"MoEBlock.upcycle_from: the {what} float weights were dropped "
                                 f"(sbops.nn.drop_float_weights); upcycle before dropping them")
        for name in ("gate_proj", "up_proj", "down_proj"):
            if getattr(getattr(dense, name), "bias", None) is not None:
                raise ValueError(f"MoEBlock.upcycle_from: dense.{name} has a bias, which the experts cannot hold "
                                 f"(their projections have none); it would be silently dropped")
        shapes = {(e.gate_proj.weight.shape, e.down_proj.weight.shape) for e in list(self.experts) + [self.shared_expert]}
        want = (dense.gate_proj.weight.shape, dense.down_proj.weight.shape)
        if shapes != {want}:
            raise ValueError(f"MoEBlock.upcycle_from: every expert (and the shared one) must have the dense FFN's "
                             f"shapes gate {tuple(want[0])} / down {tuple(want[1])}, got {sorted(shapes)}")
        for expert, share in [(e, scale) for e in self.experts] + [(self.shared_expert, 1.0 - scale)]:
            expert.gate_proj.weight.copy_(dense.gate_proj.weight)
            expert.up_proj.weight.copy_(dense.up_proj.weight)
            expert.down_proj.weight.copy_(dense.down_proj.weight * share)
        nn.init.normal_(self.router.weight, std=0.02)
        return self

    # Up to this many tokens, inference (no autograd) runs every expert on every token and weights
    # the results by the routing (zero for experts not chosen): no host sync, so decode steps can be
    # captured in CUDA graphs; at decode sizes the cost is reading each expert's weights once.
    sync_free_max_tokens = 64

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        logits = self.router(x2)
        weights, ids = sbops.topk_gating(logits, self.top_k, "softmax", self.renormalize)
        if logits.dtype == torch.float64:  # the op's weights are float32 (SPEC): a float64 model recomputes them
            weights = torch.softmax(logits, dim=-1).gather(1, ids.long())
            if self.renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        ep = sbd.current_ep()
        if ep is not None:
            y = self._expert_parallel(x2, weights, ids, ep)
        elif not torch.is_grad_enabled() and x2.shape[0] <= self.sync_free_max_tokens:
            y = self._all_experts(x2, weights, ids)
        else:
            y = self._routed(x2, weights, ids, shape[-1])

        # Switch-style load-balancing loss (under EP: this rank's share of the group's loss).
        ct = torch.float64 if logits.dtype == torch.float64 else torch.float32
        counts = sbops.expert_counts(ids, self.num_experts).to(ct)
        prob_sum = torch.softmax(logits.to(ct), dim=-1).sum(dim=0)
        # ranks holding different tokens of one batch: the SP group when SP is active (the CE loss
        # is shared over it too, whatever group EP runs on), else the EP group (EP alone: its ranks
        # are taken as one data-parallel batch)
        share = sbd.current_sp() or ep
        if share is None:
            if x2.shape[0] == 0:  # no tokens: nothing to balance (not 0 / 0)
                return self.shared_expert(x2).view(shape) + y.view(shape), prob_sum.sum() * 0
            frac, n_tokens = counts / ids.numel(), x2.shape[0]
        else:
            tot = all_reduce_sum(torch.cat([counts, counts.new_tensor([ids.numel(), x2.shape[0]])]), share.group)
            frac, n_tokens = tot[:-2] / tot[-2], tot[-1]
        aux_loss = self.num_experts * (frac * prob_sum).sum() / n_tokens
        return (y + self.shared_expert(x2)).view(shape), aux_loss

    def _expert_parallel(self, x2, weights, ids, ep):
        """Routed experts of this rank on the rows dispatched to it (sbd.moe_dispatch / moe_combine)."""
        E = self.num_experts
        x_local, offs, handle = sbd.moe_dispatch(x2, ids, weights, E, group=ep.group)
        mine = ep.local_experts(E)
        bounds = offs.tolist()
        pieces = [self.experts[mine.start + e](x_local[bounds[e]:bounds[e + 1]])
                  for e in range(len(bounds) - 1) if bounds[e + 1] > bounds[e]]
        if pieces:
            y_local = torch.cat(pieces)
        else:
            # No rows for this rank's experts: an empty y_local that stays in the autograd graph (of
            # x_local and of the local experts' parameters, as it would with rows), so this rank's
            # backward runs moe_combine's and moe_dispatch's all-to-alls like every other rank's.
            y_local = x_local * 0
            if torch.is_grad_enabled():
                for p in (p for e in mine for p in self.experts[e].parameters() if p.requires_grad):
                    y_local = y_local + p.reshape(-1)[:0].sum().to(y_local.dtype)
        return sbd.moe_combine(y_local, handle).to(x2.dtype)

    def _all_experts(self, x2, weights, ids):
        ct = torch.promote_types(x2.dtype, torch.float32)  # float32, float64 for float64 models
        combine = torch.zeros(x2.shape[0], self.num_experts, dtype=ct, device=x2.device)
        combine.scatter_add_(1, ids.long(), weights.to(ct))
        y = torch.zeros(x2.shape, dtype=ct, device=x2.device)
        for e, expert in enumerate(self.experts):
            y += combine[:, e:e + 1] * expert(x2).to(ct)
        return y.to(x2.dtype)

    def _routed(self, x2, weights, ids, hidden):
        x_perm, offsets, row_map = sbops.moe_permute(x2, ids, self.num_experts)

        # Each expert on its contiguous block of rows; the tail rows (dropped slots) stay zero.
        bounds = offsets.tolist()
        pieces = [self.experts[e](x_perm[bounds[e]:bounds[e + 1]])
                  for e in range(self.num_experts) if bounds[e + 1] > bounds[e]]
        tail = x_perm.shape[0] - bounds[-1]
        if tail:
            pieces.append(x_perm.new_zeros(tail, hidden))
        y_perm = torch.cat(pieces) if pieces else x_perm.new_zeros(0, hidden)
        return sbops.moe_unpermute(y_perm, row_map, weights)
