"""down_weight_quant="int8_channel": a W8ASpike model's FFN down projections in int8 with one scale per output
channel (sbops.nn.SwiGLU, SpikingBrainConfig, sbops.bench.model --down-quant), whatever weight_quant is."""
import pytest
import torch

import sbops
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.nn import SpikeLinear, SwiGLU

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
           layer_types=("gla", "swa"), window=4, spike_k=3.0, weight_quant="fp8")


def test_swiglu_down_proj_is_int8_per_channel_and_runs_the_op_at_inference():
    torch.manual_seed(0)
    m = SwiGLU(32, 64, spike_k=3.0, weight_quant="fp8", down_weight_quant="int8_channel").eval()
    d = m.down_proj
    assert isinstance(d, SpikeLinear) and d.weight_quant == "int8" and d.group_size == 64
    assert m.gate_proj.weight_quant == "fp8"
    q, sc = d.int8_weight()
    assert q.dtype == torch.int8 and sc.shape == (32, 1)
    torch.testing.assert_close(sc[:, 0], sbops.quantize_weight(d.weight.detach())[1], rtol=1e-6, atol=0)
    x = torch.randn(5, 32)
    with torch.no_grad():
        h = torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x)
        want = torch.nn.functional.linear(sbops.spike_quant(h, 3.0), q.float() * sc)  # float32 reference
        got = m(x)
        assert d._runs_on_int8(h)   # inference goes through sbops.spike_linear on the int8 copy
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_swiglu_refuses_unknown_down_formats_by_name():
    with pytest.raises(ValueError, match="down_weight_quant must be one of"):
        SwiGLU(32, 64, 3.0, "fp8", down_weight_quant="int4")
    with pytest.raises(ValueError, match="down_weight_quant needs down_quant=True"):
        SwiGLU(32, 64, 3.0, "fp8", down_quant=False, down_weight_quant="int8_channel")


def test_config_checks_down_weight_quant_and_the_model_builds_it():
    cfg = SpikingBrainConfig(**CFG, down_weight_quant="int8_channel")
    model = SpikingBrainForCausalLM(cfg).eval()
    downs = [l.mlp.down_proj for l in model.model.layers]
    assert all(d.weight_quant == "int8" and d.group_size == 64 for d in downs)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 64, (2, 7))).logits).all()
    with pytest.raises(ValueError, match="down_weight_quant must be one of"):
        SpikingBrainConfig(**CFG, down_weight_quant="int8")
    for bad in (dict(weight_quant=None), dict(weight_quant="int8_static"), dict(mlp_down_quant=False),
                dict(num_experts=2)):
        with pytest.raises(ValueError, match="down_weight_quant='int8_channel' takes a dense FFN"):
            SpikingBrainConfig(**{**CFG, **bad}, down_weight_quant="int8_channel")


def test_down_weight_quant_survives_save_and_load(tmp_path):
    pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**CFG, down_weight_quant="int8_channel")).eval()
    model.save_pretrained(tmp_path)
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert again.config.down_weight_quant == "int8_channel"
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_bench_down_quant_needs_weight_quant(capsys):
    from sbops.bench.model_args import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--down-quant", "int8_channel"], "doc")
    assert "--down-quant needs --weight-quant" in capsys.readouterr().err
    a = parse_args(["--tiny", "--weight-quant", "fp8", "--down-quant", "int8_channel"], "doc")
    assert a.down_quant == "int8_channel"
