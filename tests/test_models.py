"""sbops.models: Qwen2 conversion, generate() with constant-memory caches, training steps."""
import os
import runpy
import sys

import pytest
import torch

import sbops
from conftest import has_module
from reference import rel_err
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, convert_qwen2, generate
from sbops.nn import GatedLinearAttention, HybridAttention, MoEBlock, SlidingWindowAttention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16, window=8)


def tiny_config(kind, layers=4, **kw):
    if kind == "7b":
        fields = dict(layer_types=tuple("gla" if i % 2 == 0 else "swa" for i in range(layers)))
    else:
        fields = dict(layer_types=("hybrid",) * layers, num_meta_tokens=4, num_experts=4, top_k=1)
    return SpikingBrainConfig(**{**TINY, **fields, **kw})


def tiny_qwen2(layers=4, tie=False):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                                   rope_theta=50000.0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


# --------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("tie", [False, True])
def test_converted_attention_and_weights_reproduce_qwen2(tie):
    """With every layer SWA and a window longer than the input, conversion must give Qwen2's
    logits exactly: checks embeddings, norms, q/k/v/o (+biases), RoPE theta, MLP and lm_head."""
    qwen = tiny_qwen2(tie=tie)
    ids = torch.randint(0, 128, (2, 30))
    model = convert_qwen2(qwen, "7b", layer_types=("swa",) * 4, window=64).eval()
    assert model.config.rope_theta == 50000.0
    with torch.no_grad():
        assert rel_err(model(ids).logits, qwen(ids).logits) < 1e-5


@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_deferred_mlp_add_gives_the_unfused_chain_bit_for_bit(kind):
    """The model folds each layer's last residual add into the next layer's input norm (and the last one
    into the final norm); in bfloat16 its logits, with and without logits_to_keep, equal the plain chain
    x = x + mlp(...) layer by layer exactly, and with labels so does the loss."""
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(tiny_config(kind, layers=3)).to(torch.bfloat16).eval()
    ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        x = model.model.embed_tokens(ids)
        for layer in model.model.layers:
            x, _ = layer(x)
        plain = model.lm_head(model.model.norm(x))
        out = model(ids, labels=ids)
        assert torch.equal(out.logits, plain)
        assert torch.equal(model(ids, logits_to_keep=2).logits, plain[:, -2:])
        loss = torch.nn.functional.cross_entropy(plain[:, :-1].float().reshape(-1, 128), ids[:, 1:].reshape(-1))
        assert torch.equal(out.loss, loss + model.config.router_aux_loss_coef * out.aux_loss)
        x0 = model.model.embed_tokens(ids)
        x1, m1, _ = model.model.layers[0](x0, defer_mlp_add=True)
        assert m1 is not None and torch.equal(x1 + m1, model.model.layers[0](x0)[0])


def test_convert_7b_structure():
    qwen = tiny_qwen2()
    model = convert_qwen2(qwen, "7b", window=8)
    kinds = [type(layer.self_attn) for layer in model.model.layers]
    assert kinds == [GatedLinearAttention, SlidingWindowAttention] * 2
    for src, dst in zip(qwen.model.layers, model.model.layers):
        for p in ("q_proj", "k_proj", "v_proj"):
            assert torch.equal(getattr(src.self_attn, p).weight, getattr(dst.self_attn, p).weight)
            assert torch.equal(getattr(src.self_attn, p).bias, getattr(dst.self_attn, p).bias)
        assert torch.equal(src.mlp.down_proj.weight, dst.mlp.down_proj.weight)
    gk = model.model.layers[0].self_attn.gk_proj
    assert gk[0].weight.std() < 0.05 and gk[1].weight.std() < 0.05 and not gk[1].bias.any()


def test_convert_76b_upcycles_moe():
    qwen = tiny_qwen2(layers=2)
    model = convert_qwen2(qwen, "76b", window=8, num_experts=4, num_meta_tokens=4)
    layer = model.model.layers[1]
    assert isinstance(layer.self_attn, HybridAttention) and isinstance(layer.mlp, MoEBlock)
    assert len(layer.mlp.experts) == 4 and layer.self_attn.meta_k.shape == (4, 2, 16)
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        y, _ = layer.mlp(x)
        assert rel_err(y, qwen.model.layers[1].mlp(x)) < 1e-5  # upcycled MoE == dense FFN at init
    assert SpikingBrainConfig.from_qwen2(qwen.config, "76b").num_experts == 16


# --------------------------------------------------------------------------- generate + cache
@pytest.mark.parametrize("kind", ["7b", "76b"])
@pytest.mark.parametrize("spike", [None, 3.0])
def test_generate_logits_match_full_recompute(kind, spike):
    if spike is not None:
        # Spike coding is discontinuous: float32 rounding differences between the chunked prefill
        # and the step-by-step decode flip a spike count when x / vth lands within ~1e-7 of a
        # rounding tie (about 1% of random tiny models here), after which the two paths differ by
        # ~1e-4..1e-2. A fixed seed keeps this check of the cache plumbing deterministic.
        torch.manual_seed(0)
    model = SpikingBrainForCausalLM(tiny_config(kind, spike_k=spike)).eval()
    prompt = torch.randint(0, 128, (2, 11))
    out = generate(model, prompt, max_new_tokens=14, output_scores=True)
    assert out.sequences.shape == (2, 25) and torch.equal(out.sequences[:, :11], prompt)
    with torch.no_grad():
        full = model(out.sequences).logits
    # scores[:, i] chose token 11 + i, i.e. they are the logits at position 10 + i
    assert rel_err(out.scores, full[:, 10:-1]) < 1e-5
    assert torch.equal(out.sequences[:, 11:], full[:, 10:-1].argmax(-1))


def test_full_attention_layers_in_76b():
    model = SpikingBrainForCausalLM(tiny_config("76b", layers=2, full_attention_layers=(1,))).eval()
    prompt = torch.randint(0, 128, (2, 6))
    out = generate(model, prompt, max_new_tokens=10, output_scores=True)
    with torch.no_grad():
        full = model(out.sequences).logits
    assert rel_err(out.scores, full[:, 5:-1]) < 1e-5
    cache = model.new_cache(2, max_length=16)
    assert cache.layers[1].softmax.k.shape[1] == 16 and cache.layers[0].softmax.k.shape[1] == 9


@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_cache_memory_does_not_grow(kind):
    cfg = tiny_config(kind)
    model = SpikingBrainForCausalLM(cfg).eval()
    cache = model.new_cache(2)
    before = [(t.shape, t.data_ptr()) for t in cache.tensors()]
    nbytes = cache.nbytes()
    generate(model, torch.randint(0, 128, (2, 20)), max_new_tokens=40, cache=cache)
    assert [(t.shape, t.data_ptr()) for t in cache.tensors()] == before and cache.nbytes() == nbytes
    assert cache.seq_lens.tolist() == [59, 59]  # the last generated token is never fed back
    for layer_cache, t in zip(cache.layers, cfg.layer_types):
        if t == "gla":
            assert layer_cache.state.shape == (2, 2, 16, 16)
        elif t == "swa":
            assert layer_cache.k.shape == (2, cfg.window + 1, 2, 16)
        else:
            assert layer_cache.linear.state.shape == (2, 2, 16, 16)
            assert layer_cache.softmax.k.shape == (2, cfg.window + 1, 2, 16)


def test_a_cache_holding_tokens_takes_any_chunk_length():
    """Formerly an error ("prefill needs a fresh cache"): a chunk of T > 1 continues the cache."""
    model = SpikingBrainForCausalLM(tiny_config("7b", layers=2)).eval()
    ids = torch.randint(0, 128, (1, 10))
    cache = model.new_cache(1)
    with torch.no_grad():
        a = model(ids[:, :5], cache=cache).logits
        b = model(ids[:, 5:], cache=cache).logits
        assert rel_err(torch.cat([a, b], 1), model(ids).logits) < 1e-5
    assert cache.seq_lens.tolist() == [10]


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["7b", "76b"])
@pytest.mark.parametrize("spike", [None, 3.0])
def test_training_steps_reduce_loss(kind, spike):
    """Toy task: sequences that repeat a random 4-token pattern; a few Adam steps must lower the loss."""
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(tiny_config(kind, layers=2, spike_k=spike))
    pattern = torch.randint(0, 128, (8, 4))
    ids = pattern.repeat(1, 6)  # [8, 24]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- example
def test_example_script_runs(monkeypatch, capsys):
    pytest.importorskip("transformers")
    script = os.path.join(ROOT, "examples", "convert_qwen2.py")
    monkeypatch.setattr(sys, "argv", [script, "--kind", "76b", "--max-new-tokens", "5", "--num-experts", "4"])
    runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    assert "generated:" in out and "ring buffer k/v (1, 9, 2, 16)" in out


def test_example_reports_the_w8aspike_logits_difference(monkeypatch, capsys):
    """--w8aspike converts the same Qwen2 with spike coding (k=3) alone and with int8 weights too, runs the
    latter on sbops.spike_linear, and prints both logits differences to the plain model (issue 23: the
    difference is reported, not hidden)."""
    pytest.importorskip("transformers")
    import re
    calls = []
    real = sbops.spike_linear
    monkeypatch.setattr(sbops, "spike_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    script = os.path.join(ROOT, "examples", "convert_qwen2.py")
    monkeypatch.setattr(sys, "argv", [script, "--w8aspike", "--max-new-tokens", "2", "--prompt-len", "20"])
    runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    diffs = [float(m) for m in re.findall(r"logits relative L2 difference ([0-9.e+-]+)", out)]
    assert len(diffs) == 2 and all(0 < d < 1 for d in diffs), out
    assert "W8ASpike (k=3 + int8 weights)" in out and calls


# --------------------------------------------------------------------------- GPU
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@GPU
@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_gpu_generate_and_training_step_match_cpu(kind):
    """The tiny model at head_dim 64 (what the GPU kernels take) on the cuda backend: generate() with
    its constant-memory cache gives the CPU model's tokens and logits, and one training step's
    gradients equal the CPU ones."""
    torch.manual_seed(3)
    model = SpikingBrainForCausalLM(tiny_config(kind, layers=2, head_dim=64)).eval()
    gpu = SpikingBrainForCausalLM(tiny_config(kind, layers=2, head_dim=64)).cuda().eval()
    gpu.load_state_dict(model.state_dict())
    prompt = torch.randint(0, 128, (2, 11))
    out = generate(model, prompt, max_new_tokens=9, output_scores=True)
    outc = generate(gpu, prompt.cuda(), max_new_tokens=9, output_scores=True)
    assert outc.sequences.is_cuda and rel_err(outc.scores.cpu(), out.scores) < 1e-4
    assert torch.equal(outc.sequences.cpu(), out.sequences)
    ids = torch.randint(0, 128, (2, 24))
    model.train(), gpu.train()
    loss = model(ids, labels=ids).loss
    lossc = gpu(ids.cuda(), labels=ids.cuda()).loss
    loss.backward(), lossc.backward()
    assert abs(loss.item() - lossc.item()) < 1e-4 * abs(loss.item())
    for (name, p), pc in zip(model.named_parameters(), gpu.parameters()):
        if p.grad is not None:
            assert rel_err(pc.grad.cpu(), p.grad) < 1e-3, name


# ----------------------------------------------------------------------- fused projections (inference)
def _tiny_7b(dtype=torch.float64, **kw):
    cfg = SpikingBrainConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_heads=4, num_kv_heads=2,
                             head_dim=8, layer_types=("gla", "swa", "hybrid"), window=4, num_meta_tokens=2, **kw)
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(cfg).to(dtype).eval()


def _logits(model, ids, fuse):
    import sbops.nn.common as common
    old, common.FUSE_PROJECTIONS = common.FUSE_PROJECTIONS, fuse
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        common.FUSE_PROJECTIONS = old


@pytest.mark.parametrize("gate_rank", [16, 0])
def test_fused_projections_give_the_unfused_logits(gate_rank):
    model = _tiny_7b(gate_low_rank_dim=gate_rank)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    plain = _logits(model, ids, False)
    fused = _logits(model, ids, True)
    assert "_sbops_fused" in model.model.layers[0].self_attn.__dict__  # the fused path really ran
    assert "_sbops_fused" in model.model.layers[0].mlp.__dict__
    assert rel_err(fused, plain) < 1e-13
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.untyped_storage().nbytes() > q.numel() * q.element_size()  # a view into the fused weight


def test_fused_weights_keep_state_dict_and_follow_loads_training_and_casts(tmp_path):
    model = _tiny_7b()
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _logits(model, ids, True)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    # safetensors refuses shared storage unless the save compacts it (.bin without safetensors)
    model.save_pretrained(tmp_path, safe_serialization=has_module("safetensors"))
    assert sorted(SpikingBrainForCausalLM.from_pretrained(tmp_path).state_dict()) == sorted(before)

    other = _tiny_7b()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.load_state_dict(other.state_dict())  # in-place copies into the fused storage
    assert rel_err(_logits(model, ids, True), _logits(other, ids, False)) < 1e-13

    model.train()  # autograd: separate projections; the step lands in the shared storage
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.k_proj.weight.grad is not None
    opt.step()
    model.eval()
    assert rel_err(_logits(model, ids, True), _logits(model, ids, False)) < 1e-13
    model.float()  # new storages: fused again on the next call
    assert rel_err(_logits(model, ids, True), _logits(model, ids, False)) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_inference_ffn_in_token_chunks_equals_one_piece(monkeypatch, dtype, tol):
    """Past FFN_CHUNK_TOKENS an inference forward runs the dense FFN in token chunks added in place to
    the residual (memory of a long prefill): same logits as the one-piece FFN; with gradients it never chunks."""
    import sbops.models.spikingbrain as sb
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(tiny_config("7b")).to(dtype).eval()
    ids = torch.randint(0, 128, (2, 23))
    with torch.no_grad():
        whole = model(ids).logits
        monkeypatch.setattr(sb, "FFN_CHUNK_TOKENS", 5)
        chunked = model(ids).logits
    assert rel_err(chunked, whole) <= tol
    calls = []
    monkeypatch.setattr(type(model.model.layers[0].mlp), "forward",
                        lambda self, h, _f=type(model.model.layers[0].mlp).forward: calls.append(h.shape) or _f(self, h))
    model(ids).logits.sum().backward()
    assert calls and all(s[:2] == (2, 23) for s in calls)
