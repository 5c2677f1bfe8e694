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
