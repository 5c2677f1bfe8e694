"""from_pretrained(dtype="auto") where config.json names no torch_dtype: the checkpoint's floating dtype is told by its
files' headers (every shard's .safetensors header, or a memory-mapped .bin) before any weight is read, so a dtype the
model cannot be built in is refused without reading the weights (before, the whole checkpoint was read first).  Mixed
or untold dtypes keep the old rule: the first floating tensor's, as read."""
import json

import pytest
import torch

from conftest import has_module
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.models import checkpoint_files, pretrained

CFG = SpikingBrainConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                         layer_types=("gla", "swa"), window=4, gate_low_rank_dim=0)
FORMATS = [("bin", None), ("bin", 20000)] + ([("safetensors", None), ("safetensors", 20000)]
                                             if has_module("safetensors") else [])


def _checkpoint(path, fmt, shard, convert=None):
    """A tiny native checkpoint without torch_dtype in config.json; convert(name, tensor) rewrites its tensors."""
    torch.manual_seed(0)
    m = SpikingBrainForCausalLM(CFG).to(torch.bfloat16).eval()
    safe = fmt == "safetensors"
    m.save_pretrained(path, safe_serialization=safe, **({"max_shard_size": shard} if shard else {}))
    if convert is not None:
        sd = {k: convert(k, t) for k, t in checkpoint_files.load_checkpoint_tensors(str(path)).items()}
        checkpoint_files.write_tensors(sd, str(path), shard or 1 << 40, safe)
    d = json.load(open(path / "config.json"))
    d.pop("torch_dtype", None)
    d.pop("dtype", None)
    json.dump(d, open(path / "config.json", "w"))


def _count_reads(monkeypatch):
    real, reads = pretrained.load_checkpoint_tensors, []
    monkeypatch.setattr(pretrained, "load_checkpoint_tensors", lambda p: reads.append(p) or real(p))
    return reads


@pytest.mark.parametrize("fmt,shard", FORMATS)
def test_a_dtype_the_model_cannot_take_is_refused_before_reading_weights(tmp_path, monkeypatch, fmt, shard):
    _checkpoint(tmp_path, fmt, shard, lambda k, t: t.to(torch.float8_e5m2) if t.is_floating_point() else t)
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) == {torch.float8_e5m2}
    reads = _count_reads(monkeypatch)
    with pytest.raises(ValueError, match="tensors are float8_e5m2 and config.json names no torch_dtype"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert reads == []
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)  # an explicit dtype loads it
    assert len(reads) == 1 and m.model.embed_tokens.weight.dtype == torch.float32


@pytest.mark.parametrize("fmt,shard", FORMATS)
def test_one_floating_dtype_is_taken_from_the_headers(tmp_path, monkeypatch, fmt, shard):
    _checkpoint(tmp_path, fmt, shard)
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) == {torch.bfloat16}
    reads = _count_reads(monkeypatch)
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert len(reads) == 1 and m.model.embed_tokens.weight.dtype == torch.bfloat16


def test_mixed_dtypes_keep_the_first_floating_tensor_as_read(tmp_path):
    """The first floating tensor as read is float32, the others bfloat16: a "most common dtype" rule would differ."""
    seen = []

    def first_to_f32(k, t):
        if t.is_floating_point() and not seen:
            seen.append(k)
            return t.float()
        return t
    _checkpoint(tmp_path, "bin", None, first_to_f32)
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) == {torch.bfloat16, torch.float32}
    first = next(t.dtype for t in checkpoint_files.load_checkpoint_tensors(str(tmp_path)).values()
                 if t.is_floating_point())
    assert first == torch.float32
    m = SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert m.model.embed_tokens.weight.dtype == torch.float32


def test_headers_that_cannot_tell_are_left_to_the_loader(tmp_path):
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None    # no weight files
    f = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # a type the table does not know
    f.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # a header length past any real one
    f.write_bytes(b"\x03")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # truncated
    for bad in ({"w": {"dtype": ["F32"]}}, {"w": "F32"}, ["w"]):             # malformed entries
        header = json.dumps(bad).encode()
        f.write_bytes(len(header).to_bytes(8, "little") + header)
        assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None
    deep = b"[" * 200000
    f.write_bytes(len(deep).to_bytes(8, "little") + deep)
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # nesting past the JSON parser's depth
    f.unlink()
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": 3}}))
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # a shard name that is not a string
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip file")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # not a state dict
    torch.save({"w": torch.zeros(2, dtype=torch.int8)}, tmp_path / "pytorch_model.bin")
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) == set()  # no floating tensor: float32, as before


@pytest.mark.skipif(not has_module("safetensors"), reason="needs safetensors")
def test_a_malformed_header_still_ends_in_the_loaders_error_naming_the_file(tmp_path):
    _checkpoint(tmp_path, "safetensors", None)
    header = json.dumps({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path)


def test_the_format_follows_the_index_not_the_shard_names(tmp_path):
    """A safetensors index listing .bin-named shards: load_checkpoint_tensors reads them as safetensors, so must this."""
    _checkpoint(tmp_path, "bin", None)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model.bin"}}))
    assert checkpoint_files.checkpoint_float_dtypes(str(tmp_path)) is None   # not a safetensors header
