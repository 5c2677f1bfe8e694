"""sbops.distributed on real process groups: gloo, CPU, float64, cpu backend, world sizes 2, 3 and 4.

Each test spawns one group of P processes (a free port each) that runs every case of
distributed_cases.cases(P) (forward with and without autograd, backward), then the 2-rank cases on a
sub-group of non-consecutive ranks (group ranks differ from global ranks); for P = 2 and 4 also one
training step of a tiny GLA + SWA + MoE model under SP = EP = P (distributed_cases.train_step_check). Results and gradients
must equal the single-process ops within 1e-10 (float32 states within float32 rounding).
float32 linear_attn (the path through the op's kernels) is checked against the float64 reference (1e-5).
A deadlock fails: the collectives time out after 60 s and the whole spawn after 240 s.
"""

import pytest
import torch
import torch.distributed as dist

from spawn_ranks import spawn_ranks

TIMEOUT_S = 240


def _check(C, kind, cfg, r, group, seed):
    x, w = C.build(kind, cfg, seed, "cpu", torch.float64)
    loss, ref_o, ref_f = C.single(kind, cfg, x, w)
    ref = C.grads(x, loss)
    s = C.shard(kind, cfg, x, r)
    with torch.no_grad():
        out = C.distributed(kind, cfg, s, group)
    bad = [f"(no_grad) {b}" for b in C.compare(kind, cfg, out, {}, ref_o, ref_f, ref, r, 1e-10, 1e-6)]
    out = C.distributed(kind, cfg, s, group)
    got = C.grads(x, C.rank_loss(kind, cfg, s, w, r, out))
    return bad + C.compare(kind, cfg, out, got, ref_o, ref_f, ref, r, 1e-10, 1e-6)


def _body(rank, P):
    import distributed_cases as C
    bad = []
    for i, (kind, cfg) in enumerate(C.cases(P)):
        bad += _check(C, kind, cfg, rank, None, 1000 * P + i)
    if P in (2, 4):                              # the tiny model has 4 experts
        bad += C.train_step_check(None)
    if P >= 3:
        members = [P - 1, 1]                     # group rank 0 = global 1, group rank 1 = global P-1
        sub = dist.new_group(members)
        if rank in members:
            gr = dist.get_rank(sub)
            for i, (kind, cfg) in enumerate(C.cases(2)):
                bad += [f"(sub-group) {b}" for b in _check(C, kind, cfg, gr, sub, 77 + i)]
    return bad


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
@pytest.mark.parametrize("P", [2, 3, 4])
def test_distributed_ops_match_single_process_on_gloo(P):
    spawn_ranks(_body, P, TIMEOUT_S)


def _body_float32(rank, P):
    """float32 takes sbops.distributed's path through the op's own kernels and float32 states
    (linear_attn: _ThroughOp, the op twice forward and its backward twice on the cpu backend)."""
    import distributed_cases as C
    bad = []
    for i, (kind, cfg) in enumerate(C.cases(P)):
        if kind == "gla":
            bad += C.check_against_float64(kind, cfg, rank, 500 * P + i, "cpu", torch.float32, 1e-5, 1e-5)
    if P >= 3:
        members = [P - 1, 1]                     # a sub-group whose ranks differ from the global ones
        sub = dist.new_group(members)
        if rank in members:
            for i, (kind, cfg) in enumerate(C.cases(2)):
                if kind == "gla":
                    bad += [f"(sub-group) {b}" for b in C.check_against_float64(
                        kind, cfg, dist.get_rank(sub), 600 + i, "cpu", torch.float32, 1e-5, 1e-5, sub)]
    return bad


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
@pytest.mark.parametrize("P", [2, 3])
def test_distributed_linear_attn_float32_through_the_op_matches_float64(P):
    spawn_ranks(_body_float32, P, TIMEOUT_S)
