"""sbops.nn.drop_float_weights: an inference-only model keeps the 8-bit weights of its spike-coded layers and
drops their float masters (CPU; the kernels it then runs are the ones the 8-bit inference path ran before)."""
import pytest
import torch

import sbops.nn as snn
from conftest import requires_cuda
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate
from sbops.nn import SpikeLinear

# hidden and intermediate sizes of whole int8 groups (128): every projection, fused groups included, runs on 8 bits
TINY = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=32)


def _model(quant, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SpikingBrainConfig(**{**TINY, "layer_types": ("gla", "swa"), "window": 8, "spike_k": 3.0,
                                "weight_quant": quant, **kw})
    return SpikingBrainForCausalLM(cfg).to(dtype).eval()


def _eight_bit(model):
    return [m for m in model.modules() if isinstance(m, SpikeLinear) and m._has_8bit_path()]


@pytest.mark.parametrize("quant", ["fp8", "int8"])
def test_dropped_model_gives_the_same_logits_and_tokens(quant):
    model = _model(quant)
    assert len(_eight_bit(model)) >= 12  # q/k/v (+ GLA's gate), o, gate/up, down of both layers
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(ids).logits
        want_seq = generate(model, ids, 6)
    assert _eight_bit(model)
    freed = snn.drop_float_weights(model)
    assert freed > 0
    with torch.inference_mode():
        got = model(ids).logits
        got_seq = generate(model, ids, 6)
    assert torch.equal(got, want)
    assert torch.equal(got_seq, want_seq)


def test_dropping_frees_the_float_weights_and_the_state_dict_holds_the_8bit_ones():
    model = _model("fp8", torch.bfloat16)
    lins = _eight_bit(model)
    names = {m: n for n, m in model.named_modules()}
    expect = sum(m.weight.numel() * 2 for m in lins)
    n_params = sum(p.numel() for p in model.parameters())
    assert snn.drop_float_weights(model) == expect
    assert snn.drop_float_weights(model) == 0  # nothing left to drop
    assert sum(p.numel() for p in model.parameters()) == n_params - expect // 2
    sd = model.state_dict()
    for m in lins:
        assert m.weight is None and m.float_dtype == torch.bfloat16
        assert names[m] + ".weight" not in sd
        assert sd[names[m] + ".weight_q"].dtype == torch.float8_e4m3fn
        assert sd[names[m] + ".weight_scale"].dtype == torch.float32
    # a layer that cannot run on 8 bits keeps its float weight: GLA's 16-input low-rank gate under int8
    model8 = _model("int8")
    gate = model8.model.layers[0].self_attn.gk_proj[1]
    assert isinstance(gate, SpikeLinear) and gate.in_features % gate.group_size != 0
    snn.drop_float_weights(model8)
    assert gate.weight is not None


def _storages(model):
    """Distinct storages of 8-bit tensors the model's modules hold (buffers and anything cached in __dict__)."""
    seen = {}
    for m in model.modules():
        for t in list(m._buffers.values()) + [v for v in m.__dict__.values() if isinstance(v, torch.Tensor)] + [
                t for v in m.__dict__.values() if isinstance(v, tuple) for t in v if isinstance(t, torch.Tensor)]:
            if t is not None and t.dtype in (torch.int8, torch.float8_e4m3fn):
                seen[(t.device, t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
    return seen


@pytest.mark.parametrize("quant", ["fp8", "int8"])
def test_fused_projections_share_one_8bit_copy(quant):
    """q/k/v (and GLA's first gate stage) and gate/up run one GEMM over concatenated 8-bit weights; after the
    first forward (under inference_mode) the modules' buffers are row blocks of that copy, so the 8-bit weights
    are held once, and a state dict loads back into them."""
    model = _model(quant)
    snn.drop_float_weights(model)
    with torch.inference_mode():
        want = model(torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))).logits
    mlp = model.model.layers[0].mlp
    g, u = mlp.gate_proj.weight_q, mlp.up_proj.weight_q
    assert g.untyped_storage().data_ptr() == u.untyped_storage().data_ptr()
    attn = model.model.layers[1].self_attn
    assert attn.q_proj.weight_q.untyped_storage().data_ptr() == attn.v_proj.weight_q.untyped_storage().data_ptr()
    assert sum(_storages(model).values()) == sum(m.weight_q.numel() for m in _eight_bit(model))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = _model(quant, seed=5)
    snn.drop_float_weights(fresh)
    with torch.inference_mode():
        fresh(torch.randint(0, 128, (1, 5)))  # its buffers are now views made under inference_mode
    fresh.load_state_dict(sd)
    with torch.inference_mode():
        got = fresh(torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))).logits
    assert torch.equal(got, want)


def test_device_move_and_deepcopy_leave_no_second_copy():
    import copy
    model = _model("fp8")
    snn.drop_float_weights(model)
    ids = torch.randint(0, 128, (1, 6))
    with torch.inference_mode():
        want = model(ids).logits
    twin = copy.deepcopy(model)
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, want)
    model.to("meta")  # every 8-bit tensor the modules hold moves: none stays behind on the CPU
    assert all(dev.type == "meta" for dev, _ in _storages(model))
    assert model.model.layers[0].mlp.down_proj.weight_q.dtype == torch.float8_e4m3fn


def test_partly_dropped_group_holds_its_8bit_weights_once():
    model = _model("fp8")
    mlp = model.model.layers[0].mlp
    ids = torch.randint(0, 128, (1, 4))
    with torch.inference_mode():
        want = model(ids).logits
    mlp.gate_proj.drop_float_weight()  # up_proj keeps its float weight
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, want)
    cached = mlp.__dict__["_sbops_fused_spike"][1][0]
    assert mlp.gate_proj.weight_q.untyped_storage().data_ptr() == cached.untyped_storage().data_ptr()


def test_loading_a_float_checkpoint_into_a_dropped_model_is_refused():
    model = _model("fp8")
    sd = model.state_dict()
    snn.drop_float_weights(model)
    with pytest.raises(RuntimeError, match="float weight was dropped"):
        model.load_state_dict(sd, strict=False)
    with pytest.raises(ValueError, match="float weight was dropped"):
        model.model.layers[0].mlp.down_proj.reset_parameters()


def test_dtype_conversion_keeps_the_8bit_buffers_and_float64_input_works():
    model = _model("fp8")
    ids = torch.randint(0, 128, (1, 7))
    snn.drop_float_weights(model)
    with torch.inference_mode():
        want = model(ids).logits
    model.to(torch.float64)
    lin = model.model.layers[0].mlp.down_proj
    assert lin.weight_q.dtype == torch.float8_e4m3fn and lin.weight_scale.dtype == torch.float32
    assert lin.float_dtype == torch.float64
    assert model.model.layers[1].self_attn.new_cache(1, 4).k.dtype == torch.float64
    with torch.inference_mode():
        got = model(ids).logits  # float64 activations: the dequantised 8-bit weights, in float64
    assert got.dtype == torch.float64
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_gradient_reaches_the_input_of_a_dropped_layer():
    lin = SpikeLinear(64, 32, k=3.0, weight_quant="fp8")
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = lin(x)
    lin.drop_float_weight()
    xg = x.clone().requires_grad_()
    y = lin(xg)
    y.sum().backward()
    assert torch.allclose(y.detach(), want, rtol=1e-4, atol=1e-4)
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert not any(p.requires_grad and p.dim() == 2 for p in lin.parameters())  # no weight left to train


def test_save_pretrained_refuses_a_dropped_model(tmp_path):
    model = _model("fp8")
    snn.drop_float_weights(model)
    with pytest.raises(ValueError, match="drop_float_weights; save the model before"):
        model.save_pretrained(str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_decode_floor_counts_a_dropped_model_like_the_model_it_came_from():
    from sbops.bench import model as bench
    model = _model("fp8", torch.bfloat16)
    before = bench.decode_read_bytes(model)
    snn.drop_float_weights(model)
    assert bench.decode_read_bytes(model) == before


@requires_cuda
def test_dropped_fp8_model_generates_the_same_tokens_on_the_gpu():
    """On a GPU: the CUDA C++ decode kernel and the fp8 prefill, greedy decode under CUDA graphs; the dropped
    model's weights take less memory than the float masters did."""
    model = _model("fp8", torch.bfloat16).cuda()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2)).cuda()
    with torch.inference_mode():
        want = generate(model, ids, 8)
    before = torch.cuda.memory_allocated()
    freed = snn.drop_float_weights(model)
    # the masters went; as many 8-bit bytes as before (the fused copies rebuild as the modules' buffers)
    assert torch.cuda.memory_allocated() <= before - freed + (1 << 20)
    with torch.inference_mode():
        got = generate(model, ids, 8)
    assert torch.equal(got, want)


def test_from_pretrained_can_load_straight_into_an_8bit_only_model(tmp_path):
    """A float checkpoint loaded with spike_k / weight_quant="fp8" and drop_float_weights=True gives the logits of
    the same load without dropping; a model with no 8-bit layer refuses the option."""
    src = _model(None, spike_k=None)  # a plain float model
    src.save_pretrained(str(tmp_path / "m"), safe_serialization=False)
    ids = torch.randint(0, 128, (1, 9))
    kw = dict(spike_k=3.0, weight_quant="fp8")
    keep = SpikingBrainForCausalLM.from_pretrained(str(tmp_path / "m"), **kw)
    drop = SpikingBrainForCausalLM.from_pretrained(str(tmp_path / "m"), drop_float_weights=True, **kw)
    assert all(m.weight is None for m in _eight_bit(drop)) and len(_eight_bit(drop)) >= 12
    with torch.inference_mode():
        assert torch.equal(drop(ids).logits, keep(ids).logits)
    with pytest.raises(ValueError, match="drop_float_weights=True needs spike-coded layers"):
        SpikingBrainForCausalLM.from_pretrained(str(tmp_path / "m"), drop_float_weights=True)


def test_upcycling_from_or_into_dropped_layers_is_refused():
    from sbops.nn import MoEBlock, SwiGLU
    dense = SwiGLU(128, 256, 3.0, "fp8")
    moe = MoEBlock(128, 256, num_experts=2, top_k=1, spike_k=3.0, weight_quant="fp8")
    snn.drop_float_weights(dense)
    with pytest.raises(ValueError, match="dense float weights were dropped"):
        moe.upcycle_from(dense)
    snn.drop_float_weights(moe)
    with pytest.raises(ValueError, match="this block's float weights were dropped"):
        moe.upcycle_from(SwiGLU(128, 256, 3.0, "fp8"))
