"""A released W8ASpike checkpoint whose config.json lacks quant_weight_group_size is told by its tensors' names
(".weight_quantizer.scales") before any weight is read: overrides of the fields it pins are refused without reading
the weight files (before, the whole checkpoint was read first).  The names come from an index's weight_map, a
.safetensors header or a memory-mapped .bin."""
import json

import pytest
import torch

from conftest import has_module
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.models import checkpoint_files, pretrained

W8 = SpikingBrainConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                        head_dim=32, layer_types=("gla", "swa"), window=4, spike_k=3.0, weight_quant="int8_static",
                        gate_low_rank_dim=0, swa_q_spike_k=3.0, swa_kv_quant="int8", mlp_down_quant=False)
FORMATS = [("bin", None), ("bin", 20000)] + ([("safetensors", None), ("safetensors", 20000)]
                                             if has_module("safetensors") else [])


def _w8a_checkpoint_without_group_key(path, fmt, shard):
    torch.manual_seed(0)
    m = SpikingBrainForCausalLM(W8).eval()
    kw = {"max_shard_size": shard} if shard else {}
    m.save_pretrained(path, safe_serialization=fmt == "safetensors", **kw)
    d = json.load(open(path / "config.json"))
    d.pop("quant_weight_group_size", None)
    json.dump(d, open(path / "config.json", "w"))


@pytest.mark.parametrize("fmt,shard", FORMATS)
def test_pinned_overrides_are_refused_before_reading_weights(tmp_path, monkeypatch, fmt, shard):
    _w8a_checkpoint_without_group_key(tmp_path, fmt, shard)
    names = checkpoint_files.checkpoint_tensor_names(str(tmp_path))
    assert names is not None and any(n.endswith(".weight_quantizer.scales") for n in names)
    real = pretrained.load_checkpoint_tensors
    reads = []
    monkeypatch.setattr(pretrained, "load_checkpoint_tensors", lambda p: reads.append(p) or real(p))
    with pytest.raises(ValueError, match=r"pins \['spike_k'\]"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path, spike_k=2.0)
    assert reads == []
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path)   # still loads, as W8ASpike
    assert len(reads) == 1 and m.config.weight_quant == "int8_static" and m.config.spike_k == 3.0


def test_names_of_an_unreadable_checkpoint_are_left_to_the_loader(tmp_path):
    assert checkpoint_files.checkpoint_tensor_names(str(tmp_path)) is None          # no weight files
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    assert checkpoint_files.checkpoint_tensor_names(str(tmp_path)) is None
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip file")
    assert checkpoint_files.checkpoint_tensor_names(str(tmp_path)) is None


def test_a_bin_that_is_not_a_state_dict_is_left_to_the_loader(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    assert checkpoint_files.checkpoint_tensor_names(str(tmp_path)) is None
    torch.save({0: torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert checkpoint_files.checkpoint_tensor_names(str(tmp_path)) is None
