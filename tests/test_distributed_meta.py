"""sbops.distributed's ops refuse meta tensors by name (before, torch raised "Cannot copy out of meta tensor" from
inside the exchange, naming no argument): where the agreement's device is meta on the calling rank, at once and
without a process group; a meta argument beside real ones travels with the agreement, so every rank raises the same
error (gloo, two ranks) and the group stays usable."""
import pytest
import torch

import sbops.distributed as sbd


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def test_meta_tensors_where_the_agreement_runs_are_refused_at_once():
    """The first of q, k, v (x, ids, weights) is where the argument agreement runs: meta there raises on the calling
    rank (no process group needed), naming every meta argument's first."""
    q = _meta(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"distributed.swa_attn: q is a meta tensor"):
        sbd.swa_attn(q, q, q, 4)
    with pytest.raises(ValueError, match=r"distributed.linear_attn: q is a meta tensor"):
        sbd.linear_attn(q, q, q)
    with pytest.raises(ValueError, match=r"distributed.moe_dispatch: x is a meta tensor"):
        sbd.moe_dispatch(_meta(6, 8), torch.zeros(6, 2, dtype=torch.long), torch.rand(6, 2), 4)


def _body_one_rank_meta(rank, P):
    from test_distributed_contract_s17 import _expect_same_error
    q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    k = _meta(1, 4, 2, 8, dtype=torch.float64) if rank == 0 else q
    bad = _expect_same_error(rank, "swa k meta on rank 0", lambda: sbd.swa_attn(q, k, q, 2), "k is a meta tensor")
    g = _meta(1, 4, 2, dtype=torch.float64) if rank == 1 else -torch.rand(1, 4, 2, dtype=torch.float64)
    bad += _expect_same_error(rank, "linear_attn g meta on rank 1", lambda: sbd.linear_attn(q, q, q, g),
                              "g is a meta tensor")
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)
    ids = _meta(4, 1, dtype=torch.long) if rank == 0 else torch.tensor([[0], [1], [1], [0]])
    bad += _expect_same_error(rank, "moe ids meta on rank 0", lambda: sbd.moe_dispatch(x, ids, w, 2),
                              "ids is a meta tensor")
    o = sbd.swa_attn(q, q, q, 2)   # the group is still usable
    if o.shape != q.shape:
        bad.append(f"rank {rank}: swa after the errors gave {tuple(o.shape)}")
    return bad


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed gloo missing")
def test_a_meta_argument_on_one_rank_raises_the_same_error_on_every_rank():
    from spawn_ranks import spawn_ranks
    spawn_ranks(_body_one_rank_meta, 2, 45)
