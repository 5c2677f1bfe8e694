"""sbops.nn layers as users call them (CPU): spike_report counts what each layer really codes (fused
projections, MoE routing), MoE upcycling / empty batches, argument and input checks naming what is wrong."""
import pytest
import torch

from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, spike_report
from sbops.nn import GatedLinearAttention, MoEBlock, RMSNorm, SlidingWindowAttention, SpikeLinear, SwiGLU
from sbops.nn import common

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16, window=8)


@pytest.mark.parametrize("quant", [None, "int8", "fp8"])
def test_spike_report_sees_every_coded_layer_whatever_runs_fused(quant):
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**TINY, layer_types=("gla", "swa"), spike_k=3.0,
                                                       weight_quant=quant)).eval()
    coded = {n for n, m in model.named_modules() if isinstance(m, SpikeLinear) and m.k}
    ids = torch.randint(0, 96, (2, 11))
    rep = spike_report(model, ids)
    assert set(rep["layers"]) == coded and all(r["bitwise"]["numel"] > 0 for r in rep["layers"].values())
    assert common.FUSE_PROJECTIONS                                     # restored


def test_spike_report_counts_only_the_tokens_each_expert_is_routed():
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**TINY, layer_types=("hybrid",), num_experts=4,
                                                       num_meta_tokens=2, spike_k=3.0)).eval()
    T = 16
    rep = spike_report(model, torch.randint(0, 96, (1, T)))
    seen = [rep["layers"][f"model.layers.0.mlp.experts.{e}.gate_proj"]["bitwise"]["numel"] // 64
            for e in range(4) if f"model.layers.0.mlp.experts.{e}.gate_proj" in rep["layers"]]
    assert sum(seen) == T                                              # top-1: each token at one expert
    assert all("sync_free_max_tokens" not in m.__dict__ for m in model.modules() if isinstance(m, MoEBlock))


def test_moe_upcycling_refuses_biases_and_wrong_shapes_and_equals_dense_when_renormalized():
    dense = SwiGLU(16, 8)
    x = torch.randn(5, 16)
    with torch.no_grad():
        moe = MoEBlock(16, 8, num_experts=4, top_k=1, renormalize=True).upcycle_from(dense)
        torch.testing.assert_close(moe(x)[0], dense(x), rtol=1e-5, atol=1e-6)
    biased = torch.nn.Module()
    biased.gate_proj, biased.up_proj, biased.down_proj = (torch.nn.Linear(16, 8), torch.nn.Linear(16, 8),
                                                          torch.nn.Linear(8, 16))
    with pytest.raises(ValueError, match="dense.gate_proj has a bias"):
        MoEBlock(16, 8, num_experts=2).upcycle_from(biased)
    with pytest.raises(ValueError, match="must have the dense FFN's shapes"):
        MoEBlock(16, 8, num_experts=2, shared_intermediate_size=12).upcycle_from(dense)


def test_moe_on_no_tokens_gives_an_empty_output_and_a_zero_aux_loss():
    m = MoEBlock(16, 8, num_experts=4)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y, aux = m(torch.randn(0, 16))
        assert y.shape == (0, 16) and aux.item() == 0.0


def test_float64_inference_stays_float64():
    torch.manual_seed(0)
    lin = SpikeLinear(256, 8, weight_quant="int8").double()
    m = MoEBlock(16, 8, num_experts=3).double()
    x, x2 = torch.randn(4, 256, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        y_inf, m_inf = lin(x), m(x2)[0]
    y_train, m_train = lin(x), m(x2)[0]
    assert (y_inf - y_train).abs().max() < 1e-12 and (m_inf - m_train).abs().max() < 1e-12


def test_layer_arguments_and_inputs_are_checked_by_name():
    with pytest.raises(ValueError, match="group_size must be an int >= 1"):
        SpikeLinear(16, 4, group_size=0)
    with pytest.raises(ValueError, match="k must be a positive finite number"):
        SpikeLinear(16, 4, k=float("inf"))
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., in_features=16\]"):
        SpikeLinear(16, 4)(torch.randn(3, 12))
    with pytest.raises(ValueError, match="num_kv_heads must be an int >= 1"):
        SlidingWindowAttention(64, 4, 0, 16, window=4)
    with pytest.raises(ValueError, match="head_dim must be even"):
        SlidingWindowAttention(64, 4, 2, 15, window=4)
    swa = SlidingWindowAttention(64, 4, 2, 16, window=4)
    gla = GatedLinearAttention(64, 4, 2, 16)
    for layer in (swa, gla):   # (GLA unpacked x's shape first: "not enough values to unpack")
        for bad in (torch.randn(5, 64), torch.randn(1, 5, 32), torch.randn(1, 1, 5, 64)):
            with pytest.raises(ValueError, match=r"x must be \[B, T, hidden_size=64\]"):
                layer(bad)
    norm = RMSNorm(8, elementwise_affine=False)
    assert "8" in repr(norm)
    with pytest.raises(ValueError, match=r"RMSNorm: x must be \[\.\.\., dim=8\]"):
        norm(torch.randn(2, 6))


def test_int8_static_export_refuses_weights_its_scales_cannot_hold():
    lin = SpikeLinear(128, 2, weight_quant="int8_static", group_size=128)
    with torch.no_grad():
        lin.weight.fill_(0.01)
        lin.weight_quantizer.scales.fill_(1 / 64)
        lin.int8_weight()                                   # |w / s| = 0.64: fine
        lin.weight[0, 0] = 300.0
    with pytest.raises(ValueError, match="outside the int8 range"):
        lin.int8_weight()


def test_layers_infer_shapes_on_the_meta_device():
    """As nn.Linear and fla allow: meta tensors go to the ops' fake kernels (no backend is asked)."""
    from sbops.nn import GatedLinearAttention
    x = torch.empty(1, 5, 64, device="meta")
    for layer in (SlidingWindowAttention(64, 4, 2, 16, window=4), GatedLinearAttention(64, 4, 2, 16)):
        assert layer.to("meta")(x).shape == (1, 5, 64)
    lin = SpikeLinear(256, 4, weight_quant="int8").to("meta")
    with torch.no_grad():
        assert lin(torch.empty(2, 256, device="meta")).shape == (2, 4)
