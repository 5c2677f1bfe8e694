"""The SWA caches' memory order (sbops.nn.cache.SWA_CACHE_HEAD_MAJOR): head-major caches ([S, HKV, C, D] memory
behind the [S, C, HKV, D] view) give exactly the tokens, scores and cache contents of the key-major default through
prefill, chunked prefill on a cache that holds tokens, packed slots and decode.  CPU; the same on a GPU when one is
present (the kernels read both orders through their strides)."""
import pytest
import torch

from sbops.models import generate
from sbops.nn import cache as cache_mod
from test_generate import tiny_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _run(model, prompts, head_major, monkeypatch):
    monkeypatch.setattr(cache_mod, "SWA_CACHE_HEAD_MAJOR", head_major)
    c = model.new_cache(3, max_length=64)
    out = generate(model, prompts, 6, cache=c, output_scores=True, prefill_chunk_size=5)
    return out, c


@pytest.mark.parametrize("kind", ["7b", "76b"])
@pytest.mark.parametrize("device", DEVICES)
def test_head_major_swa_caches_give_the_key_major_results(kind, device, monkeypatch):
    torch.manual_seed(0)
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    model = tiny_model(kind, window=6, dtype=dtype).to(device)
    prompts = [torch.randint(0, 128, (n,), device=device) for n in (11, 4, 17)]
    ref, c_ref = _run(model, prompts, False, monkeypatch)
    got, c_got = _run(model, prompts, True, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(got.sequences, ref.sequences))
    assert all(torch.equal(a, b) for a, b in zip(got.scores, ref.scores))
    swa = [t for t in c_got.tensors() if t.dim() == 4 and not t.is_contiguous()]
    assert swa, "head-major caches are permuted views"
    assert all(t.permute(0, 2, 1, 3).is_contiguous() for t in swa)
    for a, b in zip(c_got.tensors(), c_ref.tensors()):
        assert a.shape == b.shape and torch.equal(a, b)
