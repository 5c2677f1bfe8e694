"""sbops.nn fixes (session 27): hooks see fused projections, SpikeLinear refuses a mixed input dtype at
inference too, int8 (de)quantisation checks group_size, constructors name bad arguments, fp8 layers pickle after
inference, RMSNorm / HybridAttention reset their parameters."""
import copy
import pickle

import pytest
import torch

from sbops.nn import (GatedLinearAttention, HybridAttention, MoEBlock, RMSNorm, SlidingWindowAttention, SpikeLinear,
                      SwiGLU, dequantize_weight_int8, quantize_weight_int8)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_forward_hooks_on_projections_run_at_inference(mode):
    torch.manual_seed(0)
    m, x = SwiGLU(8, 8), torch.randn(1, 3, 8)
    h = m.up_proj.register_forward_hook(lambda mod, i, o: o * 0)  # a hook that changes the output
    with mode():
        assert m(x).abs().max() == 0
    h.remove()
    with mode():
        assert m(x).abs().max() > 0
    a = GatedLinearAttention(16, 2, 1, 8)
    calls = []
    a.v_proj.register_forward_pre_hook(lambda mod, i: calls.append(1))
    with mode():
        a(torch.randn(1, 4, 16))
    assert calls == [1]
    calls.clear()
    g = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
    try:
        with mode():
            SlidingWindowAttention(16, 2, 1, 8, window=2)(torch.randn(1, 4, 16))
    finally:
        g.remove()
    assert calls.count("Linear") == 4   # q, k, v, o each ran as itself


def test_spike_linear_refuses_an_input_of_another_dtype_at_inference_too():
    s = SpikeLinear(8, 8, weight_quant="int8", group_size=4)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    for ctx in (torch.no_grad, torch.enable_grad):
        with ctx(), pytest.raises(TypeError, match="SpikeLinear: x is torch.bfloat16 but the layer's weight is torch.float32"):
            s(x)


def test_int8_dequantisation_checks_the_group_size_against_the_scales():
    q, s = quantize_weight_int8(torch.randn(4, 256), 128)
    for wrong in (256, 64):
        with pytest.raises(ValueError, match=r"dequantize_weight_int8: scales must be \[out=4, ceil"):
            dequantize_weight_int8(q, s, wrong)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="quantize_weight_int8: group_size must be an int >= 1"):
            quantize_weight_int8(torch.randn(4, 256), bad)


@pytest.mark.parametrize("build, match", [
    (lambda: SlidingWindowAttention(8, 2, 1, 4, rope_theta=0), "rope_theta"),
    (lambda: HybridAttention(8, 2, 1, 4, window=2, rope_theta=-1.0), "rope_theta"),
    (lambda: RMSNorm(4, eps=-1), "RMSNorm: eps must be a finite number > 0"),
    (lambda: GatedLinearAttention(8, 2, 1, 4, gate_logit_normalizer=0), "gate_logit_normalizer must be a finite number > 0"),
    (lambda: GatedLinearAttention(8, 2, 1, 4, gate_low_rank_dim=-1), "gate_low_rank_dim must be an int >= 0"),
    (lambda: HybridAttention(8, 2, 1, 4, window=2, key_clamp=1.0), "key_clamp must be a finite number > 0 and < 1"),
    (lambda: HybridAttention(8, 2, 1, 4, window=2, num_meta_tokens=2.5), "num_meta_tokens must be an int >= 0"),
    (lambda: HybridAttention(8, 2, 1, 4, window=2, num_meta_tokens=-1), "num_meta_tokens must be an int >= 0"),
    (lambda: SlidingWindowAttention(8, 2, 1, 4, window=2.5), "window must be an int"),
    (lambda: SlidingWindowAttention(8, True, 1, 4), "num_heads must be an int >= 1"),
    (lambda: SpikeLinear(8, 8, k="3"), "k must be a positive finite number"),
    (lambda: SpikeLinear(8, 8, group_size=True), "group_size must be an int >= 1"),
    (lambda: MoEBlock(8, 8, num_experts=0), "num_experts must be an int >= 1"),
    (lambda: MoEBlock(8, 8, num_experts=2, top_k=3), "top_k=3 must be at most num_experts=2"),
])
def test_constructors_refuse_bad_arguments_by_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_fp8_layers_pickle_and_copy_after_inference():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    for m in (SpikeLinear(8, 8, weight_quant="fp8"), SwiGLU(8, 16, spike_k=3.0, weight_quant="fp8")):
        with torch.no_grad():
            ref = m(x)
        for back in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
            with torch.no_grad():
                torch.testing.assert_close(back(x), ref)


def test_reset_parameters_covers_rmsnorm_and_meta_tokens_after_to_empty():
    with torch.device("meta"):
        n, h = RMSNorm(4, bias=True), HybridAttention(8, 2, 1, 4, window=2, num_meta_tokens=3)
    n, h = n.to_empty(device="cpu"), h.to_empty(device="cpu")
    for mod in (*n.modules(), *h.modules()):
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    assert torch.equal(n.weight, torch.ones(4)) and torch.equal(n.bias, torch.zeros(4))
    assert h.meta_k.isfinite().all() and 0 < h.meta_k.std() < 0.1 and 0 < h.meta_v.std() < 0.1


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_block_in_float64_passes_gradcheck(renormalize):
    torch.manual_seed(0)
    m = MoEBlock(8, 6, num_experts=3, top_k=2, renormalize=renormalize).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
