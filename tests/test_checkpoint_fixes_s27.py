"""Session 27 audit of checkpoints and conversion; each test fails on the code before it.

- convert_qwen2 with more layer_types than the source has layers built the extra layers at random (fewer gave an
  indirect "source tensors with no place" error);
"""
import json

import pytest
import torch

from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, convert_qwen2

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
