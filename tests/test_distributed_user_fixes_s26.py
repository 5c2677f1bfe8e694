"""sbops.distributed, session 26 audit (a torchtitan user on gloo): each test fails on the code before it.

- swa_attn returned a non-contiguous view (keeping the halo rows' outputs alive) on a rank whose whole
  shard reaches back before it (window < 0, or window >= T_r) with B > 1;
- a non-tensor q (swa_attn, linear_attn) or y_local (moe_combine) on one rank raised there alone (swa_attn:
  an AttributeError), and the other ranks waited in the agreement all_gather until the group's timeout;
- numpy integers were refused for swa_attn's window and moe_dispatch's num_experts (the single-process ops
  take them);
- SequenceParallel / ExpertParallel took a DeviceMesh as a group and failed later in torch, naming nothing.
gloo, CPU, world size 2; each spawn has a deadline.
"""

import pytest
import torch
import torch.distributed as dist

try:
    import numpy as np
except ImportError:  # numpy is optional (torch does not need it): its cases skip or are left out without it
    np = None

import sbops
import sbops.distributed as sbd
from spawn_ranks import spawn_ranks
from conftest import requires_numpy
from test_distributed_agreement_s20 import _expect_everywhere, _group_still_works, _rnd

DEADLINE_S = 40
gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                          reason="torch.distributed gloo missing")


def _body_contiguous(rank, P):
    bad = []
    B, T, H, D = 2, 8, 2, 8
    q, k, v = (_rnd(B, T, H, D, seed=s) for s in range(3))
    sl = slice(4 * rank, 4 * rank + 4)
    for window in (-1, 4, 2):
        for grad in (False, True):
            qq = q[:, sl].clone().requires_grad_(grad)
            o = sbd.swa_attn(qq, k[:, sl], v[:, sl], window)
            ref = sbops.swa_attn(q, k, v, window)[:, sl]
            if not o.is_contiguous() or not torch.allclose(o.detach(), ref, atol=1e-12, rtol=0):
                bad.append(f"rank {rank}: window {window} grad {grad}: contiguous {o.is_contiguous()} "
                           f"stride {o.stride()}, max diff {float((o.detach() - ref).abs().max()):.3g}")
    return bad


@gloo
def test_swa_attn_output_is_contiguous_where_the_shard_reaches_back_whole():
    spawn_ranks(_body_contiguous, 2, DEADLINE_S)


def _body_non_tensor(rank, P):
    bad = []
    q = _rnd(1, 3, 2, 4)
    bad += _expect_everywhere(rank, "q None on rank 1 (swa_attn)", lambda: sbd.swa_attn(
        None if rank == 1 else q, q, q, 2), TypeError, ["q must be a tensor", "group rank 1"])
    bad += _expect_everywhere(rank, "q a list on rank 0 (linear_attn)", lambda: sbd.linear_attn(
        [1.0] if rank == 0 else q, q, q), TypeError, ["q", "group rank 0"])
    x = _rnd(4, 3)
    ids = torch.tensor([[0], [1], [1], [0]])
    w = torch.ones(4, 1, dtype=x.dtype)
    x_local, offs, h = sbd.moe_dispatch(x, ids, w, 2)
    bad += _expect_everywhere(rank, "y_local None on rank 1 (moe_combine)", lambda: sbd.moe_combine(
        None if rank == 1 else x_local, h), TypeError, ["y_local", "group rank 1"])
    y = sbd.moe_combine(x_local, h)   # the group still works, and a matching combine runs
    if not torch.allclose(y, x, atol=1e-12, rtol=0):
        bad.append(f"rank {rank}: moe_combine after the errors differs")
    return bad + _group_still_works(rank)


@gloo
def test_non_tensor_argument_on_one_rank_raises_on_every_rank():
    spawn_ranks(_body_non_tensor, 2, DEADLINE_S)


def _body_numpy_ints(rank, P):
    bad = []
    q = _rnd(1, 4, 2, 8, seed=1)
    o = sbd.swa_attn(q, q, q, np.int64(2))
    if not torch.equal(o, sbd.swa_attn(q, q, q, 2)):
        bad.append(f"rank {rank}: swa_attn with window np.int64(2) differs from window 2")
    x = _rnd(4, 3)
    ids = torch.tensor([[0], [1], [1], [0]])
    w = torch.ones(4, 1, dtype=x.dtype)
    got = sbd.moe_dispatch(x, ids, w, np.int64(2))
    want = sbd.moe_dispatch(x, ids, w, 2)
    if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
        bad.append(f"rank {rank}: moe_dispatch with num_experts np.int64(2) differs from 2")
    sim = sbd.simulate_swa_attn([q, q], [q, q], [q, q], np.int32(2))
    if not torch.equal(sim[rank], o):
        bad.append(f"rank {rank}: simulate_swa_attn with np.int32(2) differs")
    return bad


@gloo
@requires_numpy
def test_numpy_integer_window_and_num_experts_are_taken():
    spawn_ranks(_body_numpy_ints, 2, DEADLINE_S)


def _body_mesh(rank, P):
    from torch.distributed.device_mesh import init_device_mesh
    bad = []
    mesh = init_device_mesh("cpu", (P,), mesh_dim_names=("cp",))
    sp, ep = sbd.SequenceParallel(mesh), sbd.ExpertParallel(mesh["cp"])
    if sp.rank != rank or sp.world_size != P or list(ep.local_experts(4)) != [2 * rank, 2 * rank + 1]:
        bad.append(f"rank {rank}: a 1-D mesh as group: rank {sp.rank}, size {sp.world_size}, "
                   f"experts {list(ep.local_experts(4))}")
    with sbd.sequence_parallel(mesh) as cur:
        q = _rnd(1, 4, 2, 8, seed=1)
        o = sbd.swa_attn(q, q, q, 2, group=cur.group)
        if not torch.equal(o, sbd.swa_attn(q, q, q, 2)):
            bad.append(f"rank {rank}: swa_attn on the mesh's group differs")
    return bad


@gloo
def test_sequence_and_expert_parallel_take_a_one_dimensional_device_mesh():
    spawn_ranks(_body_mesh, 2, DEADLINE_S)
