"""Checkpoint and Hugging Face interop contract (session 18 audit): save/load round trips, overrides,
stale caches, conversion refusals, config validation."""
import json
import os

import pytest
import torch

import sbops
from conftest import has_module
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, convert_qwen2

CFG = SpikingBrainConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
                         head_dim=8, layer_types=("gla", "swa"), window=4)
SAFE = has_module("safetensors")


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return SpikingBrainForCausalLM(cfg).eval()


@pytest.mark.skipif(not SAFE, reason="needs safetensors (the earlier save's format)")
def test_bin_save_over_an_earlier_safetensors_save_loads_the_new_weights(tmp_path):
    old, new = _model(seed=0), _model(seed=1)
    old.save_pretrained(tmp_path)
    old.save_pretrained(tmp_path / "sh", max_shard_size=20000)
    new.save_pretrained(tmp_path, safe_serialization=False)
    new.save_pretrained(tmp_path / "sh", safe_serialization=False)
    for d in (tmp_path, tmp_path / "sh"):
        r = SpikingBrainForCausalLM.from_pretrained(d)
        assert torch.equal(r.lm_head.weight, new.lm_head.weight)
    assert not any(f.endswith(".safetensors") or "safetensors.index" in f for f in os.listdir(tmp_path / "sh"))


def test_loaded_released_checkpoint_with_an_override_saves_what_it_runs(tmp_path):
    safe = SAFE
    _model().save_pretrained(tmp_path / "a", safe_serialization=safe)
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path / "a", window=2)
    m.save_pretrained(tmp_path / "b", safe_serialization=safe)
    assert json.load(open(tmp_path / "b" / "config.json"))["sliding_window"] == 2
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path / "b").config.window == 2
    # unchanged: written back as it was read (extra keys kept), the dtype key updated
    d = json.load(open(tmp_path / "a" / "config.json"))
    d["bos_token_id"], d["dtype"] = 7, d.pop("torch_dtype")
    json.dump(d, open(tmp_path / "a" / "config.json", "w"))
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float64, allow_unknown_config_keys=True)
    m.save_pretrained(tmp_path / "c", safe_serialization=safe)
    c = json.load(open(tmp_path / "c" / "config.json"))
    assert c["bos_token_id"] == 7 and c["torch_dtype"] == "float64" and "dtype" not in c


def test_w8aspike_checkpoint_refuses_overrides_of_the_fields_it_pins(tmp_path):
    w8 = CFG.replace(hidden_size=128, intermediate_size=256, head_dim=32, spike_k=3.0, weight_quant="int8_static",
                     gate_low_rank_dim=0, swa_q_spike_k=3.0, swa_kv_quant="int8", mlp_down_quant=False)
    _model(w8).save_pretrained(tmp_path, safe_serialization=SAFE)
    with pytest.raises(ValueError, match=r"pins \['spike_k', 'swa_kv_quant'\]"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path, spike_k=2.0, swa_kv_quant=None)
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path, window=2, spike_k=3.0).config.window == 2


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_8bit_weight_caches_follow_loads_under_inference_mode_and_untracked_writes(quant):
    q8 = CFG.replace(hidden_size=128, intermediate_size=256, head_dim=32, spike_k=3.0, weight_quant=quant)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    new_sd = _model(q8, seed=1).state_dict()
    ref = _model(q8, seed=1)
    with torch.no_grad():
        want = ref(ids).logits
        m = _model(q8, seed=0)
        m(ids)                                              # caches the 8-bit operands
        for n, p in m.named_parameters():
            p.data.copy_(new_sd[n])                         # invisible to the version counter
        sbops.nn.clear_weight_caches(m)
        assert torch.equal(m(ids).logits, want)
    with torch.inference_mode():
        m = _model(q8, seed=0)
        m(ids)
        m.load_state_dict(new_sd)
        assert torch.equal(m(ids).logits, want)


def test_save_pretrained_needs_safetensors_or_says_so_before_touching_the_folder(tmp_path, monkeypatch):
    import builtins
    _model().save_pretrained(tmp_path, safe_serialization=False)
    before = sorted(os.listdir(tmp_path))
    real = builtins.__import__

    def no_safetensors(name, *a, **kw):
        if name.startswith("safetensors"):
            raise ImportError("no safetensors here")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(ImportError, match="safe_serialization=False"):
        _model(seed=1).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == before


def test_hugging_face_style_arguments(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "f", max_shard_size=5e9, safe_serialization=False)   # a float, as in the docs
    m.save_pretrained(tmp_path, max_shard_size="20KB", safe_serialization=False)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".bin")]) > 1
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=None).lm_head.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="max_shard_size"):
        m.save_pretrained(tmp_path, max_shard_size="lots")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['device_map'\]"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path, device_map="auto")
    with pytest.raises(ValueError, match="from_pretrained: dtype 'int8'"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype="int8")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


def test_config_validation_names_the_field_and_round_trips_through_dicts():
    for bad, msg in [(dict(num_kv_heads=0), "num_kv_heads must be a positive int"),
                     (dict(full_attention_layers=(5,)), r"full_attention_layers \[5\]"),
                     (dict(weight_quant="int4"), "weight_quant must be one of")]:
        with pytest.raises(ValueError, match=msg):
            CFG.replace(**bad)
    c = CFG.replace(full_attention_layers=(1,))
    assert SpikingBrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match=r"unknown keys \['nope'\]"):
        SpikingBrainConfig.from_dict({**c.to_dict(), "nope": 1})


def test_float64_model_from_pretrained_equals_a_cast_one(tmp_path):
    _model().save_pretrained(tmp_path, safe_serialization=False)
    a = SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    b = SpikingBrainForCausalLM.from_pretrained(tmp_path).double()
    ra, rb = a.model.layers[1].self_attn.rotary.inv_freq, b.model.layers[1].self_attn.rotary.inv_freq
    assert ra.dtype == rb.dtype == torch.float64 and torch.equal(ra, rb)


def test_subpackages_reachable_from_import_sbops():
    import subprocess
    import sys
    code = "import sbops; sbops.models.SpikingBrainForCausalLM; sbops.compat.fla.chunk_gla; sbops.nn.SpikeLinear"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------ convert_qwen2 refusals
def _qwen2(**kw):
    transformers = pytest.importorskip("transformers")
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**base, **kw)).eval()


def test_convert_refuses_a_non_silu_qwen2():
    with pytest.raises(NotImplementedError, match="hidden_act='gelu'"):
        convert_qwen2(_qwen2(hidden_act="gelu"))


def test_convert_refuses_to_tie_an_untied_source_and_keeps_tied_ones():
    q = _qwen2(tie_word_embeddings=False)
    with pytest.raises(ValueError, match="lm_head differs from its embeddings"):
        convert_qwen2(q, tie_word_embeddings=True)
    s = convert_qwen2(_qwen2(tie_word_embeddings=True))
    assert torch.equal(s.model.embed_tokens.weight, s.lm_head.weight)
