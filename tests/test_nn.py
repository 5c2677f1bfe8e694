"""sbops.nn layers: float64 references built from each layer's own weights, decode == prefill,
spike coding, MoE routing and upcycling, torch.compile of one block."""
import copy

import pytest
import torch
import torch.nn.functional as F

import sbops
from reference import ref_linear_attn, ref_swa_attn, rel_err
from sbops.models import DecoderLayer, SpikingBrainConfig
from sbops.nn import (GatedLinearAttention, HybridAttention, MoEBlock, SlidingWindowAttention, SpikeLinear, SwiGLU,
                      apply_rope, dequantize_weight_int8, quantize_weight_int8)

HID, H, HKV, D = 64, 4, 2, 16


def _heads(t, n):
    return t.view(*t.shape[:2], n, D)


def _rope64(m64, q, k, T):
    cos, sin = m64.rotary(torch.arange(T)[None])
    return apply_rope(q, cos[:, :, None].double(), sin[:, :, None].double()), \
        apply_rope(k, cos[:, :, None].double(), sin[:, :, None].double())


def _randomize_norms(m):
    # norms start at 1; random weights make the reference comparison see them
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return m


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("T", [1, 63])
def test_gla_matches_float64_reference(T):
    m = _randomize_norms(GatedLinearAttention(HID, H, HKV, D))
    x = torch.randn(2, T, HID)
    m64, x64 = copy.deepcopy(m).double(), x.double()
    q = F.relu(_heads(m64.q_proj(x64), H))
    k = F.relu(_heads(m64.k_proj(x64), HKV))
    v = _heads(m64.v_proj(x64), HKV)
    g = F.logsigmoid(_heads(m64.gk_proj(x64), HKV)) / 16
    o, _ = ref_linear_attn(q, k, v, g)
    ref = m64.o_proj(m64.o_norm(o).reshape(2, T, H * D))
    assert rel_err(m(x), ref) < 1e-5


@pytest.mark.parametrize("window", [8, -1])
def test_swa_matches_float64_reference(window):
    T = 63
    m = SlidingWindowAttention(HID, H, HKV, D, window=window, rope_theta=1e4)
    x = torch.randn(2, T, HID)
    m64, x64 = copy.deepcopy(m).double(), x.double()
    q, k = _rope64(m64, _heads(m64.q_proj(x64), H), _heads(m64.k_proj(x64), HKV), T)
    o, _ = ref_swa_attn(q, k, _heads(m64.v_proj(x64), HKV), window)
    ref = m64.o_proj(o.reshape(2, T, H * D))
    assert rel_err(m(x), ref) < 1e-5


@pytest.mark.parametrize("meta", [0, 5])
def test_hybrid_matches_float64_reference(meta):
    T = 63
    m = _randomize_norms(HybridAttention(HID, H, HKV, D, window=8, num_meta_tokens=meta))
    x = torch.randn(2, T, HID)
    m64, x64 = copy.deepcopy(m).double(), x.double()
    q, k, v = _heads(m64.q_proj(x64), H), _heads(m64.k_proj(x64), HKV), _heads(m64.v_proj(x64), HKV)
    kl = torch.sigmoid(k).clamp(max=0.95)
    o_lin, _ = ref_linear_attn(F.relu(q), kl, v, torch.log(1 - kl))
    qr, kr = _rope64(m64, q, k, T)
    o_sm, _ = ref_swa_attn(qr, kr, v, 8, sink_k=m64.meta_k, sink_v=m64.meta_v)
    ref = m64.o_proj((0.5 * (m64.linear_norm(o_lin) + m64.softmax_norm(o_sm))).reshape(2, T, H * D))
    assert rel_err(m(x), ref) < 1e-5


# --------------------------------------------------------------------------- decode == prefill
LAYERS = {  # name -> constructor(head_dim)
    "gla": lambda d=D: GatedLinearAttention(HID, H, HKV, d),
    "swa": lambda d=D: SlidingWindowAttention(HID, H, HKV, d, window=8),
    "swa_full": lambda d=D: SlidingWindowAttention(HID, H, HKV, d, window=-1),
    "hybrid": lambda d=D: HybridAttention(HID, H, HKV, d, window=8, num_meta_tokens=0),
    "hybrid_meta": lambda d=D: HybridAttention(HID, H, HKV, d, window=8, num_meta_tokens=4),
    "hybrid_full_meta": lambda d=D: HybridAttention(HID, H, HKV, d, window=-1, num_meta_tokens=4),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_decode_steps_match_full_forward(name):
    """Prefill 5 tokens into a fresh cache, then decode 25 more one at a time (the ring buffer
    of window + 1 = 9 rows wraps several times); every step equals the full-sequence output."""
    m = LAYERS[name]()
    B, T0, T = 3, 5, 30
    x = torch.randn(B, T, HID)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(B, max_length=T)
        before = [(t.shape, t.data_ptr()) for t in _cache_tensors(cache)]
        outs = [m(x[:, :T0], cache)]
        for t in range(T0, T):
            outs.append(m(x[:, t:t + 1], cache, torch.full((B, 1), t)))
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
    assert [(t.shape, t.data_ptr()) for t in _cache_tensors(cache)] == before  # updated in place, never grown


@pytest.mark.parametrize("name", list(LAYERS))
def test_prefill_chunks_on_a_cache_match_full_forward(name):
    """Chunks of 4, 11, 2, 13 tokens (longer and shorter than the window of 8) appended to the cache
    with the layers' legacy positions argument (the chunk's first position) equal one forward."""
    m = LAYERS[name]()
    B, T = 2, 30
    x = torch.randn(B, T, HID)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(B, max_length=T)
        outs, t = [], 0
        for n in (4, 11, 2, 13):
            outs.append(m(x[:, t:t + n], cache, torch.full((B, 1), t)))
            t += n
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


def _cache_tensors(c):
    if hasattr(c, "linear"):
        return _cache_tensors(c.linear) + _cache_tensors(c.softmax)
    return [c.state] if hasattr(c, "state") else [c.k, c.v]


def test_cache_sizes():
    gla = GatedLinearAttention(HID, H, HKV, D).new_cache(3)
    swa = SlidingWindowAttention(HID, H, HKV, D, window=8).new_cache(3)
    assert gla.state.shape == (3, HKV, D, D) and gla.state.dtype == torch.float32
    assert swa.k.shape == swa.v.shape == (3, 9, HKV, D)
    with pytest.raises(ValueError, match="max_length"):
        SlidingWindowAttention(HID, H, HKV, D, window=-1).new_cache(3)


@pytest.mark.parametrize("name", ["gla", "swa", "hybrid_meta"])
def test_new_cache_follows_the_layer_device(name):
    # a layer moved to another device allocates its cache there (the meta device stands in for a GPU)
    m = LAYERS[name]().to("meta")
    assert {t.device.type for t in _cache_tensors(m.new_cache(2, max_length=12))} == {"meta"}


# --------------------------------------------------------------------------- SpikeLinear
def test_spike_linear_is_threshold_times_integer_matmul():
    lin = SpikeLinear(48, 20, bias=True, k=3.0)
    x = torch.randn(5, 7, 48)
    counts, vth = sbops.spike_encode(x, 3.0, out_dtype=torch.int32)
    ref = vth.double() * (counts.double() @ lin.weight.double().T) + lin.bias.double()
    assert rel_err(lin(x), ref) < 1e-5
    assert rel_err(lin(x), F.linear(x, lin.weight, lin.bias)) > 1e-3  # the coding is really applied


def test_spike_linear_straight_through_gradient():
    lin = SpikeLinear(48, 20, k=3.0)
    x = torch.randn(6, 48, requires_grad=True)
    gy = torch.randn(6, 20)
    (lin(x) * gy).sum().backward()
    assert rel_err(x.grad, gy @ lin.weight) < 1e-6
    assert lin.weight.grad is not None and lin.bias.grad is not None


@pytest.mark.parametrize("in_features", [256, 200, 64])
def test_int8_weight_quantisation(in_features):
    w = torch.randn(12, in_features)
    q, scales = quantize_weight_int8(w, 128)
    assert q.dtype == torch.int8 and scales.shape == (12, -(-in_features // 128))
    deq = dequantize_weight_int8(q, scales, 128)
    per_col_scale = scales.repeat_interleave(128, dim=1)[:, :in_features]
    assert ((deq - w).abs() <= per_col_scale / 2 + 1e-7).all()
    lin = SpikeLinear(in_features, 12, bias=False, k=None, weight_quant="int8")
    with torch.no_grad():
        lin.weight.copy_(w)
    x = torch.randn(3, in_features, requires_grad=True)
    assert rel_err(lin(x), x @ deq.T) < 1e-6
    lin(x).sum().backward()
    assert torch.allclose(lin.weight.grad, x.detach().sum(0).expand(12, -1))  # straight through


# --------------------------------------------------------------------------- MoE
def test_moe_matches_per_token_loop():
    moe = MoEBlock(HID, 32, num_experts=4, top_k=2, renormalize=False)
    x = torch.randn(2, 9, HID)
    y, aux = moe(x)
    x2 = x.reshape(-1, HID)
    with torch.no_grad():
        probs = torch.softmax(moe.router(x2).double(), -1)
    ref = []
    for t in range(x2.shape[0]):
        w, ids = probs[t].topk(2)
        ref.append(sum(w[j] * moe.experts[int(ids[j])](x2[t:t + 1]).double() for j in range(2))
                   + moe.shared_expert(x2[t:t + 1]).double())
    assert rel_err(y.reshape(-1, HID), torch.cat(ref)) < 1e-5
    ids = probs.topk(2, dim=-1).indices
    frac = torch.bincount(ids.flatten(), minlength=4).double() / ids.numel()
    assert abs(float(aux.detach()) - 4 * float((frac * probs.mean(0)).sum())) < 1e-5


def test_moe_upcycled_equals_dense_ffn_and_trains():
    dense = SwiGLU(HID, 32)
    moe = MoEBlock(HID, 32, num_experts=16, top_k=1).upcycle_from(dense, scale=0.98)
    assert torch.allclose(moe.experts[3].down_proj.weight, 0.98 * dense.down_proj.weight)
    assert torch.allclose(moe.shared_expert.down_proj.weight, 0.02 * dense.down_proj.weight)
    x = torch.randn(2, 11, HID)
    y, aux = moe(x)
    assert rel_err(y, dense(x)) < 1e-5
    (y.square().mean() + aux).backward()
    assert moe.router.weight.grad.abs().sum() > 0  # through the aux loss
    assert all(p.grad is not None for p in moe.shared_expert.parameters())


# --------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("kind", ["gla", "swa", "hybrid"])
def test_decoder_block_compiles_fullgraph(kind):
    cfg = SpikingBrainConfig(vocab_size=128, hidden_size=HID, intermediate_size=96, num_heads=H, num_kv_heads=HKV,
                             head_dim=D, layer_types=(kind,), window=8, num_meta_tokens=4, spike_k=3.0)
    block = DecoderLayer(cfg, 0)
    x = torch.randn(2, 20, HID, requires_grad=True)
    y_ref, _ = block(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x] + list(block.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    y, _ = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(block.parameters()))
    assert rel_err(y, y_ref) < 1e-6
    for a, b in zip(grads, g_ref):
        assert rel_err(a, b) < 1e-5


# --------------------------------------------------------------------------- GPU: the layers on the cuda backend
# The layers above run on the CPU backend at head_dim 16; the GPU kernels take head_dim 64/128, so these
# build the same layer kinds at D = 64, run them on the GPU (Triton prefill + CUDA C++ decode kernels) and
# compare with the same weights on the CPU backend. float32 keeps it exact (the kernels use ieee dots for
# float32); bfloat16 checks the dtype models are run in.
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
D64 = 64
LAYERS_GPU = ["gla", "swa", "swa_full", "hybrid_meta"]


@GPU
@pytest.mark.parametrize("name", LAYERS_GPU)
def test_gpu_layer_prefill_decode_and_grads_match_cpu(name):
    torch.manual_seed(0)
    m = _randomize_norms(LAYERS[name](D64))
    B, T0, T = 2, 37, 45
    x = torch.randn(B, T, HID)
    ref = m(x.requires_grad_())
    gy = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * gy).sum(), [x] + list(m.parameters()))
    mc = copy.deepcopy(m).cuda()
    xc = x.detach().cuda().requires_grad_()
    full = mc(xc)
    grads = torch.autograd.grad((full * gy.cuda()).sum(), [xc] + list(mc.parameters()))
    assert full.is_cuda and rel_err(full.detach().cpu(), ref.detach()) < 1e-4
    for got, want in zip(grads, ref_grads):
        assert rel_err(got.cpu(), want) < 1e-4
    with torch.no_grad():
        cache = mc.new_cache(B, max_length=T)
        outs = [mc(xc[:, :T0], cache)]
        for t in range(T0, T):
            outs.append(mc(xc[:, t:t + 1], cache, torch.full((B, 1), t, device="cuda")))
    assert rel_err(torch.cat(outs, 1).cpu(), ref.detach()) < 1e-4


@GPU
@pytest.mark.parametrize("name", LAYERS_GPU)
def test_gpu_layer_bfloat16_close_to_float32(name):
    torch.manual_seed(1)
    m = LAYERS[name](D64).cuda()
    x = torch.randn(2, 70, HID, device="cuda")
    with torch.no_grad():
        want = m(x)
        got = copy.deepcopy(m).bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 3e-2


@GPU
def test_gpu_moe_block_matches_cpu():
    torch.manual_seed(2)
    moe = MoEBlock(HID, 32, num_experts=8, top_k=2)
    x = torch.randn(3, 21, HID)
    y, aux = moe(x)
    mc = copy.deepcopy(moe).cuda()
    yc, auxc = mc(x.cuda())
    assert rel_err(yc.detach().cpu(), y.detach()) < 1e-4 and abs(auxc.item() - aux.item()) < 1e-5
    (yc.square().mean() + auxc).backward()
    (y.square().mean() + aux).backward()
    assert rel_err(mc.router.weight.grad.cpu(), moe.router.weight.grad) < 1e-4


def test_spike_linear_layer_at_inference_runs_the_w8aspike_op_and_matches_training_path():
    lin = SpikeLinear(256, 24, bias=True, k=3.0, weight_quant="int8", group_size=128)
    x = torch.randn(5, 7, 256)
    y_train = lin(x)                                   # fake-quant path (weight requires grad)
    with torch.no_grad():
        calls = []
        orig = sbops.spike_linear
        sbops.spike_linear = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
        try:
            y_inf = lin(x)
        finally:
            sbops.spike_linear = orig
    assert calls, "inference did not run sbops.spike_linear"
    torch.testing.assert_close(y_inf, y_train.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the cached int8 weight follows an update of the float weight
        lin.weight.mul_(2)
        torch.testing.assert_close(lin(x), F.linear(sbops.spike_quant(x, 3.0), lin.effective_weight(), lin.bias),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_quant", ["int8", "fp8"])
def test_spike_linear_layers_reading_one_input_fuse_into_one_w8aspike_call(weight_quant):
    """fp8 (per-channel e4m3 weights) runs the op at inference like int8 and matches its training path;
    SpikeLinears fed the same input (gate/up, q/k/v) run one encode + one GEMM over their concatenated
    8-bit weights and give each module's own result."""
    from sbops.nn.common import SwiGLU
    torch.manual_seed(0)
    mlp = SwiGLU(256, 128, spike_k=3.0, weight_quant=weight_quant)
    x = torch.randn(3, 5, 256)
    y_train = mlp(x)                                   # fake-quant path, module by module
    with torch.no_grad():
        calls = []
        orig = sbops.spike_linear
        sbops.spike_linear = lambda *a, **kw: calls.append(a[1].shape[0]) or orig(*a, **kw)
        try:
            y_inf = mlp(x)
        finally:
            sbops.spike_linear = orig
    assert calls == [256, 256], calls                 # gate+up fused (2 x 128 rows), then down
    torch.testing.assert_close(y_inf, y_train.detach(), rtol=1e-4, atol=1e-5)
    if weight_quant == "fp8":
        assert mlp.up_proj.int8_weight()[0].dtype == torch.float8_e4m3fn
    # the fused copy follows the modules: a bias updated in place, a bias removed
    from sbops.nn.common import fused_linears
    a, b = (SpikeLinear(256, 128, bias=True, k=3.0, weight_quant=weight_quant) for _ in range(2))
    owner = torch.nn.Module()
    with torch.no_grad():
        for _ in range(2):
            ya, yb = fused_linears(owner, (a, b), x)
            torch.testing.assert_close(ya, a(x), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(yb, b(x), rtol=1e-4, atol=1e-5)
            a.bias.add_(10.0)
        b.bias = None
        ya, yb = fused_linears(owner, (a, b), x)
        torch.testing.assert_close(yb, b(x), rtol=1e-4, atol=1e-5)
