"""sbops.distributed's contract at its edges (audit 5, findings 1-8), gloo, CPU, float64.

- A rank whose experts receive no rows still takes part in both all-to-all backwards (MoEBlock and a
  hand-written expert loop); nothing hangs.
- Empty shards (T_r = 0, as SequenceParallel.shard gives for T < P) work in linear_attn (float64
  and float32), swa_attn and the model's loss share (the next NON-empty rank's first label).
- Arguments that must agree across ranks raise the same ValueError on every rank, and the group
  stays usable afterwards.
- The MoE aux loss is shared over the SP group when EP runs on another group.
- A process outside the group gets a clear error; errors outside an initialised group name sbops.

Every spawned test has a deadline (a deadlock fails it); the collectives' own timeout is 60 s.
"""

import pytest
import torch
import torch.distributed as dist

import sbops
import sbops.distributed as sbd
from spawn_ranks import spawn_ranks

DEADLINE_S = 45
gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                          reason="torch.distributed gloo missing")


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _same_everywhere(msg, group=None):
    """Every rank's message (the same error on every rank?)."""
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, msg, group=group)
    return out


# ----------------------------------------------------------------------------- finding 1: MoE rank without rows
def _body_moe_no_rows(rank, P):
    bad = []
    gen = torch.Generator().manual_seed(3)
    x_all = torch.rand(2 * 3, 4, generator=gen, dtype=torch.float64)
    W = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    for residual in (True, False):
        # every token -> expert 0 (owned by rank 0); rank 1 builds an empty y_local outside the graph
        x = x_all[3 * rank:3 * rank + 3].clone().requires_grad_()
        ids = torch.zeros(3, 1, dtype=torch.int64)
        w = torch.ones(3, 1, dtype=torch.float64)
        x_local, _, h = sbd.moe_dispatch(x, ids, w, 2)
        y_local = x_local @ W if x_local.shape[0] else x_local.new_zeros(0, 4)
        y = sbd.moe_combine(y_local, h) + (x if residual else 0)
        (y * (1 + torch.arange(4, dtype=torch.float64))).sum().backward()
        dist.all_reduce(torch.ones(1))                   # the training loop's next collective
        want = (1 + torch.arange(4, dtype=torch.float64)) @ W.t() + (1 if residual else 0) * (
            1 + torch.arange(4, dtype=torch.float64))
        e = _rel(x.grad, want.expand(3, 4))
        if not e <= 1e-12:
            bad.append(f"rank {rank}: residual={residual}: dx rel err {e:.3g}")

    # MoEBlock under EP with every token routed to expert 0 (positive x, router rows +1 / -1);
    # x with and without requires_grad (the experts' parameters alone put y_local in the graph)
    from sbops.nn import MoEBlock
    for x_grad in (True, False):
        torch.manual_seed(0)
        ref = MoEBlock(4, 6, num_experts=2, top_k=1).double()
        with torch.no_grad():
            ref.router.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
        blk = MoEBlock(4, 6, num_experts=2, top_k=1).double()
        blk.load_state_dict(ref.state_dict())
        xr = x_all.clone().requires_grad_(x_grad)
        yr, ar = ref(xr)
        (yr.sum() + ar).backward()
        xs = x_all[3 * rank:3 * rank + 3].clone().requires_grad_(x_grad)
        with sbd.expert_parallel():
            y, aux = blk(xs)
        (y.sum() + aux).backward()
        dist.all_reduce(torch.ones(1))
        e = _rel(y, yr[3 * rank:3 * rank + 3])
        mine = blk.experts[0] if rank == 0 else blk.experts[1]
        want = ref.experts[0] if rank == 0 else ref.experts[1]
        for (n, p), q in zip(mine.named_parameters(), want.parameters()):
            g = torch.zeros_like(p) if p.grad is None else p.grad
            gq = torch.zeros_like(q) if q.grad is None else q.grad
            e = max(e, _rel(g, gq) if gq.abs().max() > 0 else g.abs().max().item())
        if x_grad:
            e = max(e, _rel(xs.grad, xr.grad[3 * rank:3 * rank + 3]))
        if not e <= 1e-10:
            bad.append(f"rank {rank}: MoEBlock x.requires_grad={x_grad}: rel err {e:.3g}")
    return bad


@gloo
def test_moe_rank_whose_experts_get_no_rows_takes_part_in_the_backward():
    spawn_ranks(_body_moe_no_rows, 2, DEADLINE_S)


def _model_check(rank, T, B=1, layer_types=("gla", "swa", "hybrid"), sp_group=None, ep_group=None, ep=True,
                 ce=True):
    """One model step under SP (and EP) vs the single-process model: logits, summed loss and aux,
    gradients all-reduced as docs/DISTRIBUTED.md says.  ce=False (T=1: no target at all, the
    cross-entropy is 0/0) trains on <logits, W> + aux instead."""
    import contextlib

    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM

    def model():
        cfg = SpikingBrainConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_heads=2,
                                 num_kv_heads=1, head_dim=8, layer_types=tuple(layer_types), window=3,
                                 num_meta_tokens=2, num_experts=4, top_k=1, moe_renormalize=False,
                                 router_aux_loss_coef=0.1)
        torch.manual_seed(0)
        return SpikingBrainForCausalLM(cfg).double().train()

    sp = sbd.SequenceParallel(sp_group)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 23, (B, T), generator=gen)
    labels = torch.randint(0, 23, (B, T), generator=gen)
    ref = model()
    out = ref(ids, labels=labels)
    names = [n for n, _ in ref.named_parameters()]
    Wl = torch.randn(out.logits.shape, generator=gen, dtype=torch.float64)

    def objective(o, lo=0):
        return o.loss if ce else (o.logits * Wl[:, lo:lo + o.logits.shape[1]]).sum() + o.aux_loss

    rg = dict(zip(names, torch.autograd.grad(objective(out), list(ref.parameters()), allow_unused=True)))
    m = model()
    lens = sp.split_lengths(T, sp.world_size)
    lo = sum(lens[:sp.rank])
    with sbd.sequence_parallel(sp_group), (sbd.expert_parallel(ep_group) if ep else contextlib.nullcontext()):
        got = m(sp.shard(ids), labels=sp.shard(labels))
    errs = {"logits": _rel(got.logits, out.logits[:, lo:lo + lens[sp.rank]]) if lens[sp.rank] else 0.0}
    loss, aux = got.loss.detach().clone(), got.aux_loss.detach().clone()
    dist.all_reduce(loss, group=sp_group)
    dist.all_reduce(aux, group=sp_group)
    errs["aux"] = _rel(aux, out.aux_loss)
    if ce:
        errs["loss"] = _rel(loss, out.loss)
    objective(got, lo).backward()
    mine = sbd.ExpertParallel(ep_group).local_experts(4) if ep else range(4)
    for n, p in m.named_parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad.clone()
        if ".mlp.experts." in n:
            if int(n.split(".mlp.experts.")[1].split(".")[0]) not in mine:
                continue
            if not ep or ep_group is not None:          # no EP, or EP on singleton groups: replicated over SP
                dist.all_reduce(g, group=sp_group)
        elif not n.endswith((".meta_k", ".meta_v")):
            dist.all_reduce(g, group=sp_group)
        want = rg[n] if rg[n] is not None else torch.zeros_like(p)
        errs[n] = _rel(g, want) if want.abs().max() > 0 else g.abs().max().item()
    return [f"rank {sp.rank}: T={T} {layer_types}: {k} rel err {e:.3g}" for k, e in errs.items() if not e <= 1e-10]


def _body_model_swa_moe(rank, P):
    # the audit's hang: one SWA layer + MoE, T=4: some rank's experts receive no rows
    return _model_check(rank, 4, layer_types=("swa",))


@gloo
def test_model_step_with_a_rank_whose_experts_get_no_rows_equals_single_process():
    spawn_ranks(_body_model_swa_moe, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- finding 2: empty shards
def _body_empty_shards(rank, P):
    bad = []
    gen = torch.Generator().manual_seed(5)
    B, H, HKV, K, V, T = 2, 4, 2, 4, 3, 5
    for lens in ([5, 0], [0, 5]):
        lo, n = sum(lens[:rank]), lens[rank]
        for dt in (torch.float64, torch.float32):
            q, k = (torch.randn(B, T, h, K, generator=gen, dtype=torch.float64) for h in (H, HKV))
            v = torch.randn(B, T, HKV, V, generator=gen, dtype=torch.float64)
            g = -0.5 * torch.rand(B, T, HKV, K, generator=gen, dtype=torch.float64)
            h0 = torch.randn(B, HKV, K, V, generator=gen)
            xs = [t.to(dt).requires_grad_() for t in (q, k, v, g)]
            o, f = sbops.linear_attn(*xs, initial_state=h0, output_final_state=True)
            ref = torch.autograd.grad(o.sum() + f.sum(), xs)
            sh = [t.detach()[:, lo:lo + n].requires_grad_() for t in xs]
            od, fd = sbd.linear_attn(*sh, initial_state=h0, output_final_state=True)
            gd = torch.autograd.grad(od.sum() + fd.sum() / P, sh)
            tol = 1e-10 if dt == torch.float64 else 1e-5
            errs = [_rel(fd, f)] + ([_rel(od, o[:, lo:lo + n])] if n else []) + \
                   [_rel(a, b[:, lo:lo + n]) for a, b in zip(gd, ref) if n]
            if not max(errs) <= tol:
                bad.append(f"rank {rank}: linear_attn lens {lens} {dt}: rel errs {errs}")
        for window, sinks in ((2, True), (-1, False), (3, False)):
            q, k, v = (torch.randn(B, T, h, 6, generator=gen, dtype=torch.float64) for h in (H, HKV, HKV))
            sk, sv = (torch.randn(2, HKV, 6, generator=gen, dtype=torch.float64) for _ in range(2))
            xs = [t.requires_grad_() for t in (q, k, v)] + ([sk.requires_grad_(), sv.requires_grad_()] if sinks else [])
            kw = dict(sink_k=xs[3], sink_v=xs[4]) if sinks else {}
            o = sbops.swa_attn(*xs[:3], window, **kw)
            ref = torch.autograd.grad((o * o).sum(), xs)
            sh = [t.detach()[:, lo:lo + n].requires_grad_() for t in xs[:3]]
            od = sbd.swa_attn(*sh, window, **kw)
            gd = torch.autograd.grad((od * od).sum(), sh + xs[3:])
            errs = [_rel(a, b[:, lo:lo + n]) for a, b in zip([od] + list(gd[:3]), [o] + list(ref[:3])) if n]
            errs += [_rel(a, b) for a, b in zip(gd[3:], ref[3:])]        # sinks: summed over the ranks
            if not max(errs + [0.0]) <= 1e-10:
                bad.append(f"rank {rank}: swa_attn lens {lens} window {window} sinks {sinks}: rel errs {errs}")
    return bad


@gloo
def test_empty_shards_in_linear_attn_and_swa_attn_equal_single_process():
    spawn_ranks(_body_empty_shards, 2, DEADLINE_S)


def _body_model_T1(rank, P):
    # SequenceParallel.shard of T=1 over 2 ranks gives [1, 0]: rank 1 holds an empty shard
    return _model_check(rank, 1, ce=False) + _model_check(rank, 1, B=2, ep=False, ce=False)


@gloo
def test_model_step_with_an_empty_shard_equals_single_process():
    spawn_ranks(_body_model_T1, 2, DEADLINE_S)


def _body_loss_share_skips_empty_rank(rank, P):
    from sbops.models import SpikingBrainForCausalLM
    lens = [2, 0, 1]
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    labels[1, 2] = -100
    full = logits.clone().requires_grad_()
    want = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)
    gwant, = torch.autograd.grad(want, full)
    lo, n = sum(lens[:rank]), lens[rank]
    mine = logits[:, lo:lo + n].clone().requires_grad_()
    share = SpikingBrainForCausalLM._loss_share(mine, labels[:, lo:lo + n], sbd.SequenceParallel())
    g, = torch.autograd.grad(share, mine)
    tot = share.detach().clone()
    dist.all_reduce(tot)
    errs = [_rel(tot, want)] + ([_rel(g, gwant[:, lo:lo + n])] if n else [])
    return [] if max(errs) <= 1e-12 else [f"rank {rank}: loss share with shards {lens}: rel errs {errs}"]


@gloo
def test_loss_share_last_token_predicts_the_next_non_empty_ranks_first_label():
    spawn_ranks(_body_loss_share_skips_empty_rank, 3, DEADLINE_S)


# ----------------------------------------------------------------------------- finding 3: mismatched arguments
def _expect_same_error(rank, what, fn, needle):
    try:
        fn()
        msg = "no error"
    except ValueError as e:
        msg = str(e)
    msgs = _same_everywhere(msg)
    if needle not in msg or any(m != msg for m in msgs):
        return [f"rank {rank}: {what}: want the same ValueError naming {needle!r} on every rank, got {msgs}"]
    return []


def _body_mismatch(rank, P):
    bad = []
    dd = torch.float64
    q = torch.randn(1, 4, 2, 8, dtype=dd, generator=torch.Generator().manual_seed(1))   # the same on every rank
    sk = torch.randn(1, 2, 8, dtype=dd)
    bad += _expect_same_error(rank, "swa window", lambda: sbd.swa_attn(q, q, q, 2 if rank == 0 else 6), "window")
    bad += _expect_same_error(rank, "swa sinks", lambda: sbd.swa_attn(
        q, q, q, 2, sink_k=sk if rank == 0 else None, sink_v=sk if rank == 0 else None), "sinks given")
    bad += _expect_same_error(rank, "swa dtype", lambda: sbd.swa_attn(
        *(q.to(torch.float32 if rank else dd),) * 3, 2), "dtype")
    bad += _expect_same_error(rank, "swa B", lambda: sbd.swa_attn(*(q.expand(1 + rank, -1, -1, -1),) * 3, 2), "B ")
    bad += _expect_same_error(rank, "swa scale", lambda: sbd.swa_attn(q, q, q, 2, scale=0.5 + rank), "scale")

    def la(B=1, K=4, dt=dd, init=False, gate="key"):
        qq, kk = torch.randn(B, 4, 2, K, dtype=dt), torch.randn(B, 4, 1, K, dtype=dt)
        vv = torch.randn(B, 4, 1, 4, dtype=dt)
        g = {None: None, "head": -torch.rand(B, 4, 1, dtype=dt), "key": -torch.rand(B, 4, 1, K, dtype=dt)}[gate]
        h0 = torch.zeros(B, 1, K, 4) if init else None
        return sbd.linear_attn(qq, kk, vv, g, initial_state=h0, output_final_state=True)

    for dt in (torch.float64, torch.float32):
        bad += _expect_same_error(rank, f"linear_attn init {dt}", lambda: la(dt=dt, init=rank == 0),
                                  "initial_state given")
        bad += _expect_same_error(rank, f"linear_attn B {dt}", lambda: la(B=1 + rank, dt=dt), "B ")
        bad += _expect_same_error(rank, f"linear_attn gate {dt}", lambda: la(dt=dt, gate=None if rank else "key"),
                                  "gate kind")
    bad += _expect_same_error(rank, "linear_attn dtype", lambda: la(dt=torch.float32 if rank else dd), "dtype")
    bad += _expect_same_error(rank, "linear_attn K, same numel", lambda: la(B=2 - rank, K=4 + 4 * rank), "K (key dim)")

    x = torch.randn(4, 6, dtype=dd)
    ids = torch.tensor([[0], [1], [1], [0]])
    w = torch.ones(4, 1, dtype=dd)
    bad += _expect_same_error(rank, "moe num_experts", lambda: sbd.moe_dispatch(x, ids, w, 4 if rank == 0 else 2),
                              "num_experts")
    bad += _expect_same_error(rank, "moe hidden size", lambda: sbd.moe_dispatch(
        torch.randn(4, 6 + 2 * rank, dtype=dd), ids, w, 2), "hidden size")
    bad += _expect_same_error(rank, "moe dtype", lambda: sbd.moe_dispatch(x.to(torch.float32 if rank else dd),
                                                                           ids, w, 2), "dtype")

    bad += _expect_same_error(rank, "moe id out of range on one rank", lambda: sbd.moe_dispatch(
        x, torch.tensor([[0], [1], [1], [0 if rank == 0 else 9]]), w, 2), "ids hold expert ids >= num_experts")

    def combine_width():
        xl, _, h = sbd.moe_dispatch(x, ids, w, 2)
        return sbd.moe_combine(xl[:, :3 + rank], h)
    bad += _expect_same_error(rank, "moe_combine width", combine_width, "y_local width")
    # the group is still usable: a matching call works afterwards
    o = sbd.swa_attn(q, q, q, 2)
    ref = sbops.swa_attn(torch.cat([q, q], 1), torch.cat([q, q], 1), torch.cat([q, q], 1), 2)[:, 4 * rank:4 * rank + 4]
    if not _rel(o, ref) <= 1e-12:
        bad.append(f"rank {rank}: swa after the errors: rel err {_rel(o, ref):.3g}")
    return bad


@gloo
def test_mismatched_arguments_raise_the_same_value_error_on_every_rank():
    spawn_ranks(_body_mismatch, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- finding 4: SP and EP on different groups
def _body_sp_world_ep_singletons(rank, P):
    groups = [dist.new_group([r]) for r in range(P)]
    return _model_check(rank, 7, B=2, ep_group=groups[rank])


@gloo
def test_aux_loss_is_shared_over_the_sp_group_when_ep_runs_on_another_group():
    spawn_ranks(_body_sp_world_ep_singletons, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- finding 5: not a member
def _body_non_member(rank, P):
    sub = dist.new_group([0])
    if rank == 0:
        return []
    q = torch.randn(1, 4, 2, 4, dtype=torch.float64)
    calls = {"linear_attn float64": lambda: sbd.linear_attn(q, q, q, group=sub),
             "linear_attn float32": lambda: sbd.linear_attn(q.float(), q.float(), q.float(), group=sub),
             "swa_attn": lambda: sbd.swa_attn(q, q, q, 2, group=sub),
             "moe_dispatch": lambda: sbd.moe_dispatch(torch.randn(3, 4), torch.tensor([[0], [1], [0]]),
                                                      torch.ones(3, 1), 2, group=sub),
             "SequenceParallel.rank": lambda: sbd.SequenceParallel(sub).rank,
             "SequenceParallel.world_size": lambda: sbd.SequenceParallel(sub).world_size,
             "ExpertParallel.local_experts": lambda: sbd.ExpertParallel(sub).local_experts(4)}
    bad = []
    for name, fn in calls.items():
        try:
            got = f"returned {fn()!r}"
        except ValueError as e:
            got = str(e)
        if "rank 1 is not a member of group" not in got:
            bad.append(f"{name} on a non-member: {got[:200]}")
    return bad


@gloo
def test_a_process_outside_the_group_gets_a_clear_error():
    spawn_ranks(_body_non_member, 2, DEADLINE_S)


# ----------------------------------------------------------------------------- findings 6 and 8: in one process
def test_errors_outside_an_initialised_group_name_sbops_and_the_real_module():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="not initialised") as e:
        sbd.linear_attn(q, q, q)
    assert "sbops.distributed.sim" not in str(e.value) and "simulate_* functions of sbops.distributed" in str(e.value)
    from test_models_distributed import tiny_model
    with sbd.sequence_parallel(), pytest.raises(RuntimeError, match="sbops.distributed: torch.distributed is not"):
        tiny_model()(torch.zeros(1, 3, dtype=torch.int64))


def test_swa_attn_refuses_a_bool_window():
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="window must be an int"):
        sbd.swa_attn(q, q, q, True)


def test_split_lengths_can_give_empty_shards():
    assert sbd.SequenceParallel.split_lengths(1, 2) == [1, 0]
    from sbops.distributed.swa import halo_plan
    need, pieces = halo_plan([3, 0, 4], 2)
    assert need == [0, 0, 2] and pieces[1] == [] and pieces[2] == [(0, 1, 3, 0)]
