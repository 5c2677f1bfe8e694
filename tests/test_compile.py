"""torch.compile(fullgraph=True) traces every op family, forward and backward, without graph breaks."""
import pytest
import torch
import torch.nn.functional as F

import sbops
from reference import rel_err


def block(q, k, v, g, x, logits, sk, sv):
    o, h = sbops.linear_attn(q, k, v, g, output_final_state=True)
    s = sbops.swa_attn(q, k, v, 3, sink_k=sk, sink_v=sv)
    xq = sbops.spike_quant(x)
    counts, vth = sbops.spike_encode(x)
    trains = sbops.spike_expand(counts, "bitwise", T=8)
    back = sbops.spike_collapse(trains, "bitwise")
    w, ids = sbops.topk_gating(logits, 2)
    xp, off, rm = sbops.moe_permute(xq, ids, logits.shape[1])
    y = sbops.moe_unpermute(xp * 2, rm, w)
    n = sbops.expert_counts(ids, logits.shape[1])
    loss = o.sum() + h.sum() + s.sum() + y.sum()
    return loss, back, n


def inputs():
    q = torch.randn(1, 12, 4, 8, requires_grad=True)
    k = (torch.randn(1, 12, 2, 8) / 4).requires_grad_()
    v = torch.randn(1, 12, 2, 8, requires_grad=True)
    g = F.logsigmoid(torch.randn(1, 12, 2, 8)).requires_grad_()
    x = torch.randn(10, 16, requires_grad=True)
    logits = torch.randn(10, 6, requires_grad=True)
    sk, sv = torch.randn(2, 2, 8, requires_grad=True), torch.randn(2, 2, 8, requires_grad=True)
    return q, k, v, g, x, logits, sk, sv


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_every_family_compiles_fullgraph_forward_and_backward(backend):
    args = inputs()
    eager_loss, eager_back, eager_n = block(*args)
    eager_grads = torch.autograd.grad(eager_loss, args)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend, dynamic=False)
    loss, back, n = compiled(*args)
    grads = torch.autograd.grad(loss, args)
    assert rel_err(loss, eager_loss) < 1e-5
    assert torch.equal(back, eager_back) and torch.equal(n, eager_n)
    for a, b in zip(grads, eager_grads):
        assert rel_err(a, b) < 1e-5


def test_decode_ops_compile_fullgraph():
    def step(q, k, v, g, state, kc, vc, pos):
        o = sbops.linear_attn_decode(q, k, v, g, state)
        sbops.swa_cache_write(k, v, kc, vc, pos)
        return o + sbops.swa_decode(q, kc, vc, pos + 1, 2)

    N, H, HKV, D = 2, 4, 2, 8
    mk = lambda: (torch.randn(N, H, D), torch.randn(N, HKV, D), torch.randn(N, HKV, D),
                  F.logsigmoid(torch.randn(N, HKV)), torch.zeros(N, HKV, D, D), torch.zeros(N, 3, HKV, D),
                  torch.zeros(N, 3, HKV, D), torch.tensor([0, 4]))
    a, b = mk(), mk()
    b = tuple(x.clone() for x in a)
    ref = step(*a)
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(*b)
    assert rel_err(out, ref) < 1e-6 and torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])


def test_strided_views_compile_fullgraph_and_match_eager():
    def step(qkv, state, kc, vc, pos):
        q, k, v = qkv.split([4 * 8, 2 * 8, 2 * 8], dim=-1)            # a fused projection, [N, T, F]
        q, k, v = q.view(2, 3, 4, 8), k.view(2, 3, 2, 8), v.view(2, 3, 2, 8)
        o = sbops.linear_attn(q, k, v)[0]
        d = sbops.linear_attn_decode(q[:, -1], k[:, -1], v[:, -1], None, state)
        sbops.swa_cache_write(k[:, -1], v[:, -1], kc, vc, pos)
        return o.sum(1) + d + sbops.swa_decode(q[:, -1], kc, vc, pos + 1, 2)

    mk = lambda: (torch.randn(2, 3, 64), torch.zeros(2, 2, 8, 8), torch.zeros(2, 3, 2, 8),  # noqa: E731
                  torch.zeros(2, 3, 2, 8), torch.tensor([0, 4]))
    a = mk()
    b = tuple(x.clone() for x in a)
    ref = step(*a)
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(*b)
    assert torch.equal(out, ref) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_8bit_spike_linear_compiles_fullgraph_at_inference(quant):
    """At inference an int8 / fp8 SpikeLinear runs sbops.spike_linear on its cached 8-bit copy, keyed on the weight's
    data pointer, which a graph cannot compare: under compile the copy is made inside the graph, fullgraph (it was
    "Data pointer comparison" before), with eager's result; a weight written in place is seen by the next call."""
    from sbops.nn import SpikeLinear
    torch.manual_seed(0)
    layer = SpikeLinear(128, 16, k=3.0, weight_quant=quant).eval()
    x = torch.randn(4, 128)
    with torch.no_grad():
        ref = layer(x)
        torch._dynamo.reset()
        fn = torch.compile(layer, fullgraph=True, backend="aot_eager")
        assert torch.equal(fn(x), ref)
        layer.weight.mul_(-1)
        assert torch.equal(fn(x), layer(x)) and not torch.equal(fn(x), ref)
