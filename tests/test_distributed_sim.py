"""sbops.distributed's math for P ranks simulated in one process (no process group).

CPU: float64 on the cpu backend, every result and gradient equal to the single-process op within
1e-10 (float32 states within float32 rounding). GPU: the same harness with the GPU kernels (state
fold, halo and MoE regrouping on the device), no worse than the single-process GPU op against a
float64 CPU reference.
"""
import pytest
import torch

import sbops
import sbops.distributed as sbd
import distributed_cases as C
from conftest import requires_cuda
from reference import rel_err


def _sim_vs_single(kind, cfg, P, x, w):
    loss, ref_o, ref_f = C.single(kind, cfg, x, w)
    ref = C.grads(x, loss)
    shards = [C.shard(kind, cfg, x, r) for r in range(P)]
    outs = C.simulated(kind, cfg, shards)
    got = C.grads(x, sum(C.rank_loss(kind, cfg, shards[r], w, r, outs[r]) for r in range(P)))
    return outs, got, ref_o, ref_f, ref


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_simulated_ranks_match_single_process_float64(P):
    bad = []
    with sbops.use_backend("cpu"):
        for i, (kind, cfg) in enumerate(C.cases(P)):
            x, w = C.build(kind, cfg, 100 * P + i, "cpu", torch.float64)
            outs, got, ref_o, ref_f, ref = _sim_vs_single(kind, cfg, P, x, w)
            for r in range(P):
                bad += C.compare(kind, cfg, outs[r], got, ref_o, ref_f, ref, r, tol=1e-10, tol32=1e-6)
    assert not bad, "\n".join(bad)


def test_halo_plan_covers_exactly_the_window_before_each_shard():
    from sbops.distributed.swa import halo_plan
    lens, window = [3, 1, 1, 5, 2], 4
    need, pieces = halo_plan(lens, window)
    starts = [0, 3, 4, 5, 10]
    for r, ps in enumerate(pieces):
        rows = [starts[s] + i for (s, lo, hi, _) in ps for i in range(lo, hi)]
        assert rows == list(range(starts[r] - need[r], starts[r]))
        assert need[r] == min(window, starts[r])
    assert halo_plan(lens, -1)[0] == starts


def test_moe_dispatch_rows_are_permute_of_concatenated_batch_restricted_to_rank():
    P, E = 3, 6
    xs = [torch.randn(t, 4, dtype=torch.float64) for t in (5, 2, 4)]
    ids = [torch.randint(-1, E, (x.shape[0], 2), dtype=torch.int32) for x in xs]
    ws = [torch.rand(x.shape[0], 2, dtype=torch.float64) for x in xs]
    with sbops.use_backend("cpu"):
        xp, offs, _ = sbops.moe_permute(torch.cat(xs), torch.cat(ids), E)
        out = sbd.simulate_moe_dispatch(xs, ids, ws, E)
    o = offs.tolist()
    for r, (x_local, eo, _) in enumerate(out):
        assert torch.equal(x_local, xp[o[2 * r]:o[2 * r + 2]])
        assert eo.tolist() == [v - o[2 * r] for v in o[2 * r:2 * r + 3]]


def test_moe_dispatch_rejects_experts_not_divisible_by_ranks():
    x = torch.randn(2, 4)
    ids = torch.zeros(2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_experts"):
        sbd.simulate_moe_dispatch([x, x], [ids, ids], [torch.ones(2, 1)] * 2, 3)


def test_linear_attn_rejects_float64_initial_state():
    q = torch.randn(1, 2, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="initial_state"):
        sbd.simulate_linear_attn([q], [q], [q], initial_state=torch.zeros(1, 2, 4, 4, dtype=torch.float64))


GPU_LENS = [37, 64, 5, 90]
GPU_CASES = [
    ("gla", dict(lens=GPU_LENS, H=4, HKV=2, K=64, V=64, gate="key", init=True, final=True)),
    ("gla", dict(lens=GPU_LENS, H=4, HKV=1, K=64, V=64, gate="head", init=False, final=True)),
    ("swa", dict(lens=GPU_LENS, H=4, HKV=2, D=64, window=48, sinks=True)),
    ("swa", dict(lens=GPU_LENS, H=2, HKV=2, D=128, window=100, sinks=False)),
    ("moe", dict(T=[40, 0, 33, 17], E=8, k=2, Hd=64, Ho=64, empty_expert=True)),
]


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_simulated_ranks_on_gpu_match_single_process_gpu_op(case, dtype):
    kind, cfg = GPU_CASES[case]
    P = len(C._lens(kind, cfg))
    x, w = C.build(kind, cfg, 7 + case, "cuda", dtype)
    outs, got, ref_o, ref_f, ref = _sim_vs_single(kind, cfg, P, x, w)
    x64 = {n: t.detach().double().cpu().requires_grad_(t.requires_grad) if t.is_floating_point() else t.cpu()
           for n, t in x.items()}
    x64 = {n: (t.float().detach().requires_grad_() if n == "init" else t) for n, t in x64.items()}
    w64 = {n: (t.double().cpu() if n != "f" else t.cpu()) for n, t in w.items()}
    with sbops.use_backend("cpu"):
        loss64, o64, f64 = C.single(kind, cfg, x64, w64)
        g64 = C.grads(x64, loss64)
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    o_sim = torch.cat([o for o, _ in outs], 0 if kind == "moe" else 1)
    pairs = [("o", o_sim, ref_o, o64)] + [("d" + n, got[n], ref[n], g64[n]) for n in got]
    if ref_f is not None:
        pairs.append(("final_state", outs[0][1], ref_f, f64))
    bad = []
    for name, a, b, exact in pairs:
        e_sim, e_op = rel_err(a, exact), rel_err(b, exact)
        if not e_sim <= 2 * e_op + floor:
            bad.append(f"{kind} {name}: simulated rel err {e_sim:.3g} vs single-process GPU op {e_op:.3g}")
    assert not bad, "\n".join(bad)


def test_moe_dispatch_names_a_num_experts_of_the_wrong_type():
    """A float or tensor num_experts was told it "must be a positive multiple of the world size", not its type."""
    from sbops.distributed.moe import _check
    x, ids, w = torch.randn(3, 4), torch.zeros(3, 1, dtype=torch.int64), torch.ones(3, 1)
    for bad, name in ((4.0, "float"), (torch.tensor(4), "Tensor"), (True, "bool")):
        with pytest.raises(ValueError, match=f"num_experts must be a Python int, got {name}"):
            _check(x, ids, w, bad, 2)
    with pytest.raises(ValueError, match="positive multiple of the world size 2, got 3"):
        _check(x, ids, w, 3, 2)
