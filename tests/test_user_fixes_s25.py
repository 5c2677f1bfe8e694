"""Session 25 user-facing fixes (CPU): each test failed on the code before it.

- state dicts of a model that ran inference (fused projections) hold whole tensors: safetensors' save_model /
  load_model work, for plain and for 8-bit (drop_float_weights) projections;
- vmap of ops with data checks on (the default on CPU);
- spike_expand's default T for counts past 2^53;
- the raw ops' checks: spike_linear's weight_scale / weight_q, in-place tensors that are expanded;
- CausalLMOutput.hidden_states / attentions are None, as in Hugging Face;
- SpikingBrainConfig refuses an int8_static model whose linears do not split into groups of 128.
"""
import pytest
import torch

import sbops
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM


def _tiny(**kw):
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
               layer_types=("gla", "swa"), window=5)
    cfg.update(kw)
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**cfg)).eval()


def _whole(t):
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


def _shared_views(model):
    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if not _whole(t)]


def _check_state_dict_unfuses(m, ids):
    """m's fused inference, then state_dict(): whole tensors; the next call fuses again, same logits."""
    with torch.no_grad():
        ref = m(ids).logits
    assert _shared_views(m), "the projections were not fused: the test would not test anything"
    sd = m.state_dict()
    assert all(_whole(t) for t in sd.values())
    assert not _shared_views(m)
    with torch.no_grad():
        again = m(ids).logits   # fuses again
    assert _shared_views(m)
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


def test_state_dict_after_fused_inference_holds_whole_tensors():
    _check_state_dict_unfuses(_tiny(), torch.randint(0, 97, (1, 6)))


def test_safetensors_save_and_load_model_after_inference(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    m = _tiny()
    ids = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        ref = m(ids).logits
    f = str(tmp_path / "m.safetensors")
    st.save_model(m, f)
    m2 = _tiny()
    with torch.no_grad():
        m2(ids)   # m2 fused too: load_model must still take it
    st.load_model(m2, f)
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, ref, rtol=0, atol=0)


def test_state_dict_of_dropped_8bit_weights_after_inference_holds_whole_tensors():
    m = _tiny(spike_k=3.0, weight_quant="fp8")
    assert sbops.nn.drop_float_weights(m) > 0
    _check_state_dict_unfuses(m, torch.randint(0, 97, (1, 4)))


def test_vmap_runs_with_data_checks_on():
    x, ids = torch.randn(2, 4, 3), torch.randint(0, 3, (2, 4, 2))
    with sbops.data_checks(True):
        out = torch.vmap(lambda x, i: sbops.moe_permute(x, i, 3)[0])(x, ids)
        counts = torch.vmap(lambda i: sbops.expert_counts(i, 3))(ids)
        trains = torch.vmap(lambda c: sbops.spike_expand(c, "ternary", T=2))(torch.randint(-2, 3, (2, 5)))
    for b in range(2):
        torch.testing.assert_close(out[b], sbops.moe_permute(x[b], ids[b], 3)[0])
        torch.testing.assert_close(counts[b], sbops.expert_counts(ids[b], 3))
    assert trains.shape[0] == 2


def test_spike_expand_vmap_without_T_names_the_fix():
    with pytest.raises(ValueError, match="pass T explicitly"):
        torch.vmap(lambda c: sbops.spike_expand(c, "ternary"))(torch.randint(-2, 3, (2, 5)))


@pytest.mark.parametrize("m", [2 ** 53, 2 ** 53 + 1, 2 ** 60, 2 ** 62])
def test_spike_expand_bitwise_default_T_past_2_53(m):
    c = torch.tensor([m, -3])
    trains = sbops.spike_expand(c, "bitwise")
    assert trains.shape[0] == m.bit_length()
    w = 2 ** torch.arange(trains.shape[0] - 1, -1, -1, dtype=torch.float64)   # spike_collapse returns int32
    got = [sum(int(w[t]) * int(trains[t, i]) for t in range(trains.shape[0])) for i in range(2)]
    assert got == c.tolist()


def test_raw_spike_linear_checks_weight_scale_and_weight_q():
    wq, ws = sbops.quantize_weight(torch.randn(6, 8))
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match=r"weight_scale must be \[N\] = \[6\]"):
        torch.ops.sbops.spike_linear(x, wq, torch.ones(2), 3.0, None, 0)
    with pytest.raises(RuntimeError, match=r"weight_scale must be \[N, K // group_size\] = \[6, 2\]"):
        torch.ops.sbops.spike_linear(x, wq, torch.ones(6), 3.0, None, 4)
    with pytest.raises(RuntimeError, match="weight_q must be int8 or float8_e4m3fn"):
        torch.ops.sbops.spike_linear(x, wq.float(), ws, 3.0, None, 0)
    torch.testing.assert_close(torch.ops.sbops.spike_linear(x, wq, ws, 3.0, None, 0),
                               sbops.spike_linear(x, wq, ws, 3.0))


def test_raw_decode_ops_refuse_expanded_in_place_tensors():
    N, H, HKV, K, V = 3, 2, 2, 4, 4
    q, k, v = torch.randn(N, H, K), torch.randn(N, HKV, K), torch.randn(N, HKV, V)
    state = torch.zeros(1, HKV, K, V).expand(N, HKV, K, V)
    with pytest.raises(RuntimeError, match="state is updated in place and must not be expanded"):
        torch.ops.sbops.linear_attn_decode(q, k, v, None, state, None, 0.5)
    cache = torch.zeros(1, 4, HKV, K).expand(N, 4, HKV, K)
    with pytest.raises(RuntimeError, match="k_cache is updated in place and must not be expanded"):
        torch.ops.sbops.swa_cache_write(k, v, cache, torch.zeros(N, 4, HKV, V), torch.zeros(N, dtype=torch.int64),
                                        None)


def test_causal_lm_output_hidden_states_and_attentions_are_none():
    out = _tiny()(torch.randint(0, 97, (1, 3)))
    assert out.hidden_states is None and out.attentions is None


def test_int8_static_config_names_the_field_that_breaks_groups_of_128():
    base = dict(vocab_size=97, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=32,
                layer_types=("gla", "swa"), weight_quant="int8_static")
    with pytest.raises(ValueError, match="each of gate_low_rank_dim=16 must be a multiple of 128"):
        SpikingBrainConfig(**base)
    with pytest.raises(ValueError, match="intermediate_size=96"):
        SpikingBrainConfig(**dict(base, gate_low_rank_dim=0, intermediate_size=96))
    SpikingBrainConfig(**dict(base, gate_low_rank_dim=0))
    SpikingBrainConfig(**dict(base, layer_types=("swa",)))   # no GLA layer: no low-rank gate


def test_integer_arguments_take_numpy_integers_and_refuse_bools():
    np = pytest.importorskip("numpy")
    x, ids = torch.randn(4, 3), torch.randint(0, 3, (4, 2))
    torch.testing.assert_close(sbops.moe_permute(x, ids, np.int64(3))[0], sbops.moe_permute(x, ids, 3)[0])
    torch.testing.assert_close(sbops.expert_counts(ids, np.int32(3)), sbops.expert_counts(ids, 3))
    with pytest.raises(ValueError, match="num_experts must be a positive int"):
        sbops.expert_counts(torch.zeros(4, 2, dtype=torch.int64), True)
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 1, 8), torch.randn(1, 5, 1, 8)
    torch.testing.assert_close(sbops.swa_attn(q, k, v, window=np.int64(2)), sbops.swa_attn(q, k, v, window=2))
    with pytest.raises(TypeError, match="window must be an int"):
        sbops.swa_attn(q, k, v, window=True)
    c = torch.randint(-3, 4, (6,))
    torch.testing.assert_close(sbops.spike_expand(c, "ternary", T=np.int64(3)), sbops.spike_expand(c, "ternary", T=3))
    with pytest.raises(ValueError, match="T must be a positive int"):
        sbops.spike_expand(c, "ternary", T=True)
    assert sbops.spike_stats(c, "ternary", T=np.int64(4))["T"] == 4
    logits = torch.randn(4, 8)
    torch.testing.assert_close(sbops.topk_gating(logits, np.int64(2), num_groups=np.int64(4), topk_groups=np.int64(2)),
                               sbops.topk_gating(logits, 2, num_groups=4, topk_groups=2))
    wq, ws = sbops.quantize_weight(torch.randn(6, 8), group_size=np.int64(4))
    torch.testing.assert_close(sbops.spike_linear(torch.randn(2, 8), wq, ws, 3.0, group_size=np.int64(4)).shape,
                               torch.Size([2, 6]))


def test_zero_kv_heads_error_names_them():
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 3, 0, 8)
    with pytest.raises(ValueError, match="k/v need at least one head"):
        sbops.swa_attn(q, k, k.clone(), window=2)


def test_spike_expand_on_meta_tensors():
    c = torch.empty(5, dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="pass T explicitly for meta tensors"):
        sbops.spike_expand(c, "bitwise")
    assert sbops.spike_expand(c, "bitwise", T=4).shape == (4, 5)
