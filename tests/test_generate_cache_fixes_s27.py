"""generate() / ModelCache fixes (session 27): a cache whose slots were reused by later sequences is not
continued by position; a cache made under inference_mode keeps its host bookkeeping (the full-attention room
check); max_new_tokens=0 resets a cache passed without reuse_cache."""
import pytest
import torch

import sbops
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
           layer_types=("gla", "swa", "gla", "swa"), window=4, initializer_range=0.3)


def _model(**changes):
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**{**CFG, **changes})).eval()


def test_reuse_cache_refuses_a_cache_whose_slots_later_sequences_took():
    m = _model()
    ps = [torch.randint(0, 64, (n,)) for n in (4, 6, 5)]
    c = m.new_cache(3)
    out = generate(m, ps, 3, cache=c, max_batch_size=2)   # prompt 2 runs in the slot prompt 0 freed
    nxt = [torch.cat([t, torch.tensor([1, 2])]) for t in out]
    with pytest.raises(ValueError, match="reuse_cache: .*max_batch_size.*slot i no longer holds sequence i"):
        generate(m, nxt, 4, cache=c, reuse_cache=True)
    out = generate(m, ps, 3, cache=c)                      # all at once: slot i holds sequence i again
    nxt = [torch.cat([t, torch.tensor([1, 2])]) for t in out]
    for a, b in zip(generate(m, nxt, 4, cache=c, reuse_cache=True), generate(m, nxt, 4)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_decoding_past_a_full_attention_cache_is_refused_under_inference_mode_too(mode):
    m = _model(layer_types=("hybrid", "swa"), full_attention_layers=(0,))
    ids = torch.randint(0, 64, (1, 9))
    with mode(), sbops.data_checks(False):   # data checks off, as on a GPU by default
        c = m.new_cache(1, max_length=8)
        m(ids[:, :8], cache=c)
        with pytest.raises(ValueError, match="slot 0 holds 8 tokens"):
            m(ids[:, 8:], cache=c)


def test_generate_with_no_new_tokens_resets_the_cache_it_is_given():
    m = _model()
    c = m.new_cache(1)
    generate(m, [torch.randint(0, 64, (5,))], 3, cache=c)
    assert c.seq_lens.tolist() == [7]
    generate(m, [torch.randint(0, 64, (4,))], 0, cache=c)
    assert c.seq_lens.tolist() == [0]
    p = torch.randint(0, 64, (4,))       # so reuse_cache now continues nothing: a fresh run
    assert torch.equal(generate(m, [p], 2, cache=c, reuse_cache=True)[0], generate(m, [p], 2)[0])
