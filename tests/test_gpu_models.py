"""sbops.models on a GPU (skipped without CUDA): CUDA-graph decode == eager decode, chunked
prefill on the GPU kernels, ragged batches through graphs (issue 19)."""
import pytest
import torch

from conftest import requires_cuda
from reference import rel_err
from sbops.models import DecodeGraphs, SpikingBrainConfig, SpikingBrainForCausalLM, generate

pytestmark = requires_cuda
TINY = dict(vocab_size=256, hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2, head_dim=64)


def gpu_model(kind, dtype=torch.float32, window=16, **kw):
    if kind == "7b":
        fields = dict(layer_types=("gla", "swa", "gla", "swa"))
    else:
        fields = dict(layer_types=("hybrid",) * 2, num_meta_tokens=4, num_experts=4, top_k=1)
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**{**TINY, **fields, "window": window, **kw}))
    return model.to("cuda", dtype).eval()


@pytest.mark.parametrize("kind", ["7b", "76b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_decode_equals_eager_decode_greedy(kind, dtype):
    model = gpu_model(kind, dtype)
    # 4 prompts, no stops: the batch stays at 4, a bucket size, so both paths run the same GEMM shapes
    prompts = [torch.randint(0, 256, (n,), device="cuda") for n in (37, 5, 20, 11)]
    eager = generate(model, prompts, 24, cuda_graphs=False, output_scores=True)
    graph = generate(model, prompts, 24, cuda_graphs=True, output_scores=True)
    for a, b, sa, sb in zip(graph.sequences, eager.sequences, graph.scores, eager.scores):
        assert torch.equal(a, b)
        assert rel_err(sa, sb) < (1e-5 if dtype == torch.float32 else 2e-2)


def test_graph_decode_with_joining_and_leaving_sequences():
    """max_batch_size=2 with 5 prompts and stop tokens: the batch shrinks and refills, the bucket
    changes, stale slots are reused; tokens equal the eager path's."""
    model = gpu_model("7b")
    prompts = [torch.randint(0, 256, (n,), device="cuda") for n in (3, 40, 9, 17, 2)]
    free = generate(model, prompts, 12, cuda_graphs=False)
    eos = [int(free[0][3 + 4]), int(free[2][9 + 1])]
    eager = generate(model, prompts, 12, eos_token_id=eos, max_batch_size=2, cuda_graphs=False)
    graph = generate(model, prompts, 12, eos_token_id=eos, max_batch_size=2, cuda_graphs=True)
    alone = [generate(model, p[None], 12, eos_token_id=eos, cuda_graphs=False) for p in prompts]
    for a, b, c in zip(graph, eager, alone):
        assert torch.equal(a, b) and torch.equal(a, c[0])


def test_decode_graph_replays_a_captured_step():
    model = gpu_model("7b")
    cache = model.new_cache(4)
    ids = torch.randint(0, 256, (3, 10), device="cuda")
    with torch.no_grad():
        model(ids, cache=cache)
        graphs = DecodeGraphs(model, cache, scratch_slot=3, max_batch_size=3)
        nxt = torch.randint(0, 256, (3,), device="cuda")
        got = graphs.step(nxt, torch.arange(3, device="cuda")).clone()
        assert set(graphs.graphs) == {3} and cache.seq_lens.tolist() == [11, 11, 11, 0]
        ref = model(torch.cat([ids, nxt[:, None]], 1)).logits[:, -1]
    assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_gpu_chunked_prefill_equals_one_prefill(kind):
    model = gpu_model(kind, window=64)
    ids = torch.randint(0, 256, (2, 300), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2)
        parts = [model(ids[:, a:a + 97], cache=cache).logits for a in range(0, 300, 97)]
    assert rel_err(torch.cat(parts, 1), full) < 1e-4


def test_reuse_cache_and_streaming_through_graphs_equal_eager():
    """A second turn on the cache of the first (reuse_cache) through CUDA graphs gives the eager tokens; the
    streamer sees them as they come; the bf16 model keeps float32 RoPE frequencies on the GPU."""
    model = gpu_model("7b", torch.bfloat16)
    assert all(m.inv_freq.dtype == torch.float32 for m in model.modules() if hasattr(m, "inv_freq"))
    p = torch.randint(0, 256, (1, 30), device="cuda")
    outs = {}
    for graphs in (False, True):
        cache = model.new_cache(2, max_length=128)
        first = generate(model, p, 8, cache=cache, cuda_graphs=graphs)
        turn2 = torch.cat([first, torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1)).cuda()], 1)
        seen = []

        class Rec:
            def put(self, t):
                seen.append(t)

            def end(self):
                seen.append(None)

        outs[graphs] = generate(model, turn2, 8, cache=cache, reuse_cache=True, cuda_graphs=graphs, streamer=Rec())
        assert seen[-1] is None and torch.equal(torch.cat(seen[1:-1]).cuda(), outs[graphs][0, turn2.shape[1]:])
    assert torch.equal(outs[False], outs[True])
