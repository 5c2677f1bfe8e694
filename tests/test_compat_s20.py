"""sbops.compat fixes (session 20): int cache_seqlens in flash_attn_with_kvcache, varlen errors that
name the compat function, and fla.RMSNorm's attributes."""
import pytest
import torch

from sbops.compat import fla, fla_v0
from sbops.compat.flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

B, C, H, HKV, D = 2, 6, 4, 2, 8


def _caches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, HKV, D, generator=g), torch.randn(B, C, HKV, D, generator=g))


# ---------------------------------------------------------------- flash_attn_with_kvcache, int cache_seqlens
@pytest.mark.parametrize("n", [0, 3])
@pytest.mark.parametrize("Sn", [0, 2])
@pytest.mark.parametrize("Sq, lse", [(1, False), (1, True), (2, True)])
def test_kvcache_int_cache_seqlens_equals_tensor_form(n, Sn, Sq, lse):
    torch.manual_seed(1)
    q = torch.randn(B, Sq, H, D)
    kn, vn = (torch.randn(B, Sn, HKV, D), torch.randn(B, Sn, HKV, D)) if Sn else (None, None)
    kc1, vc1 = _caches()
    kc2, vc2 = _caches()
    r_int = flash_attn_with_kvcache(q, kc1, vc1, kn, vn, cache_seqlens=n, causal=True, return_softmax_lse=lse)
    r_ten = flash_attn_with_kvcache(q, kc2, vc2, kn, vn, cache_seqlens=torch.full((B,), n, dtype=torch.int32),
                                   causal=True, return_softmax_lse=lse)
    for a, b in zip(r_int if lse else (r_int,), r_ten if lse else (r_ten,)):
        assert torch.equal(a, b)
    assert torch.equal(kc1, kc2) and torch.equal(vc1, vc2)


def test_kvcache_int_zero_without_new_tokens_gives_zero_out_and_inf_lse():
    # flash-attn writes out = 0 and lse = +inf for a query with no key at all
    q = torch.randn(B, 1, H, D)
    kc, vc = _caches()
    o = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=0)
    o2, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=0, return_softmax_lse=True)
    assert torch.equal(o, torch.zeros_like(q)) and torch.equal(o2, torch.zeros_like(q))
    assert lse.shape == (B, H, 1) and torch.isinf(lse).all() and (lse > 0).all()


@pytest.mark.parametrize("Sq", [1, 2])
def test_kvcache_int_zero_appends_new_tokens_at_position_zero_and_attends_them(Sq):
    torch.manual_seed(2)
    q, kn, vn = torch.randn(B, Sq, H, D), torch.randn(B, 2, HKV, D), torch.randn(B, 2, HKV, D)
    kc, vc = _caches()
    kc0, vc0 = kc.clone(), vc.clone()
    o = flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=0, causal=True)
    assert torch.equal(kc[:, :2], kn) and torch.equal(vc[:, :2], vn)
    assert torch.equal(kc[:, 2:], kc0[:, 2:]) and torch.equal(vc[:, 2:], vc0[:, 2:])
    torch.testing.assert_close(o, flash_attn_func(q, kn, vn, causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, Sn", [(-1, 0), (C + 1, 0), (C - 1, 2), (-1, 1)])
def test_kvcache_int_cache_seqlens_out_of_range_names_argument(n, Sn):
    q = torch.randn(B, 1, H, D)
    kc, vc = _caches()
    kc0 = kc.clone()
    kn, vn = (torch.randn(B, Sn, HKV, D), torch.randn(B, Sn, HKV, D)) if Sn else (None, None)
    with pytest.raises(ValueError, match=rf"flash_attn_with_kvcache: cache_seqlens={n} must lie in \[0, (C={C}|C - {Sn} = {C - Sn})\]"):
        flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=n)
    assert torch.equal(kc, kc0)   # nothing written before the refusal


def test_kvcache_cache_seqlens_of_wrong_type_names_argument():
    q = torch.randn(B, 1, H, D)
    kc, vc = _caches()
    with pytest.raises(TypeError, match="cache_seqlens must be None, an int or an int32 tensor"):
        flash_attn_with_kvcache(q, kc, vc, cache_seqlens=2.0)
    with pytest.raises(ValueError, match="cache_seqlens must be an int or an int32 tensor"):
        flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([2.0, 2.0]))


# ---------------------------------------------------------------- flash_attn_varlen_func, bad cu_seqlens
@pytest.mark.parametrize("same_object", [True, False])
def test_varlen_causal_bad_cu_seqlens_error_names_compat_function(same_object):
    q = torch.randn(9, H, D)
    cu_q = torch.tensor([0, 4, 8], dtype=torch.int32)   # ends at 8, total is 9
    cu_k = cu_q if same_object else cu_q.clone()
    with pytest.raises(ValueError, match=r"^flash_attn_varlen_func: cu_seqlens_q.* end at total_q=9") as e:
        flash_attn_varlen_func(q, q, q, cu_q, cu_k, 4, 4, causal=True)
    assert "swa_attn" not in str(e.value)


def test_varlen_causal_decreasing_cu_seqlens_error_names_compat_function():
    q = torch.randn(9, H, D)
    cu = torch.tensor([0, 5, 4, 9], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^flash_attn_varlen_func: cu_seqlens_q .*non-decreasing"):
        flash_attn_varlen_func(q, q, q, cu, cu, 5, 5, causal=True)


# ---------------------------------------------------------------- fla.RMSNorm attributes
@pytest.mark.parametrize("mod", [fla, fla_v0])
def test_fla_rmsnorm_has_fla_attributes(mod):
    n = mod.RMSNorm(16)
    assert (n.hidden_size, n.elementwise_affine, n.eps) == (16, True, 1e-5)
    assert torch.equal(n.weight, torch.ones(16)) and n.bias is None
    assert [k for k, _ in n.named_parameters()] == ["weight"]
    n = mod.RMSNorm(16, eps=1e-6, bias=True)
    assert n.eps == 1e-6 and torch.equal(n.bias, torch.zeros(16))
    assert sorted(n.state_dict()) == ["bias", "weight"]


def test_fla_rmsnorm_without_elementwise_affine_has_no_weight_or_bias():
    n = fla.RMSNorm(16, elementwise_affine=False, bias=True)   # fla: bias only with elementwise_affine
    assert n.elementwise_affine is False and n.weight is None and n.bias is None
    assert list(n.parameters()) == [] and n.state_dict() == {}
    assert "weight" in n._parameters and "bias" in n._parameters   # registered as None, as in fla
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(n(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + n.eps))
    assert "elementwise_affine=False" in repr(n)


def test_fla_rmsnorm_dtype_argument_and_reset_parameters():
    n = fla.RMSNorm(8, bias=True, dtype=torch.bfloat16)
    assert n.weight.dtype == torch.bfloat16 and n.bias.dtype == torch.bfloat16
    with torch.no_grad():
        n.weight.mul_(3)
        n.bias.add_(1)
    n.reset_parameters()
    assert torch.equal(n.weight, torch.ones(8, dtype=torch.bfloat16))
    assert torch.equal(n.bias, torch.zeros(8, dtype=torch.bfloat16))
