"""weight_quant="int8_channel": every block projection of a W8ASpike model in int8 with one scale per output channel
(sbops.nn.common.make_linear, SpikingBrainConfig, sbops.bench.model --weight-quant int8_channel).  On Hopper its
prefill runs every projection on sbops' int8 GEMM (the int_mm path), counts past 127 only in the exact fix-up."""
import pytest
import torch

from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.nn import SpikeLinear
from sbops.nn.common import make_linear

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
           layer_types=("gla", "swa", "hybrid"), window=4, num_meta_tokens=2, spike_k=3.0,
           weight_quant="int8_channel")


def test_make_linear_int8_channel_is_int8_with_a_group_per_row():
    m = make_linear(48, 20, True, 3.0, "int8_channel")
    assert isinstance(m, SpikeLinear) and m.weight_quant == "int8" and m.group_size == 48
    q, sc = m.int8_weight()
    assert q.dtype == torch.int8 and sc.shape == (20, 1)


def test_every_block_projection_is_per_channel_int8_and_inference_equals_fake_quant():
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**CFG)).eval()
    spikes = [m for m in model.model.layers.modules() if isinstance(m, SpikeLinear)]
    assert spikes and all(m.weight_quant == "int8" and m.group_size == m.in_features for m in spikes)
    # every linear of the blocks, GLA's low-rank gate pair included; lm_head and the embeddings stay float
    plain = [n for n, m in model.model.layers.named_modules() if type(m) is torch.nn.Linear]
    assert plain == [] and not isinstance(model.lm_head, SpikeLinear)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        got = model(ids).logits          # sbops.spike_linear on the int8 copies (the op's CPU kernel)
        assert all(m._runs_on_int8(torch.zeros(1, m.in_features)) for m in spikes)
    want = model(ids).logits.detach()    # gradients on: the fake-quant path (straight-through), the reference
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_config_takes_int8_channel_with_a_down_format_and_round_trips(tmp_path):
    pytest.importorskip("safetensors.torch")
    cfg = SpikingBrainConfig(**CFG, down_weight_quant="int8_channel")
    torch.manual_seed(1)
    model = SpikingBrainForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert again.config.weight_quant == "int8_channel"
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    with pytest.raises(ValueError, match="weight_quant must be one of"):
        SpikingBrainConfig(**{**CFG, "weight_quant": "int8_row"})


def test_bench_takes_weight_quant_int8_channel():
    from sbops.bench.model_args import parse_args
    assert parse_args(["--tiny", "--weight-quant", "int8_channel"], "doc").weight_quant == "int8_channel"


def test_an_int8_channel_model_keeps_only_its_int8_weights_and_the_same_logits():
    """drop_float_weights on an int8_channel model: every block projection (GLA's 16-input gate included, a group
    per row) keeps only weight_q [out, in] int8 and weight_scale [out, 1], and inference gives the same logits."""
    from sbops.nn import drop_float_weights
    torch.manual_seed(2)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**CFG)).eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
        assert drop_float_weights(model) > 0
        spikes = [m for m in model.model.layers.modules() if isinstance(m, SpikeLinear)]
        assert all(m.weight is None and m.weight_q.dtype == torch.int8 and m.weight_scale.shape == (m.out_features, 1)
                   for m in spikes)
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
