"""sbops.compat.fla vs naive float64 references of fla's documented semantics."""
import types

import pytest
import torch

import sbops
from sbops.compat import fla, fla_v0

torch.manual_seed(0)
F64 = torch.float64


# ---------------------------------------------------------------- float64 references (fla semantics)
def ref_gla(q, k, v, g=None, scale=None, initial_state=None, reverse=False, cu_seqlens=None):
    """Sequence-first [B, T, H, *] naive recurrence at H heads; returns (o, final [N, H, K, V])."""
    if cu_seqlens is not None:
        outs, finals = [], []
        cu = cu_seqlens.tolist()
        for n in range(len(cu) - 1):
            sl = slice(cu[n], cu[n + 1])
            h0 = None if initial_state is None else initial_state[n:n + 1]
            o, s = ref_gla(q[:, sl], k[:, sl], v[:, sl], None if g is None else g[:, sl], scale, h0, reverse)
            outs.append(o)
            finals.append(s)
        return torch.cat(outs, 1), torch.cat(finals, 0)
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, v.shape[-1], dtype=F64) if initial_state is None else initial_state.double().clone()
    o = torch.zeros(B, T, H, v.shape[-1], dtype=F64)
    for t in (reversed(range(T)) if reverse else range(T)):
        if g is not None:
            d = g[:, t].double().exp()
            S = S * (d[..., None] if d.dim() == 3 else d[..., None, None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


def rel(a, b):  # final states are float32 (as in fla), so their bar is 1e-6
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def rand(*shape):
    return torch.randn(*shape, dtype=F64)


def gates(*shape):
    return torch.nn.functional.logsigmoid(rand(*shape)) / 4


def repeat_kv_head_first(x, n):
    """The released SpikingBrain code's repeat_kv on [B, HKV, T, D]."""
    B, HKV, T, D = x.shape
    return x[:, :, None].expand(B, HKV, n, T, D).reshape(B, HKV * n, T, D)


# ---------------------------------------------------------------- the ops
@pytest.mark.parametrize("head_first", [False, True])
@pytest.mark.parametrize("fn", ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla"])
def test_gla_functions_match_reference_in_both_layouts(fn, head_first):
    B, T, H, K, V = 2, 13, 3, 8, 6
    q, k, v, g = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), gates(B, T, H, K)
    h0 = rand(B, H, K, V)
    o_ref, s_ref = ref_gla(q, k, v, g, 0.3, h0)
    args = [t.transpose(1, 2) if head_first else t for t in (q, k, v, g)]
    o, s = getattr(fla, fn)(*args, scale=0.3, initial_state=h0.float(), output_final_state=True, head_first=head_first)
    if head_first:
        o = o.transpose(1, 2)
    assert o.shape == (B, T, H, V) and s.shape == (B, H, K, V) and s.dtype == torch.float32
    assert rel(o, o_ref) < 1e-6 and rel(s, s_ref) < 1e-6


def test_default_scale_and_fused_chunk_minus_one():
    q, k, v, g = rand(1, 5, 2, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4), gates(1, 5, 2, 4)
    o_ref, _ = ref_gla(q, k, v, g)
    for o, s in (fla.chunk_gla(q, k, v, g), fla.fused_chunk_gla(q, k, v, g, scale=-1)):
        assert s is None and rel(o, o_ref) < 1e-10


@pytest.mark.parametrize("reverse", [False, True])
def test_varlen_and_reverse_match_reference(reverse):
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    T, H, K, V = 11, 2, 4, 5
    q, k, v, g = rand(1, T, H, K), rand(1, T, H, K), rand(1, T, H, V), gates(1, T, H, K)
    h0 = rand(3, H, K, V)
    o_ref, s_ref = ref_gla(q, k, v, g, None, h0, reverse=reverse, cu_seqlens=cu)
    o, s = fla.fused_recurrent_gla(q, k, v, gk=g, initial_state=h0, output_final_state=True, reverse=reverse,
                                   cu_seqlens=cu)
    assert rel(o, o_ref) < 1e-6 and rel(s, s_ref) < 1e-6  # initial_state travels as float32


def test_fused_recurrent_without_gate_is_plain_linear_attention():
    q, k, v = rand(2, 6, 2, 4), rand(2, 6, 2, 4), rand(2, 6, 2, 4)
    o, _ = fla.fused_recurrent_gla(q, k, v)
    assert rel(o, ref_gla(q, k, v)[0]) < 1e-10


def test_chunk_simple_gla_per_head_gate_and_g_gamma():
    B, T, H, K = 2, 7, 3, 4
    q, k, v = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, K)
    g = gates(B, T, H)
    o, s = fla.chunk_simple_gla(q, k, v, g=g, output_final_state=True)
    o_ref, s_ref = ref_gla(q, k, v, g)
    assert rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-6
    gamma = -torch.rand(H, dtype=F64)
    o2, _ = fla.chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g_gamma=gamma,
                                 head_first=True)
    o2_ref, _ = ref_gla(q, k, v, gamma.expand(B, T, H))
    assert rel(o2.transpose(1, 2), o2_ref) < 1e-6


class _SpyLinearAttn:
    """Records the KV-head count sbops.linear_attn is called with."""

    def __init__(self, monkeypatch):
        self.heads = []
        real = sbops.linear_attn

        def spy(q, k, *a, **kw):
            self.heads.append(k.shape[2])
            return real(q, k, *a, **kw)
        monkeypatch.setattr(sbops, "linear_attn", spy)


def test_repeated_heads_run_gqa_native_with_identical_results(monkeypatch):
    B, T, HKV, G, K = 2, 9, 2, 3, 4
    q = rand(B, HKV * G, T, K)
    k, v, g = rand(B, HKV, T, K), rand(B, HKV, T, K), gates(B, HKV, T, K)
    h0 = rand(B, HKV, K, K).repeat_interleave(G, dim=1)  # [B, H, K, V], repeated like k/v
    kr, vr, gr = (repeat_kv_head_first(t, G) for t in (k, v, g))
    spy = _SpyLinearAttn(monkeypatch)
    o, s = fla_v0.chunk_gla(q, kr, vr, gr, initial_state=h0, output_final_state=True)
    fla.set_repeat_detection("off")
    try:
        o_full, s_full = fla_v0.chunk_gla(q, kr, vr, gr, initial_state=h0, output_final_state=True)
    finally:
        fla.set_repeat_detection("auto")
    assert spy.heads == [HKV, HKV * G]
    assert s.shape == s_full.shape == (B, HKV * G, K, K)
    assert rel(o, o_full) < 1e-12 and rel(s, s_full) < 1e-12
    o_ref, s_ref = ref_gla(*(t.transpose(1, 2) for t in (q, kr, vr, gr)), None, h0)
    assert rel(o.transpose(1, 2), o_ref) < 1e-6 and rel(s, s_ref) < 1e-6


def test_nearly_repeated_heads_fall_back_to_all_heads(monkeypatch):
    q, k, v, g = rand(1, 5, 4, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4), gates(1, 5, 2, 4)
    kr, vr, gr = (t.repeat_interleave(2, dim=2) for t in (k, v, g))
    kr[0, 4, 1, 0] += 1e-9  # one value in one copy differs
    spy = _SpyLinearAttn(monkeypatch)
    o, _ = fla.chunk_gla(q, kr, vr, gr)
    assert spy.heads == [4]
    assert rel(o, ref_gla(q, kr, vr, gr)[0]) < 1e-10


def test_kv_groups_promise_is_used_and_checked(monkeypatch):
    q, k, v, g = rand(1, 5, 4, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4), gates(1, 5, 2, 4)
    kr, vr, gr = (t.repeat_interleave(2, dim=2) for t in (k, v, g))
    spy = _SpyLinearAttn(monkeypatch)
    fla.set_repeat_detection("off")
    try:
        with fla.kv_groups(2):
            o, _ = fla.chunk_gla(q, kr, vr, gr)
            assert rel(o, ref_gla(q, kr, vr, gr)[0]) < 1e-10
            with pytest.raises(ValueError, match="kv_groups"):
                fla.chunk_gla(q, rand(1, 5, 4, 4), vr, gr)
    finally:
        fla.set_repeat_detection("auto")
    assert spy.heads == [2]


def test_kv_at_fewer_heads_is_accepted_natively():
    q, k, v, g = rand(2, 6, 4, 4), rand(2, 6, 2, 4), rand(2, 6, 2, 3), gates(2, 6, 2, 4)
    o, s = fla.chunk_gla(q, k, v, g, output_final_state=True)
    o_ref, s_ref = ref_gla(q, *(t.repeat_interleave(2, dim=2) for t in (k, v, g)))
    assert s.shape == (2, 4, 4, 3) and rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-6


def test_errors_name_the_argument():
    q = rand(1, 4, 2, 4)
    g = gates(1, 4, 2, 4)
    with pytest.raises(NotImplementedError, match="gv"):
        fla.fused_recurrent_gla(q, q, q, gk=g, gv=g)
    with pytest.raises(ValueError, match="cu_seqlens"):
        fla.chunk_gla(q, q, q, g, cu_seqlens=torch.tensor([0, 4]), head_first=True)
    with pytest.raises(ValueError, match="initial_state"):
        fla.chunk_gla(q, q, q, g, initial_state=rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="g_gamma"):
        fla.chunk_simple_gla(q, q, q, g=gates(1, 4, 2), g_gamma=torch.zeros(2))
    with pytest.raises(ValueError, match="mode"):
        fla.set_repeat_detection("sometimes")


# ---------------------------------------------------------------- RMSNorm (fla order)
def test_rmsnorm_multiplies_weight_in_float32_before_casting():
    torch.manual_seed(1)
    n = fla.RMSNorm(256, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        n.weight.copy_(torch.randn(256) * 0.5 + 1)
    x = torch.randn(64, 256).to(torch.bfloat16)
    xd = x.double()
    exact = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * n.weight.double()
    y = n(x)
    mismatch = (y != exact.to(torch.bfloat16)).float().mean().item()
    cast_first = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16) * n.weight
    mismatch_cast_first = (cast_first != exact.to(torch.bfloat16)).float().mean().item()
    assert y.dtype == torch.bfloat16 and mismatch < 0.01 < mismatch_cast_first


def test_rmsnorm_residual_prenorm_semantics():
    n = fla.RMSNorm(16)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    x, r = torch.randn(3, 16).to(torch.bfloat16), torch.randn(3, 16).to(torch.bfloat16)
    y, res = n.to(torch.bfloat16)(x, r, prenorm=True)
    h = x.double() + r.double()
    exact = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + n.eps) * n.weight.double()
    assert res.dtype == torch.bfloat16 and torch.equal(res, h.to(torch.bfloat16))
    assert rel(y, exact) < 1e-2 and torch.equal(n(x, r), y)
    _, res32 = n(x, prenorm=True, residual_in_fp32=True)
    assert res32.dtype == torch.float32 and torch.equal(res32, x.float())


# ---------------------------------------------------------------- a released-style GLA layer
def released_gla_layer(x, w, ops, state=None):
    """SpikingBrain's released GatedLinearAttention forward, written against an fla-0.1-style API
    (head-first tensors, k/v/g repeated to all heads, chunk_gla for prompts, fused_recurrent_gla
    for one token)."""
    B, T, _ = x.shape
    H, HKV, D = w["H"], w["HKV"], w["D"]
    q = torch.relu(x @ w["q"]).view(B, T, H, D).transpose(1, 2)
    k = torch.relu(x @ w["k"]).view(B, T, HKV, D).transpose(1, 2)
    v = (x @ w["v"]).view(B, T, HKV, D).transpose(1, 2)
    gk = (torch.nn.functional.logsigmoid(x @ w["g"]) / 16).view(B, T, HKV, D).transpose(1, 2)
    k, v, gk = (repeat_kv_head_first(t, H // HKV) for t in (k, v, gk))
    fn = ops.fused_recurrent_gla if T == 1 else ops.chunk_gla
    o, state = fn(q, k, v, gk, initial_state=state, output_final_state=True)
    return o.transpose(1, 2).reshape(B, T, H * D), state


def _ref_fla_v0():
    def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
        o, s = ref_gla(*(t.transpose(1, 2) for t in (q, k, v, g)), scale, initial_state)
        return o.transpose(1, 2), (s if output_final_state else None)
    return types.SimpleNamespace(chunk_gla=chunk_gla, fused_recurrent_gla=chunk_gla)


def test_released_style_gla_layer_prefill_and_decode_match_reference():
    B, T, HID, H, HKV, D = 2, 10, 16, 4, 2, 4
    w = dict(H=H, HKV=HKV, D=D, q=rand(HID, H * D) * 0.3, k=rand(HID, HKV * D) * 0.3,
             v=rand(HID, HKV * D) * 0.3, g=rand(HID, HKV * D) * 0.3)
    x = rand(B, T + 3, HID)
    ref = _ref_fla_v0()
    o_ref, s_ref = released_gla_layer(x[:, :T], w, ref)
    o, s = released_gla_layer(x[:, :T], w, fla_v0)
    assert rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-6
    for t in range(T, T + 3):  # decode with the returned state, one token at a time
        o_ref, s_ref = released_gla_layer(x[:, t:t + 1], w, ref, s_ref)
        o, s = released_gla_layer(x[:, t:t + 1], w, fla_v0, s)
        assert rel(o, o_ref) < 1e-6 and rel(s, s_ref) < 1e-6  # the carried state is float32


# ---------------------------------------------------------------- GPU (skipped without CUDA/MACA)
from conftest import requires_cuda  # noqa: E402


@requires_cuda
@pytest.mark.parametrize("fn", ["chunk_gla", "fused_recurrent_gla"])
@pytest.mark.parametrize("head_first", [False, True])
def test_gpu_bf16_gla_matches_reference(fn, head_first):
    B, T, H, K, V = 2, 200, 4, 64, 64
    q, k, v, g = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), gates(B, T, H, K)
    h0 = rand(B, H, K, V)
    o_ref, s_ref = ref_gla(q, k, v, g, None, h0)
    args = [(t.transpose(1, 2) if head_first else t).to("cuda", torch.bfloat16) for t in (q, k, v)]
    o, s = getattr(fla, fn)(*args, g.transpose(1, 2).float().cuda() if head_first else g.float().cuda(),
                            initial_state=h0.float().cuda(), output_final_state=True, head_first=head_first)
    o = o.transpose(1, 2) if head_first else o
    assert o.dtype == torch.bfloat16 and rel(o.cpu(), o_ref) < 1e-2 and rel(s.cpu(), s_ref) < 1e-2


@requires_cuda
def test_gpu_repeated_heads_auto_runs_all_heads_and_promise_runs_gqa(monkeypatch):
    B, T, HKV, G, K = 2, 100, 2, 4, 64
    q = rand(B, T, HKV * G, K)
    k, v, g = rand(B, T, HKV, K), rand(B, T, HKV, K), gates(B, T, HKV, K)
    kr, vr, gr = (t.repeat_interleave(G, dim=2) for t in (k, v, g))
    o_ref, s_ref = ref_gla(q, kr, vr, gr)
    dev = [t.to("cuda", torch.bfloat16) for t in (q, kr, vr)] + [gr.float().cuda()]
    spy = _SpyLinearAttn(monkeypatch)
    o1, s1 = fla.chunk_gla(*dev, output_final_state=True)           # "auto" on a GPU: no sync, all heads
    with fla.kv_groups(G):
        o2, s2 = fla.chunk_gla(*dev, output_final_state=True)       # promised: GQA-native, checked on device
    torch.cuda.synchronize()
    assert spy.heads == [HKV * G, HKV]
    for o, s in ((o1, s1), (o2, s2)):
        assert s.shape == (B, HKV * G, K, K) and rel(o.cpu(), o_ref) < 1e-2 and rel(s.cpu(), s_ref) < 1e-2


@requires_cuda
def test_gpu_varlen_reverse_matches_reference():
    cu = torch.tensor([0, 37, 38, 150], dtype=torch.int32)
    T, H, K = 150, 2, 64
    q, k, v, g = rand(1, T, H, K), rand(1, T, H, K), rand(1, T, H, K), gates(1, T, H, K)
    o_ref, s_ref = ref_gla(q, k, v, g, reverse=True, cu_seqlens=cu)
    o, s = fla.fused_recurrent_gla(*(t.float().cuda() for t in (q, k, v, g)), output_final_state=True,
                                   reverse=True, cu_seqlens=cu.cuda())
    assert rel(o.cpu(), o_ref) < 1e-5 and rel(s.cpu(), s_ref) < 1e-5
