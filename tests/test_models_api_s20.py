"""sbops.models' Hugging Face-facing API (session 20 audit fixes): eos / pad ids from config.json and
generation_config.json, generate's tensor result with attention_mask, forward's HF keywords and
ModelOutput indexing, argument and device errors, decode past a full-attention cache (CPU)."""
import json
import pickle
import warnings

import pytest
import torch

import sbops
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16)


def tiny(window=8, seed=0, **kw):
    torch.manual_seed(seed)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**TINY, layer_types=("gla", "swa"), window=window, **kw)).eval()


def ids_(B=2, T=6, seed=0):
    return torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- eos / pad from the checkpoint
def test_generate_stops_on_the_eos_of_config_json_and_generation_config_json_wins(tmp_path):
    model, ids = tiny(), ids_(1, 9)
    free = generate(model, ids, 8)[0, 9:].tolist()
    eos = free[2]
    first = free.index(eos)
    model.save_pretrained(tmp_path)
    d = json.load(open(tmp_path / "config.json"))
    json.dump(dict(d, eos_token_id=eos), open(tmp_path / "config.json", "w"))
    loaded = SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.eos_token_id == eos
    assert generate(loaded, ids, 8)[0, 9:].tolist() == free[:first + 1]          # stops by default, as HF
    assert generate(loaded, ids, 8, eos_token_id=[])[0, 9:].tolist() == free     # [] never stops
    json.dump({"eos_token_id": [127, free[4]], "pad_token_id": 3}, open(tmp_path / "generation_config.json", "w"))
    loaded = SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.eos_token_id == [127, free[4]] and loaded.config.pad_token_id == 3
    assert generate(loaded, ids, 8)[0, 9:].tolist() == free[:free.index(free[4]) + 1]


@pytest.mark.parametrize("native", [False, True])
def test_token_ids_round_trip_through_save_and_load(tmp_path, native):
    kw = dict(num_experts=2) if native else {}      # MoE: only sbops' own format expresses it
    model = tiny(eos_token_id=[5, 7], pad_token_id=0, bos_token_id=1, **kw)
    model.save_pretrained(tmp_path / "a")
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path / "a")
    assert again.config == model.config and again.config.eos_token_id == [5, 7]
    json.dump({"eos_token_id": 9, "do_sample": True}, open(tmp_path / "a" / "generation_config.json", "w"))
    third = SpikingBrainForCausalLM.from_pretrained(tmp_path / "a")
    third.save_pretrained(tmp_path / "b")                               # the generation config goes along
    assert json.load(open(tmp_path / "b" / "generation_config.json"))["do_sample"] is True
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path / "b").config == third.config
    model.save_pretrained(tmp_path / "b")                               # a stale generation config is removed
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path / "b").config.eos_token_id == [5, 7]


def test_config_refuses_token_ids_that_are_not_ints():
    for bad in (dict(eos_token_id=1.5), dict(eos_token_id=[1, "2"]), dict(pad_token_id="x"), dict(bos_token_id=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SpikingBrainConfig(**TINY, layer_types=("gla",), **bad)


# --------------------------------------------------------------------------- generate's result with a mask
def test_generate_with_attention_mask_returns_the_padded_tensor_hugging_face_returns():
    model, ids = tiny(), ids_()
    plain = generate(model, ids, 4)
    ones = generate(model, ids, 4, attention_mask=torch.ones_like(ids))
    assert isinstance(ones, torch.Tensor) and torch.equal(ones, plain)
    ids[1, :2] = 0
    mask = torch.ones_like(ids)
    mask[1, :2] = 0                                                       # left padding
    out = generate(model, ids, 4, attention_mask=mask, output_scores=True)
    alone = generate(model, ids[1:, 2:], 4)
    assert out.sequences.shape == (2, 10) and torch.equal(out.sequences[:, :6], ids)
    assert torch.equal(out.sequences[1, 6:], alone[0, 4:]) and out.scores.shape == (2, 4, 128)
    stop = int(plain[0, 6])                                               # row 0 stops at once
    early = generate(model, ids[:1], 4, attention_mask=mask[:1], eos_token_id=stop, pad_token_id=99)
    assert early.shape == (1, 7) and int(early[0, 6]) == stop
    both = generate(model, ids, 4, attention_mask=mask, eos_token_id=stop, pad_token_id=99)
    assert both.shape == (2, 10) and int(both[0, 6]) == stop and (both[0, 7:] == 99).all()   # padded after eos


# --------------------------------------------------------------------------- forward: HF keywords and output
def test_forward_takes_hugging_face_keywords():
    model, ids = tiny(), ids_()
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids), return_dict=True,
                                         output_attentions=False).logits, full)
        pad = torch.ones_like(ids)
        pad[0, 0] = 0
        with pytest.raises(ValueError, match="cu_seqlens"):
            model(ids, attention_mask=pad)
        out = model(ids[:, :5], use_cache=True)                           # HF: makes and returns a cache
        assert out.past_key_values.seq_lens.tolist() == [5, 5]
        step = model(ids[:, 5:], past_key_values=out.past_key_values, attention_mask=torch.ones_like(ids))
        torch.testing.assert_close(step.logits, full[:, 5:], rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="use_cache=False"):
            model(ids[:, :1], cache=model.new_cache(2), use_cache=False)
        with pytest.raises(NotImplementedError, match="output_hidden_states"):
            model(ids, output_hidden_states=True)
        assert type(model(ids, return_dict=False)) is tuple


def test_output_indexes_as_hugging_face_model_output():
    model, ids = tiny(), ids_()
    out = model(ids, labels=ids)
    assert out[0].dim() == 0 and out[0] is out.loss and out["logits"] is out.logits is out[1]
    assert out.keys() == ["loss", "logits", "aux_loss"] and out.to_tuple() == tuple(out)
    plain = model(ids)
    assert plain[0] is plain.logits and plain.loss is None and "loss" not in plain.keys()
    with pytest.raises(KeyError):
        plain["loss"]
    back = pickle.loads(pickle.dumps(out))
    assert back.keys() == out.keys() and torch.equal(back.logits, out.logits)


def test_logits_to_keep_takes_a_list_of_positions_and_refuses_floats():
    model, ids = tiny(), ids_()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, logits_to_keep=[0, 3]).logits, model(ids).logits[:, [0, 3]])
    for bad in (1.5, "2", [0.5]):
        with pytest.raises(TypeError, match="logits_to_keep"):
            model(ids, logits_to_keep=bad)


# --------------------------------------------------------------------------- devices, labels, argument types
def test_inputs_on_another_device_are_errors_naming_them():
    model, ids = tiny(), ids_()
    meta = ids.to("meta")
    with pytest.raises(ValueError, match="input_ids are on meta but the model is on cpu"):
        generate(model, meta, 2)
    with pytest.raises(ValueError, match=r"input_ids\[0\] is on meta"):
        generate(model, [meta[0]], 2)
    with pytest.raises(ValueError, match="input_ids are on meta"):
        model(meta)
    with pytest.raises(ValueError, match="labels are on meta"):
        model(ids, labels=meta)


def test_labels_are_checked_and_int32_labels_work():
    model, ids = tiny(), ids_()
    with pytest.raises(ValueError, match="labels must be shaped like input_ids"):
        model(ids, labels=ids[:, :3])
    with pytest.raises(TypeError, match="labels must hold integer"):
        model(ids, labels=ids.float())
    with torch.no_grad():
        assert torch.equal(model(ids, labels=ids.int()).loss, model(ids, labels=ids).loss)


def test_greedy_ignores_sampling_values_with_a_warning_and_top_p_0_is_top_1():
    model, ids = tiny(), ids_()
    greedy = generate(model, ids, 4)
    with pytest.warns(UserWarning, match=r"ignores temperature=-1.0, top_k=-1, top_p=0.0"):
        assert torch.equal(generate(model, ids, 4, top_k=-1, top_p=0.0, temperature=-1.0), greedy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, ids, 1)                                           # defaults: no warning
    top1 = generate(model, ids, 4, do_sample=True, top_p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, greedy)                                      # HF's TopP keeps the top token


def test_max_new_tokens_0_checks_the_other_arguments_first():
    model, ids = tiny(), ids_()
    with pytest.raises(TypeError, match="cache must be a ModelCache"):
        generate(model, ids, 0, cache={})
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        generate(model, ids, 0, max_batch_size=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, ids, 0, do_sample=True, top_p=2.0)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(max_new_tokens=1.5), TypeError, "max_new_tokens"), (dict(max_new_tokens=None), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"), (dict(cache={}), TypeError, "cache"),
    (dict(attention_mask=[[1] * 6] * 2), TypeError, "attention_mask"), (dict(pad_token_id="x"), TypeError, "pad_token_id"),
    (dict(prefill_chunk_size=2.5), TypeError, "prefill_chunk_size"), (dict(max_batch_size=1.0), TypeError, "max_batch_size"),
    (dict(do_sample="yes"), TypeError, "do_sample"), (dict(input_ids=ids_().float()), TypeError, "input_ids"),
])
def test_loose_generate_arguments_are_errors_naming_them(kw, exc, word):
    args = dict(input_ids=ids_(), max_new_tokens=2)
    args.update(kw)
    with pytest.raises(exc, match=word):
        generate(tiny(), args.pop("input_ids"), args.pop("max_new_tokens"), **args)


# --------------------------------------------------------------------------- full-attention cache overflow
def test_decode_past_a_full_attention_cache_is_refused_even_with_data_checks_off():
    model = tiny(window=4, full_attention_layers=(1,))
    ids = ids_(1, 8)
    with torch.no_grad(), sbops.data_checks(False):
        cache = model.new_cache(1, max_length=5)
        model(ids[:, :5], cache=cache)
        with pytest.raises(ValueError, match="slot 0 holds 5 tokens"):
            model(ids[:, 5:6], cache=cache)
        cache.seq_lens.zero_()                        # written from outside: no stale refusal afterwards
        model(ids[:, :1], cache=cache)
        cache = model.new_cache(2, max_length=7)
        generate(model, ids[:, :4], 4, cache=cache)   # the cache holds 4 + 4 - 1 = 7 tokens in slot 0
        with pytest.raises(ValueError, match="slot 0 holds 7 tokens"):
            model(ids[:, :1], cache=cache)


# --------------------------------------------------------------------------- review fixes (session 20)
def test_save_keeps_a_users_generation_config_and_sets_its_token_ids(tmp_path):
    """A model that came without a generation_config.json keeps one already in the folder (the user's sampling
    settings), its token ids set to the model's: Hugging Face overwrites, it never deletes."""
    model = tiny(eos_token_id=5)
    json.dump({"do_sample": True, "temperature": 0.7, "eos_token_id": 99}, open(tmp_path / "generation_config.json", "w"))
    model.save_pretrained(tmp_path)
    g = json.load(open(tmp_path / "generation_config.json"))
    assert g["do_sample"] is True and g["temperature"] == 0.7 and g["eos_token_id"] == 5
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path).config.eos_token_id == 5


def test_generation_config_null_eos_wins_and_a_bad_one_names_the_file(tmp_path):
    model = tiny(eos_token_id=5)
    model.save_pretrained(tmp_path)
    json.dump({"eos_token_id": None}, open(tmp_path / "generation_config.json", "w"))
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path).config.eos_token_id is None   # as HF: no eos
    json.dump({"eos_token_id": "</s>"}, open(tmp_path / "generation_config.json", "w"))
    with pytest.raises(ValueError, match="generation_config.json's eos_token_id"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


def test_use_cache_true_makes_a_cache_a_full_attention_model_can_decode_into():
    model, ids = tiny(window=-1), ids_(2, 6)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        step = model(ids[:, :1], past_key_values=out.past_key_values)
        full = model(torch.cat([ids, ids[:, :1]], 1))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_output_tests_keys_with_in_and_has_get_and_logits_to_keep_empty_list():
    model, ids = tiny(), ids_()
    out = model(ids)
    assert "logits" in out and "loss" not in out and out.get("loss") is None and out.get("logits") is out.logits
    assert model(ids, logits_to_keep=[]).logits.shape == (2, 0, 128)


def test_convert_qwen2_takes_the_eos_ids_of_the_generation_config():
    transformers = pytest.importorskip("transformers")
    from sbops.models import convert_qwen2
    cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, eos_token_id=100, bos_token_id=100)
    q = transformers.Qwen2ForCausalLM(cfg).eval()
    q.generation_config.eos_token_id = [101, 100]   # Qwen2-Instruct's: <|im_end|>, <|endoftext|>
    assert convert_qwen2(q).config.eos_token_id == [101, 100]
