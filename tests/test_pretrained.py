"""Released SpikingBrain-7B checkpoints (hf_7B_model / W8ASpike format) <-> sbops.models, built
tiny in the tests themselves; nothing is downloaded."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from sbops.compat import fla_v0, flash_attn
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.models import pretrained
from sbops.nn.spike import SpikeLinear, int8_fake_quant_per_row, spike_fake_quant_released

def st():
    """safetensors.torch, or a skip for the tests that need it (the .bin checkpoints do not)."""
    return pytest.importorskip("safetensors.torch")


def _default_format():
    try:
        import safetensors.torch  # noqa: F401
        return "safetensors"
    except ImportError:
        return "bin"

CONFIG = {  # a tiny config.json in the released format (keys as GLAswaConfig writes them)
    "architectures": ["GLAswaForCausalLM"], "model_type": "gla_swa", "attn_layers": [1, 2], "attn_mode": "chunk",
    "hidden_act": "swish", "hidden_size": 32, "intermediate_size": 40, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 50, "norm_eps": 1e-6, "rope_theta": 1000000.0,
    "sliding_window": 3, "tie_word_embeddings": False, "torch_dtype": "float32", "use_short_conv": False,
    "bos_token_id": 1, "eos_token_id": 1, "max_position_embeddings": 4096, "conv_size": 4, "elementwise_affine": True,
    "fuse_cross_entropy": True, "initializer_range": 0.02, "attention_dropout": 0.0, "use_cache": True,
    "transformers_version": "4.45.0"}


def released_tensors(d, seed=0, w8a=False):
    """Random tensors under the released key names, shaped from config dict d (independent of our model)."""
    g = torch.Generator().manual_seed(seed)
    h, I, V = d["hidden_size"], d["intermediate_size"], d["vocab_size"]
    H, HKV = d["num_attention_heads"], d["num_key_value_heads"]
    D = h // H
    attn = d.get("attn_layers", list(range(1, d["num_hidden_layers"], 2)))

    def r(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.2 + mean

    sd = {"model.embeddings.weight": r(V, h), "model.norm.weight": r(h, mean=1.0)}
    if not d.get("tie_word_embeddings"):
        sd["lm_head.weight"] = r(V, h)
    for i in range(d["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({p + "attn_norm.weight": r(h, mean=1.0), p + "mlp_norm.weight": r(h, mean=1.0),
                   p + "attn.q_proj.weight": r(H * D, h), p + "attn.q_proj.bias": r(H * D),
                   p + "attn.k_proj.weight": r(HKV * D, h), p + "attn.k_proj.bias": r(HKV * D),
                   p + "attn.v_proj.weight": r(HKV * D, h), p + "attn.v_proj.bias": r(HKV * D),
                   p + "attn.o_proj.weight": r(h, H * D), p + "mlp.gate_proj.weight": r(I, h),
                   p + "mlp.up_proj.weight": r(I, h), p + "mlp.down_proj.weight": r(h, I)})
        if i not in attn:
            sd[p + "attn.g_norm.weight"] = r(D, mean=1.0)
            if w8a:
                sd.update({p + "attn.gk_proj.weight": r(HKV * D, h), p + "attn.gk_proj.bias": r(HKV * D)})
            else:
                sd.update({p + "attn.gk_proj.0.weight": r(16, h), p + "attn.gk_proj.1.weight": r(HKV * D, 16),
                           p + "attn.gk_proj.1.bias": r(HKV * D)})
    if w8a:
        for k in [k for k in sd if k.endswith("_proj.weight") and k.startswith("model.layers.")]:
            out, inp = sd[k].shape
            sd[k[:-len("weight")] + "weight_quantizer.scales"] = torch.rand(out, inp // 128, 1, generator=g) * 0.01 + 1e-3
    return sd


def write_checkpoint(path, d, sd, fmt=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(d, fh)
    fmt = fmt or _default_format()
    if fmt == "safetensors":
        st().save_file(sd, os.path.join(path, "model.safetensors"))
    elif fmt == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:  # sharded safetensors, one shard per half of the keys
        keys = sorted(sd)
        halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for fname, ks in halves.items():
            st().save_file({k: sd[k] for k in ks}, os.path.join(path, fname))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": {k: f for f, ks in halves.items() for k in ks}}, fh)
    return path


def ours(name):
    """The issue's rename table, written out independently of sbops.models.pretrained."""
    name = name.replace("model.embeddings.", "model.embed_tokens.").replace(".attn_norm.", ".input_layernorm.")
    name = name.replace(".mlp_norm.", ".post_attention_layernorm.").replace(".attn.g_norm.", ".self_attn.o_norm.")
    return name.replace(".attn.", ".self_attn.")


# ----------------------------------------------------------------------- the released forward, fla/flash-attn style
def rms(x, w, eps, residual=None):
    h = x if residual is None else x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w, h


def released_spikes(x, k=3.0):
    """W8ASpike's dynamic_spikes + QuantLinear's x = (spikes_int * vth).to(x.dtype), written out."""
    vth = (x.abs().mean([-1], keepdim=True).float() / k).clamp(min=1e-5, max=1e4)
    return ((x / vth).round() * vth).to(x.dtype)


def released_quantize_sym(x, bit=8):
    """W8ASpike window_attention.quantize_sym, written out."""
    scale = (x.abs().amax([-1], keepdim=True).float() / (2 ** (bit - 1) - 1)).clamp(min=1e-5, max=1e4)
    return ((x / scale).round().clamp(-(1 << (bit - 1)), (1 << (bit - 1)) - 1) * scale).to(x.dtype)


def released_forward(sd, d, ids, w8a=False):
    """GLAswaForCausalLM.forward on float64 tensors, through sbops.compat: hf_7B_model, or with
    w8a=True the W8ASpike variant (QuantLinear in the blocks: spike-coded inputs, checkpoint int8
    weight scales; full-rank gk_proj; spiked q and int8 k/v in SWA after RoPE; swiglu_linear's
    plain down_proj)."""
    sd = {k: v.double() for k, v in sd.items()}
    h, H, HKV = d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"]
    D, G, eps, W = h // H, H // HKV, d["norm_eps"], d["sliding_window"]
    B, T = ids.shape
    pos = torch.arange(T, dtype=torch.float64)
    inv = 1.0 / (d["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.int64).double() / D))
    emb = torch.cat([pos[:, None] * inv] * 2, -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]

    def rope(t):
        return t * cos + torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1) * sin

    x = sd["model.embeddings.weight"][ids]
    for i in range(d["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name, t, quant=w8a):
            w = sd[p + name + ".weight"]
            if quant:  # QuantLinear: Quantizer(weight) in groups of 128 inputs, dynamic spikes on the input
                s = sd[p + name + ".weight_quantizer.scales"]
                w = ((w.reshape(w.shape[0], -1, 128) / s).round() * s).reshape(w.shape)
                t = released_spikes(t)
            return t @ w.T + sd.get(p + name + ".bias", 0)
        hs, _ = rms(x, sd[p + "attn_norm.weight"], eps)
        q, k, v = lin("attn.q_proj", hs), lin("attn.k_proj", hs), lin("attn.v_proj", hs)
        if i in d["attn_layers"]:
            q, k, v = q.view(B, T, H, D), k.view(B, T, HKV, D), v.view(B, T, HKV, D)
            q, k = rope(q), rope(k)
            k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
            if w8a:
                q, k, v = released_spikes(q), released_quantize_sym(k), released_quantize_sym(v)
            o = flash_attn.flash_attn_func(q, k, v,
                                           softmax_scale=D ** -0.5, causal=True, window_size=(W, 0)).reshape(B, T, h)
        else:
            gk = lin("attn.gk_proj", hs) if w8a else lin("attn.gk_proj.1", lin("attn.gk_proj.0", hs))
            q, k = F.relu(q), F.relu(k)
            q, k, v, gk = (t.view(B, T, -1, D).transpose(1, 2) for t in (q, k, v, gk))
            gk = F.logsigmoid(gk) / 16
            k, v, gk = (t.repeat_interleave(G, 1) for t in (k, v, gk))
            o, _ = fla_v0.chunk_gla(q, k, v, gk)
            o = rms(o, sd[p + "attn.g_norm.weight"], eps)[0].transpose(1, 2).reshape(B, T, h)
        hs, res = rms(lin("attn.o_proj", o), sd[p + "mlp_norm.weight"], eps, residual=x)
        x = res + lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", hs)) * lin("mlp.up_proj", hs), quant=False)
    head = sd.get("lm_head.weight", sd["model.embeddings.weight"])
    return rms(x, sd["model.norm.weight"], eps)[0] @ head.T


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ----------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
def test_released_checkpoint_loads_every_tensor_in_place(tmp_path, fmt):
    sd = released_tensors(CONFIG)
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / fmt, CONFIG, sd, fmt))
    cfg = model.config
    assert cfg.layer_types == ("gla", "swa", "swa", "gla")
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.window) == (4, 2, 8, 3)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.gate_low_rank_dim, cfg.gate_logit_normalizer) == (1e6, 1e-6, 16, 16)
    own = model.state_dict()
    for k, t in sd.items():
        assert torch.equal(own[ours(k)], t), k
    assert not model.training


def test_logits_match_the_released_forward(tmp_path):
    sd = released_tensors(CONFIG, seed=1)
    model = pretrained.from_pretrained(SpikingBrainForCausalLM, write_checkpoint(tmp_path, CONFIG, sd),
                                       dtype=torch.float64)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.dtype == torch.float64
    assert rel(logits, released_forward(sd, CONFIG, ids)) < 1e-6


def test_dtype_auto_follows_torch_dtype_and_can_be_overridden(tmp_path):
    d = dict(CONFIG, torch_dtype="bfloat16")
    path = write_checkpoint(tmp_path, d, released_tensors(d))
    assert SpikingBrainForCausalLM.from_pretrained(path).lm_head.weight.dtype == torch.bfloat16
    assert SpikingBrainForCausalLM.from_pretrained(path, dtype=torch.float32).lm_head.weight.dtype == torch.float32
    m = SpikingBrainForCausalLM.from_pretrained(path, torch_dtype=torch.float16)
    assert m.model.layers[0].self_attn.o_norm.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        SpikingBrainForCausalLM.from_pretrained(path, dtype=torch.int8)


def test_tied_embeddings_load_and_save_without_lm_head(tmp_path):
    st()   # save_pretrained writes safetensors
    d = dict(CONFIG, tie_word_embeddings=True)
    sd = released_tensors(d)
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / "a", d, sd))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path / "b")
    assert "lm_head.weight" not in st().load_file(tmp_path / "b" / "model.safetensors")


def test_missing_num_key_value_heads_means_all_heads_and_defaults_apply(tmp_path):
    d = {k: v for k, v in CONFIG.items() if k not in ("rope_theta", "attn_layers")}
    d["num_key_value_heads"] = None
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path, d, released_tensors(
        dict(d, num_key_value_heads=4))))
    assert model.config.num_kv_heads == 4 and model.config.rope_theta == 1e6
    assert model.config.layer_types == ("gla", "swa", "gla", "swa")  # default attn_layers: odd layers


# ----------------------------------------------------------------------- saving
def test_round_trip_reproduces_config_and_tensors(tmp_path):
    st()   # save_pretrained writes safetensors
    d = dict(CONFIG, torch_dtype="bfloat16")
    src = write_checkpoint(tmp_path / "src", d, {k: v.to(torch.bfloat16) for k, v in released_tensors(d).items()})
    model = SpikingBrainForCausalLM.from_pretrained(src)
    model.save_pretrained(tmp_path / "out")
    a = st().load_file(os.path.join(src, "model.safetensors"))
    b = st().load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert json.load(open(tmp_path / "out" / "config.json")) == d


def test_sharded_save_loads_back_to_the_same_logits(tmp_path):
    st()   # save_pretrained writes safetensors
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / "a", CONFIG, released_tensors(CONFIG)))
    pretrained.save_pretrained(model, tmp_path / "b", max_shard_size=20000)
    index = json.load(open(tmp_path / "b" / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path / "b")
    ids = torch.arange(7)[None] % CONFIG["vocab_size"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_fresh_7b_style_model_saves_in_released_format(tmp_path):
    st()   # save_pretrained writes safetensors
    cfg = pretrained.config_from_released(CONFIG)
    model = SpikingBrainForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    d = json.load(open(tmp_path / "config.json"))
    assert d["model_type"] == "gla_swa" and d["attn_layers"] == [1, 2] and d["sliding_window"] == 3
    keys = set(st().load_file(tmp_path / "model.safetensors"))
    assert "model.layers.0.attn.g_norm.weight" in keys and "model.embeddings.weight" in keys
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path)
    assert again.config == cfg


def test_models_the_released_format_cannot_express_use_the_native_format(tmp_path):
    st()   # save_pretrained writes safetensors
    cfg = SpikingBrainConfig(vocab_size=30, hidden_size=16, intermediate_size=24, num_heads=2, num_kv_heads=1,
                             head_dim=8, layer_types=("hybrid", "hybrid"), num_meta_tokens=2, num_experts=2, window=4)
    model = SpikingBrainForCausalLM(cfg).double()
    with pytest.raises(ValueError, match="layer_types"):
        model.save_pretrained(tmp_path / "x", released_format=True)
    model.save_pretrained(tmp_path / "n")
    assert json.load(open(tmp_path / "n" / "config.json"))["model_type"] == "sbops_spikingbrain"
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path / "n")
    ids = torch.arange(6)[None]
    assert again.config == cfg
    with torch.no_grad():  # .double() also cast the RoPE inv_freq buffer, which a loaded model keeps in float32
        assert rel(again(ids).logits, model(ids).logits) < 1e-9


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("change,exc,word", [
    ({"use_short_conv": True}, NotImplementedError, "use_short_conv"),
    ({"hidden_act": "gelu"}, NotImplementedError, "hidden_act"),
    ({"attn_mode": "parallel"}, ValueError, "attn_mode"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, NotImplementedError, "rope_scaling"),
    ({"some_new_option": 1}, ValueError, "some_new_option"),
    ({"attn_layers": [1, 9]}, ValueError, "attn_layers"),
    ({"sliding_window": None}, NotImplementedError, "sliding_window"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, ValueError, "model_type"),
    ({"torch_dtype": "int8"}, ValueError, "torch_dtype"),
])
def test_unsupported_config_is_an_error_naming_the_option(tmp_path, change, exc, word):
    path = write_checkpoint(tmp_path, dict(CONFIG, **change), released_tensors(CONFIG))
    with pytest.raises(exc, match=word):
        SpikingBrainForCausalLM.from_pretrained(path)


def test_unknown_config_keys_can_be_allowed(tmp_path):
    path = write_checkpoint(tmp_path, dict(CONFIG, some_new_option=1), released_tensors(CONFIG))
    assert SpikingBrainForCausalLM.from_pretrained(path, allow_unknown_config_keys=True).config.num_layers == 4


def test_leftover_missing_and_misshaped_tensors_are_errors(tmp_path):
    sd = released_tensors(CONFIG)
    extra = dict(sd, **{"model.layers.0.attn.rotary.inv_freq": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"no place.*model\.layers\.0\.attn\.rotary\.inv_freq"):
        SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / "a", CONFIG, extra))
    missing = {k: v for k, v in sd.items() if k != "model.layers.3.attn.g_norm.weight"}
    with pytest.raises(ValueError, match=r"does not have.*model\.layers\.3\.self_attn\.o_norm\.weight"):
        SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / "b", CONFIG, missing))
    bad = dict(sd, **{"model.layers.1.attn.k_proj.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"k_proj\.bias.*shape"):
        SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path / "c", CONFIG, bad))
    os.makedirs(tmp_path / "d")
    json.dump(CONFIG, open(tmp_path / "d" / "config.json", "w"))
    with pytest.raises(FileNotFoundError, match="no weights"):
        SpikingBrainForCausalLM.from_pretrained(tmp_path / "d")


# ----------------------------------------------------------------------- W8ASpike
W8A_CONFIG = dict(CONFIG, hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
                  torch_dtype="bfloat16")


def test_w8aspike_checkpoint_loads_with_its_model_options_and_round_trips(tmp_path):
    st()   # save_pretrained writes safetensors
    sd = released_tensors(W8A_CONFIG, w8a=True)
    path = write_checkpoint(tmp_path / "src", W8A_CONFIG, sd)
    model = SpikingBrainForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.gate_low_rank_dim, cfg.swa_q_spike_k, cfg.swa_kv_quant, cfg.mlp_down_quant) == (0, 3.0, "int8", False)
    assert (cfg.spike_k, cfg.weight_quant) == (3.0, "int8_static")
    own = model.state_dict()
    for k, t in sd.items():
        if ".mlp.down_proj.weight_quantizer" not in k:  # unused by the release's swiglu_linear: kept aside
            assert torch.equal(own[ours(k)], t.to(torch.bfloat16)), k
    model.save_pretrained(tmp_path / "out")
    b = st().load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(b) == sorted(sd) and all(torch.equal(b[k], sd[k].to(torch.bfloat16)) for k in sd)
    assert json.load(open(tmp_path / "out" / "config.json")) == W8A_CONFIG


def test_w8aspike_logits_match_the_released_w8aspike_forward(tmp_path):
    sd = released_tensors(W8A_CONFIG, seed=2, w8a=True)
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path, W8A_CONFIG, sd), dtype=torch.float64)
    ids = torch.randint(0, W8A_CONFIG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    want = released_forward(sd, W8A_CONFIG, ids, w8a=True)
    assert rel(logits, want) < 1e-6
    # the W8ASpike options matter: the plain forward on the same tensors is far away
    plain = {k: v for k, v in sd.items() if "weight_quantizer" not in k}
    d = dict(W8A_CONFIG)
    assert rel(want, _plain_forward_full_rank_gate(plain, d, ids)) > 1e-2


def _plain_forward_full_rank_gate(sd, d, ids):
    """released_forward without spiking or quantisation, with W8ASpike's full-rank gate."""
    sd = dict(sd)
    for i in range(d["num_hidden_layers"]):
        p = f"model.layers.{i}.attn."
        if p + "gk_proj.weight" in sd:  # express the full-rank gate as a rank-h pair: identity then gk_proj
            h = d["hidden_size"]
            sd[p + "gk_proj.0.weight"] = torch.eye(h, dtype=sd[p + "gk_proj.weight"].dtype)
            sd[p + "gk_proj.1.weight"], sd[p + "gk_proj.1.bias"] = sd.pop(p + "gk_proj.weight"), sd.pop(p + "gk_proj.bias")
    return released_forward(sd, d, ids)


def test_w8aspike_cached_decode_matches_the_full_forward(tmp_path):
    """Quantising SWA keys/values at cache-write time equals the release's quantising of the window."""
    sd = released_tensors(W8A_CONFIG, seed=3, w8a=True)
    model = SpikingBrainForCausalLM.from_pretrained(write_checkpoint(tmp_path, W8A_CONFIG, sd), dtype=torch.float64)
    ids = torch.randint(0, W8A_CONFIG["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2)
        steps = [model(ids[:, :5], cache).logits]
        steps += [model(ids[:, t:t + 1], cache).logits for t in range(5, 8)]
    assert rel(torch.cat(steps, 1), full) < 1e-9


def test_int8_static_weights_use_the_checkpoint_scales():
    lin = SpikeLinear(256, 3, bias=False, k=None, weight_quant="int8_static")
    assert "weight_quantizer.scales" in lin.state_dict() and lin.weight_quantizer.scales.shape == (3, 2, 1)
    with torch.no_grad():
        lin.weight.normal_().clamp_(-3, 3)
        lin.weight_quantizer.scales.uniform_(0.03, 0.05)  # |w / s| <= 100: int8_weight needs no clamp
    s = lin.weight_quantizer.scales.double()
    w = lin.weight.double().view(3, 2, 128)
    expect = ((w / s).round() * s).view(3, 256)
    assert torch.allclose(lin.effective_weight().double(), expect, rtol=1e-6, atol=1e-7)
    x = torch.randn(5, 256)
    assert torch.allclose(lin(x).double(), x.double() @ expect.T, rtol=1e-5, atol=1e-5)
    q, scales = lin.int8_weight()
    assert q.dtype == torch.int8 and torch.allclose((q.double().view(3, 2, 128) * scales.double()[..., None]).view(3, 256),
                                                    expect, rtol=1e-6, atol=1e-7)


def test_released_activation_fake_quants_match_their_formulas():
    x = torch.randn(4, 3, 16, dtype=torch.float64) * 3
    vth = (x.abs().mean(-1, keepdim=True).float() / 3).clamp(1e-5, 1e4)  # the release takes vth in float32
    assert torch.equal(spike_fake_quant_released(x, 3.0), (x / vth).round() * vth)
    scale = (x.abs().amax(-1, keepdim=True).float() / 127).clamp(1e-5, 1e4)
    y = int8_fake_quant_per_row(x)
    assert torch.equal(y, (x / scale).round().clamp(-128, 127) * scale)
    assert len(torch.unique((y / scale).round())) > 50  # really 8-bit levels, not a pass-through
    xg = x.clone().requires_grad_()
    int8_fake_quant_per_row(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # straight-through


def test_swiglu_down_quant_false_keeps_a_plain_down_proj():
    from sbops.nn import SwiGLU
    mlp = SwiGLU(128, 256, spike_k=3.0, weight_quant="int8_static", down_quant=False)
    keys = set(mlp.state_dict())
    assert "gate_proj.weight_quantizer.scales" in keys and not any(k.startswith("down_proj.weight_") for k in keys)
    x = torch.randn(3, 128)
    h = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert torch.allclose(mlp(x), h @ mlp.down_proj.weight.T, rtol=1e-6, atol=1e-6)  # no spiking, no quantisation on down_proj


@pytest.mark.parametrize("opt", [dict(swa_q_spike_k=3.0), dict(swa_kv_quant="int8"), dict(mlp_down_quant=False),
                                 dict(window=-1)], ids=["swa_q_spike_k", "swa_kv_quant", "mlp_down_quant", "window-1"])
def test_what_the_plain_release_cannot_hold_is_saved_natively_and_loads_back(tmp_path, opt):
    """W8ASpike options without spike_k / weight_quant, and full-causal softmax layers (window=-1), have no place in
    the plain released format: save_pretrained keeps them in sbops' format (they were lost, or the folder could not
    be loaded back), and released_format=True names what it cannot express."""
    st()
    cfg = SpikingBrainConfig(vocab_size=30, hidden_size=16, intermediate_size=24, num_heads=2, num_kv_heads=1,
                             head_dim=8, layer_types=("gla", "swa"), **{"window": 4, **opt})
    model = SpikingBrainForCausalLM(cfg).double()
    name = next(iter(opt))
    with pytest.raises(ValueError, match=name):
        model.save_pretrained(tmp_path / "r", released_format=True)
    model.save_pretrained(tmp_path / "n")
    assert json.load(open(tmp_path / "n" / "config.json"))["model_type"] == "sbops_spikingbrain"
    again = SpikingBrainForCausalLM.from_pretrained(tmp_path / "n")
    assert again.config == cfg
    ids = torch.arange(9)[None] % 30
    with torch.no_grad():
        assert rel(again(ids).logits, model(ids).logits) < 1e-9
