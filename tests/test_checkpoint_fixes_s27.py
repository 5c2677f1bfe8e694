"""Session 27 audit of checkpoints and conversion; each test fails on the code before it.

- convert_qwen2 with more layer_types than the source has layers built the extra layers at random (fewer gave an
  indirect "source tensors with no place" error);
- save_pretrained dropped lm_head whenever tie_word_embeddings=True, even after lm_head was replaced by a tensor
  that differs from the embeddings (the reloaded model gave other logits);
- SpikingBrainConfig took any window (None, "8", 8.0: the last saved a checkpoint from_pretrained refuses), truthy
  strings for its bool fields and any value for gate_logit_normalizer / key_clamp / ...;
- sbops' own checkpoint format gave a raw TypeError for an unknown sbops_config key (allow_unknown_config_keys did
  not help) and a KeyError without sbops_config;
- from_pretrained took float8 dtypes, then failed building the model;
- from_pretrained read every weight file before checking config.json.
"""
import json
import re

import pytest
import torch
from torch import nn

try:
    import numpy as np
except ImportError:  # numpy is optional (torch does not need it): its cases skip or are left out without it
    np = None

from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, convert_qwen2
from conftest import requires_numpy

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
           layer_types=("gla", "swa"), window=4)


@pytest.fixture
def safetensors():
    return pytest.importorskip("safetensors.torch")


def _model(seed=0, **changes):
    torch.manual_seed(seed)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**{**CFG, **changes})).eval()


def _edit_config(folder, edit):
    f = folder / "config.json"
    d = json.loads(f.read_text())
    edit(d)
    f.write_text(json.dumps(d))


@pytest.mark.parametrize("n_types", [6, 2])
def test_convert_refuses_layer_types_of_another_length_than_the_source(n_types):
    transformers = pytest.importorskip("transformers")
    q = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    with pytest.raises(ValueError, match=rf"layer_types has {n_types} entries .* num_hidden_layers=4"):
        convert_qwen2(q, "7b", window=8, layer_types=("gla", "swa") * (n_types // 2))


@pytest.mark.parametrize("bad", [None, "8", 8.0, True])
def test_config_window_must_be_an_int(bad):
    with pytest.raises(ValueError, match=r"SpikingBrainConfig: window must be an int .*got " + re.escape(repr(bad))):
        SpikingBrainConfig(**{**CFG, "window": bad})


@requires_numpy
def test_config_numpy_and_negative_windows_still_work_and_save_as_json_ints(tmp_path, safetensors):
    assert SpikingBrainConfig(**{**CFG, "window": -1}).window == -1   # full causal
    m = _model(window=np.int64(3))
    assert type(m.config.window) is int
    m.save_pretrained(tmp_path)
    assert SpikingBrainForCausalLM.from_pretrained(tmp_path).config.window == 3


@pytest.mark.parametrize("field", ["tie_word_embeddings", "qkv_bias", "moe_renormalize", "mlp_down_quant"])
def test_config_bool_fields_refuse_non_bools(field):
    with pytest.raises(ValueError, match=f"SpikingBrainConfig: {field} must be a bool"):
        SpikingBrainConfig(**{**CFG, field: "false"})


@pytest.mark.parametrize("field, bad, want", [
    ("gate_logit_normalizer", 0.0, "a positive finite number"), ("gate_logit_normalizer", "16", "a positive"),
    ("key_clamp", None, "a positive finite number"), ("key_clamp", float("nan"), "a positive"),
    ("upcycle_scale", 1.5, r"a finite number in \[0, 1\]"), ("router_aux_loss_coef", -0.1, "a finite number >= 0"),
    ("initializer_range", float("inf"), "a finite number >= 0"), ("spike_k", 0.0, "a positive finite number or None"),
    ("swa_q_spike_k", float("inf"), "a positive finite number or None")])
def test_config_float_fields_must_be_finite_numbers_in_their_range(field, bad, want):
    with pytest.raises(ValueError, match=f"SpikingBrainConfig: {field} must be {want}"):
        SpikingBrainConfig(**{**CFG, field: bad})


@requires_numpy
def test_config_float_fields_become_plain_floats():
    c = SpikingBrainConfig(**{**CFG, "key_clamp": np.float32(0.5), "gate_logit_normalizer": 16, "spike_k": 3})
    assert (type(c.key_clamp), type(c.gate_logit_normalizer), type(c.spike_k)) == (float, float, float)
    json.dumps(c.to_dict())


def test_save_refuses_a_tied_config_whose_lm_head_no_longer_is_the_embedding(tmp_path, safetensors):
    m = _model(tie_word_embeddings=True)
    m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach() * 2)
    with pytest.raises(ValueError, match="tie_word_embeddings=True, but lm_head.weight is no longer"):
        m.save_pretrained(tmp_path)
    m.lm_head.weight = nn.Parameter(m.model.embed_tokens.weight.detach().clone())   # equal: stored once, loads back
    m.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(SpikingBrainForCausalLM.from_pretrained(tmp_path)(ids).logits, m(ids).logits)


def test_native_format_unknown_config_key_is_refused_or_ignored_when_allowed(tmp_path, safetensors):
    m = _model(window=-1)
    m.save_pretrained(tmp_path, released_format=False)
    _edit_config(tmp_path, lambda d: d["sbops_config"].update(future_option=1))
    with pytest.raises(ValueError, match=r"sbops_config has keys .*\['future_option'\].*allow_unknown_config_keys"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)
    r = SpikingBrainForCausalLM.from_pretrained(tmp_path, allow_unknown_config_keys=True)
    assert r.config == m.config


def test_native_format_without_sbops_config_is_a_clear_error(tmp_path, safetensors):
    _model(window=-1).save_pretrained(tmp_path, released_format=False)
    _edit_config(tmp_path, lambda d: d.pop("sbops_config"))
    with pytest.raises(ValueError, match="'sbops_config' is missing"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, "float8_e4m3fn", "float8_e5m2"])
def test_from_pretrained_refuses_dtypes_a_model_cannot_be_built_in(tmp_path, safetensors, dtype):
    _model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype .* expected 'auto' or one of float16, bfloat16, float32, float64"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    _edit_config(tmp_path, lambda d: d.update(torch_dtype="float8_e4m3fn"))
    with pytest.raises(ValueError, match="config.json's torch_dtype 'float8_e4m3fn' .* one of float16"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("edit, msg", [(lambda d: d.update(model_type="llama", architectures=["X"]), "model_type='llama'"),
                                       (lambda d: d.update(new_key=1), r"keys this loader does not know: \['new_key'\]"),
                                       (lambda d: d.update(rope_scaling={"type": "linear"}), "rope_scaling")])
def test_config_json_is_checked_before_any_weight_file_is_read(tmp_path, safetensors, edit, msg):
    _model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    _edit_config(tmp_path, edit)
    with pytest.raises((ValueError, NotImplementedError), match=msg):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


def test_released_config_tie_word_embeddings_must_be_a_json_bool(tmp_path, safetensors):
    _model().save_pretrained(tmp_path)  # the released format (the default)
    _edit_config(tmp_path, lambda d: d.update(tie_word_embeddings="false"))  # bool("false") would tie
    with pytest.raises(ValueError, match="tie_word_embeddings must be true or false, got 'false'"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)
