"""The Hopper wgmma forward of swa_attn (backends/cuda/kernels/swa_fwd_sm90.cu, via backends/cuda/sm90.py).

Runs only on an sm_90 GPU with an sm_90a build of sbops (skips cleanly otherwise). Against the float64
reference (bf16/fp16 within 1e-2) on odd shapes: T around the 128-row/128-key tiles, windows 0, 1, 7, larger
than T and full causal, GQA, batch > 1; the Triton backward fed by its o and lse (gradients within 2e-2);
the public op uses it exactly when backends/cuda/tuning/sm90.json routes it; the cases it does not serve
never reach it.
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference import ref_swa_attn, rel_err  # noqa: E402


def _sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return None
    import sbops  # noqa: F401  (loads sbops._C and registers the backends)
    from sbops import _platform
    from sbops._backends.cuda import sm90
    available = _platform.native_kernel_available("swa_attn_fwd_sm90_available", torch.cuda.current_device())
    return sm90 if available else None


SM90 = _sm90()
pytestmark = pytest.mark.skipif(SM90 is None, reason="needs an sm_90 GPU and an sm_90a build of sbops")


def _inputs(B, T, H, HKV, dtype=torch.bfloat16, seed=0, D=128):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to("cuda", dtype)  # noqa: E731
    return mk(B, T, H, D), mk(B, T, HKV, D), mk(B, T, HKV, D)


def _ref(q, k, v, window, scale=None):
    return ref_swa_attn(q.cpu().double(), k.cpu().double(), v.cpu().double(), window, scale)


@pytest.mark.parametrize("T", [1, 63, 127, 128, 129, 1000])
@pytest.mark.parametrize("window", [0, 1, 7, 200, 2000, -1])
def test_sm90_forward_matches_float64(T, window):
    q, k, v = _inputs(2, T, 8, 2)
    o, lse = SM90.swa_fwd(q, k, v, window, None)
    ro, rlse = _ref(q, k, v, window)
    assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == (2, T, 8) and lse.dtype == torch.float32
    assert rel_err(o, ro) <= 1e-2, f"o rel err {rel_err(o, ro):.2e}"
    assert rel_err(lse, rlse) <= 1e-2, f"lse rel err {rel_err(lse, rlse):.2e}"


@pytest.mark.parametrize("H,HKV", [(3, 1), (6, 6), (28, 4), (14, 2)])
def test_sm90_forward_head_counts_match_float64(H, HKV):
    """Odd H runs the kernel without clusters; even H the 2-CTA clusters of head pairs, which multicast K/V when
    both heads read one KV head (14/2: every pair; 28/4: all but two; 6/6 MHA: none)."""
    q, k, v = _inputs(2, 333, H, HKV, seed=23)
    o, lse = SM90.swa_fwd(q, k, v, 100, None)
    ro, rlse = _ref(q, k, v, 100)
    assert rel_err(o, ro) <= 1e-2, f"o rel err {rel_err(o, ro):.2e}"
    assert rel_err(lse, rlse) <= 1e-2, f"lse rel err {rel_err(lse, rlse):.2e}"


def test_sm90_forward_reads_views_at_odd_storage_offsets():
    """TMA needs 16-byte-aligned bases: contiguous views starting 1 element into their storage still work."""
    q0, k0, v0 = _inputs(1, 300, 4, 2)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view

    q, k, v = shifted(q0), shifted(k0), shifted(v0)
    assert q.data_ptr() % 16 != 0 and q.is_contiguous()
    o, lse = SM90.swa_fwd(q, k, v, 100, None)
    ro, rlse = _ref(q0, k0, v0, 100)
    assert rel_err(o, ro) <= 1e-2 and rel_err(lse, rlse) <= 1e-2


def test_sm90_forward_fp16_spikingbrain_heads_and_scale():
    q, k, v = _inputs(1, 700, 28, 4, dtype=torch.float16, seed=3)
    o, lse = SM90.swa_fwd(q, k, v, 300, 0.05)
    ro, rlse = _ref(q, k, v, 300, 0.05)
    assert rel_err(o, ro) <= 1e-2 and rel_err(lse, rlse) <= 1e-2


def test_sm90_forward_agrees_with_triton_at_window_4096():
    from sbops._backends.cuda.triton import swa
    q, k, v = _inputs(1, 5000, 28, 4, seed=5)
    o, lse = SM90.swa_fwd(q, k, v, 4096, None)
    to, tlse = swa.swa_attn_fwd(q, k, v, 4096, None, None, None, None)
    assert rel_err(o, to.double()) <= 1e-2
    assert (lse - tlse).abs().max().item() <= 1e-3


def test_triton_backward_from_the_sm90_forward_matches_float64():
    from sbops._backends.cuda.triton import swa
    q, k, v = _inputs(1, 300, 8, 2, seed=7)
    o, lse = SM90.swa_fwd(q, k, v, 64, None)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(8)).to("cuda", o.dtype)
    dq, dk, dv, _, _ = swa.swa_attn_bwd(q, k, v, o, lse, do, None, 64, None, None, None, None)
    ref_leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ro, _ = ref_swa_attn(*ref_leaves, 64)
    rgrads = torch.autograd.grad((ro * do.cpu().double()).sum(), ref_leaves)
    for name, gr, rg in zip(("dq", "dk", "dv"), (dq, dk, dv), rgrads):
        assert rel_err(gr, rg) <= 2e-2, f"{name} rel err {rel_err(gr, rg):.2e}"


def test_public_op_follows_the_routing_data():
    """sbops.swa_attn runs the sm_90 forward exactly when backends/cuda/tuning/sm90.json says so."""
    import sbops
    from sbops._backends.cuda.triton import swa
    q, k, v = _inputs(1, 300, 8, 2, seed=9)
    assert SM90.swa_applies(q, k, v, None, None)
    o, lse = sbops.swa_attn(q, k, v, 64, return_lse=True)
    if SM90.routes()["swa_fwd"]:
        want = SM90.swa_fwd(q, k, v, 64, None)
    else:
        want = swa.swa_attn_fwd(q, k, v, 64, None, None, None, None)
    assert torch.equal(o, want[0]) and torch.equal(lse, want[1])


def test_cases_it_does_not_serve_go_to_triton():
    q, k, v = _inputs(1, 64, 4, 2)
    cu = torch.tensor([0, 30, 64], device="cuda", dtype=torch.int32)
    sk = torch.zeros(3, 2, 128, device="cuda", dtype=q.dtype)
    assert not SM90.swa_applies(q, k, v, cu, None)
    assert not SM90.swa_applies(q, k, v, None, sk)
    assert not SM90.swa_applies(q.float(), k.float(), v.float(), None, None)
    assert not SM90.swa_applies(q, k, v, None, None, -0.1)
    q64, k64, v64 = _inputs(1, 64, 4, 2, D=64)
    assert not SM90.swa_applies(q64, k64, v64, None, None)


def test_native_op_rejects_what_it_cannot_run():
    op = torch.ops.sbops_native.swa_attn_fwd_sm90
    q, k, v = _inputs(1, 64, 4, 2, D=64)
    with pytest.raises(RuntimeError, match="head dim must be 128"):
        op(q, k, v, 8, 0.1)
    q, k, v = _inputs(1, 64, 4, 2)
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        op(q.float(), k.float(), v.float(), 8, 0.1)
    with pytest.raises(RuntimeError, match="window"):
        op(q, k, v, -1, 0.1)
    with pytest.raises(RuntimeError, match="H % HKV"):
        op(q[:, :, :3], k, v, 8, 0.1)


# ---------------------------------------------------------------------------------------------- backward
def _ref_grads(q, k, v, do, window, scale=None, glse=None):
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ro, rlse = ref_swa_attn(*leaves, window, scale)
    loss = (ro * do.cpu().double()).sum()
    if glse is not None:
        loss = loss + (rlse * glse.cpu().double()).sum()
    return torch.autograd.grad(loss, leaves)


def _check_grads(got, want, tol=2e-2):
    for name, g, r in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == r.shape, f"{name} shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        assert rel_err(g, r) <= tol, f"{name} rel err {rel_err(g, r):.2e}"


@pytest.mark.parametrize("fuse_dq", [True, False], ids=["fused_dq", "triton_dq"])
@pytest.mark.parametrize("T", [1, 63, 65, 128, 129, 1000])
@pytest.mark.parametrize("window", [0, 1, 7, 200, -1])
def test_sm90_backward_matches_float64(T, window, fuse_dq):
    q, k, v = _inputs(2, T, 8, 2, seed=11)
    o, lse = SM90.swa_fwd(q, k, v, window, None)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(12)).to("cuda", o.dtype)
    dq, dk, dv, dsk, dsv = SM90.swa_bwd(q, k, v, o, lse, do, None, window, None, fuse_dq=fuse_dq)
    assert dq.dtype == q.dtype and dk.dtype == k.dtype and dsk.numel() == 0 and dsv.numel() == 0
    _check_grads((dq, dk, dv), _ref_grads(q, k, v, do, window))


def test_sm90_backward_fp16_spikingbrain_heads_scale_and_grad_lse():
    q, k, v = _inputs(1, 700, 28, 4, dtype=torch.float16, seed=13)
    o, lse = SM90.swa_fwd(q, k, v, 300, 0.05)
    g = torch.Generator().manual_seed(14)
    do = torch.randn(o.shape, generator=g).to("cuda", o.dtype)
    glse = torch.randn(lse.shape, generator=g).to("cuda")
    got = SM90.swa_bwd(q, k, v, o, lse, do, glse, 300, 0.05)[:3]
    _check_grads(got, _ref_grads(q, k, v, do, 300, 0.05, glse))


def test_sm90_backward_agrees_with_triton_at_window_4096():
    from sbops._backends.cuda.triton import swa
    q, k, v = _inputs(1, 5000, 28, 4, seed=15)
    o, lse = SM90.swa_fwd(q, k, v, 4096, None)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(16)).to("cuda", o.dtype)
    got = SM90.swa_bwd(q, k, v, o, lse, do, None, 4096, None)
    want = swa.swa_attn_bwd(q, k, v, o, lse, do, None, 4096, None, None, None, None)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert rel_err(g, w.double()) <= 1e-2, f"{name} rel err {rel_err(g, w.double()):.2e}"


def test_sm90_backward_reads_views_at_odd_storage_offsets():
    q0, k0, v0 = _inputs(1, 300, 4, 2, seed=17)
    do0 = torch.randn(q0.shape, generator=torch.Generator().manual_seed(18)).to("cuda", q0.dtype)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view

    o, lse = SM90.swa_fwd(q0, k0, v0, 100, None)
    got = SM90.swa_bwd(shifted(q0), shifted(k0), shifted(v0), shifted(o), lse, shifted(do0), None, 100, None)
    _check_grads(got[:3], _ref_grads(q0, k0, v0, do0, 100))


def test_public_op_backward_follows_the_routing_data():
    """sbops.swa_attn's backward runs the sm_90 kernel exactly when tuning/sm90.json routes it."""
    import sbops
    from sbops._backends.cuda.triton import swa
    q, k, v = _inputs(1, 300, 8, 2, seed=19)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = sbops.swa_attn(*leaves, 64)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(20)).to("cuda", o.dtype)
    got = torch.autograd.grad(o, leaves, do)
    o2, lse2 = (SM90.swa_fwd(q, k, v, 64, None) if SM90.routes()["swa_fwd"]
                else swa.swa_attn_fwd(q, k, v, 64, None, None, None, None))
    if SM90.routes().get("swa_bwd", False):
        want = SM90.swa_bwd(q, k, v, o2, lse2, do, None, 64, None,
                            fuse_dq=SM90.routes().get("swa_bwd_fused_dq", True))
    else:
        want = swa.swa_attn_bwd(q, k, v, o2, lse2, do, None, 64, None, None, None, None)
    # float32 atomics (fused dQ) add in any order: dq agrees to rounding, dk / dv exactly
    assert rel_err(got[0], want[0].double()) <= 1e-2
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_native_backward_rejects_what_it_cannot_run():
    op = torch.ops.sbops_native.swa_attn_bwd_sm90
    q, k, v = _inputs(1, 64, 4, 2)
    o, lse = SM90.swa_fwd(q, k, v, 8, None)
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        op(q.float(), k.float(), v.float(), o.float(), lse, o.float(), None, 8, 0.1, True)
    with pytest.raises(RuntimeError, match="lse must be"):
        op(q, k, v, o, lse[:, :3], o, None, 8, 0.1, True)
    with pytest.raises(RuntimeError, match="window"):
        op(q, k, v, o, lse, o, None, -1, 0.1, True)
    with pytest.raises(RuntimeError, match="o, grad_o must be q's shape"):
        op(q, k, v, o[:, :3], lse, o, None, 8, 0.1, True)
