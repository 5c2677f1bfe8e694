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
def test_compiled_swa_cache_write_with_grad_inputs_writes(backend):
    # (the backward guard is eager-only: Dynamo cannot trace the raising node)
    f = torch.compile(lambda *a: sbops.swa_cache_write(*a), backend=backend, fullgraph=True)
    k, v, kc, vc, pos = _write_args(kv_grad=True)
    f(k, v, kc, vc, pos)
    assert torch.equal(kc[1, 3], k.detach()[1]) and torch.equal(vc[0, 0], v.detach()[0])


def test_swa_cache_write_guard_keeps_no_graph_alive_and_tolerates_unrecordable_caches():
    import warnings
    lin = torch.nn.Linear(4, 8)
    kc, vc = torch.zeros(1, 40, 1, 4), torch.zeros(1, 40, 1, 4)
    for t in range(30):                      # a decode loop run with grad enabled
        kv = lin(torch.randn(1, 4)).view(1, 2, 1, 4)
        sbops.swa_cache_write(kv[:, 0], kv[:, 1], kc, vc, torch.tensor([t]))
    seen, todo = set(), [kc.grad_fn]
    while todo:                              # nothing of the steps' graphs (the Linear) is reachable
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo += [f for f, _ in fn.next_functions]
    assert not [f for f in seen if "Addmm" in type(f).__name__ or "View" in type(f).__name__]
    k = torch.randn(1, 1, 4, requires_grad=True)
    with torch.inference_mode():
        ic = torch.zeros(1, 5, 1, 4)
    with torch.no_grad():
        base = torch.zeros(1, 6, 1, 4)
        view = base[:, 1:]
    for cache in (ic, view):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            sbops.swa_cache_write(k, k, cache, cache.clone() if cache is view else ic.clone(), torch.tensor([2]))
        assert torch.equal(cache[0, 2], k.detach()[0])
        assert any("cannot record the write" in str(x.message) for x in w)


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
    with pytest.raises(TypeError, match="state_v_first must be a bool"):   # the pre-0.6 positional order
        fla.chunk_gla(q, k, v, g, None, None, False, cu)


# ------------------------------------------------------------------ double backward raises
def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _second_order_cases():
    q, k, v = _f64(1, 5, 2, 3), _f64(1, 5, 1, 3), _f64(1, 5, 1, 3)
    logits, x, w = _f64(6, 8), _f64(6, 4), torch.rand(6, 2, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3]], dtype=torch.int32)
    x_perm, _, row_map = sbops.moe_permute(x, ids, 4)
    return {
        "linear_attn": (lambda: sbops.linear_attn(q, k, v)[0], [q, k, v]),
        "swa_attn": (lambda: sbops.swa_attn(q, k, v, 2), [q, k, v]),
        "topk_gating": (lambda: sbops.topk_gating(logits, 2)[0], [logits]),
        "moe_permute": (lambda: sbops.moe_permute(x, ids, 4)[0], [x]),
        "moe_unpermute": (lambda: sbops.moe_unpermute(x_perm, row_map, w), [w]),
    }


@pytest.mark.parametrize("op", ["linear_attn", "swa_attn", "topk_gating", "moe_permute", "moe_unpermute"])
def test_double_backward_raises_instead_of_returning_zero(op):
    f, inputs = _second_order_cases()[op]
    out = f()
    grads = torch.autograd.grad((out ** 2).sum(), inputs, create_graph=True)
    penalty = sum((g ** 2).sum() for g in grads)
    with pytest.raises(RuntimeError, match=f"sbops.{op} is differentiable once"):
        penalty.backward()


def test_first_order_backward_is_unchanged_by_the_double_backward_guard():
    f, (q, k, v) = _second_order_cases()["swa_attn"]
    g1 = torch.autograd.grad(f().sum(), [q, k, v])
    assert all(g.grad_fn is None and not g.requires_grad for g in g1)
    assert torch.autograd.gradcheck(lambda q, k, v: sbops.swa_attn(q, k, v, 2), (q, k, v))


# ------------------------------------------------------------------ spike_linear gradients
def test_spike_linear_bias_gradient_is_accumulated_in_float32():
    torch.manual_seed(0)
    wq, sc = sbops.quantize_weight(torch.randn(6, 32))
    x = torch.randn(4096, 32, dtype=torch.bfloat16, requires_grad=True)
    b = torch.zeros(6, requires_grad=True)
    gy = (torch.randn(4096, 6) + 3).bfloat16()
    gb = torch.autograd.grad(sbops.spike_linear(x, wq, sc, bias=b), b, gy)[0]
    exact = gy.double().sum(0)
    assert gb.dtype == torch.float32
    assert ((gb.double() - exact).abs() / exact.abs()).max() < 1e-6


def test_spike_linear_float64_input_gradient_is_float64_exact():
    torch.manual_seed(0)
    wq, sc = sbops.quantize_weight(torch.randn(6, 32), group_size=16)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(5, 6, dtype=torch.float64)
    gx = torch.autograd.grad(sbops.spike_linear(x, wq, sc, group_size=16), x, gy)[0]
    w = (wq.double().view(6, 2, 16) * sc.double()[..., None]).view(6, 32)
    torch.testing.assert_close(gx, gy @ w, rtol=1e-12, atol=0)


# ------------------------------------------------------------------ torch.compile(dynamic=True)
def test_spike_ops_compile_with_dynamic_shapes_and_a_traced_k():
    m = sbops.nn.SpikeLinear(8, 4)
    x = torch.randn(5, 8)
    out = torch.compile(m, fullgraph=True, dynamic=True)(x)
    torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    f = torch.compile(lambda x: sbops.spike_quant(x), fullgraph=True, dynamic=True)
    torch.testing.assert_close(f(torch.ones(4, 8)), sbops.spike_quant(torch.ones(4, 8)))
    for bad in (float("nan"), float("inf"), -1.0, True):
        with pytest.raises(ValueError, match="k must be a positive finite number"):
            sbops.spike_quant(x, bad)


def test_spike_stats_under_compile_says_it_is_host_side():
    f = torch.compile(lambda c: sbops.spike_stats(c), fullgraph=True)
    with pytest.raises(Exception, match="host-side summary"):
        f(torch.tensor([1, -3, 0], dtype=torch.int8))


# ------------------------------------------------------------------ torch.func / forward-mode AD
def test_forward_mode_and_func_grad_are_refused_naming_the_op_and_vmap_works():
    from torch.func import grad, jvp, vmap
    import torch.autograd.forward_ad as fwAD
    q, k, v = torch.randn(1, 5, 2, 3, dtype=torch.float64), torch.randn(1, 5, 1, 3), torch.randn(1, 5, 1, 3)
    k, v = k.double(), v.double()
    with pytest.raises(NotImplementedError, match="sbops.linear_attn has no forward-mode derivative"):
        jvp(lambda q: sbops.linear_attn(q, k, v)[0], (q,), (torch.randn_like(q),))
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="sbops.swa_attn has no forward-mode derivative"):
            sbops.swa_attn(fwAD.make_dual(q, torch.randn_like(q)), k, v, 2)
    with pytest.raises(NotImplementedError, match="sbops.linear_attn does not support torch.func.grad"):
        grad(lambda q: sbops.linear_attn(q, k, v)[0].sum())(q)
    qs = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    o = vmap(lambda qq: sbops.swa_attn(qq[None], k, v, 2)[0])(qs)
    torch.testing.assert_close(o, torch.stack([sbops.swa_attn(qq[None], k, v, 2)[0] for qq in qs]))
    const = torch.randn(1, 5, 2, 3, dtype=torch.float64)   # the differentiated input does not reach the op
    gx = grad(lambda x: (sbops.linear_attn(const, k, v)[0].sum() * x).sum())(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(gx, sbops.linear_attn(const, k, v)[0].sum().expand(3))
    ids = torch.randint(0, 4, (6, 2), dtype=torch.int32)   # integer-only ops are not refused
    torch.testing.assert_close(grad(lambda x: (sbops.expert_counts(ids, 4).double() * x).sum())(torch.ones(4).double()),
                               sbops.expert_counts(ids, 4).double())
