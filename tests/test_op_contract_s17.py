"""Public-op contract fixes from the audit3 report (F1-F7, nits) and audit1 (fla_v0 signature).

Each test is named by the property it checks; all run on CPU with tiny odd shapes.
"""
import inspect

import pytest
import torch

import sbops
from sbops.compat import fla, fla_v0
from sbops.compat.flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache, flash_attn_func

I32 = torch.int32


# ------------------------------------------------------------------ F1: repeated heads and autograd
def _gla_grads(mode, ts, q, loss_w):
    fla.set_repeat_detection(mode)
    try:
        for t in ts:
            t.grad = None
        o, _ = fla.chunk_gla(q, *ts)
        (o * loss_w).sum().backward()
        return [t.grad.clone() for t in ts], o.detach()
    finally:
        fla.set_repeat_detection("auto")


def test_fla_equal_heads_get_their_own_gradients():
    torch.manual_seed(0)
    B, T, H, K, V = 1, 5, 2, 3, 4
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T, 1, K).repeat(1, 1, H, 1).requires_grad_()
    v = torch.randn(B, T, 1, V).repeat(1, 1, H, 1).requires_grad_()
    g = (-torch.rand(B, T, 1, K)).repeat(1, 1, H, 1).requires_grad_()
    w = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)   # the loss reads query head 1 only
    auto, o_auto = _gla_grads("auto", (k, v, g), q, w)
    off, o_off = _gla_grads("off", (k, v, g), q, w)
    assert torch.equal(o_auto, o_off)
    for a, b in zip(auto, off):
        torch.testing.assert_close(a, b)
    assert auto[0][0, :, 0].abs().sum() == 0   # head 0 never reaches the loss


def test_fla_equal_heads_still_collapse_without_autograd():
    torch.manual_seed(1)
    q = torch.randn(1, 5, 4, 3)
    k, v = (torch.randn(1, 5, 2, d).repeat_interleave(2, dim=2) for d in (3, 4))
    g = (-torch.rand(1, 5, 2, 3)).repeat_interleave(2, dim=2)
    calls = []
    orig = sbops.linear_attn

    def spy(q, k, *a, **kw):
        calls.append(k.shape[2])
        return orig(q, k, *a, **kw)

    fla.sbops.linear_attn = spy
    try:
        fla.chunk_gla(q, k, v, g)
        fla.chunk_gla(q, k.requires_grad_(), v, g)
    finally:
        fla.sbops.linear_attn = orig
    assert calls == [2, 4]   # GQA-native without autograd, all heads with it


def test_fla_native_gqa_initial_state_heads_get_their_own_gradients():
    torch.manual_seed(2)
    B, T, H, HK, K, V = 1, 4, 4, 2, 3, 2
    q = torch.randn(B, T, H, K)
    k, v, g = torch.randn(B, T, HK, K), torch.randn(B, T, HK, V), -torch.rand(B, T, HK, K)
    h0 = torch.randn(B, HK, K, V).repeat_interleave(H // HK, dim=1).requires_grad_()
    w = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)
    o, _ = fla.chunk_gla(q, k, v, g, initial_state=h0)
    (o * w).sum().backward()
    got = h0.grad.clone()
    h0.grad = None
    fla.set_repeat_detection("off")   # the reference: every head computed on its own
    try:
        o2, _ = fla.chunk_gla(q, *(t.repeat_interleave(H // HK, dim=2) for t in (k, v, g)), initial_state=h0)
    finally:
        fla.set_repeat_detection("auto")
    (o2 * w).sum().backward()
    torch.testing.assert_close(got, h0.grad)
    torch.testing.assert_close(o, o2)


# ------------------------------------------------------------------ F2: saturated counts expand
@pytest.mark.parametrize("dtype,lo", [(torch.int8, -128), (torch.int16, -2 ** 15), (torch.int32, -2 ** 31)])
def test_spike_expand_and_stats_accept_the_most_negative_count(dtype, lo):
    c = torch.tensor([lo, 1, 0], dtype=dtype)
    bits = (-lo).bit_length()
    assert sbops.spike_expand(c).shape[0] == bits
    if dtype != torch.int32:   # spike_stats' histogram has max|c| + 1 bins: 2^31 + 1 for int32
        assert sbops.spike_stats(c)["T"] == bits
    if dtype == torch.int8:
        assert sbops.spike_expand(c, "ternary").shape[0] == 128
        assert torch.equal(sbops.spike_collapse(sbops.spike_expand(c)), c.to(torch.int32))


def test_spike_encode_output_always_expands():
    x = torch.zeros(1, 100)
    x[0, 0], x[0, 1:] = -1000.0, 0.001
    c, _ = sbops.spike_encode(x)
    assert c[0, 0] == -128
    assert torch.equal(sbops.spike_collapse(sbops.spike_expand(c)), c.to(torch.int32))


# ------------------------------------------------------------------ F3: overlapping in-place targets
def test_linear_attn_decode_rejects_an_expanded_state():
    N, H, K, V = 3, 1, 2, 2
    q, k, v = torch.randn(N, H, K), torch.randn(N, H, K), torch.randn(N, H, V)
    with pytest.raises(ValueError, match="state is updated in place.*stride 0"):
        sbops.linear_attn_decode(q, k, v, None, torch.zeros(1, H, K, V).expand(N, -1, -1, -1))
    # a stride 0 on a dimension of size 1 shares nothing: accepted
    st = torch.zeros(N, 1, K, V).as_strided((N, 1, K, V), (K * V, 0, V, 1))
    assert sbops.linear_attn_decode(q, k, v, None, st).shape == (N, H, V)


@pytest.mark.parametrize("which", ["k_cache", "v_cache"])
def test_swa_cache_write_rejects_an_expanded_cache(which):
    S, C, HKV, D = 2, 4, 1, 3
    caches = {"k_cache": torch.zeros(S, C, HKV, D), "v_cache": torch.zeros(S, C, HKV, D)}
    caches[which] = torch.zeros(1, C, HKV, D).expand(S, -1, -1, -1)
    with pytest.raises(ValueError, match=f"{which} is updated in place.*stride 0"):
        sbops.swa_cache_write(torch.randn(S, HKV, D), torch.randn(S, HKV, D), caches["k_cache"], caches["v_cache"],
                              torch.tensor([0, 1]))


# ------------------------------------------------------------------ F4: backward through inference ops
def _decode_args(req):
    q = torch.randn(2, 2, 3, requires_grad=req)
    return q, (q, torch.randn(2, 1, 3), torch.randn(2, 1, 4), None, torch.zeros(2, 1, 3, 4))


def test_linear_attn_decode_backward_raises_naming_the_op():
    q, args = _decode_args(True)
    o = sbops.linear_attn_decode(*args)
    assert o.requires_grad
    with pytest.raises(RuntimeError, match="sbops.linear_attn_decode is not differentiable"):
        o.sum().backward()


def test_swa_decode_backward_raises_naming_the_op():
    q = torch.randn(2, 2, 3, requires_grad=True)
    o = sbops.swa_decode(q, torch.randn(2, 4, 1, 3), torch.randn(2, 4, 1, 3), torch.tensor([2, 3]), -1)
    with pytest.raises(RuntimeError, match="sbops.swa_decode is not differentiable"):
        o.sum().backward()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_decode_backward_raises_when_run_not_when_compiled(backend):
    q, args = _decode_args(True)
    f = torch.compile(lambda *a: sbops.linear_attn_decode(*a), backend=backend, fullgraph=True)
    o = f(*args)   # the forward compiles and runs
    assert o.shape == (2, 2, 4)
    with pytest.raises(RuntimeError, match="sbops.linear_attn_decode is not differentiable"):
        o.sum().backward()


def test_decode_without_grad_stays_plain():
    q, args = _decode_args(False)
    assert not sbops.linear_attn_decode(*args).requires_grad
    q, args = _decode_args(True)
    with torch.no_grad():
        assert not sbops.linear_attn_decode(*args).requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_spike_encode_vth_gradient_matches_its_formula(dtype):
    torch.manual_seed(3)
    x = torch.randn(3, 7, dtype=dtype)
    x[2] *= 1e-9   # vth clamped at 1e-5: no gradient there
    x.requires_grad_()
    _, vth = sbops.spike_encode(x, 2.5)
    w = torch.randn_like(vth)
    (vth * w).sum().backward()
    xr = x.detach().clone().requires_grad_()
    ref = (xr.float().abs().mean(-1, keepdim=True) / 2.5).clamp(1e-5, 1e4)
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    assert x.grad[2].abs().sum() == 0


def test_opcheck_autograd_registration_with_grad_inputs():
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    q, args = _decode_args(True)
    torch.library.opcheck(torch.ops.sbops.linear_attn_decode, (*args, None, 0.5), test_utils=utils)
    torch.library.opcheck(torch.ops.sbops.swa_decode, (q, torch.randn(2, 4, 1, 3), torch.randn(2, 4, 1, 3),
                                                       torch.tensor([2, 3]), -1, 0.5, None), test_utils=utils)
    # test_aot_dispatch_dynamic is left out for spike_encode: opcheck sums the outputs starting from
    # the int8 counts, which fails in opcheck itself; the compiled gradient is compared here instead
    x = torch.randn(3, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.sbops.spike_encode, (x, 3.0, torch.int8), test_utils=utils)
    f = torch.compile(lambda x: sbops.spike_encode(x)[1], backend="aot_eager", fullgraph=True)
    f(x).sum().backward()
    compiled, x.grad = x.grad, None
    sbops.spike_encode(x)[1].sum().backward()
    assert torch.equal(compiled, x.grad)


# ------------------------------------------------------------------ F5: varlen cu_seqlens on the torch path
def _varlen_qkv():
    return torch.randn(8, 4, 8), torch.randn(8, 2, 8), torch.randn(8, 2, 8)


@pytest.mark.parametrize("cu_q,cu_k,name", [
    ([0, 3, 5], [0, 3, 8], "cu_seqlens_q"),        # ends before total_q
    ([0, 3, 8], [0, 3, 12], "cu_seqlens_k"),       # ends past total_k
    ([0, 5, 3, 8], [0, 2, 4, 8], "cu_seqlens_q"),  # decreasing
    ([1, 3, 8], [0, 3, 8], "cu_seqlens_q"),        # does not start at 0
])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_torch_path_rejects_bad_cu_seqlens_naming_them(cu_q, cu_k, name, causal):
    q, k, v = _varlen_qkv()
    with pytest.raises(ValueError, match=f"flash_attn_varlen_func: {name} must start at 0, be non-decreasing "
                                         f"and end at total_"):
        flash_attn_varlen_func(q, k, v, torch.tensor(cu_q, dtype=I32), torch.tensor(cu_k, dtype=I32), 8, 8,
                               causal=causal)


# ------------------------------------------------------------------ F6, N7, N8: kvcache edge rows
def _cache():
    torch.manual_seed(4)
    return torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)


@pytest.mark.parametrize("checks", [True, False])
def test_kvcache_single_query_row_without_keys_gives_zero_like_the_torch_path(checks):
    kc, vc = _cache()
    q = torch.randn(2, 1, 4, 8)
    lens = torch.tensor([3, 0], dtype=I32)
    with sbops.data_checks(checks):
        o = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens)
        o_ref, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, return_softmax_lse=True)
    assert torch.equal(o[1], torch.zeros_like(o[1])) and torch.isinf(lse[1]).all()
    torch.testing.assert_close(o, o_ref)


@pytest.mark.parametrize("Sq", [1, 2])
def test_kvcache_rejects_cache_seqlens_past_the_cache_naming_it(Sq):
    kc, vc = _cache()
    with pytest.raises(ValueError, match=r"cache_seqlens must lie in \[0, C=6\]"):
        flash_attn_with_kvcache(torch.randn(2, Sq, 4, 8), kc, vc, cache_seqlens=torch.tensor([3, 9], dtype=I32))


@pytest.mark.parametrize("Sq", [1, 2])
def test_kvcache_rejects_out_of_range_cache_batch_idx_naming_it(Sq):
    kc, vc = _cache()
    with pytest.raises(ValueError, match=r"cache_batch_idx must lie in \[0, 2\)"):
        flash_attn_with_kvcache(torch.randn(2, Sq, 4, 8), kc, vc, cache_seqlens=torch.tensor([3, 2], dtype=I32),
                                cache_batch_idx=torch.tensor([0, 5], dtype=I32))


def test_kvcache_batch_larger_than_cache_names_cache_batch_idx():
    kc, vc = _cache()
    with pytest.raises(ValueError, match="without cache_batch_idx.*k_cache has 2 rows for a batch of B=3"):
        flash_attn_with_kvcache(torch.randn(3, 1, 4, 8), kc, vc, cache_seqlens=torch.tensor([3, 2, 1], dtype=I32))


# ------------------------------------------------------------------ N6: flash_attn_func head dims and dtypes
def test_flash_attn_func_rejects_a_different_v_head_dim():
    with pytest.raises(ValueError, match="same head dim D"):
        flash_attn_func(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 5))


@pytest.mark.parametrize("dts", [(torch.float32, torch.float64), (torch.int32, torch.int32)])
def test_flash_attn_func_rejects_mixed_or_integer_dtypes(dts):
    q = torch.randn(1, 3, 4, 8).to(dts[0])
    k, v = torch.randn(1, 5, 2, 8).to(dts[1]), torch.randn(1, 5, 2, 8).to(dts[1])
    with pytest.raises(TypeError, match="flash_attn_func: .*(dtype|floating-point)"):
        flash_attn_func(q, k, v)


# ------------------------------------------------------------------ F7: reverse recurrence with bad cu_seqlens
def test_fused_recurrent_gla_reverse_checks_cu_seqlens_before_indexing():
    q, g = torch.randn(1, 5, 2, 4), -torch.rand(1, 5, 2, 4)
    with pytest.raises(ValueError, match="fused_recurrent_gla: cu_seqlens must start at 0"):
        fla.fused_recurrent_gla(q, q, q, g, reverse=True, cu_seqlens=torch.tensor([0, 2, 7]))


def test_reverse_index_stays_in_bounds_for_unchecked_offsets():
    for cu in ([0, 2, 7], [-3, 4, 2, 9], [0, 5], [0, 0, 5, 5]):
        idx = fla._reverse_index(5, torch.tensor(cu), "cpu")
        assert idx.min() >= 0 and idx.max() <= 4
    assert fla._reverse_index(5, torch.tensor([0, 2, 5]), "cpu").tolist() == [1, 0, 4, 3, 2]


# ------------------------------------------------------------------ audit1: fla_v0's help() signature
@pytest.mark.parametrize("name", ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla", "chunk_simple_gla"])
def test_fla_v0_signature_shows_head_first_true(name):
    sig = inspect.signature(getattr(fla_v0, name))
    assert sig.parameters["head_first"].default is True
    assert list(sig.parameters) == list(inspect.signature(getattr(fla, name)).parameters)


# ------------------------------------------------------------------ nits: messages that name the argument
def test_gate_dtype_error_lists_each_dtype_once():
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(TypeError, match=r"g must have dtype in \(float32\), got float64"):
        sbops.linear_attn(q, q, q, torch.zeros(1, 3, 2, 4, dtype=torch.float64))


@pytest.mark.parametrize("call", [
    lambda q: sbops.linear_attn(q, q, q, scale="a"),
    lambda q: sbops.swa_attn(q, q, q, 2, scale="a"),
    lambda q: sbops.linear_attn_decode(q[:, 0], q[:, 0], q[:, 0], None, torch.zeros(1, 2, 4, 4), scale="a"),
])
def test_bad_scale_is_named(call):
    with pytest.raises(TypeError, match="scale must be a number"):
        call(torch.randn(1, 3, 2, 4))


@pytest.mark.parametrize("call", [
    lambda q: sbops.linear_attn(q, q, q),
    lambda q: sbops.swa_attn(q, q, q, 2),
])
def test_zero_head_dim_with_default_scale_is_named(call):
    with pytest.raises(ValueError, match="default scale . \\*\\* -0.5 needs a head dim"):
        call(torch.randn(1, 3, 2, 0))


def test_quantize_weight_with_no_input_channels_is_named():
    with pytest.raises(ValueError, match="quantize_weight: weight must have K >= 1"):
        sbops.quantize_weight(torch.zeros(3, 0))


def test_swa_window_must_not_be_a_bool():
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(TypeError, match="window must be an int"):
        sbops.swa_attn(q, q, q, True)
    with pytest.raises(TypeError, match="window must be an int"):
        sbops.swa_decode(q[0, :1], torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2, 4), torch.tensor([2]), True)


def test_swa_decode_full_causal_capacity_message():
    kc = torch.randn(1, 4, 2, 4)
    with pytest.raises(ValueError, match="C must be >= the longest seq_len"):
        sbops.swa_decode(torch.randn(1, 2, 4), kc, kc, torch.tensor([6]), -1)


def test_spike_stats_refuses_a_histogram_too_large_to_allocate():
    """An int32 INT_MIN count would need 2^31 histogram bins (16 GiB): a clear error, not an OOM kill."""
    with pytest.raises(ValueError, match="histogram would need 2147483649 bins"):
        sbops.spike_stats(torch.tensor([-2 ** 31, 5], dtype=torch.int32))
    assert sbops.spike_stats(torch.tensor([(1 << 24) - 1], dtype=torch.int32))["T"] == 24
