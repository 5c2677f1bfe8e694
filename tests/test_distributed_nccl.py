"""sbops.distributed on NCCL: one process per GPU (skipped below two GPUs), world sizes 2, 4 and 8 as
the machine has them, bfloat16 on the GPU kernels against the float64 single-process reference on the
CPU (SPEC section 6: outputs and final states 1e-2, gradients 2e-2, ||out - ref|| / ||ref||).

Every rank builds the same global inputs from a seed, runs the float64 reference on the cpu backend,
then its shard on its GPU through sbops.distributed: forward under torch.no_grad (the one-pass
sequence-parallel forward where the backend has it) and forward + backward.  Cases: uneven shards,
one shorter than the window (multi-hop halos from P = 4), GQA, per-head and per-key gates, initial
and final states, sinks, the 7B layer shape (28 / 4 heads, D = 128), MoE with dropped slots, an empty
expert and a rank without tokens.  Then a tiny bf16 SpikingBrain model's sequence-parallel forward
against its single-GPU forward.  The workplace's multicast settings are kept (spawn_ranks.SAFE_ENV);
collectives time out after 60 s and the spawn after 420 s.
"""
import pytest
import torch
import torch.distributed as dist

from spawn_ranks import spawn_ranks

TIMEOUT_S = 420
LENS = {2: [101, 95], 4: [37, 64, 5, 90], 8: [37, 64, 5, 90, 1, 33, 70, 20]}


def gpu_cases(P):
    lens = LENS[P]
    return [
        ("gla", dict(lens=lens, H=4, HKV=2, K=64, V=64, gate="key", init=True, final=True)),
        ("gla", dict(lens=lens, H=4, HKV=1, K=64, V=64, gate="head", init=False, final=True)),
        ("gla", dict(lens=lens[::-1], H=2, HKV=2, K=64, V=64, gate=None, init=True, final=False)),
        ("gla", dict(lens=lens, H=28, HKV=4, K=128, V=128, gate="key", init=False, final=True)),
        ("swa", dict(lens=lens, H=4, HKV=2, D=64, window=48, sinks=True)),
        ("swa", dict(lens=lens[::-1], H=28, HKV=4, D=128, window=100, sinks=False)),
        ("swa", dict(lens=lens, H=2, HKV=2, D=64, window=-1, sinks=False)),
        ("moe", dict(T=([40, 0, 33, 17] * 2)[:P], E=8, k=2, Hd=64, Ho=64, empty_expert=True)),
        ("moe", dict(T=([50, 21, 7, 64] * 2)[:P], E=16, k=1, Hd=128, Ho=64, empty_expert=False)),
    ]


def _model_check(rank, P, device=None):
    """A tiny bf16 GLA / SWA model: the sequence-parallel forward's logits on each rank equal the
    single-GPU forward's logits at that rank's positions (2e-2: both are bf16 GPU computations)."""
    import sbops.distributed as sbd
    from reference import rel_err
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
    torch.manual_seed(0)
    cfg = SpikingBrainConfig(vocab_size=256, hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2,
                             head_dim=64, layer_types=("gla", "swa", "gla", "swa"), window=24)
    dev = device or torch.device("cuda", rank)
    model = SpikingBrainForCausalLM(cfg).to(dev, torch.bfloat16).eval()
    ids = torch.randint(0, 256, (1, 7 * P + 45), generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        ref = model(ids).logits
        with sbd.sequence_parallel(None) as sp:
            got = model(sp.shard(ids)).logits
    lens = sbd.SequenceParallel.split_lengths(ids.shape[1], P)
    lo = sum(lens[:rank])
    e = rel_err(got.float(), ref[:, lo:lo + lens[rank]].float())
    return [] if e <= 2e-2 else [f"tiny model rank {rank}: SP logits vs single-GPU rel err {e:.3g}"]


def _body(rank, P):
    import distributed_cases as C
    bad = []
    dev = torch.device("cuda", rank)
    for i, (kind, cfg) in enumerate(gpu_cases(P)):
        bad += C.check_against_float64(kind, cfg, rank, 300 * P + i, dev, torch.bfloat16, 1e-2, 2e-2)
    return bad + _model_check(rank, P)


def _gpus():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available(), reason="torch.distributed NCCL missing")
@pytest.mark.parametrize("P", [2, 4, 8])
def test_distributed_ops_bf16_on_nccl_match_float64_reference(P):
    if _gpus() < P:
        pytest.skip(f"needs {P} GPUs, this machine has {_gpus()}")
    spawn_ranks(_body, P, TIMEOUT_S, backend="nccl")
