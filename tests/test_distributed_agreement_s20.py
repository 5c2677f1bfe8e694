"""sbops.distributed: a bad argument on ONE rank raises on EVERY rank (audit s19, findings 1 and 2).

A rank's own argument error (k / v / g / initial_state / weights / y_local of the wrong shape or
dtype, a bool window) used to be raised on that rank alone, before or after a collective: the other
ranks then waited in the op's next collective (a hang until the process group's timeout), or, in
swa_attn, received a halo the failing rank never filled (silent garbage). Now the error travels with
the op's agreement all_gather and every rank raises the same error, naming the argument and the
failing group rank. gloo, CPU, world size 2; each test is one spawn of 2 ranks with a deadline, so a
hang fails the test instead of stalling CI. Afterwards the group still works (a matching call).
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import sbops
import sbops.distributed as sbd
from spawn_ranks import spawn_ranks

DEADLINE_S = 40
gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                          reason="torch.distributed gloo missing")
DD = torch.float64


def _expect_everywhere(rank, what, fn, exc, needles):
    """Run fn on every rank; every rank must raise the same `exc` whose message holds every needle."""
    try:
        fn()
        got = ("no error", "")
    except Exception as e:                                # noqa: BLE001 - compared below
        got = (type(e).__name__, str(e))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, got)
    ok = got[0] == exc.__name__ and all(n in got[1] for n in needles) and all(g == got for g in everyone)
    return [] if ok else [f"rank {rank}: {what}: want the same {exc.__name__} naming {needles} on every rank, "
                          f"got {everyone}"]


def _rnd(*shape, dtype=DD, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _group_still_works(rank):
    """A matching swa_attn call after the errors equals the single-process op (no collective left over)."""
    q = _rnd(1, 4, 2, 8, seed=1)
    o = sbd.swa_attn(q, q, q, 2)
    full = torch.cat([q, q], 1)
    ref = sbops.swa_attn(full, full, full, 2)[:, 4 * rank:4 * rank + 4]
    return [] if torch.allclose(o, ref, atol=1e-12, rtol=0) else [f"rank {rank}: swa_attn after the errors differs"]


# ----------------------------------------------------------------------------- swa_attn (finding 1)
def _body_swa(rank, P):
    bad = []
    q = _rnd(1, 3, 2, 4)
    short = _rnd(1, 1, 2, 4)
    sk = _rnd(2, 2, 4)
    bad += _expect_everywhere(rank, "k shorter than q on rank 0", lambda: sbd.swa_attn(
        q, short if rank == 0 else q, short if rank == 0 else q, 2), ValueError, ["k must have shape", "group rank 0 of 2"])
    bad += _expect_everywhere(rank, "v shorter than q on rank 1", lambda: sbd.swa_attn(
        q, q, short if rank == 1 else q, 2), ValueError, ["v must have shape", "group rank 1 of 2"])
    bad += _expect_everywhere(rank, "sink_k of the wrong shape on rank 1", lambda: sbd.swa_attn(
        q, q, q, 2, sink_k=sk[:, :1] if rank == 1 else sk, sink_v=sk), ValueError, ["sink_k", "group rank 1"])
    bad += _expect_everywhere(rank, "bool window on rank 0", lambda: sbd.swa_attn(
        q, q, q, True if rank == 0 else 2), TypeError, ["window must be an int", "group rank 0"])
    bad += _expect_everywhere(rank, "k of the wrong dtype on both ranks", lambda: sbd.swa_attn(
        q, q.float(), q.float(), 2), TypeError, ["dtype", "group ranks 0, 1 of 2"])
    return bad + _group_still_works(rank)


@gloo
def test_swa_attn_bad_argument_on_one_rank_raises_on_every_rank():
    spawn_ranks(_body_swa, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- linear_attn (finding 2)
def _body_linear_attn(rank, P):
    bad = []
    for dt in (DD, torch.float32):                        # float64: the torch state fold; float32: _ThroughOp
        q, v = _rnd(1, 3, 2, 4, dtype=dt), _rnd(1, 3, 2, 5, dtype=dt)
        h0 = torch.zeros(1, 2, 4, 5)
        bad += _expect_everywhere(rank, f"{dt} initial_state of the wrong shape on rank 1", lambda: sbd.linear_attn(
            q, q, v, initial_state=h0[..., :4] if rank == 1 else h0), ValueError, ["initial_state", "group rank 1"])
        bad += _expect_everywhere(rank, f"{dt} v shorter than q on rank 0", lambda: sbd.linear_attn(
            q, q, v[:, :2] if rank == 0 else v), ValueError, ["v must have shape", "group rank 0"])
        g = F.logsigmoid(_rnd(1, 3, 2, dtype=dt))
        bad += _expect_everywhere(rank, f"{dt} g shorter than q on rank 1", lambda: sbd.linear_attn(
            q, q, v, g[:, :1] if rank == 1 else g), ValueError, ["g must", "group rank 1"])
    bad += _expect_everywhere(rank, "scale not a number on rank 0", lambda: sbd.linear_attn(
        q, q, v, scale="x" if rank == 0 else 0.5), TypeError, ["scale", "group rank 0"])
    o, _ = sbd.linear_attn(q, q, v)                       # the group still works
    return bad + ([] if o.shape == (1, 3, 2, 5) else [f"rank {rank}: linear_attn after the errors"]) \
        + _group_still_works(rank)


@gloo
def test_linear_attn_bad_argument_on_one_rank_raises_on_every_rank():
    spawn_ranks(_body_linear_attn, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- moe_dispatch / moe_combine (finding 2)
def _moe_inputs():
    return _rnd(4, 3), torch.tensor([[0], [1], [0], [1]], dtype=torch.int32), torch.ones(4, 1, dtype=DD)


def _moe_weights_wrong_on_rank_1(rank, x, ids, w, what):
    return _expect_everywhere(rank, f"weights of the wrong shape on rank 1{what}", lambda: sbd.moe_dispatch(
        x, ids, torch.ones(4, 2, dtype=DD) if rank == 1 else w, 2), ValueError, ["weights must be", "group rank 1"])


def _moe_still_works(rank, x, ids, w, what):
    xl, _, h = sbd.moe_dispatch(x, ids, w, 2)
    y = sbd.moe_combine(xl, h)
    return [] if torch.allclose(y, x, atol=1e-12, rtol=0) else [f"rank {rank}: moe {what} differs"]


def _body_moe(rank, P):
    x, ids, w = _moe_inputs()
    bad = _moe_weights_wrong_on_rank_1(rank, x, ids, w, "")
    bad += _expect_everywhere(rank, "float ids on rank 0", lambda: sbd.moe_dispatch(
        x, ids.to(DD) if rank == 0 else ids, w, 2), TypeError, ["ids", "group rank 0"])

    def combine_short_rows():
        xl, _, h = sbd.moe_dispatch(x, ids, w, 2)
        return sbd.moe_combine(xl[:-1] if rank == 1 else xl, h)
    bad += _expect_everywhere(rank, "y_local missing a row on rank 1", combine_short_rows, ValueError,
                              ["y_local must be", "group rank 1"])
    bad += _moe_still_works(rank, x, ids, w, "after the errors")     # the group still works
    return bad + _group_still_works(rank)


@gloo
def test_moe_bad_argument_on_one_rank_raises_on_every_rank():
    spawn_ranks(_body_moe, 2, DEADLINE_S)


def _body_moe_no_data_checks(rank, P):
    """Data checks off (as for GPU tensors by default): no agreement gather runs, and the failure rides in the
    counts all_to_all, so every rank still raises (it used to raise alone while the others waited)."""
    x, ids, w = _moe_inputs()
    with sbops.data_checks(False):
        bad = _moe_weights_wrong_on_rank_1(rank, x, ids, w, ", data checks off")
        bad += _moe_still_works(rank, x, ids, w, "without data checks")   # the group still works
    return bad + _group_still_works(rank)


@gloo
def test_moe_dispatch_bad_argument_on_one_rank_raises_everywhere_without_data_checks():
    spawn_ranks(_body_moe_no_data_checks, 2, DEADLINE_S)
