"""GPU tests of the CUDA C++ ops (backends/cuda/kernels + bindings) through torch.ops.sbops.*.

Compared with tests/reference.py (float64): bf16 within 1e-2, fp32 within 1e-5, gradients within
2e-2, integer outputs exact.  Uses the installed `sbops` if importable, else builds the dev module
(benchmarks/gpu/cuda_dev_build.py).  Skipped without CUDA.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as R  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.fixture(scope="module", autouse=True)
def ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    try:
        import sbops  # noqa: F401
    except ImportError:
        path = os.path.join(os.path.dirname(HERE), "benchmarks", "gpu", "cuda_dev_build.py")
        spec = importlib.util.spec_from_file_location("cuda_dev_build", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.load()
    return torch.ops.sbops


def close(out, ref, tol):
    err = R.rel_err(out, ref)
    assert not math.isnan(err) and err <= tol, f"rel err {err} > {tol}"


# ------------------------------------------------------------------------------ spike coding
# Row kernels by row length in 16-byte vectors (8 bf16 / 4 fp32): warp per row below 64 vectors and
# above 1024, a 128-thread block per row up to 512, a 256-thread block up to 1024.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("shape", [(1, 64), (63, 3584), (5, 7, 1000), (3, 20000), (4, 13), (7, 8192), (2, 520)])
def test_spike_encode(ops, dtype, out_dtype, shape):
    x = torch.randn(shape, device=DEV).to(dtype)
    counts, vth = ops.spike_encode(x, 3.0, out_dtype)
    rc, rv = R.ref_spike_encode(x.cpu(), 3.0, out_dtype)
    assert counts.dtype == out_dtype and vth.shape == rv.shape
    close(vth, rv, 1e-6)
    diff = (counts.cpu().long() - rc.long()).abs()
    # a float32 sum in another order may move a value sitting exactly on a .5 boundary
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spike_encode_exact_quotient(ops, dtype):
    """counts == round_half_even(x / vth) bit for bit, with x / vth the IEEE float32 quotient (the
    kernel uses a per-row reciprocal plus an FMA correction instead of a division per element)."""
    # random rows
    x = torch.randn(257, 3584, device=DEV).to(dtype)
    # tie rows: |x| / 2^e are the half-integers 0.5 .. 5.5 in pairs averaging 3, so with k = 3 the
    # threshold is exactly 2^e and every x / vth is exactly an integer + 0.5
    rows, cols = 64, 256
    mags = torch.tensor([[0.5, 5.5], [1.5, 4.5], [2.5, 3.5]])[torch.randint(0, 3, (rows, cols // 2))].flatten(1)
    sign = torch.where(torch.rand(rows, cols) < 0.5, -1.0, 1.0)
    scale = 2.0 ** torch.randint(-12, 10, (rows, 1)).float()
    ties = mags[:, torch.randperm(cols)] * sign * scale
    cases = [x, ties.to(DEV).to(dtype)]
    if dtype == torch.float32:  # one ulp either side of the ties: the quotient just misses .5
        t = ties.to(DEV)
        cases += [torch.nextafter(t, torch.full_like(t, math.inf)), torch.nextafter(t, torch.full_like(t, -math.inf))]
    for xx in cases:
        counts, vth = ops.spike_encode(xx, 3.0, torch.int32)
        ref = torch.round(xx.cpu().float() / vth.cpu())  # float32 IEEE division, half to even
        assert torch.equal(counts.cpu(), ref.to(torch.int32))
    c_tie, v_tie = ops.spike_encode(cases[1], 3.0, torch.int32)
    assert torch.equal(v_tie.cpu(), scale)  # the tie construction really produced exact thresholds


def test_spike_encode_saturates(ops):
    x = torch.zeros(2, 256, device=DEV)
    x[:, 0] = 1e6
    counts, _ = ops.spike_encode(x, 3.0, torch.int8)
    assert counts[:, 0].tolist() == [127, 127]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(63, 3584), (1000, 128), (7, 13)])
def test_spike_quant(ops, dtype, shape):
    x = torch.randn(shape, device=DEV).to(dtype)
    x_hat = ops.spike_quant(x, 3.0)
    # SPEC: vth is float32, so an x / vth within float32 rounding of a .5 boundary may round the
    # other way than against a float64 threshold, and one such count moves x_hat by vth (~1e-3
    # relative: a float32 run failed ~7% of the time against the float64 reference at 1e-5).
    # Exact math on the op's own float32 threshold (checked in test_spike_encode), and the float64
    # reference loosely.
    _, vth = ops.spike_encode(x, 3.0, torch.int32)
    vth = vth.cpu()
    close(x_hat, torch.round(x.cpu().float() / vth).double() * vth.double(), TOL[dtype])
    close(x_hat, R.ref_spike_quant(x.cpu(), 3.0), 1e-2)


@pytest.mark.parametrize("mode", ["binary", "ternary", "bitwise"])
@pytest.mark.parametrize("cdtype", [torch.int8, torch.int32, torch.int64])
def test_spike_expand_collapse(ops, mode, cdtype):
    c = torch.randint(-7, 8, (63, 129), device=DEV)
    if mode == "binary":
        c = c.abs()
    c = c.to(cdtype)
    T = 3 if mode == "bitwise" else 7
    tr = ops.spike_expand(c, mode, T)
    assert torch.equal(tr.cpu(), R.ref_spike_expand(c.cpu(), mode, T))
    back = ops.spike_collapse(tr, mode)
    assert back.dtype == torch.int32 and torch.equal(back.cpu().long(), c.cpu().long())


def test_spike_errors(ops):
    with pytest.raises(RuntimeError, match="counts >= 0"):
        ops.spike_expand(torch.tensor([1, -1], device=DEV, dtype=torch.int32), "binary", 2)
    with pytest.raises(RuntimeError, match="does not fit"):
        ops.spike_expand(torch.tensor([5], device=DEV, dtype=torch.int32), "ternary", 4)
    with pytest.raises(RuntimeError, match="bits"):
        ops.spike_expand(torch.tensor([8], device=DEV, dtype=torch.int32), "bitwise", 3)
    with pytest.raises(RuntimeError, match="max_abs"):
        ops.spike_stats(torch.tensor([9], device=DEV, dtype=torch.int32), 4)


def test_spike_stats(ops):
    c = torch.randint(-9, 10, (1000, 37), device=DEV, dtype=torch.int16)
    h = ops.spike_stats(c, 12)
    ref = torch.bincount(c.cpu().long().abs().flatten(), minlength=13)
    assert h.dtype == torch.int64 and torch.equal(h.cpu(), ref)


# ------------------------------------------------------------------------------ top-k gating
GATE_CASES = [  # E, k, scoring, renorm, bias, groups, topk_groups, scaling
    (16, 1, "softmax", True, False, 0, 0, 1.0),
    (16, 2, "softmax", False, False, 0, 0, 1.0),
    (8, 3, "sigmoid", True, True, 0, 0, 2.5),
    (60, 4, "softmax", True, False, 0, 0, 1.0),
    (32, 2, "softmax", True, False, 0, 0, 1.0),
    (128, 8, "softmax", True, False, 0, 0, 1.0),
    (256, 8, "sigmoid", True, True, 8, 4, 2.5),
    (512, 16, "softmax", False, True, 16, 3, 1.0),
]


@pytest.mark.parametrize("case", GATE_CASES)
@pytest.mark.parametrize("T", [1, 63, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_topk_gating(ops, case, T, dtype):
    E, k, scoring, renorm, use_bias, G, TG, scaling = case
    logits = torch.randn(T, E, device=DEV).to(dtype)
    bias = torch.randn(E, device=DEV) * 0.1 if use_bias else None
    w, ids = ops.topk_gating(logits, k, scoring, renorm, bias, G, TG, scaling)
    rw, rids = R.ref_topk_gating(logits.cpu(), k, scoring, renorm, None if bias is None else bias.cpu(),
                                 G or None, TG or None, scaling)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert torch.equal(ids.cpu(), rids)
    close(w, rw, 1e-5)


@pytest.mark.parametrize("E,k,G,TG", [(16, 2, 0, 0), (128, 8, 0, 0), (256, 8, 8, 4), (60, 16, 0, 0), (512, 16, 0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_topk_gating_ties(ops, E, k, G, TG, dtype):
    """Logits with many equal values (negative ones too): ties go to the lower expert (and group) index.
    bf16/fp16 without a bias take the packed-key path (the expert in the key's low bits)."""
    logits = (torch.randint(0, 5, (63, E), device=DEV) - 2).to(dtype)
    w, ids = ops.topk_gating(logits, k, "softmax", True, None, G, TG, 1.0)
    rw, rids = R.ref_topk_gating(logits.cpu(), k, "softmax", True, None, G or None, TG or None, 1.0)
    assert torch.equal(ids.cpu(), rids)
    close(w, rw, 1e-5)


@pytest.mark.parametrize("case", GATE_CASES)
def test_topk_gating_bwd(ops, case):
    E, k, scoring, renorm, use_bias, G, TG, scaling = case
    T = 63
    logits = torch.randn(T, E, device=DEV)
    _, ids = ops.topk_gating(logits, k, scoring, renorm, None, G, TG, scaling)
    gw = torch.randn(T, k, device=DEV)
    grad = ops.topk_gating_bwd(gw, logits, ids, scoring, renorm, scaling)
    lx = logits.cpu().double().requires_grad_()
    s = lx.softmax(-1) if scoring == "softmax" else lx.sigmoid()
    wr = s.gather(1, ids.cpu().long())
    if renorm:
        wr = wr / wr.sum(-1, keepdim=True)
    (wr * scaling * gw.cpu().double()).sum().backward()
    ref = lx.grad
    if renorm and k == 1:
        # one pick renormalised: w == scaling whatever the logits, so the exact gradient is zero and
        # the float64 autograd result is rounding noise (~1e-16) that no relative error can be taken
        # against; rel_err against exact zeros is the absolute norm (float32 noise ~1e-7).
        ref = torch.zeros_like(ref)
    close(grad, ref, 2e-2 if logits.dtype != torch.float32 else 1e-5)


# ------------------------------------------------------------------------------ permute family
def make_ids(T, k, E, drop=0.1):
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32) if T else \
        torch.empty(0, k, dtype=torch.int32)
    if drop:
        ids[torch.rand(ids.shape) < drop] = -1
    return ids.to(DEV)


@pytest.mark.parametrize("T,k,E,Hd", [(1, 1, 16, 64), (63, 2, 16, 3584), (300, 8, 128, 136), (40, 3, 7, 13),
                                      (300, 1, 16, 3584), (70, 1, 8, 9000), (33, 1, 5, 13)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_permute_unpermute(ops, T, k, E, Hd, dtype):
    x = torch.randn(T, Hd, device=DEV).to(dtype)
    ids = make_ids(T, k, E)
    xp, off, rm = ops.moe_permute(x, ids, E)
    rxp, roff, rrm = R.ref_moe_permute(x.cpu(), ids.cpu(), E)
    assert torch.equal(off.cpu(), roff) and torch.equal(rm.cpu(), rrm)
    assert torch.equal(xp.cpu(), rxp)  # pure copies and zero rows: exact
    # unpermute forward
    yp = torch.randn(T * k, Hd, device=DEV).to(dtype)
    w = torch.rand(T, k, device=DEV)
    y = ops.moe_unpermute(yp, rm, w)
    close(y, R.ref_moe_unpermute(yp.cpu(), rm.cpu(), w.cpu()), TOL[dtype])
    # permute backward: grad_x = sum of its rows
    gxp = torch.randn(T * k, Hd, device=DEV).to(dtype)
    gx = ops.moe_permute_bwd(gxp, rm)
    close(gx, R.ref_moe_unpermute(gxp.cpu(), rm.cpu(), torch.ones(T, k)), TOL[dtype])
    # unpermute backward vs autograd of the reference
    gy = torch.randn(T, Hd, device=DEV).to(dtype)
    gyp, gw = ops.moe_unpermute_bwd(gy, yp, rm, w)
    ypr = yp.cpu().double().requires_grad_()
    wr = w.cpu().double().requires_grad_()
    R.ref_moe_unpermute(ypr, rm.cpu(), wr).mul(gy.cpu().double()).sum().backward()
    close(gyp, ypr.grad, 2e-2 if dtype != torch.float32 else 1e-5)
    close(gw, wr.grad, 2e-2 if dtype != torch.float32 else 1e-5)


def test_moe_out_of_range_ids(ops):
    """ids >= num_experts: the CUDA ops (which never read a flag back, i.e. never synchronise) skip
    them like dropped slots, never indexing out of bounds; so does the public frontend by default on
    GPU tensors (no host sync), and in the debug mode (data checks on) it rejects them before dispatch."""
    E = 4
    ids = torch.tensor([[0, 5], [3, -1], [9, 2]], device=DEV, dtype=torch.int32)
    as_dropped = ids.masked_fill(ids >= E, -1)
    x = torch.randn(3, 8, device=DEV)
    xp, off, rm = ops.moe_permute(x, ids, E)
    rxp, roff, rrm = R.ref_moe_permute(x.cpu(), as_dropped.cpu(), E)
    assert torch.equal(off.cpu(), roff) and torch.equal(rm.cpu(), rrm) and torch.equal(xp.cpu(), rxp)
    assert torch.equal(ops.expert_counts(ids, E).cpu(), R.ref_expert_counts(as_dropped.cpu(), E))
    s, be, npp = ops.moe_align_block_size(ids, E, 4)
    rs, rbe, rnpp = R.ref_moe_align_block_size(as_dropped.cpu(), E, 4)
    assert torch.equal(s.cpu(), rs) and torch.equal(be.cpu(), rbe) and torch.equal(npp.cpu(), rnpp)
    try:
        import sbops
    except ImportError:
        return
    assert torch.equal(sbops.expert_counts(ids, E).cpu(), R.ref_expert_counts(as_dropped.cpu(), E))
    for fn in (lambda: sbops.moe_permute(x, ids, E), lambda: sbops.expert_counts(ids, E),
               lambda: sbops.moe_align_block_size(ids, E, 4)):
        with sbops.data_checks(True), pytest.raises(ValueError, match="num_experts"):
            fn()


@pytest.mark.parametrize("T,k,E,bs", [(1, 1, 4, 16), (63, 2, 16, 16), (300, 8, 128, 64), (1000, 1, 16, 7)])
@pytest.mark.parametrize("idt", [torch.int32, torch.int64])
def test_moe_align_and_counts(ops, T, k, E, bs, idt):
    ids = make_ids(T, k, E).to(idt)
    s, be, npp = ops.moe_align_block_size(ids, E, bs)
    rs, rbe, rnpp = R.ref_moe_align_block_size(ids.cpu(), E, bs)
    assert torch.equal(s.cpu(), rs) and torch.equal(be.cpu(), rbe) and torch.equal(npp.cpu(), rnpp)
    assert torch.equal(ops.expert_counts(ids, E).cpu(), R.ref_expert_counts(ids.cpu(), E))


# ------------------------------------------------------------------------------ decode attention
@pytest.mark.parametrize("N,H,HKV,K", [(1, 28, 4, 128), (5, 4, 4, 64), (63, 8, 2, 128)])
@pytest.mark.parametrize("gate", [None, "head", "key"])
@pytest.mark.parametrize("dtype,sdtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                                          (torch.bfloat16, torch.bfloat16)])
def test_linear_attn_decode(ops, N, H, HKV, K, gate, dtype, sdtype):
    V = K
    q = torch.randn(N, H, K, device=DEV).to(dtype)
    k = torch.randn(N, HKV, K, device=DEV).to(dtype) * 0.3
    v = torch.randn(N, HKV, V, device=DEV).to(dtype)
    g = None
    if gate == "head":
        g = -torch.rand(N, HKV, device=DEV)
    elif gate == "key":
        g = (-torch.rand(N, HKV, K, device=DEV)).to(dtype)
    S = N + 3
    state = torch.randn(S, HKV, K, V, device=DEV).to(sdtype)
    idx = torch.randperm(S, device=DEV)[:N].to(torch.int64)
    before = state.clone()
    o = ops.linear_attn_decode(q, k, v, g, state, idx, K ** -0.5)
    ro, rstate = R.ref_linear_attn_decode(q.cpu(), k.cpu(), v.cpu(), None if g is None else g.cpu(), before.cpu(),
                                          idx.cpu(), K ** -0.5)
    tol = 1e-5 if (dtype == torch.float32 and sdtype == torch.float32) else 1e-2
    close(o, ro, tol)
    close(state, rstate, tol)


@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16])
def test_linear_attn_decode_many_query_heads_per_kv_head(ops, sdtype):
    # G = 128 query heads share one state: the block's reduction buffer (64-128 KB) is past the 48 KB
    # that needs no opt-in, so the launcher raises the kernel's dynamic shared-memory limit
    N, H, HKV, K = 3, 128, 1, 64
    q = torch.randn(N, H, K, device=DEV).to(torch.bfloat16)
    k = torch.randn(N, HKV, K, device=DEV).to(torch.bfloat16) * 0.3
    v = torch.randn(N, HKV, K, device=DEV).to(torch.bfloat16)
    g = -torch.rand(N, HKV, device=DEV)
    state = torch.randn(N, HKV, K, K, device=DEV).to(sdtype)
    before = state.clone()
    o = ops.linear_attn_decode(q, k, v, g, state, None, K ** -0.5)
    ro, rstate = R.ref_linear_attn_decode(q.cpu(), k.cpu(), v.cpu(), g.cpu(), before.cpu(), None, K ** -0.5)
    close(o, ro, 1e-2)
    close(state, rstate, 1e-2)


def test_decode_batches_past_the_grid_y_limit(ops):
    # N * HKV = 65600 (sequence, KV head) blocks > 65535, the largest gridDim.y: the launchers launch
    # in slices; every sequence, on both sides of the slice boundary, must match the reference.  The
    # sequences are independent, so the float64 reference runs on the first ones and on those around
    # the boundary (sequence 8191 holds block 65535) and at the end (the whole batch took minutes)
    N, H, HKV, K, V, D, C = 8200, 8, 8, 64, 8, 64, 16
    idx = torch.tensor(list(range(4)) + list(range(8186, 8200)))
    q = torch.randn(N, H, K, device=DEV)
    k = torch.randn(N, HKV, K, device=DEV) * 0.3
    v = torch.randn(N, HKV, V, device=DEV)
    state = torch.randn(N, HKV, K, V, device=DEV)
    before = state[idx.to(DEV)].cpu()
    o = ops.linear_attn_decode(q, k, v, None, state, None, K ** -0.5)
    sub = lambda t: t[idx.to(t.device)].cpu()  # noqa: E731
    ro, rstate = R.ref_linear_attn_decode(sub(q), sub(k), sub(v), None, before, None, K ** -0.5)
    close(sub(o), ro, 1e-5)
    close(sub(state), rstate, 1e-5)

    kc = torch.randn(N, C, HKV, D, device=DEV)
    vc = torch.randn(N, C, HKV, D, device=DEV)
    lens = torch.randint(1, 3 * C, (N,), device=DEV, dtype=torch.int64)
    qd = torch.randn(N, H, D, device=DEV)
    od = ops.swa_decode(qd, kc, vc, lens, C - 1, D ** -0.5, None)
    rod = R.ref_swa_decode(sub(qd), sub(kc), sub(vc), sub(lens), C - 1, D ** -0.5, None)
    close(sub(od), rod, 1e-5)
    close(sub(od)[-8:], rod[-8:], 1e-5)   # the second slice alone, where an unsliced launch would have failed
    # bf16: the tensor-core kernel's slices (the float32 call above runs the CUDA-core kernel)
    qb, kb, vb = qd.bfloat16(), kc.bfloat16(), vc.bfloat16()
    ob = ops.swa_decode(qb, kb, vb, lens, C - 1, D ** -0.5, None)
    rob = R.ref_swa_decode(sub(qb), sub(kb), sub(vb), sub(lens), C - 1, D ** -0.5, None)
    close(sub(ob), rob, TOL[torch.bfloat16])
    close(sub(ob)[-8:], rob[-8:], TOL[torch.bfloat16])


# bf16 / fp16 run the tensor-core kernel on NVIDIA (16 query heads per block: G = 20 takes two), float32
# and MACA builds the CUDA-core kernel (8 heads per block)
@pytest.mark.parametrize("N,H,HKV,D,window,L", [(1, 28, 4, 128, 4096, 5000), (3, 4, 4, 64, 100, 1),
                                                 (64, 28, 4, 128, 64, 300), (2, 16, 1, 64, -1, 700),
                                                 (4, 8, 2, 128, 1000, 1000), (2, 40, 2, 64, 300, 900),
                                                 (3, 20, 1, 128, 70, 65)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_swa_decode_and_cache_write(ops, N, H, HKV, D, window, L, dtype):
    C = (window + 1) if window >= 0 else L
    S = N + 2
    kc = torch.randn(S, C, HKV, D, device=DEV).to(dtype)
    vc = torch.randn(S, C, HKV, D, device=DEV).to(dtype)
    slots = torch.randperm(S, device=DEV)[:N].to(torch.int32)
    lens = torch.randint(max(1, L // 2), L + 1, (N,), device=DEV, dtype=torch.int64)
    # write the current token (position L-1) through the op, then decode
    kn = torch.randn(N, HKV, D, device=DEV).to(dtype)
    vn = torch.randn(N, HKV, D, device=DEV).to(dtype)
    ops.swa_cache_write(kn, vn, kc, vc, lens - 1, slots)
    rows = ((lens - 1) % C).long()
    assert torch.equal(kc[slots.long(), rows], kn) and torch.equal(vc[slots.long(), rows], vn)
    q = torch.randn(N, H, D, device=DEV).to(dtype)
    o = ops.swa_decode(q, kc, vc, lens, window, D ** -0.5, slots)
    ro = R.ref_swa_decode(q.cpu(), kc.cpu(), vc.cpu(), lens.cpu(), window, D ** -0.5, slots.cpu())
    close(o, ro, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("L", [30, 400])  # one split / several
def test_swa_decode_invalid_slot_gives_nan_rows(ops, dtype, L):
    """A slot index outside the cache (the Python data checks are bypassed here) touches no cache row
    and gives NaN outputs for that sequence only; the other sequences are unaffected."""
    N, H, HKV, D, W = 3, 8, 2, 64, 300
    C = W + 1
    kc = torch.randn(N, C, HKV, D, device=DEV).to(dtype)
    vc = torch.randn(N, C, HKV, D, device=DEV).to(dtype)
    q = torch.randn(N, H, D, device=DEV).to(dtype)
    lens = torch.full((N,), L, device=DEV, dtype=torch.int64)
    slots = torch.tensor([0, 7, 2], device=DEV, dtype=torch.int32)
    o = ops.swa_decode(q, kc, vc, lens, W, D ** -0.5, slots)
    assert torch.isnan(o[1].float()).all()
    good = torch.tensor([0, 2], device=DEV)
    ro = R.ref_swa_decode(q[good].cpu(), kc.cpu(), vc.cpu(), lens[good].cpu(), W, D ** -0.5, slots[good].cpu())
    close(o[good], ro, TOL[dtype])


# ------------------------------------------------------------------------------ strided inputs (views)
# The CUDA hot paths read views in place through their strides; every result must equal the call on
# dense copies exactly (same kernel, same arithmetic).  Misaligned or odd-strided operands take the
# copy / scalar fallbacks, which must give the same bits too.
def _view(shape, dtype, how, dim=-1):
    """A tensor of `shape` laid out as `how`: 'slice' (a step of a [.., T, ..] tensor), 'split' (one part
    of a fused projection along `dim`), 'odd' (dense at an odd element offset: a misaligned base), 'pad'
    (rows padded by one element: an odd row stride)."""
    shape = list(shape)
    if how == "slice":
        big = torch.randn(shape[0], 3, *shape[1:], device=DEV).to(dtype)
        return big[:, 1]
    if how == "split":
        wide = shape.copy()
        wide[dim] *= 3
        return torch.randn(wide, device=DEV).to(dtype).narrow(dim, shape[dim], shape[dim])
    if how == "odd":
        n = math.prod(shape)
        return torch.randn(n + 1, device=DEV).to(dtype)[1:].view(shape)
    if how == "pad":
        wide = shape[:-1] + [shape[-1] + 1]
        return torch.randn(wide, device=DEV).to(dtype)[..., : shape[-1]]
    raise ValueError(how)


VIEWS = ["slice", "split", "odd", "pad"]


@pytest.mark.parametrize("how", VIEWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spike_encode_and_quant_read_views_in_place(ops, how, dtype):
    for shape in [(6, 4096), (5, 3, 13)]:
        x = _view(shape, dtype, how)
        c, v = ops.spike_encode(x, 3.0, torch.int8)
        c0, v0 = ops.spike_encode(x.contiguous(), 3.0, torch.int8)
        assert c.is_contiguous() and torch.equal(c, c0) and torch.equal(v, v0)
        xh = ops.spike_quant(x, 3.0)
        assert xh.is_contiguous() and torch.equal(xh, ops.spike_quant(x.contiguous(), 3.0))
    xt = torch.randn(7, 5, 64, device=DEV).to(dtype).transpose(0, 1)   # outer dims do not collapse: copied
    assert torch.equal(ops.spike_quant(xt, 2.0), ops.spike_quant(xt.contiguous(), 2.0))


@pytest.mark.parametrize("how", VIEWS)
@pytest.mark.parametrize("gate", [None, "head", "key"])
@pytest.mark.parametrize("dtype,sdtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_linear_attn_decode_reads_views_and_strided_state(ops, how, gate, dtype, sdtype):
    N, H, HKV, K = 3, 8, 2, 64
    q, k, v = _view((N, H, K), dtype, how), _view((N, HKV, K), dtype, how), _view((N, HKV, K), dtype, how)
    g = None
    if gate == "head":
        g = -torch.rand(N, 2 * HKV, device=DEV)[:, ::2]          # both strides read in place
    elif gate == "key":
        g = _view((N, HKV, K), dtype, how)
        g.abs_().neg_()                                            # in place: the view keeps its strides
    S = N + 2
    idx = torch.randperm(S, device=DEV)[:N]
    # state views: a slot range of a bigger buffer (aligned rows: in place) and padded rows (copy + write-back)
    for sview in ("slots", "pad"):
        if sview == "slots":
            buf = torch.randn(S + 1, HKV, K, K, device=DEV).to(sdtype)
            state = buf[1:]
        else:
            buf = torch.randn(S, HKV, K, K + 1, device=DEV).to(sdtype)
            state = buf[..., :K]
        dense = state.clone(memory_format=torch.contiguous_format)   # a copy even when state is contiguous
        untouched = buf.clone()
        o = ops.linear_attn_decode(q, k, v, g, state, idx, K ** -0.5)
        o0 = ops.linear_attn_decode(q.contiguous(), k.contiguous(), v.contiguous(),
                                    None if g is None else g.contiguous(), dense, idx, K ** -0.5)
        assert o.is_contiguous() and torch.equal(o, o0)
        assert torch.equal(state, dense)
        if sview == "slots":
            assert torch.equal(buf[0], untouched[0])                  # outside the view: untouched
        else:
            assert torch.equal(buf[..., K], untouched[..., K])


def test_inplace_operands_need_a_unit_last_stride(ops):
    N, HKV, K = 2, 2, 64
    q = torch.randn(N, 4, K, device=DEV)
    k = torch.randn(N, HKV, K, device=DEV)
    state = torch.randn(N, HKV, K, K, device=DEV).transpose(2, 3)
    with pytest.raises(RuntimeError, match="state .*contiguous last dimension"):
        ops.linear_attn_decode(q, k, k, None, state, None, 0.1)
    kc = torch.randn(N, 8, HKV, K, device=DEV).transpose(2, 3).contiguous().transpose(2, 3)
    with pytest.raises(RuntimeError, match="k_cache .*contiguous last dimension"):
        ops.swa_cache_write(k, k, kc, kc.clone(), torch.zeros(N, dtype=torch.int64, device=DEV), None)


@pytest.mark.parametrize("how", VIEWS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
def test_swa_cache_write_and_decode_read_views(ops, how, dtype, D):
    N, H, HKV, W, S = 3, 8, 2, 40, 5
    C = W + 1
    # k/v caches as the two halves of one [S, C, 2, HKV, D] buffer (aligned rows: read in place), or
    # padded rows (odd strides: written in place, read from a copy)
    if how == "pad":
        kc = torch.randn(S, C, HKV, D + 1, device=DEV).to(dtype)[..., :D]
        vc = torch.randn(S, C, HKV, D + 1, device=DEV).to(dtype)[..., :D]
    else:
        kv = torch.randn(S, C, 2, HKV, D, device=DEV).to(dtype)
        kc, vc = kv[:, :, 0], kv[:, :, 1]
    kd, vd = kc.contiguous(), vc.contiguous()
    kn, vn = _view((N, HKV, D), dtype, how), _view((N, HKV, D), dtype, how)
    pos = torch.tensor([7, 90, 0], device=DEV)
    slots = torch.tensor([4, 0, 2], device=DEV, dtype=torch.int32)
    ops.swa_cache_write(kn, vn, kc, vc, pos, slots)
    ops.swa_cache_write(kn.contiguous(), vn.contiguous(), kd, vd, pos, slots)
    assert torch.equal(kc, kd) and torch.equal(vc, vd)
    q = _view((N, H, D), dtype, how)
    lens = pos + 1
    sk, sv = _view((4, HKV, D), dtype, how), _view((4, HKV, D), dtype, how)
    for sinks in ((None, None), (sk, sv)):
        o = ops.swa_decode(q, kc, vc, lens, W, D ** -0.5, slots, *sinks)
        o0 = ops.swa_decode(q.contiguous(), kd, vd, lens, W, D ** -0.5, slots,
                            *(None if s is None else s.contiguous() for s in sinks))
        assert o.is_contiguous() and torch.equal(o, o0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_swa_attn_fused_projection_views(ops, dtype):
    """swa_attn on q/k/v split from one fused projection (the sm_90 kernels copy them for TMA; Triton
    reads them in place) equals the call on dense copies."""
    B, T, H, HKV, D = 2, 200, 8, 2, 128
    qkv = torch.randn(B, T, (H + 2 * HKV) * D, device=DEV).to(dtype)
    q, k, v = qkv.split([H * D, HKV * D, HKV * D], dim=-1)
    q, k, v = q.view(B, T, H, D), k.view(B, T, HKV, D), v.view(B, T, HKV, D)
    o, lse = ops.swa_attn(q, k, v, 64, D ** -0.5, None, None, None)
    o0, lse0 = ops.swa_attn(q.contiguous(), k.contiguous(), v.contiguous(), 64, D ** -0.5, None, None, None)
    assert torch.equal(o, o0) and torch.equal(lse, lse0)


# ------------------------------------------------------------------------------ swa_decode, hundreds of splits
# One sequence over a 40000-key full-attention cache: the grid plan gives it ~2-4 splits per SM (264-528 on an
# H100), more than the combine kernel's 256 threads, so its loops over the splits take several trips.
@pytest.mark.parametrize("dtype,D", [(torch.bfloat16, 128), (torch.float16, 64), (torch.float32, 64)])
def test_swa_decode_merges_hundreds_of_splits(ops, dtype, D):
    torch.manual_seed(3)
    C, H, HKV = 40000, 8, 1
    kc = torch.randn(1, C, HKV, D, device=DEV).to(dtype)
    vc = torch.randn(1, C, HKV, D, device=DEV).to(dtype)
    q = (torch.randn(1, H, D, device=DEV) * 3).to(dtype)     # peaked scores: the splits' maxima differ
    lens = torch.tensor([C - 5], device=DEV)
    o = ops.swa_decode(q, kc, vc, lens, -1, D ** -0.5, None, None, None)
    ref = R.ref_swa_decode(q.cpu(), kc.cpu(), vc.cpu(), lens.cpu(), -1, D ** -0.5, None, None, None)
    close(o, ref, TOL[dtype])


# ------------------------------------------------------------------------------ swa_decode sinks
# bf16 / fp16: the tensor-core kernel; float32: the CUDA-core kernel.  Long windows take several splits,
# with the sinks in the first split's keys; L > C reads only what the ring still holds.
@pytest.mark.parametrize("N,H,HKV,D,window,C,L,M", [(2, 8, 2, 128, 4096, 4097, 5000, 4), (3, 28, 4, 128, 60, 61, 30, 1),
                                                    (2, 16, 1, 64, -1, 300, 900, 128), (4, 20, 2, 64, 100, 101, 101, 3)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_swa_decode_with_sinks_matches_float64(ops, N, H, HKV, D, window, C, L, M, dtype):
    S = N + 1
    kc = torch.randn(S, C, HKV, D, device=DEV).to(dtype)
    vc = torch.randn(S, C, HKV, D, device=DEV).to(dtype)
    sk = (torch.randn(M, HKV, D, device=DEV) * 2).to(dtype)    # large sink scores: a visible contribution
    sv = torch.randn(M, HKV, D, device=DEV).to(dtype)
    slots = torch.randperm(S, device=DEV)[:N]
    lens = torch.randint(max(1, L // 2), L + 1, (N,), device=DEV)
    q = torch.randn(N, H, D, device=DEV).to(dtype)
    o = ops.swa_decode(q, kc, vc, lens, window, D ** -0.5, slots, sk, sv)
    ref = R.ref_swa_decode(q.cpu(), kc.cpu(), vc.cpu(), lens.cpu(), window, D ** -0.5, slots.cpu(), sk.cpu(), sv.cpu())
    close(o, ref, TOL[dtype])
    without = ops.swa_decode(q, kc, vc, lens, window, D ** -0.5, slots)
    assert R.rel_err(without, ref) > 10 * TOL[dtype]           # the sinks change the result
    empty = torch.empty(0, HKV, D, device=DEV, dtype=dtype)    # M = 0 is the sink-free call
    assert torch.equal(ops.swa_decode(q, kc, vc, lens, window, D ** -0.5, slots, empty, empty), without)
