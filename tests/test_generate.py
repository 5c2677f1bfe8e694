"""sbops.models runtime on CPU: chunked prefill, logits_to_keep, packed/ragged batches with cache
slots, sampling, constant cache memory (issue 19)."""
import pytest
import torch

from reference import rel_err
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate, process_logits, select_next

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16)


def tiny_model(kind="7b", layers=2, window=8, dtype=torch.float32, **kw):
    if kind == "7b":
        fields = dict(layer_types=tuple("gla" if i % 2 == 0 else "swa" for i in range(layers)))
    else:
        fields = dict(layer_types=("hybrid",) * layers, num_meta_tokens=4, num_experts=4, top_k=1)
    cfg = SpikingBrainConfig(**{**TINY, **fields, "window": window, **kw})
    return SpikingBrainForCausalLM(cfg).to(dtype).eval()


def _chunks(T, size):
    return [(s, min(s + size, T)) for s in range(0, T, size)]


# --------------------------------------------------------------------------- chunked prefill
@pytest.mark.parametrize("kind,window,dtype", [("7b", 8, torch.float32), ("7b", 3, torch.float64),
                                               ("7b", 40, torch.float32), ("76b", 5, torch.float64),
                                               ("76b", -1, torch.float32)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 13])
def test_chunked_prefill_equals_one_prefill_and_full_recompute(kind, window, dtype, chunk):
    """Windows smaller and larger than the chunks (and full causal); logits of every chunk equal the
    full recompute, and the cache after the chunks equals the cache of one prefill."""
    kw = {"full_attention_layers": (1,)} if window < 0 else {}
    model = tiny_model(kind, window=max(window, 4), dtype=dtype, **kw)
    B, T = 2, 29
    ids = torch.randint(0, 128, (B, T))
    tol = 1e-5 if dtype == torch.float32 else 1e-6  # linear-attention states are float32 caches
    with torch.no_grad():
        full = model(ids).logits
        one = model.new_cache(B, max_length=T)
        one_logits = model(ids, cache=one).logits
        chunked = model.new_cache(B, max_length=T)
        parts = [model(ids[:, a:b], cache=chunked).logits for a, b in _chunks(T, chunk)]
    assert rel_err(one_logits, full) < tol
    assert rel_err(torch.cat(parts, 1), full) < tol
    assert chunked.seq_lens.tolist() == one.seq_lens.tolist() == [T, T]
    for a, b in zip(chunked.tensors(), one.tensors()):
        assert a.shape == b.shape and rel_err(a, b) < tol


def test_chunked_prefill_then_decode_matches_full_recompute():
    model = tiny_model("76b", window=6)
    ids = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1)
        outs = [model(ids[:, :11], cache=cache).logits, model(ids[:, 11:12], cache=cache).logits,
                model(ids[:, 12:30], cache=cache).logits]
        outs += [model(ids[:, t:t + 1], cache=cache).logits for t in range(30, 40)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_generate_prefill_chunk_size_does_not_change_the_result(chunk):
    model = tiny_model("7b", window=4)
    prompt = torch.randint(0, 128, (2, 23))
    ref = generate(model, prompt, 6, output_scores=True, prefill_chunk_size=10 ** 6)
    out = generate(model, prompt, 6, output_scores=True, prefill_chunk_size=chunk)
    assert torch.equal(out.sequences, ref.sequences) and rel_err(out.scores, ref.scores) < 1e-5


# --------------------------------------------------------------------------- logits_to_keep
def test_logits_to_keep_follows_hugging_face():
    model = tiny_model("7b")
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = model(ids, labels=ids)
        last3 = model(ids, labels=ids, logits_to_keep=3)
        picked = model(ids, logits_to_keep=torch.tensor([0, 5]))
    assert last3.logits.shape == (2, 3, 128) and torch.equal(last3.logits, full.logits[:, -3:])
    assert torch.allclose(picked.logits, full.logits[:, [0, 5]], atol=1e-6)
    assert torch.equal(last3.loss, full.loss)  # the loss still covers every position
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


# --------------------------------------------------------------------------- packed / ragged
@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_packed_forward_equals_per_sequence_forward(kind):
    model = tiny_model(kind, window=5)
    seqs = [torch.randint(0, 128, (n,)) for n in (7, 1, 12)]
    cu = torch.tensor([0, 7, 8, 20])
    with torch.no_grad():
        packed = model(torch.cat(seqs)[None], cu_seqlens=cu, labels=torch.cat(seqs)[None])
        alone = [model(s[None], labels=s[None]) for s in seqs]
    assert rel_err(packed.logits[0], torch.cat([a.logits[0] for a in alone])) < 1e-5
    # packed cross-entropy == mean over every next-token prediction inside a sequence (a prediction
    # across a sequence boundary moves it by ~0.02: every token of a tiny random model costs ~ln 128)
    coef = model.config.router_aux_loss_coef
    ce = lambda out: out.loss - coef * out.aux_loss  # noqa: E731  (the MoE aux term is per call)
    nll = sum(ce(a) * (s.numel() - 1) for a, s in zip(alone, seqs) if s.numel() > 1)
    assert abs(ce(packed).item() - nll.item() / sum(s.numel() - 1 for s in seqs)) < 1e-5


def test_packed_chunk_on_cache_slots_equals_per_sequence_prefill():
    """Two sequences with different histories, packed into one chunk on slots 2 and 0."""
    model = tiny_model("76b", window=4)
    a, b = torch.randint(0, 128, (15,)), torch.randint(0, 128, (9,))
    with torch.no_grad():
        cache = model.new_cache(3)
        model(a[None, :6], cache=cache, slot_indices=torch.tensor([2]))
        model(b[None, :2], cache=cache, slot_indices=torch.tensor([0]))
        out = model(torch.cat([a[6:], b[2:]])[None], cache=cache, slot_indices=torch.tensor([2, 0]),
                    cu_seqlens=torch.tensor([0, 9, 16])).logits[0]
        ra, rb = model(a[None]).logits[0], model(b[None]).logits[0]
    assert rel_err(out[:9], ra[6:]) < 1e-5 and rel_err(out[9:], rb[2:]) < 1e-5
    assert cache.seq_lens.tolist() == [9, 0, 15]


@pytest.mark.parametrize("kind", ["7b", "76b"])
@pytest.mark.parametrize("max_batch_size", [None, 2, 1])
def test_ragged_generate_equals_per_sequence_runs(kind, max_batch_size):
    """Prompts of different lengths, packed; with max_batch_size < 3 sequences wait, join the
    running batch in freed (stale) slots, and must still equal runs of each prompt alone."""
    model = tiny_model(kind, window=4)
    prompts = [torch.randint(0, 128, (n,)) for n in (9, 3, 14)]
    news = 5
    out = generate(model, prompts, news, output_scores=True, max_batch_size=max_batch_size, prefill_chunk_size=8)
    assert isinstance(out.sequences, list) and len(out.sequences) == 3
    for p, seq, sc in zip(prompts, out.sequences, out.scores):
        alone = generate(model, p[None], news, output_scores=True)
        assert torch.equal(seq, alone.sequences[0]) and rel_err(sc, alone.scores[0]) < 1e-5


def test_attention_mask_drops_padding():
    model = tiny_model("7b")
    a, b = torch.randint(1, 128, (6,)), torch.randint(1, 128, (3,))
    ids = torch.zeros(2, 6, dtype=torch.int64)
    ids[0], ids[1, 3:] = a, b                           # left padding
    mask = (torch.arange(6) >= torch.tensor([[0], [3]])).long()
    out = generate(model, ids, 4, attention_mask=mask)
    ref = generate(model, [a, b], 4)
    # as Hugging Face: [B, T + n], the rows as given (left padding kept) followed by the new tokens
    assert out.shape == (2, 10) and torch.equal(out[:, :6], ids)
    assert all(torch.equal(out[i, 6:], r[-4:]) for i, r in enumerate(ref))


def test_eos_stops_each_sequence():
    model = tiny_model("7b")
    prompts = [torch.randint(0, 128, (n,)) for n in (5, 8)]
    free_run = generate(model, prompts, 8)
    stop = [int(free_run[0][5 + 2]), 127 if int(free_run[1][8]) != 127 else 126]  # seq 0 stops at step 3
    out = generate(model, prompts, 8, eos_token_id=stop)
    first = (free_run[0][5:] == stop[0]).nonzero()[0, 0].item()
    assert torch.equal(out[0], free_run[0][:5 + first + 1])
    hit = [i for i, t in enumerate(free_run[1][8:].tolist()) if t in stop]
    assert torch.equal(out[1], free_run[1][:8 + (hit[0] + 1 if hit else 8)])
    padded = generate(model, torch.stack([prompts[0], prompts[0]]), 8, eos_token_id=stop[0])
    assert padded.shape[1] == 5 + first + 1 and (padded[:, -1] == stop[0]).all()


# --------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model("7b")
    prompt = torch.randint(0, 128, (3, 5))
    kw = dict(do_sample=True, temperature=1.5, top_k=50, top_p=0.95)
    a = generate(model, prompt, 12, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, prompt, 12, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, prompt, 12, generator=torch.Generator().manual_seed(8), **kw)
    greedy = generate(model, prompt, 12)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, greedy)
    top1 = generate(model, prompt, 12, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top1, greedy)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.randn(4, 50)
    kept = torch.isfinite(process_logits(logits, top_k=7))
    assert (kept.sum(-1) == 7).all() and kept.gather(1, logits.topk(7).indices).all()
    p = 0.6
    x = process_logits(logits, temperature=0.7, top_p=p)
    probs = torch.softmax(logits.double() / 0.7, -1)
    for row in range(4):
        order = probs[row].argsort(descending=True)
        need = int((probs[row][order].cumsum(0) < p).sum()) + 1   # smallest prefix reaching p
        assert set(torch.isfinite(x[row]).nonzero()[:, 0].tolist()) == set(order[:need].tolist())
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([select_next(logits, True, 0.7, 0, p, g) for _ in range(200)])
    assert torch.isfinite(x.gather(1, draws.T)).all()


def test_sampling_arguments_are_checked():
    model = tiny_model("7b")
    prompt = torch.randint(0, 128, (1, 4))
    for bad in [dict(temperature=0.0), dict(top_p=1.5), dict(top_p=-0.1), dict(top_k=-1)]:  # top_p=0: HF's top-1
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate(model, prompt, 2, do_sample=True, **bad)


# --------------------------------------------------------------------------- memory
def test_cache_size_constant_over_a_1000_token_generation():
    cfg = dict(vocab_size=32, hidden_size=16, intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=8,
               layer_types=("gla", "swa"), window=16)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**cfg)).eval()
    cache = model.new_cache(1)
    before = [(t.shape, t.data_ptr()) for t in cache.tensors()]
    nbytes = cache.nbytes()
    out = generate(model, torch.randint(0, 32, (1, 7)), 1000, cache=cache)
    assert out.shape == (1, 1007)
    assert [(t.shape, t.data_ptr()) for t in cache.tensors()] == before and cache.nbytes() == nbytes
    assert nbytes == 4 * 8 * 8 + 2 * 4 * 17 * 8 and cache.seq_lens.tolist() == [1006]


def test_cache_slots_and_cuda_graph_options_are_checked():
    model = tiny_model("7b")
    with pytest.raises(ValueError, match="slots"):
        generate(model, torch.randint(0, 128, (3, 4)), 2, cache=model.new_cache(2))
    with pytest.raises(ValueError, match="cuda_graphs"):
        generate(model, torch.randint(0, 128, (1, 4)), 2, cuda_graphs=True)
    with pytest.raises(ValueError, match="distinct cache slots"):
        model(torch.randint(0, 128, (1, 4)), cache=model.new_cache(2), slot_indices=torch.tensor([1, 1]),
              cu_seqlens=torch.tensor([0, 2, 4]))


# --------------------------------------------------------------------------- benchmark smoke test
def test_model_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    import json

    from sbops.bench import model as bench
    rc = bench.main(["--tiny", "--device", "cpu", "--lengths", "64,160", "--contexts", "32", "--batches", "2",
                     "--decode-steps", "2", "--chunk", "48", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "model_bench.json").read_text())
    ours = [r for r in res["ttft"] if r["model"] == "sbops"]
    assert [r["T"] for r in ours] == [64, 160] and all(r["ttft_s"] > 0 for r in ours)
    assert res["decode"][0]["B"] == 2 and res["decode"][0]["ms_per_step"] > 0
    assert "| 160 |" in (tmp_path / "model_bench.md").read_text() and "TTFT" in capsys.readouterr().out
    assert bench.fit_quadratic([(1, 3.0), (2, 10.0), (4, 36.0)]) == pytest.approx((1.0, 2.0))


def test_model_benchmark_floor_counts_the_8bit_copies_a_decode_step_reads():
    """The decode floor's bytes: a bf16 model's parameters once each (a tied lm_head not twice); an fp8 model's
    spike-coded layers as a byte per weight plus a float32 scale per output channel, not their bf16 masters."""
    from sbops.bench import model as bench
    from sbops.nn import SpikeLinear
    bf16 = tiny_model("7b", window=4, dtype=torch.bfloat16)
    n = sum(p.numel() for p in bf16.parameters())
    assert bench.decode_read_bytes(bf16) == 2 * n
    fp8 = tiny_model("7b", window=4, dtype=torch.bfloat16, spike_k=3.0, weight_quant="fp8")
    lins = [m for m in fp8.modules() if isinstance(m, SpikeLinear)]
    assert lins and all(m.weight_quant == "fp8" for m in lins)
    saved = sum(m.weight.numel() - 4 * m.out_features for m in lins)  # 2 bytes -> 1 a weight, + scales
    assert bench.decode_read_bytes(fp8) == 2 * sum(p.numel() for p in fp8.parameters()) - saved
    fp8.lm_head.weight = fp8.model.embed_tokens.weight  # tied: counted once
    assert bench.decode_read_bytes(fp8) == 2 * sum(p.numel() for p in fp8.parameters()) - saved


def test_model_benchmark_report_gives_decode_as_a_multiple_of_the_floor():
    from sbops.bench import model as bench
    res = {"ttft": [], "env": {"gpu": "NVIDIA H200", "torch": "x", "transformers": None}, "notes": [],
           "args": {"tiny": False, "dtype_name": "bfloat16", "chunk": 8192, "device": "cuda"},
           "ours": {"decode_read_gib": 8.11}, "decode_floor_ms": 1.815,
           "decode": [{"B": 1, "context": 4096, "graphs": True, "ms_per_step": 3.63},
                      {"B": 32, "context": 4096, "graphs": True, "error": "OOM"}]}
    md = bench.markdown(res)
    assert "| B=1 graphs | 4k | 3.63 | 2.00x |" in md and "| B=32 graphs | 4k | OOM | - |" in md
    assert "8.11 GiB" in md


def test_model_benchmark_makes_the_8bit_copies_before_measuring_and_names_the_format():
    """The 8-bit weights are made at the first inference call: the benchmark makes them before its first
    measurement (else that row's peak extra memory holds them, 6.8 GiB for the int8 7B model), and its report
    names the weight format."""
    import types

    from sbops.bench import model as bench
    from sbops.nn import SpikeLinear
    model = tiny_model("7b", window=4, spike_k=3.0, weight_quant="int8_channel")
    eight = [m for m in model.modules() if isinstance(m, SpikeLinear) and m._has_8bit_path()]
    owners = [m for m in model.modules() if "_sbops_fused_spike" in m.__dict__ or "_w8" in m.__dict__]
    assert eight and not owners
    logged = []
    bench.make_8bit_copies(types.SimpleNamespace(device=torch.device("cpu"), log=logged.append), model)
    cached = {id(m) for m in model.modules() if "_w8" in m.__dict__}
    fused = [m.__dict__["_sbops_fused_spike"] for m in model.modules() if "_sbops_fused_spike" in m.__dict__]
    # every 8-bit layer has its copy: its own, or a row block of its block's concatenated one
    assert len(cached) + sum(len(f[3]) for f in fused) == len(eight) and logged
    res = {"ttft": [], "decode": [], "notes": [], "env": {"gpu": "NVIDIA H100", "torch": "x", "transformers": None},
           "args": {"tiny": False, "dtype_name": "bfloat16", "chunk": 32768, "weight_quant": "int8_channel"},
           "ours": {"weight_gib": 14.187, "resident_gib": 20.9}}
    md = bench.markdown(res)
    assert "bfloat16, W8ASpike (int8_channel weights" in md and "holds 20.9 GiB on the device" in md
    res["args"]["weight_quant"] = None
    assert "W8ASpike" not in bench.markdown(res)


def test_default_prefill_chunk_is_larger_where_layers_run_on_8bit_weights(monkeypatch):
    import importlib
    gen = importlib.import_module("sbops.models.generate")  # the module (sbops.models.generate is the function)
    from sbops.models.generate import DEFAULT_PREFILL_CHUNK, DEFAULT_PREFILL_CHUNK_8BIT, default_prefill_chunk
    assert DEFAULT_PREFILL_CHUNK_8BIT > DEFAULT_PREFILL_CHUNK
    assert default_prefill_chunk(tiny_model("7b", window=4)) == DEFAULT_PREFILL_CHUNK
    assert default_prefill_chunk(tiny_model("7b", window=4, spike_k=3.0)) == DEFAULT_PREFILL_CHUNK  # no 8-bit weights
    int8 = tiny_model("7b", window=4, spike_k=3.0, weight_quant="int8_channel")
    assert default_prefill_chunk(int8) == DEFAULT_PREFILL_CHUNK_8BIT
    # generate() takes it when prefill_chunk_size is None: seen through the chunks it feeds the model
    seen = []
    real = gen._prefill

    def spy(model, cache, prompts, slots, chunk, *args, **kw):
        seen.append(chunk)
        return real(model, cache, prompts, slots, chunk, *args, **kw)
    monkeypatch.setattr(gen, "_prefill", spy)
    generate(int8, torch.randint(0, 128, (1, 5)), 1)
    generate(int8, torch.randint(0, 128, (1, 5)), 1, prefill_chunk_size=3)
    assert seen == [DEFAULT_PREFILL_CHUNK_8BIT, 3]


def test_model_benchmark_takes_generates_default_chunk_for_the_model_it_builds(tmp_path):
    """Without --chunk the 7B benchmark runs generate()'s default for the model it built (build_ours asks
    default_prefill_chunk), and records it: 8-bit layers get DEFAULT_PREFILL_CHUNK_8BIT."""
    from sbops.bench import model as bench
    from sbops.bench.model_args import parse_args
    from sbops.models.generate import DEFAULT_PREFILL_CHUNK_8BIT
    args = parse_args(["--tiny", "--device", "cpu", "--weight-quant", "int8_channel", "--out", str(tmp_path)], "doc")
    assert args.chunk == 128          # the tiny run's own chunk
    args.chunk = None                 # as the 7B run leaves it
    run = bench.Run(args)
    with torch.inference_mode():
        bench.build_ours(run)
    assert args.chunk == run.res["args"]["chunk"] == DEFAULT_PREFILL_CHUNK_8BIT


def test_bucketed_padded_decode_step_leaves_live_slots_exact():
    """DecodeGraphs' step without capture (same static buffers, buckets and scratch slot): padding
    rows decode into the scratch slot only, and live rows equal plain decode steps."""
    from sbops.models import DecodeGraphs
    model = tiny_model("7b", window=4)
    ids = torch.randint(0, 128, (3, 9))
    with torch.no_grad():
        cache, ref_cache = model.new_cache(6), model.new_cache(3)
        model(ids, cache=cache, slot_indices=[4, 0, 2])
        model(ids, cache=ref_cache)
        steps = DecodeGraphs(model, cache, scratch_slot=5, max_batch_size=5, capture=False)
        nxt = ids[:, -1]
        for _ in range(6):
            got = steps.step(nxt, torch.tensor([4, 0, 2]))        # bucket 4: one padding row
            ref = model(nxt[:, None], cache=ref_cache).logits[:, 0]
            assert rel_err(got, ref) < 1e-5
            nxt = ref.argmax(-1)
    assert cache.seq_lens.tolist() == [15, 0, 15, 0, 15, 0]       # slots 1 and 3 untouched, scratch reset
    assert not cache.layers[0].state[[1, 3]].any()


# --------------------------------------------------------------------------- streaming and progress
class _Recorder:
    """Hugging Face's streamer protocol: put(tensor), end()."""

    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ends += 1


def test_streamer_gets_the_prompt_then_each_token_then_end():
    model = tiny_model("7b")
    prompt = torch.randint(0, 128, (1, 6))
    rec = _Recorder()
    out = generate(model, prompt, 9, streamer=rec, eos_token_id=int(generate(model, prompt, 9)[0, 6 + 4]))
    assert rec.ends == 1 and torch.equal(rec.puts[0], prompt)
    assert [tuple(p.shape) for p in rec.puts[1:]] == [(1,)] * (out.shape[1] - 6)
    assert torch.equal(torch.cat(rec.puts[1:]), out[0, 6:]) and out.shape[1] - 6 <= 5  # stopped at the eos
    rec = _Recorder()
    assert torch.equal(generate(model, [prompt[0]], 0, streamer=rec)[0], prompt[0]) and rec.ends == 1


def test_streamer_works_with_transformers_text_streamer(capsys):
    transformers = pytest.importorskip("transformers")

    class Tok:  # the two methods TextStreamer calls
        def decode(self, ids, **kw):
            return "".join(chr(97 + int(i) % 26) for i in ids)

    model = tiny_model("7b")
    prompt = torch.randint(0, 128, (1, 4))
    out = generate(model, prompt, 7, streamer=transformers.TextStreamer(Tok(), skip_prompt=True))
    assert capsys.readouterr().out.strip() == Tok().decode(out[0, 4:].tolist())


def test_streamer_and_progress_arguments_are_checked():
    model = tiny_model("7b")
    with pytest.raises(ValueError, match="streamer takes the tokens of one sequence"):
        generate(model, torch.randint(0, 128, (2, 4)), 2, streamer=_Recorder())
    with pytest.raises(TypeError, match="streamer must have put"):
        generate(model, torch.randint(0, 128, (1, 4)), 2, streamer=object())
    with pytest.raises(TypeError, match="progress must be a callable"):
        generate(model, torch.randint(0, 128, (1, 4)), 2, progress=3)


def test_progress_reports_prefill_chunks_and_generated_tokens():
    model = tiny_model("7b")
    prompts = [torch.randint(0, 128, (n,)) for n in (11, 4, 7)]
    events = []
    out = generate(model, prompts, 5, prefill_chunk_size=4, max_batch_size=2,
                   progress=lambda stage, done, total: events.append((stage, done, total)))
    pre = [(d, t) for s, d, t in events if s == "prefill"]
    dec = [(d, t) for s, d, t in events if s == "decode"]
    assert all(t == 22 for _, t in pre) and [d for d, _ in pre] == sorted(d for d, _ in pre) and pre[-1][0] == 22
    assert all(b - a <= 4 for (a, _), (b, _) in zip([(0, 0)] + pre, pre))      # one event per chunk of <= 4 tokens
    assert all(t == 15 for _, t in dec) and [d for d, _ in dec] == sorted(d for d, _ in dec)
    assert dec[-1][0] == sum(o.numel() for o in out) - 22 == 15


@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_reuse_cache_continues_a_conversation_like_a_fresh_run(kind):
    """Turn 2 on the cache of turn 1 (only the new tokens are fed) gives the tokens of a fresh run on the
    whole text; the cache memory stays the same."""
    model = tiny_model(kind, dtype=torch.float64)
    turn1 = [torch.randint(0, 128, (n,)) for n in (7, 12)]
    cache = model.new_cache(2, max_length=64)
    nbytes = cache.nbytes()
    out1 = generate(model, turn1, 5, cache=cache)
    turn2 = [torch.cat([o, torch.randint(0, 128, (n,))]) for o, n in zip(out1, (4, 1))]
    fed = []
    out2 = generate(model, turn2, 6, cache=cache, reuse_cache=True,
                    progress=lambda s, d, t: fed.append((s, d, t)) if s == "prefill" else None)
    fresh = generate(model, turn2, 6)
    assert all(torch.equal(a, b) for a, b in zip(out2, fresh))
    # fed: each sequence's last generated token of turn 1 (not yet in the cache) and its new tokens: (1 + 4) + (1 + 1)
    assert fed[-1] == ("prefill", 7, 7) and cache.nbytes() == nbytes
    with pytest.raises(ValueError, match="at least one token the cache does not hold"):
        generate(model, [o[:3] for o in out2], 2, cache=cache, reuse_cache=True)
    with pytest.raises(ValueError, match="reuse_cache=True continues"):
        generate(model, turn2, 2, reuse_cache=True)


def test_default_prefill_chunk_bounds_every_call_and_logits_only_for_last_prompt_tokens(monkeypatch):
    # issue 19: "a sensible default keeps prefill memory bounded" and "prefill inside generate
    # computes the last position only"; ragged prompts are packed with no padding compute
    import sys
    monkeypatch.setattr(sys.modules["sbops.models.generate"], "DEFAULT_PREFILL_CHUNK", 4)
    torch.manual_seed(0)
    model = tiny_model()
    calls, heads = [], []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].numel()))
    model.lm_head.register_forward_hook(lambda m, args, out: heads.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    prompts = [torch.randint(0, 128, (11,)), torch.randint(0, 128, (6,))]
    out = generate(model, prompts, 1)
    assert [o.numel() for o in out] == [12, 7]
    assert max(calls) <= 4 and sum(calls) == 17          # bounded chunks, every prompt token once, no padding
    assert sum(heads) == 2                                # one lm_head row per prompt, at its last token
