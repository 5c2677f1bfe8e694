"""Tests of the Triton sliding-window attention kernels (backends/cuda/triton/swa.py).

(a) Without a GPU the kernels run under the Triton interpreter on CPU tensors: tiny float32
    shapes with small blocks (so every key-block phase, GQA, varlen and sinks are exercised)
    against tests/reference.py in float64, bound 1e-5.
(b) With a GPU: bfloat16 at the SPEC's odd shapes, bounds 1e-2 (forward) and 2e-2 (gradients).
The reference gradients come from torch.autograd on ref_swa_attn.
"""
import os
import pathlib
import sys

import pytest
import torch

_HAS_CUDA = torch.cuda.is_available()
if not _HAS_CUDA:
    # must be set before triton is imported (triton.jit reads it when the kernels are defined)
    os.environ["TRITON_INTERPRET"] = "1"


pytest.importorskip("triton")  # before any triton import (tests/triton_kernels.py's users included)

_TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))
from reference import ref_swa_attn, rel_err  # noqa: E402
import triton_kernels  # noqa: E402

if triton_kernels.interpreting():
    triton_kernels.install_interpreter_shims()

swa = triton_kernels.load("swa")


def _make(B, T, H, HKV, D, M, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    q, k, v = rnd(B, T, H, D), rnd(B, T, HKV, D), rnd(B, T, HKV, D)
    sk, sv = (rnd(M, HKV, D), rnd(M, HKV, D)) if M else (None, None)
    return q, k, v, sk, sv


def _check(B, T, H, HKV, D, window, M=0, cu=None, dtype=torch.float32, device="cpu",
           fwd_cfg=None, bwd_cfg=None, tol_fwd=1e-5, tol_grad=1e-5, with_grad_lse=True):
    q, k, v, sk, sv = _make(B, T, H, HKV, D, M, dtype, device)
    cu_dev = cu.to(device) if cu is not None else None
    o, lse = swa.swa_attn_fwd(q, k, v, window, None, cu_dev, sk, sv, config=fwd_cfg)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen).to(device=device, dtype=dtype)
    dlse = torch.randn(lse.shape, generator=gen).to(device) if with_grad_lse else None
    grads = swa.swa_attn_bwd(q, k, v, o, lse, do, dlse, window, None, cu_dev, sk, sv,
                             config=bwd_cfg)

    # float64 reference on CPU, gradients through autograd
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    sinks = [x.detach().cpu().double().requires_grad_() for x in (sk, sv)] if M else [None, None]
    ro, rlse = ref_swa_attn(*leaves, window, None, cu, *sinks)
    loss = (ro * do.cpu().double()).sum()
    if dlse is not None:
        loss = loss + (rlse * dlse.cpu().double()).sum()
    inputs = leaves + (sinks if M else [])
    rgrads = torch.autograd.grad(loss, inputs)

    assert o.dtype == q.dtype and o.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (B, T, H)
    assert rel_err(o, ro) <= tol_fwd, f"o rel err {rel_err(o, ro):.2e}"
    assert rel_err(lse, rlse) <= tol_fwd, f"lse rel err {rel_err(lse, rlse):.2e}"
    names = ["dq", "dk", "dv", "dsink_k", "dsink_v"]
    for name, g, rg in zip(names, grads, rgrads):
        err = rel_err(g, rg)
        assert err <= tol_grad, f"{name} rel err {err:.2e}"
    if M:
        assert grads[3].shape == sk.shape and grads[3].dtype == sk.dtype
    else:
        assert grads[3].numel() == 0 and grads[4].numel() == 0
    return (o, lse) + tuple(grads)


# ------------------------------------------------------------------- (a) interpreter, float32
# small blocks so a tiny T spans several query and key blocks (BLOCK_M != BLOCK_N on purpose)
_FWD_SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
_BWD_SMALL = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}

cpu_only = pytest.mark.skipif(_HAS_CUDA, reason="interpreter tests run only without a GPU")


@cpu_only
@pytest.mark.parametrize("window", [0, 1, 7, 100, -1])
def test_interp_windows_gqa(window):
    _check(1, 45, 4, 2, 64, window, fwd_cfg=_FWD_SMALL, bwd_cfg=_BWD_SMALL)


@cpu_only
def test_interp_batch_t1_and_odd():
    _check(2, 1, 2, 1, 64, 3, fwd_cfg=_FWD_SMALL, bwd_cfg=_BWD_SMALL)
    _check(2, 37, 2, 2, 64, 5, fwd_cfg=_BWD_SMALL, bwd_cfg=_FWD_SMALL, with_grad_lse=False)


@cpu_only
def test_interp_varlen_sinks():
    cu = torch.tensor([0, 13, 13, 40, 50], dtype=torch.int32)   # includes an empty sequence
    _check(1, 50, 4, 2, 64, 9, M=3, cu=cu, fwd_cfg=_FWD_SMALL, bwd_cfg=_BWD_SMALL)
    _check(1, 50, 2, 1, 64, -1, cu=cu.long(), fwd_cfg=_FWD_SMALL, bwd_cfg=_BWD_SMALL)


@cpu_only
def test_interp_sinks_d128_default_config():
    # config=None: the float32 entries of backends/cuda/tuning/swa.json
    _check(1, 70, 2, 1, 128, 20, M=37)


# ---------------------------------------------- (a') interpreter: opt-in config keys vs default
# split_masks (fwd and bwd configs) and bwd_atomic_dq (bwd config): each option alone and both,
# against float64 (inside _check) and against the default path on the same inputs. split_masks
# only removes mask work on pairs that are visible anyway, so in the interpreter it must match
# the default bit for bit; bwd_atomic_dq sums dq in another order (float32 atomics).
_OPTIONS = {
    "split": ({"split_masks": True}, {"split_masks": True}),
    "atomic": ({}, {"bwd_atomic_dq": True}),
    "both": ({"split_masks": True}, {"split_masks": True, "bwd_atomic_dq": True}),
}
_OUT_NAMES = ["o", "lse", "dq", "dk", "dv", "dsink_k", "dsink_v"]


def _check_option(opt, *args, fwd_cfg=_FWD_SMALL, bwd_cfg=_BWD_SMALL, ref=None, **kw):
    """Run with option ``opt`` (checked against float64 by _check) and compare with the default
    path's outputs ``ref`` (computed here unless given). Returns ``ref``."""
    fopt, bopt = _OPTIONS[opt]
    fwd_opt = None if fwd_cfg is None and not fopt else {**(fwd_cfg or {}), **fopt}
    bwd_opt = None if bwd_cfg is None and not bopt else {**(bwd_cfg or {}), **bopt}
    got = _check(*args, fwd_cfg=fwd_opt, bwd_cfg=bwd_opt, **kw)
    if ref is None:
        ref = _check(*args, fwd_cfg=fwd_cfg, bwd_cfg=bwd_cfg, **kw)
    for name, a, b in zip(_OUT_NAMES, got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if name in ("o", "lse", "dk", "dv", "dsink_k", "dsink_v") or "atomic_dq" not in str(bopt):
            assert torch.equal(a, b), f"{opt}: {name} differs from the default path"
        else:
            err = rel_err(a, b.double())
            assert err <= 1e-6, f"{opt}: {name} rel err vs default {err:.2e}"
    return ref


@cpu_only
@pytest.mark.parametrize("opt", list(_OPTIONS))
@pytest.mark.parametrize("window", [0, 1, 7, 20, 100, -1])
def test_interp_options_windows_gqa(opt, window):
    # T=63: a partial last block; window 20 is no multiple of the blocks; 100 > T
    _check_option(opt, 1, 63, 4, 2, 64, window)


@cpu_only
@pytest.mark.parametrize("opt", list(_OPTIONS))
def test_interp_options_t1_and_block_shapes(opt):
    _check_option(opt, 2, 1, 2, 1, 64, 3)
    _check_option(opt, 1, 1, 2, 2, 64, -1, M=2)
    # BLOCK_N < BLOCK_M in the forward / dQ (the diagonal spans several key blocks) and the
    # transposed shapes in the dK/dV kernel; windows below, between and above the block sizes
    for window in (5, 12, 40):
        _check_option(opt, 1, 100, 2, 1, 64, window, fwd_cfg=_WIDE, bwd_cfg=_TALL)
    _check_option(opt, 2, 37, 2, 2, 64, 9, fwd_cfg=_TALL, bwd_cfg=_WIDE, with_grad_lse=False)


_WIDE = {"BLOCK_M": 16, "BLOCK_N": 8, "num_warps": 4, "num_stages": 1}
_TALL = {"BLOCK_M": 8, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


@cpu_only
@pytest.mark.parametrize("blocks", ["wide_tall", "tall_wide"])
def test_interp_options_window_sweep(blocks):
    # every window from 0 to past T: each edge case of the phase bounds (window edge inside
    # the diagonal, one row/key before or after a block boundary) occurs for some window.
    # "split" covers the dQ kernel's split path ("both" skips that kernel).
    fwd_cfg, bwd_cfg = (_WIDE, _TALL) if blocks == "wide_tall" else (_TALL, _WIDE)
    for window in range(0, 36):
        args = (1, 33, 1, 1, 64, window)
        kw = dict(fwd_cfg=fwd_cfg, bwd_cfg=bwd_cfg, with_grad_lse=window % 2 == 0)
        ref = _check_option("split", *args, **kw)
        _check_option("both", *args, ref=ref, **kw)


@cpu_only
@pytest.mark.parametrize("opt", list(_OPTIONS))
def test_interp_options_varlen_sinks(opt):
    cu = torch.tensor([0, 13, 13, 40, 50], dtype=torch.int32)   # includes an empty sequence
    _check_option(opt, 1, 50, 4, 2, 64, 9, M=3, cu=cu)
    _check_option(opt, 1, 50, 2, 1, 64, -1, cu=cu.long())
    # sequences of 1, 16 (= a block), 33 and 50 tokens
    cu = torch.tensor([0, 1, 17, 50, 100], dtype=torch.int32)
    _check_option(opt, 1, 100, 4, 1, 64, 20, M=5, cu=cu)
    _check_option(opt, 1, 100, 4, 2, 64, 0, M=1, cu=cu)


@cpu_only
@pytest.mark.parametrize("opt", list(_OPTIONS))
def test_interp_options_d128_default_blocks(opt):
    # the float32 entries of tuning/swa.json plus only the option keys
    _check_option(opt, 1, 70, 2, 1, 128, 20, M=37, fwd_cfg=None, bwd_cfg=None)


@pytest.mark.parametrize("backend", ["cuda", "maca"])
def test_options_off_by_default(backend):
    for kind in ("fwd", "bwd"):
        for D in (64, 128):
            for dt in (torch.bfloat16, torch.float16, torch.float32):
                try:
                    cfg = swa.default_config(kind, D, dt, backend)
                except (KeyError, FileNotFoundError):
                    continue
                assert not cfg.get("split_masks") and not cfg.get("bwd_atomic_dq"), (kind, D, dt)


def test_rejects_head_dim():
    q = torch.zeros(1, 4, 2, 32)
    kv = torch.zeros(1, 4, 1, 32)
    with pytest.raises(ValueError, match="head dim 32"):
        swa.swa_attn_fwd(q, kv, kv, 4, None, None, None, None)


def test_default_config_lookup():
    cfg = swa.default_config("fwd", 128, torch.bfloat16)
    assert {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= set(cfg)


# ------------------------------------------------------------------------ (b) GPU, bfloat16
gpu_only = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA GPU")


@gpu_only
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("T", [1, 63, 1000])
@pytest.mark.parametrize("window", [0, 1, 7, 2000, -1])
def test_gpu_bf16(T, D, window):
    _check(2, T, 8, 2, D, window, dtype=torch.bfloat16, device="cuda",
           tol_fwd=1e-2, tol_grad=2e-2)


@gpu_only
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16_varlen_sinks(D):
    cu = torch.tensor([0, 1, 64, 64, 700, 1000], dtype=torch.int32)
    _check(1, 1000, 8, 2, D, 100, M=128, cu=cu, dtype=torch.bfloat16, device="cuda",
           tol_fwd=1e-2, tol_grad=2e-2)
    _check(1, 1000, 8, 2, D, -1, M=5, cu=cu, dtype=torch.bfloat16, device="cuda",
           tol_fwd=1e-2, tol_grad=2e-2)


@gpu_only
def test_gpu_fp16_and_fp32():
    _check(1, 300, 4, 1, 128, 63, M=16, dtype=torch.float16, device="cuda",
           tol_fwd=1e-2, tol_grad=2e-2)
    _check(1, 300, 4, 1, 64, 63, M=16, dtype=torch.float32, device="cuda",
           tol_fwd=1e-5, tol_grad=1e-5)


@gpu_only
@pytest.mark.parametrize("opt", list(_OPTIONS))
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16_options(opt, D):
    # the opt-in config keys on top of the tuned bf16 configs, against float64
    fopt, bopt = _OPTIONS[opt]
    cu = torch.tensor([0, 1, 64, 64, 700, 1000], dtype=torch.int32)
    for window, M, c in [(7, 0, None), (2000, 0, None), (-1, 0, None), (100, 128, cu)]:
        B = 1 if c is not None else 2
        _check(B, 1000, 8, 2, D, window, M=M, cu=c, dtype=torch.bfloat16, device="cuda",
               fwd_cfg=dict(fopt), bwd_cfg=dict(bopt), tol_fwd=1e-2, tol_grad=2e-2)


# ------------------------------------------------ strided inputs (views) and untrusted cu_seqlens
# The CPU runs these through the interpreter, a GPU with the compiled kernels.  A view with a unit
# last stride is read in place, so its results equal the contiguous call's bit for bit; all match
# float64.
_DEV = "cuda" if _HAS_CUDA else "cpu"
_VIEW_TOL = 1e-5 if not _HAS_CUDA else 1e-4
_VIEW_CFG = ({"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
             {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1})


def _swa_run(q, k, v, o, do, dlse, window, cu, sk, sv, fwd_cfg, bwd_cfg):
    """(o, lse, dq, dk, dv, dsink_k, dsink_v); the backward reads `o` (a view of the forward's o)."""
    o_fwd, lse = swa.swa_attn_fwd(q, k, v, window, None, cu, sk, sv, config=fwd_cfg)
    o_in = o_fwd if o is None else o(o_fwd)
    return (o_fwd, lse) + tuple(swa.swa_attn_bwd(q, k, v, o_in, lse, do, dlse, window, None, cu, sk, sv,
                                                  config=bwd_cfg))


_SWA_VIEWS = {
    # name: (B, T, H, HKV, window, cu, M, layout of q/k/v, layout of o and dO)
    "fused_split_varlen_sinks": (1, 45, 4, 2, 9, [0, 13, 13, 45], 3, "fused", "slice_heads"),
    "transposed_batch": (2, 37, 2, 1, 5, None, 0, "transposed", "slice_T"),
    "slice_T_full_causal": (2, 20, 2, 2, -1, None, 2, "slice_T", "transposed"),
    "strided_last_copy": (2, 19, 2, 1, 7, None, 0, "strided_last", "strided_last"),
}


@pytest.mark.parametrize("case", list(_SWA_VIEWS))
def test_views_read_in_place_match_contiguous_and_reference(case):
    B, T, H, HKV, window, cu, M, lay, lay_od = _SWA_VIEWS[case]
    q, k, v, sk, sv = _make(B, T, H, HKV, 64, M, torch.float32, _DEV, seed=5)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=_DEV)
    gen = torch.Generator().manual_seed(6)
    do = torch.randn(q.shape, generator=gen).to(q)
    dlse = torch.randn(q.shape[:3], generator=gen).to(q)
    if lay == "fused":
        qv, kv_, vv = triton_kernels.fused_qkv(q, k, v)
    else:
        qv, kv_, vv = (triton_kernels.view_of(x, lay, gen) for x in (q, k, v))
    dov = triton_kernels.view_of(do, lay_od, gen)
    copied = lay == "strided_last"          # the only layout the launchers copy
    assert all((swa.in_place(x) is x) != copied for x in (qv, kv_, vv, dov))
    got = _swa_run(qv, kv_, vv, lambda o: triton_kernels.view_of(o, lay_od, gen), dov, dlse, window, cu, sk, sv,
                   *_VIEW_CFG)
    want = _swa_run(q, k, v, None, do, dlse, window, cu, sk, sv, *_VIEW_CFG)
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    sinks = [x.detach().cpu().double().requires_grad_() for x in (sk, sv)] if M else [None, None]
    ro, rlse = ref_swa_attn(*leaves, window, None, None if cu is None else cu.cpu(), *sinks)
    loss = (ro * do.cpu().double()).sum() + (rlse * dlse.cpu().double()).sum()
    ref = [ro, rlse] + list(torch.autograd.grad(loss, leaves + (sinks if M else [])))
    for name, a, b, r in zip(["o", "lse", "dq", "dk", "dv", "dsink_k", "dsink_v"], got, want, ref + [None] * 2):
        assert a.is_contiguous() and a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b), f"{name}: view and contiguous results differ"
        if r is not None:
            assert rel_err(a, r) <= _VIEW_TOL, f"{name} rel err {rel_err(a, r):.2e}"
    # the dQ-only entry of the sm_90 path reads views too
    if cu is None and not M:
        dq = swa.swa_attn_bwd_dq(qv, kv_, vv, triton_kernels.view_of(got[0], lay_od, gen), got[1], dov, dlse,
                                 window, None)
        dq_want = swa.swa_attn_bwd_dq(q, k, v, want[0], want[1], do, dlse, window, None)
        assert dq.is_contiguous() and torch.equal(dq, dq_want)


def test_cu_seqlens_past_T_or_negative_clamps_to_the_tokens():
    """cu values outside [0, T] are clamped in the kernels (sinks' row bound included): the result
    equals the call with the clamped cu_seqlens, with no access outside the tensors."""
    q, k, v, sk, sv = _make(1, 40, 2, 1, 64, 2, torch.float32, _DEV, seed=7)
    gen = torch.Generator().manual_seed(8)
    do, dlse = torch.randn(q.shape, generator=gen).to(q), torch.randn(q.shape[:3], generator=gen).to(q)
    bads = (torch.tensor([-7, 17, 25, 48], dtype=torch.int32, device=_DEV),
            torch.tensor([-(2 ** 40), 17, 25, 2 ** 40], dtype=torch.int64, device=_DEV))
    good = torch.tensor([0, 17, 25, 40], dtype=torch.int64, device=_DEV)
    want = _swa_run(q, k, v, None, do, dlse, 6, good, sk, sv, *_VIEW_CFG)
    for bad in bads:
        got = triton_kernels.run_in_bounds(lambda: _swa_run(q, k, v, None, do, dlse, 6, bad, sk, sv, *_VIEW_CFG))
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_cu_seqlens_decreasing_stays_in_bounds_uncovered_rows_zero():
    """A decreasing pair is an empty sequence; tokens outside every sequence get zero o, lse and
    gradients; everything stays in bounds and finite."""
    q, k, v, sk, sv = _make(1, 33, 2, 1, 64, 0, torch.float32, _DEV, seed=9)
    gen = torch.Generator().manual_seed(10)
    do, dlse = torch.randn(q.shape, generator=gen).to(q), torch.randn(q.shape[:3], generator=gen).to(q)
    cu = torch.tensor([0, 20, 9, 25], dtype=torch.int32, device=_DEV)   # [0,20), [20,20) empty, [9,25); 25.. uncovered
    o, lse, dq, dk, dv, _, _ = triton_kernels.run_in_bounds(lambda: _swa_run(q, k, v, None, do, dlse, 4, cu, None, None, *_VIEW_CFG))
    for x in (o, lse, dq, dk, dv):
        assert torch.isfinite(x).all() and not x[:, 25:].any()
        assert x[:, :25].abs().sum() > 0
