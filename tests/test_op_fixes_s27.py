"""Session 27 audit of the ops and the dispatcher; each test fails on the code before it.

- the CPU MoE kernels wrote -1 into the caller's int64 ids / row_map where an entry was out of range
  (the index guard worked in place when the input already was contiguous int64);
- linear_attn_decode and swa_cache_write bumped no version counter, so backward through a graph that
  had saved the state / cache silently used the new values, and a leaf requiring grad was written;
- register_backend took priority="high" (every later call failed) and a kernels key that names no op
  it declares (a typo: the built-in kernel ran while explain() named the backend);
- k as a numpy scalar, spike_stats' non-int T, a window past int64, a non-numeric topk_gating scaling
  and a spike train too long to allocate gave messages naming the wrong problem or no argument.
"""
import pytest
import torch

try:
    import numpy as np
except ImportError:  # numpy is optional (torch does not need it): its cases skip or are left out without it
    np = None

import sbops
from sbops import Backend, OpCaps
from conftest import requires_numpy


# ------------------------------------------------------------------ MoE kernels leave their inputs alone
def _index_views(values, dtype):
    """The values as a contiguous [n, 1] tensor and as a strided column of a wider one."""
    dense = torch.tensor(values, dtype=dtype).view(-1, 1)
    wide = torch.full((dense.shape[0], 3), 99, dtype=dtype)
    wide[:, 1:2] = dense
    return [dense, wide[:, 1:2]]


_IDS = [0, 5, -7, 2]          # E = 3: 5 and -7 are out of range (dropped)


@pytest.mark.parametrize("call", ["expert_counts", "moe_permute", "moe_align_block_size"])
def test_moe_ops_leave_out_of_range_ids_unchanged(call):
    fns = {"expert_counts": lambda i: torch.ops.sbops.expert_counts(i, 3),
           "moe_permute": lambda i: torch.ops.sbops.moe_permute(torch.randn(4, 2), i, 3),
           "moe_align_block_size": lambda i: torch.ops.sbops.moe_align_block_size(i, 3, 2)}
    for dtype in (torch.int32, torch.int64):
        for ids in _index_views(_IDS, dtype):
            before = ids.clone()
            fns[call](ids)
            assert torch.equal(ids, before), f"{call} changed {dtype} ids: {before.flatten().tolist()} -> " \
                                             f"{ids.flatten().tolist()}"
        ids = torch.tensor([[0], [-5]], dtype=dtype)       # through the public wrapper (data checks on)
        getattr(sbops, call)(*{"expert_counts": (ids, 3), "moe_permute": (torch.randn(2, 2), ids, 3),
                                "moe_align_block_size": (ids, 3, 2)}[call])
        assert ids.flatten().tolist() == [0, -5]


@pytest.mark.parametrize("call", ["moe_unpermute", "moe_permute_bwd"])
def test_moe_ops_leave_out_of_range_row_map_unchanged(call):
    for dtype in (torch.int32, torch.int64):
        for rm in _index_views([0, 7, -9, 1], dtype):
            before = rm.clone()
            if call == "moe_unpermute":
                torch.ops.sbops.moe_unpermute(torch.randn(3, 2), rm, torch.ones(4, 1))
            else:
                torch.ops.sbops.moe_permute_bwd(torch.randn(3, 2), rm)
            assert torch.equal(rm, before), f"{call} changed {dtype} row_map: {before.flatten().tolist()} -> " \
                                            f"{rm.flatten().tolist()}"


@pytest.mark.parametrize("op,args", [
    ("expert_counts", lambda ids: (ids, 3)),
    ("moe_align_block_size", lambda ids: (ids, 3, 2)),
    ("moe_permute", lambda ids: (torch.randn(4, 2), ids, 3)),
])
def test_opcheck_schema_with_out_of_range_ids(op, args):
    ids = torch.tensor([[0], [-5], [7], [1]])
    torch.library.opcheck(getattr(torch.ops.sbops, op).default, args(ids), test_utils=("test_schema",))


def test_opcheck_schema_with_out_of_range_row_map():
    rm = torch.tensor([[0], [7], [-9]])
    torch.library.opcheck(torch.ops.sbops.moe_unpermute.default, (torch.randn(3, 2), rm, torch.ones(3, 1)),
                          test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.sbops.moe_permute_bwd.default, (torch.randn(3, 2), rm),
                          test_utils=("test_schema",))


# ------------------------------------------------------------------ in-place ops bump version counters
def _decode_args(state):
    return torch.randn(2, 2, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4), None, state


def _write_args(kc, vc):
    return torch.randn(2, 1, 4), torch.randn(2, 1, 4), kc, vc, torch.tensor([0, 1])


def test_in_place_ops_bump_the_version_of_every_written_argument():
    st = torch.zeros(2, 1, 4, 4)
    sbops.linear_attn_decode(*_decode_args(st))
    assert st._version > 0
    st2 = torch.zeros(2, 1, 4, 4)
    torch.ops.sbops.linear_attn_decode(*_decode_args(st2), None, 0.5)
    assert st2._version > 0
    kc, vc = torch.zeros(2, 4, 1, 4), torch.zeros(2, 4, 1, 4)
    sbops.swa_cache_write(*_write_args(kc, vc))
    assert kc._version > 0 and vc._version > 0
    kc, vc = torch.zeros(2, 4, 1, 4), torch.zeros(2, 4, 1, 4)
    with torch.no_grad():
        torch.ops.sbops.swa_cache_write(*_write_args(kc, vc), None)
    assert kc._version > 0 and vc._version > 0

    def step(q, k, v, st, kc, vc, pos):       # compiled: the ops still write, and the versions move
        o = sbops.linear_attn_decode(q, k, v, None, st)
        sbops.swa_cache_write(k, v, kc, vc, pos)
        return o
    f = torch.compile(step, backend="aot_eager", fullgraph=True)
    st, kc, vc = torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 1, 4), torch.zeros(2, 4, 1, 4)
    st_ref, kc_ref, vc_ref = st.clone(), kc.clone(), vc.clone()
    q, k, v, pos = torch.randn(2, 2, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4), torch.tensor([1, 2])
    torch.testing.assert_close(f(q, k, v, st, kc, vc, pos), step(q, k, v, st_ref, kc_ref, vc_ref, pos))
    assert torch.equal(st, st_ref) and torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    assert st._version > 0 and kc._version > 0 and vc._version > 0


def test_in_place_op_versions_follow_the_schema():
    from sbops._registration import mutated_args
    assert mutated_args("linear_attn_decode") == [(4, "state")]
    assert mutated_args("swa_cache_write") == [(2, "k_cache"), (3, "v_cache")]
    assert mutated_args("swa_attn") == []


def test_backward_after_an_in_place_update_raises():
    w = torch.ones(2, 1, 4, 4, requires_grad=True)
    st = torch.randn(2, 1, 4, 4)
    loss = (st * w).sum()                      # saves st for w's gradient
    sbops.linear_attn_decode(*_decode_args(st))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    w = torch.ones(2, 4, 1, 4, requires_grad=True)
    kc, vc = torch.randn(2, 4, 1, 4), torch.zeros(2, 4, 1, 4)
    loss = (kc * w).sum()
    sbops.swa_cache_write(*_write_args(kc, vc))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_leaf_requiring_grad_is_refused_by_name():
    st = torch.zeros(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="linear_attn_decode: state is a leaf tensor that requires grad"):
        sbops.linear_attn_decode(*_decode_args(st))
    assert st.abs().sum() == 0                  # refused before the kernel wrote it
    kc, vc = torch.zeros(2, 4, 1, 4), torch.zeros(2, 4, 1, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="swa_cache_write: v_cache is a leaf tensor that requires grad"):
        sbops.swa_cache_write(*_write_args(kc, vc))
    base = torch.zeros(3, 1, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="state is a view of a leaf tensor that requires grad"):
        sbops.linear_attn_decode(*_decode_args(base[1:]))
    with torch.no_grad():                       # as torch allows in-place writes to such leaves there
        sbops.linear_attn_decode(*_decode_args(st))
    assert st.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_in_place_op_versions_move_and_a_captured_decode_step_replays_the_eager_one():
    dev = "cuda"
    q, k, v = (torch.randn(2, n, 64, device=dev) for n in (2, 1, 1))  # the CUDA decode's head dims: 64, 128
    pos = torch.tensor([0, 1], device=dev)
    st, kc, vc = (torch.zeros(*s, device=dev) for s in ((2, 1, 64, 64), (2, 4, 1, 64), (2, 4, 1, 64)))
    ref = [t.clone() for t in (st, kc, vc)]
    o_ref = sbops.linear_attn_decode(q, k, v, None, ref[0])
    sbops.swa_cache_write(k, v, ref[1], ref[2], pos)
    v0 = [t._version for t in (st, kc, vc)]
    g = torch.cuda.CUDAGraph()
    sbops.linear_attn_decode(q, k, v, None, st.clone())  # warm-up outside capture
    sbops.swa_cache_write(k, v, kc.clone(), vc.clone(), pos)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        o = sbops.linear_attn_decode(q, k, v, None, st)
        sbops.swa_cache_write(k, v, kc, vc, pos)
    assert all(t._version > v for t, v in zip((st, kc, vc), v0))
    for t in (st, kc, vc):
        t.zero_()
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(o, o_ref)
    for t, r in zip((st, kc, vc), ref):
        torch.testing.assert_close(t, r)


# ------------------------------------------------------------------ register_backend checks priority and kernels
@pytest.mark.parametrize("priority", ["high", None, True, float("nan"), float("inf")])
def test_register_backend_refuses_a_priority_that_is_not_a_finite_number(priority):
    with pytest.raises(ValueError, match=r"priority must be a finite int or float.*got"):
        sbops.register_backend(Backend(name="z4", device_types=("cpu",), ops={}, priority=priority))
    if "z4" in sbops.backends():   # (the old code registered it, and every later call failed)
        sbops._dispatch.unregister_backend("z4")
        pytest.fail(f"priority={priority!r} was registered")
    x = torch.randn(2, 4)
    assert torch.equal(sbops.spike_quant(x), sbops.spike_quant(x))
    sbops.register_backend(Backend(name="z4", device_types=("cpu",), priority=-2.5, ops={}))
    try:
        assert sbops.backends()["z4"]["priority"] == -2.5
    finally:
        sbops._dispatch.unregister_backend("z4")


def test_register_backend_refuses_kernels_for_ops_it_does_not_declare():
    caps = {"spike_quant": OpCaps((torch.float32,))}
    with pytest.raises(ValueError, match=r"kernels names 'spike_qaunt', not an sbops op; .*: spike_quant"):
        sbops.register_backend(Backend(name="typo", device_types=("cpu",), priority=5, ops=caps,
                                       kernels={"spike_qaunt": lambda x, k: x}))
    with pytest.raises(ValueError, match="kernels names 'spike_encode', an op its ops do not list"):
        sbops.register_backend(Backend(name="typo", device_types=("cpu",), priority=5, ops=caps,
                                       kernels={"spike_encode": lambda x, k, d: x}))
    if "typo" in sbops.backends():
        sbops._dispatch.unregister_backend("typo")
        pytest.fail("a kernels key naming no declared op was registered")
    with pytest.raises(ValueError, match=r"which is not an sbops op \(sbops ops: .*spike_quant"):
        sbops.register_backend(Backend(name="typo", device_types=("cpu",), ops={"name": caps["spike_quant"]}))


# ------------------------------------------------------------------ messages that name the argument
@requires_numpy
@pytest.mark.parametrize("k", [np.float32(3.0), np.int64(3)] if np is not None else [None])
def test_spike_ops_take_numpy_scalar_k(k):
    x = torch.randn(3, 8)
    assert torch.equal(sbops.spike_encode(x, k)[0], sbops.spike_encode(x, float(k))[0])
    assert torch.equal(sbops.spike_quant(x, k), sbops.spike_quant(x, float(k)))
    wq, ws = sbops.quantize_weight(torch.randn(4, 8))
    assert torch.equal(sbops.spike_linear(x, wq, ws, k), sbops.spike_linear(x, wq, ws, float(k)))


def test_spike_ops_refuse_tensor_k_naming_k():
    x = torch.randn(3, 8)
    for call in (lambda k: sbops.spike_encode(x, k), lambda k: sbops.spike_quant(x, k)):
        with pytest.raises(TypeError, match=r"k must be a Python float .*got a 0-d tensor on cpu; pass k.item\(\)"):
            call(torch.tensor(3.0))
        with pytest.raises(TypeError, match="k must be a Python float .*got str"):
            call("3")


def test_spike_stats_says_T_must_be_a_positive_int():
    for T in (7.0, 0, "7"):
        with pytest.raises(ValueError, match="spike_stats: T must be a positive int, got"):
            sbops.spike_stats(torch.tensor([5]), "ternary", T=T)
    if np is not None:
        assert sbops.spike_stats(torch.tensor([5]), "ternary", T=np.int64(7))["T"] == 7


def test_swa_window_outside_int64_is_refused_naming_window():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)
    for w in (2 ** 63, -2 ** 63 - 1):
        with pytest.raises(ValueError, match="swa_attn: window must fit int64"):
            sbops.swa_attn(q, k, k, w)
        with pytest.raises(ValueError, match="swa_decode: window must fit int64"):
            sbops.swa_decode(torch.randn(1, 2, 8), torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8),
                             torch.tensor([1]), w)


def test_topk_gating_scaling_errors_name_scaling():
    with pytest.raises(TypeError, match="topk_gating: scaling must be a Python float .*got str 'x'"):
        sbops.topk_gating(torch.randn(3, 4), 2, scaling="x")
    with pytest.raises(TypeError, match="topk_gating: scaling must be a Python float, got a tensor"):
        sbops.topk_gating(torch.randn(3, 4), 2, scaling=torch.tensor(2.0))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="topk_gating: scaling must be a finite number"):
            sbops.topk_gating(torch.randn(3, 4), 2, scaling=bad)
    if np is not None:
        w, _ = sbops.topk_gating(torch.randn(3, 4), 2, scaling=np.float32(2.0))
        torch.testing.assert_close(w.sum(-1), torch.full((3,), 2.0))


def test_spike_expand_refuses_too_many_steps_naming_T():
    c = torch.tensor([2 ** 40])
    with pytest.raises(ValueError, match=r"spike_expand: T=1099511627776 steps \(the largest \|count\| is "
                                         r"1099511627776, which needs T=1099511627776 in ternary mode\) is too large"):
        sbops.spike_expand(c, "ternary")
    with pytest.raises(ValueError, match=r"spike_expand: T=1099511627776 steps is too large: the trains would be "
                                         r"\[T=1099511627776, 1\] int8"):
        sbops.spike_expand(c, "ternary", T=2 ** 40)
    assert sbops.spike_expand(c, "bitwise").shape == (41, 1)
