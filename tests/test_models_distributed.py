"""sbops.models under sequence parallelism (SP) and expert parallelism (EP), gloo, CPU, float64.

Two spawned ranks, SP = EP = the whole group: each rank runs its contiguous shard of every sequence
through a tiny GLA + SWA + hybrid (meta tokens) model with MoE FFNs (4 experts, 2 per rank).  The
forward logits equal the single-process model's slice; the summed loss shares equal its loss; one
SGD step with the documented gradient convention (all-reduce every gradient over the SP group
except the routed experts, complete on their owner, and the meta tokens, already summed by the SWA
halo exchange) gives the single-process step's parameters.  Every spawned run has a timeout.
"""

import pytest
import torch
import torch.distributed as dist

from spawn_ranks import spawn_ranks

TIMEOUT_S = 120
P = 2


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def tiny_model():
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
    cfg = SpikingBrainConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_heads=2, num_kv_heads=1,
                             head_dim=8, layer_types=("gla", "swa", "hybrid"), window=3, num_meta_tokens=2,
                             num_experts=4, top_k=1, moe_renormalize=False, router_aux_loss_coef=0.1)
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(cfg).double().train()


def _is_routed_expert(name):
    return ".mlp.experts." in name


def _is_meta_token(name):
    return name.endswith(".meta_k") or name.endswith(".meta_v")


def train_step_check(group, lr=0.1):
    import sbops.distributed as sbd
    sp, ep = sbd.SequenceParallel(group), sbd.ExpertParallel(group)
    r = sp.rank
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 23, (2, 9), generator=gen)
    labels = torch.randint(0, 23, (2, 9), generator=gen)
    labels[0, 4] = -100                                  # an ignored label, on rank 0's side
    labels[1, 5] = -100                                  # the first label of rank 1's shard (5 + 4 tokens)
    bad = []

    ref = tiny_model()
    out = ref(ids, labels=labels)
    ref_grads = dict(zip([n for n, _ in ref.named_parameters()],
                         torch.autograd.grad(out.loss, list(ref.parameters()), allow_unused=True)))

    model = tiny_model()
    lo = sum(sp.split_lengths(9, P)[:r])
    with sbd.sequence_parallel(group), sbd.expert_parallel(group):
        with torch.no_grad():
            logits = model(sp.shard(ids)).logits
        e = _rel(logits, out.logits[:, lo:lo + logits.shape[1]].detach())
        if not e <= 1e-10:
            bad.append(f"rank {r}: no-grad logits rel err {e:.3g}")
        got = model(sp.shard(ids), labels=sp.shard(labels))
    loss = got.loss.detach().clone()
    dist.all_reduce(loss, group=group)
    if not _rel(loss, out.loss.detach()) <= 1e-10:
        bad.append(f"rank {r}: summed loss {loss.item()!r} != single-process {out.loss.item()!r}")
    aux = got.aux_loss.detach().clone()
    dist.all_reduce(aux, group=group)
    if not _rel(aux, out.aux_loss.detach()) <= 1e-10:
        bad.append(f"rank {r}: summed aux loss {aux.item()!r} != single-process {out.aux_loss.item()!r}")
    got.loss.backward()

    mine = ep.local_experts(model.config.num_experts)
    checked = []
    with torch.no_grad():
        for (n, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
            g = torch.zeros_like(p) if p.grad is None else p.grad
            if not _is_routed_expert(n) and not _is_meta_token(n):
                dist.all_reduce(g, group=group)
            elif _is_routed_expert(n) and int(n.split(".mlp.experts.")[1].split(".")[0]) not in mine:
                continue                                 # another rank's expert: not held here
            want = ref_grads[n]
            want = torch.zeros_like(p_ref) if want is None else want
            if want.abs().max() == 0:                    # an expert no token chose: no gradient either way
                if not _is_routed_expert(n) or g.abs().max() != 0:
                    bad.append(f"rank {r}: {n}: single-process gradient zero, here {g.abs().max().item():.3g}")
                continue
            checked.append(n)
            new, new_ref = p - lr * g, p_ref - lr * want
            e = max(_rel(g, want), _rel(new, new_ref))
            if not e <= 1e-10:
                bad.append(f"rank {r}: parameter {n}: rel err {e:.3g}")
    if not any(_is_routed_expert(n) for n in checked):
        bad.append(f"rank {r}: none of this rank's experts received a token (test too weak)")
    return bad


def _body(rank, P):
    return train_step_check(None)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_model_training_step_under_sp2_ep2_equals_the_single_process_step():
    spawn_ranks(_body, P, TIMEOUT_S)
