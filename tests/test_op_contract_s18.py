"""Op contract checks added in session 18 (CPU)."""
import pytest
import torch

import sbops


# ------------------------------------------------------------------ swa_cache_write under autograd
def _write_args(kv_grad=False, cache_grad=False, cache_view=False):
    k = torch.randn(2, 1, 4, requires_grad=kv_grad)
    v = torch.randn(2, 1, 4, requires_grad=kv_grad)
    kc = torch.zeros(2, 5, 1, 4, requires_grad=cache_grad).clone()
    vc = torch.zeros(2, 6, 1, 4)[:, 1:] if cache_view else torch.zeros(2, 5, 1, 4)
    return k, v, kc, vc, torch.tensor([0, 3])


@pytest.mark.parametrize("case", [dict(kv_grad=True), dict(cache_grad=True), dict(kv_grad=True, cache_view=True)])
def test_swa_cache_write_backward_raises_instead_of_dropping_gradients(case):
    k, v, kc, vc, pos = _write_args(**case)
    sbops.swa_cache_write(k, v, kc, vc, pos)
    assert torch.equal(kc[1, 3], k.detach()[1]) and torch.equal(vc[0, 0], v.detach()[0])
    with pytest.raises(RuntimeError, match="sbops.swa_cache_write is not differentiable"):
        kc.sum().backward()
    if case.get("kv_grad"):
        with pytest.raises(RuntimeError, match="sbops.swa_cache_write is not differentiable"):
            vc.sum().backward()


def test_swa_cache_write_without_grad_leaves_caches_plain():
    k, v, kc, vc, pos = _write_args()
    sbops.swa_cache_write(k, v, kc, vc, pos)
    assert kc.grad_fn is None and not vc.requires_grad
    k, v, kc, vc, pos = _write_args(kv_grad=True)
    with torch.no_grad():
        sbops.swa_cache_write(k, v, kc, vc, pos)
    assert not kc.requires_grad and not vc.requires_grad


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_swa_cache_write_writes_and_its_backward_raises(backend):
    f = torch.compile(lambda *a: sbops.swa_cache_write(*a), backend=backend, fullgraph=True)
    k, v, kc, vc, pos = _write_args(kv_grad=True)
    f(k, v, kc, vc, pos)
    assert torch.equal(kc[1, 3], k.detach()[1])
    with pytest.raises(RuntimeError, match="sbops.swa_cache_write is not differentiable"):
        kc.sum().backward()


# ------------------------------------------------------------------ compat.fla: fla 0.6's arguments
def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# fla-core 0.6's parameter order (fla/ops/gla/chunk.py, fused_recurrent.py, simple_gla/chunk.py)
_FLA06 = {
    "chunk_gla": ["q", "k", "v", "g", "scale", "initial_state", "output_final_state", "state_v_first",
                  "cu_seqlens", "cu_seqlens_cpu"],
    "fused_recurrent_gla": ["q", "k", "v", "gk", "gv", "scale", "initial_state", "output_final_state",
                            "reverse", "state_v_first", "cu_seqlens"],
    "chunk_simple_gla": ["q", "k", "v", "g", "g_gamma", "scale", "initial_state", "output_final_state",
                         "state_v_first", "cu_seqlens", "cu_seqlens_cpu"],
}


@pytest.mark.parametrize("fn", sorted(_FLA06))
def test_compat_fla_takes_fla06_positional_order(fn):
    import inspect
    from sbops.compat import fla
    names = list(inspect.signature(getattr(fla, fn)).parameters)
    assert names[:len(_FLA06[fn])] == _FLA06[fn]


@pytest.mark.parametrize("fn", ["chunk_gla", "fused_recurrent_gla", "chunk_simple_gla"])
def test_compat_fla_state_v_first_transposes_both_states(fn):
    from sbops.compat import fla
    torch.manual_seed(0)
    q, k, v = _rand(1, 5, 2, 4), _rand(1, 5, 2, 4), _rand(1, 5, 2, 3)
    g = torch.nn.functional.logsigmoid(_rand(1, 5, 2, 4) if fn != "chunk_simple_gla" else _rand(1, 5, 2))
    h0 = _rand(1, 2, 4, 3)
    o, s = getattr(fla, fn)(q, k, v, g, initial_state=h0, output_final_state=True)
    h0v = h0.transpose(-1, -2).contiguous().requires_grad_()
    o2, s2 = getattr(fla, fn)(q, k, v, g, initial_state=h0v, output_final_state=True, state_v_first=True)
    assert s2.shape == (1, 2, 3, 4)
    torch.testing.assert_close(o2, o)
    torch.testing.assert_close(s2, s.transpose(-1, -2))
    (s2[..., 0].sum() + o2.sum()).backward()
    assert h0v.grad is not None and h0v.grad.shape == h0v.shape
    with pytest.raises(ValueError, match=r"initial_state must be \[N, H, V, K\] = \[1, 2, 3, 4\].*got \(1, 2, 4, 3\)"):
        getattr(fla, fn)(q, k, v, g, initial_state=h0, state_v_first=True)


def test_compat_fla_cu_seqlens_cpu_is_checked_and_gives_the_same_result():
    from sbops.compat import fla
    torch.manual_seed(0)
    q, k, v, g = _rand(1, 7, 2, 4), _rand(1, 7, 2, 4), _rand(1, 7, 2, 3), -_rand(1, 7, 2, 4).abs()
    cu = torch.tensor([0, 3, 7])
    o, s = fla.chunk_gla(q, k, v, g, output_final_state=True, cu_seqlens=cu)
    o2, s2 = fla.chunk_gla(q, k, v, g, output_final_state=True, cu_seqlens=cu, cu_seqlens_cpu=cu.clone())
    assert torch.equal(o, o2) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="cu_seqlens_cpu .*differs from cu_seqlens"):
        fla.chunk_gla(q, k, v, g, cu_seqlens=cu, cu_seqlens_cpu=torch.tensor([0, 4, 7]))
    with pytest.raises(ValueError, match="cu_seqlens_cpu must be a CPU tensor shaped like cu_seqlens"):
        fla.chunk_gla(q, k, v, g, cu_seqlens=cu, cu_seqlens_cpu=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="pass cu_seqlens too"):
        fla.chunk_gla(q, k, v, g, cu_seqlens_cpu=cu)
