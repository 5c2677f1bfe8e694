"""sbops.models as a Hugging Face user calls it: RoPE precision in 16-bit models, caches checked against
the model, logits_to_keep as HF indexes it, generate's argument checks, checkpoint-loading errors (CPU)."""
import types

import pytest
import torch

from conftest import has_module
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate
from sbops.nn.common import RotaryEmbedding

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16)


def tiny(layers=("gla", "swa"), window=8, **kw):
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**TINY, layer_types=layers, window=window, **kw)).eval()


# --------------------------------------------------------------------------- RoPE
def test_rope_frequencies_stay_float32_when_the_model_is_cast_to_16_bits():
    fresh = RotaryEmbedding(128, 1e6)
    model = tiny().to(torch.bfloat16)
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert ropes and all(r.inv_freq.dtype == torch.float32 for r in ropes)
    cast = RotaryEmbedding(128, 1e6).to(torch.bfloat16)
    assert torch.equal(cast.inv_freq, fresh.inv_freq)
    pos = torch.tensor([100_000])
    assert torch.equal(cast(pos)[0], fresh(pos)[0])           # bf16 frequencies were off by ~1.8 here
    assert RotaryEmbedding(16, 1e4).double().inv_freq.dtype == torch.float64


def test_qwen2_rope_scaling_is_refused_not_dropped():
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e4)
    assert SpikingBrainConfig.from_qwen2(types.SimpleNamespace(**base, rope_scaling=None)).rope_theta == 1e4
    for q in (types.SimpleNamespace(**base, rope_scaling={"type": "linear", "factor": 4.0}),
              types.SimpleNamespace(**base, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})):
        with pytest.raises(NotImplementedError, match="RoPE scaling"):
            SpikingBrainConfig.from_qwen2(q)


# --------------------------------------------------------------------------- caches
def test_a_cache_made_for_another_model_is_refused_by_name():
    model = tiny(window=9)
    ids = torch.randint(0, 128, (1, 5))
    with pytest.raises(ValueError, match=r"layer 1's k must be \[1, >= 10 rows"):
        model(ids, cache=tiny(window=5).new_cache(1))
    with pytest.raises(ValueError, match="it has 3 layer caches but the model has 2"):
        model(ids, cache=tiny(layers=("gla", "swa", "gla"), window=9).new_cache(1))
    with pytest.raises(ValueError, match="float64"):
        model(ids, cache=tiny(window=9).double().new_cache(1))
    with pytest.raises(TypeError, match="ModelCache"):
        model(ids, cache=[None, None])
    model(ids, cache=model.new_cache(1))                         # its own cache is fine


def test_decode_slots_and_start_positions_are_checked_on_the_host():
    model = tiny()
    cache = model.new_cache(2)
    model(torch.randint(0, 128, (2, 4)), cache=cache)
    with pytest.raises(ValueError, match=r"slot_indices must lie in \[0, 2\)"):
        model(torch.randint(0, 128, (2, 1)), cache=cache, slot_indices=[0, 5])
    with pytest.raises(ValueError, match="disagree with what the slots hold"):
        model(torch.randint(0, 128, (2, 3)), cache=cache, start_positions=[0, 4])
    with pytest.raises(ValueError, match="need a cache"):
        model(torch.randint(0, 128, (2, 3)), slot_indices=[0, 1])
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        model(torch.randint(0, 128, (5,)))


def test_generate_checks_a_full_attention_cache_holds_the_whole_run():
    model = tiny(layers=("gla", "swa"), window=8, full_attention_layers=(1,))
    prompt = torch.randint(0, 128, (1, 6))
    with pytest.raises(ValueError, match=r"holds 8 tokens per slot but a sequence here reaches 9"):
        generate(model, prompt, 4, cache=model.new_cache(1, max_length=8))
    out = generate(model, prompt, 4, cache=model.new_cache(1, max_length=9))
    assert torch.equal(out, generate(model, prompt, 4))


# --------------------------------------------------------------------------- logits_to_keep
def test_logits_to_keep_tensor_indexes_dim_1_as_hugging_face_does():
    model = tiny()
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(model(ids, logits_to_keep=torch.tensor(4)).logits, full[:, 4:5], rtol=1e-5, atol=1e-6)
        mask = torch.zeros(10, dtype=torch.bool)
        mask[[2, 9]] = True
        for keep in (mask, torch.tensor([-1]), torch.tensor([2, -1, 0])):
            torch.testing.assert_close(model(ids, logits_to_keep=keep).logits, full[:, keep], rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="one entry per position"):
            model(ids, logits_to_keep=torch.ones(3, dtype=torch.bool))


# --------------------------------------------------------------------------- generate arguments
def test_generate_accepts_eos_ids_as_tensors_sets_and_empty_lists():
    model = tiny()
    prompt = torch.randint(0, 128, (1, 5))
    free = generate(model, prompt, 8)
    stop = int(free[0, 5 + 2])
    want = generate(model, prompt, 8, eos_token_id=stop)
    for eos in (torch.tensor(stop), {stop}, torch.tensor([stop, 127]), (stop,)):
        assert torch.equal(generate(model, prompt, 8, eos_token_id=eos)[:, :want.shape[1]], want)
    assert torch.equal(generate(model, prompt, 8, eos_token_id=[]), free)
    with pytest.raises(TypeError, match="eos_token_id must be an int or a list of ints"):
        generate(model, prompt, 2, eos_token_id=2.5)


def test_generate_accepts_numpy_numbers():
    np = pytest.importorskip("numpy")
    model = tiny()
    prompt = torch.randint(0, 128, (1, 5))
    stop = int(generate(model, prompt, 8)[0, 5 + 2])
    assert torch.equal(generate(model, prompt, 8, eos_token_id=np.int64(stop)), generate(model, prompt, 8, eos_token_id=stop))
    generate(model, prompt, 2, do_sample=True, top_k=np.int64(3), temperature=np.float32(0.7))


def test_generate_refuses_bad_batch_sizes_and_sampling_types():
    model = tiny()
    prompt = torch.randint(0, 128, (2, 4))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
            generate(model, prompt, 2, max_batch_size=bad)
    for kw, name in ((dict(top_k=3.0), "top_k"), (dict(top_p="0.9"), "top_p"), (dict(temperature="hot"), "temperature")):
        with pytest.raises(TypeError, match=name):
            generate(model, prompt, 2, do_sample=True, **kw)


def test_unset_sampling_values_mean_off_as_in_a_hugging_face_generation_config():
    model = tiny()
    prompt = torch.randint(0, 128, (2, 4))
    g = dict(do_sample=True, top_k=5)
    want = generate(model, prompt, 4, generator=torch.Generator().manual_seed(3), **g)
    got = generate(model, prompt, 4, generator=torch.Generator().manual_seed(3), temperature=None, top_p=None, **g)
    assert torch.equal(got, want)
    assert torch.equal(generate(model, prompt, 4, temperature=None, top_k=None, top_p=None), generate(model, prompt, 4))
    assert torch.equal(generate(model, prompt, 4, generator=torch.Generator().manual_seed(3), do_sample=True,
                                top_k=torch.tensor(5)), want)


def test_a_failed_call_still_ends_the_streamer():
    ends = []
    rec = type("Rec", (), {"put": lambda self, t: None, "end": lambda self: ends.append(1)})()
    with pytest.raises(ValueError, match="reuse_cache=True continues"):
        generate(tiny(), torch.randint(0, 128, (1, 4)), 2, streamer=rec, reuse_cache=True)
    assert ends == []                                         # refused before anything was streamed
    model = tiny()
    model.lm_head.forward = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, torch.randint(0, 128, (1, 4)), 2, streamer=rec)
    assert ends == [1]


def test_a_used_cache_can_be_saved_and_resumed(tmp_path):
    model = tiny()
    cache = model.new_cache(1)
    out = generate(model, torch.randint(0, 128, (1, 6)), 4, cache=cache)
    torch.save(cache, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=False)
    turn2 = torch.cat([out, torch.randint(0, 128, (1, 3))], 1)
    assert torch.equal(generate(model, turn2, 4, cache=back, reuse_cache=True), generate(model, turn2, 4))


def test_rope_frequencies_are_computed_again_after_to_empty():
    with torch.device("meta"):
        model = SpikingBrainForCausalLM(SpikingBrainConfig(**TINY, layer_types=("gla", "swa"), window=8))
    model = model.to_empty(device="cpu")
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert ropes and all(torch.equal(r.inv_freq, RotaryEmbedding(16, r.theta).inv_freq) for r in ropes)


def test_scores_of_zero_new_tokens_keep_the_vocab_dimension():
    model = tiny()
    assert generate(model, torch.randint(0, 128, (2, 4)), 0, output_scores=True).scores.shape == (2, 0, 128)
    assert generate(model, [torch.randint(0, 128, (3,))], 0, output_scores=True).scores[0].shape == (0, 128)


# --------------------------------------------------------------------------- checkpoints
def test_from_pretrained_errors_name_the_path_and_dtype_strings_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="only local folders are read"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path / "nowhere")
    model = tiny()
    model.save_pretrained(tmp_path / "m", safe_serialization=has_module("safetensors"))
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path / "m", dtype="bfloat16").lm_head.weight.dtype == torch.bfloat16
    files = [f for f in (tmp_path / "m").iterdir() if f.suffix in (".safetensors", ".bin")]
    files[0].write_bytes(files[0].read_bytes()[:40])                 # truncated
    with pytest.raises(ValueError, match=files[0].name):
        SpikingBrainForCausalLM.from_pretrained(tmp_path / "m")


def test_converting_to_int8_static_is_refused():
    transformers = pytest.importorskip("transformers")
    from sbops.models import convert_qwen2
    q = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    with pytest.raises(ValueError, match="int8_static"):
        convert_qwen2(q, "7b", spike_k=3.0, weight_quant="int8_static")


def test_packed_loss_takes_empty_sequences_anywhere():
    """cu_seqlens may hold empty sequences (non-decreasing): at the end as at the front or in the middle, the loss is
    the loss of the non-empty ones (a trailing empty sequence indexed past the targets)."""
    model = tiny()
    ids = torch.randint(0, 128, (1, 7))
    want = model(ids, labels=ids).loss
    with torch.no_grad():
        for cu in ([0, 7, 7], [0, 0, 7], [0, 7, 7, 7], [0, 0, 7, 7]):
            got = model(ids, labels=ids, cu_seqlens=torch.tensor(cu)).loss
            assert torch.allclose(got, want, rtol=1e-5), cu
        a = model(ids, labels=ids, cu_seqlens=torch.tensor([0, 3, 7])).loss
        b = model(ids, labels=ids, cu_seqlens=torch.tensor([0, 3, 3, 7, 7])).loss
        assert torch.allclose(a, b, rtol=1e-5)


def test_cache_sizes_and_reset_slots_are_checked_by_name():
    model = tiny()
    for bad in (-1, 2.5, True, "2"):
        with pytest.raises(ValueError, match="batch_size must be an int >= 0"):
            model.new_cache(bad)
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        model.new_cache(1, max_length=0)
    assert model.new_cache(torch.tensor(2)).num_slots == 2
    cache = model.new_cache(3)
    for bad in ([5], [-4], torch.tensor([3])):
        with pytest.raises(ValueError, match=r"slots must lie in \[-3, 3\)"):
            cache.reset(bad)
    with pytest.raises(ValueError, match="slots must be integer"):
        cache.reset(torch.tensor([1.0]))
    cache.reset([-1, 0])          # Python-style negative slots still name the last ones
    assert cache.host_lens() == [0, 0, 0]


def test_qwen2_sliding_window_conversion_warns():
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e4, rope_scaling=None)
    with pytest.warns(UserWarning, match="sliding window of 4 tokens"):
        SpikingBrainConfig.from_qwen2(types.SimpleNamespace(**base, use_sliding_window=True, sliding_window=4,
                                                            max_window_layers=1))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpikingBrainConfig.from_qwen2(types.SimpleNamespace(**base, use_sliding_window=False, sliding_window=4))


def test_reset_of_no_slots_and_tensor_sizes():
    model = tiny()
    cache = model.new_cache(2)
    cache.reset([])                                     # nothing to reset (torch.as_tensor([]) is float32)
    with pytest.raises(ValueError, match="batch_size must be an int >= 0"):
        model.new_cache(torch.tensor(2.0))
