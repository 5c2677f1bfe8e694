"""Strided views are accepted by every op and give exactly the contiguous call's result.

Views: an outer slice (`x[:, t]`), a column block of wider rows (a split of a fused projection),
a transposed batch (`x.transpose(0, 1)` of a [T, B, ...] tensor), an odd storage offset, and a
non-unit last stride (inputs only: a tensor written in place needs a unit last stride).  Each is
compared with the same op on contiguous copies, on the same backend, outputs and gradients
bit for bit; outputs are contiguous.  opcheck on strided samples: tests/op_samples.py.
"""
import pytest
import torch
import torch.nn.functional as F

import sbops
from conftest import requires_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


# ------------------------------------------------------------------ view makers (same values, other strides)
def outer_slice(x):                 # x == big[:, 1], like q[:, t] of a [N, T, ...] tensor
    if x.dim() == 0:
        return x
    big = x.new_zeros(x.shape[0], 3, *x.shape[1:])
    big[:, 1] = x
    return big[:, 1]


def fused_split(x):                 # a column block of wider rows, like qkv.split(...)[1]
    if x.dim() == 0:
        return x
    big = x.new_zeros(*x.shape[:-1], x.shape[-1] + 5)
    big[..., 2:2 + x.shape[-1]] = x
    return big[..., 2:2 + x.shape[-1]]


def transposed(x):                  # dense, dims 0 and 1 swapped in memory
    return x.transpose(0, 1).contiguous().transpose(0, 1) if x.dim() >= 2 else x


def odd_offset(x):                  # storage offset of one element: misaligned base pointer
    buf = x.new_zeros(x.numel() + 1)
    buf[1:] = x.reshape(-1)
    return buf[1:].view(x.shape)


def last_strided(x):                # non-unit last stride: the kernels copy these
    if x.dim() == 0:
        return x
    big = x.new_zeros(*x.shape, 2)
    big[..., 0] = x
    return big[..., 0]


VIEWS = {"outer_slice": outer_slice, "fused_split": fused_split, "transposed": transposed,
         "odd_offset": odd_offset, "last_strided": last_strided}
INPLACE_OK = ("outer_slice", "transposed", "odd_offset")   # unit last stride kept


def _setup(device):
    dev = torch.device(device)
    # the GPU attention kernels take head dims 64/128; everything else is tiny
    return dev, (torch.float32, 16) if dev.type == "cpu" else (torch.float32, 64)


# ------------------------------------------------------------------ one case per op
def cases(device):
    dev, (dt, D) = _setup(device)
    r = lambda *s, scale=1.0: torch.randn(*s, device=dev, dtype=dt) * scale   # noqa: E731
    B, T, H, HKV, N = 2, 7, 4, 2, 3
    lg = lambda *s: F.logsigmoid(torch.randn(*s, device=dev))                  # noqa: E731
    idx = lambda *v: torch.tensor(v, device=dev)                                # noqa: E731
    ids = torch.randint(-1, 6, (9, 2), device=dev, dtype=torch.int32)
    row_map = torch.randperm(18, device=dev).view(9, 2).to(torch.int32)
    row_map[1, 0] = -1
    counts = torch.randint(-7, 8, (5, 6), device=dev, dtype=torch.int8)
    # (name, fn, args, indices of in-place args, indices of differentiable args)
    return [
        ("linear_attn", lambda q, k, v, g, h0: sbops.linear_attn(q, k, v, g, initial_state=h0, output_final_state=True),
         [r(B, T, H, D), r(B, T, HKV, D, scale=0.25), r(B, T, HKV, D), lg(B, T, HKV, D).to(dt),
          torch.randn(B, HKV, D, D, device=dev)], (), (0, 1, 2, 3, 4)),
        ("linear_attn_decode", sbops.linear_attn_decode,
         [r(N, H, D), r(N, HKV, D, scale=0.25), r(N, HKV, D), lg(N, HKV).to(dt),
          torch.randn(4, HKV, D, D, device=dev), idx(3, 0, 2)], (4,), ()),
        ("swa_attn", lambda q, k, v, sk, sv: sbops.swa_attn(q, k, v, 3, sink_k=sk, sink_v=sv, return_lse=True),
         [r(B, T, H, D), r(B, T, HKV, D), r(B, T, HKV, D), r(2, HKV, D), r(2, HKV, D)], (), (0, 1, 2, 3, 4)),
        ("swa_decode", lambda q, kc, vc, sl, sk: sbops.swa_decode(q, kc, vc, sl, 4, slot_indices=sk),
         [r(N, H, D), r(4, 6, HKV, D), r(4, 6, HKV, D), idx(5, 2, 9), idx(2, 0, 3)], (), ()),
        ("swa_cache_write", sbops.swa_cache_write,
         [r(N, HKV, D), r(N, HKV, D), r(4, 6, HKV, D), r(4, 6, HKV, D), idx(7, 1, 0), idx(2, 0, 3)], (2, 3), ()),
        ("spike_encode", sbops.spike_encode, [r(5, 32)], (), ()),
        ("spike_quant", sbops.spike_quant, [r(5, 32)], (), (0,)),
        ("spike_expand", lambda c: sbops.spike_expand(c, "bitwise", T=4), [counts], (), ()),
        ("spike_collapse", lambda tr: sbops.spike_collapse(tr, "ternary"),
         [torch.randint(-1, 2, (3, 5, 6), device=dev, dtype=torch.int8)], (), ()),
        ("spike_stats", lambda c: sbops.spike_stats(c, "bitwise"), [counts], (), ()),
        ("topk_gating", lambda lo, b: sbops.topk_gating(lo, 3, bias=b, num_groups=4, topk_groups=2),
         [r(9, 16), r(16)], (), (0,)),
        ("moe_permute", lambda x, i: sbops.moe_permute(x, i, 6), [r(9, 8), ids], (), (0,)),
        ("moe_unpermute", sbops.moe_unpermute,
         [r(18, 8), row_map, torch.rand(9, 2, device=dev)], (), (0, 2)),
        ("moe_align_block_size", lambda i: sbops.moe_align_block_size(i, 6, 4), [ids], (), ()),
        ("expert_counts", lambda i: sbops.expert_counts(i, 6), [ids], (), ()),
    ]


NAMES = [c[0] for c in cases("cpu")]


def _flat(out):
    if out is None:
        return []
    if isinstance(out, dict):
        return [out]
    if isinstance(out, (tuple, list)):
        return [o for o in out if o is not None]
    return [out]


def _equal(a, b):
    if isinstance(a, dict):
        return a == b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _run(fn, args, inplace, grads, view):
    """Call fn on (views of) args; return the outputs, the in-place args after the call and the
    gradients of a fixed random projection of the float outputs w.r.t. the differentiable args."""
    args = [a.clone() for a in args]
    if view is not None:
        args = [a if (i in inplace and view.__name__ not in INPLACE_OK) else view(a)
                for i, a in enumerate(args)]
        assert any(not a.is_contiguous() or a.storage_offset() for a in args), "the view changed no layout"
    leaves = [args[i].requires_grad_() for i in grads]
    out = _flat(fn(*args))
    g = []
    if leaves:
        floats = [o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()]
        gen = torch.Generator(device="cpu").manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=gen).to(o)).sum() for o in floats)
        g = torch.autograd.grad(loss, leaves)
    return [o.detach() if isinstance(o, torch.Tensor) else o for o in out], [args[i] for i in inplace], g


def _same(a, b, a2):
    """a equals b bit for bit, or, where the contiguous call itself is not bitwise reproducible
    (b != a2: atomics in a GPU backward), within that call's own run-to-run spread."""
    if _equal(a, b):
        return True
    if isinstance(a, dict) or _equal(b, a2) or not a.is_floating_point():
        return False
    spread = (b.double() - a2.double()).abs().max().item()
    return a.shape == b.shape and (a.double() - b.double()).abs().max().item() <= 4 * spread


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("name", NAMES)
def test_views_give_the_contiguous_result_outputs_and_gradients(name, view, device):
    torch.manual_seed(0)
    _, fn, args, inplace, grads = next(c for c in cases(device) if c[0] == name)
    base = _run(fn, args, inplace, grads, None)
    again = _run(fn, args, inplace, grads, None)
    got = _run(fn, args, inplace, grads, VIEWS[view])
    for what, a_s, b_s, c_s in zip(("output", "in-place update", "gradient"), got, base, again):
        assert len(a_s) == len(b_s)
        for a, b, c in zip(a_s, b_s, c_s):
            assert _same(a, b, c), f"{name}: {what} differs for a {view} view"
    for a in got[0]:
        if isinstance(a, torch.Tensor):
            assert a.is_contiguous(), f"{name}: output is not contiguous for a {view} view"


# ------------------------------------------------------------------ the model-code shapes, spelled out
@pytest.mark.parametrize("device", DEVICES)
def test_fused_qkv_projection_split_feeds_the_attention_ops(device):
    dev, (dt, D) = _setup(device)
    B, T, H, HKV = 2, 6, 4, 2
    x = torch.randn(B, T, 32, device=dev, dtype=dt)
    proj = torch.randn(32, (H + 2 * HKV) * D, device=dev, dtype=dt) / 8
    q, k, v = (x @ proj).split([H * D, HKV * D, HKV * D], dim=-1)
    q, k, v = q.view(B, T, H, D), k.view(B, T, HKV, D), v.view(B, T, HKV, D)
    assert not q.is_contiguous()
    for fn in (lambda *a: sbops.linear_attn(*a)[0], lambda *a: sbops.swa_attn(*a, 3)):
        o = fn(q, k, v)
        assert o.is_contiguous() and torch.equal(o, fn(q.contiguous(), k.contiguous(), v.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
def test_decode_loop_over_time_slices_and_transposed_batch(device):
    dev, (dt, D) = _setup(device)
    N, T, H, HKV, C = 2, 5, 4, 2, 8
    q_tb, k_tb, v_tb = (torch.randn(T, N, h, D, device=dev, dtype=dt) for h in (H, HKV, HKV))
    q, k, v = q_tb.transpose(0, 1), k_tb.transpose(0, 1), v_tb.transpose(0, 1)    # [N, T, ...] views
    g = F.logsigmoid(torch.randn(N, T, HKV, device=dev))
    runs = []
    for make in (lambda t: t, lambda t: t.contiguous()):
        state = torch.zeros(N, HKV, D, D, device=dev)
        kc, vc = (torch.zeros(N, C, HKV, D, device=dev, dtype=dt) for _ in range(2))
        outs = []
        for t in range(T):
            pos = torch.full((N,), t, device=dev)
            outs.append(sbops.linear_attn_decode(make(q[:, t]), make(k[:, t]), make(v[:, t]), make(g[:, t]), state))
            sbops.swa_cache_write(make(k[:, t]), make(v[:, t]), kc, vc, pos)
            outs.append(sbops.swa_decode(make(q[:, t]), kc, vc, pos + 1, 3))
        runs.append((outs, state, kc, vc))
    (o1, s1, k1, v1), (o2, s2, k2, v2) = runs
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert torch.equal(s1, s2) and torch.equal(k1, k2) and torch.equal(v1, v2)
