"""Tests of the Triton sliding-window attention kernels (backends/cuda/triton/swa.py).

(a) Without a GPU the kernels run under the Triton interpreter on CPU tensors: tiny float32
    shapes with small blocks (so every key-block phase, GQA, varlen and sinks are exercised)
    against tests/reference.py in float64, bound 1e-5.
(b) With a GPU: bfloat16 at the SPEC's odd shapes, bounds 1e-2 (forward) and 2e-2 (gradients).
The reference gradients come from torch.autograd on ref_swa_attn.
"""
import importlib
import importlib.util
import os
import pathlib
import sys

import pytest
import torch

_HAS_CUDA = torch.cuda.is_available()
if not _HAS_CUDA:
    # must be set before triton is imported (triton.jit reads it when the kernels are defined)
    os.environ["TRITON_INTERPRET"] = "1"


_TESTS = pathlib.Path(__file__).resolve().parent
_ROOT = _TESTS.parent
sys.path.insert(0, str(_TESTS))
from reference import ref_swa_attn, rel_err  # noqa: E402


def _load_swa():
    """The kernel module, installed (sbops._backends.cuda.triton.swa) or from the source tree."""
    try:
        return importlib.import_module("sbops._backends.cuda.triton.swa")
    except Exception:  # not installed (or the package fails to load): use the source tree
        spec = importlib.util.spec_from_file_location(
            "_sbops_triton_swa", _ROOT / "backends" / "cuda" / "triton" / "swa.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def _patch_interpreter_index():
    """Triton 3.6's interpreter converts loop bounds with int(ndarray of shape (1,)), which
    NumPy >= 2.4 rejects; convert through .item() instead (only while interpreting)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_sbops_index_fix", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patched._sbops_index_fix = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_index()

swa = _load_swa()


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
