"""Triton chunked linear attention (backends/cuda/triton/linear_attn.py) vs the float64 reference.

CPU: runs the kernels under the Triton interpreter (float32 inputs, tiny shapes, ~1e-5 relative;
one float16 case for the 16-bit code path: Triton 3.6's interpreter computes tl.dot on bfloat16
operands from their raw bits, so bfloat16 is only checked on the GPU).
GPU: bfloat16 inputs at T in {1, 63, 1000}, D in {64, 128}, GQA, varlen (1e-2 fwd, 2e-2 grads).
"""
import importlib.util
import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # must happen before the kernels are decorated (i.e. before the module below is imported)
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install_interpreter_index_shim():
    """Triton 3.6's interpreter turns loop bounds into ints with int(ndarray of shape (1,)),
    which numpy >= 2.4 rejects; index through the single element instead (test-only shim)."""
    import triton.runtime.interpreter as interp

    orig = interp._patch_lang_tensor
    if getattr(orig, "_sbops_shim", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._sbops_shim = True
    interp._patch_lang_tensor = patched


if not HAS_CUDA:
    _install_interpreter_index_shim()


def _load_module():
    try:
        from sbops._backends.cuda.triton import linear_attn as mod  # installed package
        return mod
    except Exception:
        path = os.path.join(REPO, "backends", "cuda", "triton", "linear_attn.py")
        spec = importlib.util.spec_from_file_location("sbops_triton_linear_attn", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


LA = _load_module()


def rel(out, ref):
    assert not torch.isnan(out).any(), "NaN in output"
    return ((out.double().cpu() - ref.cpu()).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, HKV, K, V, gate, dtype, device, n_seq=None, strong=False, with_h0=True,
                g_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q, k, v = rnd(B, T, H, K), rnd(B, T, HKV, K), rnd(B, T, HKV, V)
    if gate == "none":
        g = None
    else:
        shape = (B, T, HKV) if gate == "head" else (B, T, HKV, K)
        # SpikingBrain's gate logsigmoid(x)/16, or strong decay down to -20 per step
        g = -20 * torch.rand(*shape, generator=gen) if strong else torch.nn.functional.logsigmoid(rnd(*shape)) / 4
    cu = None
    N = B
    if n_seq is not None:
        assert B == 1
        cuts = torch.sort(torch.randperm(T - 1, generator=gen)[: n_seq - 1] + 1).values
        cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([T])]).to(torch.int32)
        N = n_seq
    h0 = rnd(N, HKV, K, V) if with_h0 else None
    cast = lambda x, dt: None if x is None else x.to(device=device, dtype=dt)  # noqa: E731
    return (cast(q, dtype), cast(k, dtype), cast(v, dtype), cast(g, g_dtype), cast(h0, torch.float32),
            None if cu is None else cu.to(device))


def check(q, k, v, g, h0, cu, fwd_tol, grad_tol, with_dfinal=True, scale=None):
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    o, ht = LA.linear_attn_fwd(q, k, v, g, scale, h0, cu)
    leaves = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in (q, k, v, g, h0)]
    ro, rht = R.ref_linear_attn(leaves[0], leaves[1], leaves[2], leaves[3], scale, leaves[4],
                                None if cu is None else cu.cpu())
    assert o.dtype == q.dtype and o.shape == ro.shape
    assert ht.dtype == torch.float32 and ht.shape == rht.shape
    assert rel(o, ro) <= fwd_tol, f"o rel err {rel(o, ro)}"
    assert rel(ht, rht) <= fwd_tol, f"final_state rel err {rel(ht, rht)}"

    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen).to(o)
    dF = torch.randn(ht.shape, generator=gen).to(ht) if with_dfinal else None
    grads = LA.linear_attn_bwd(q, k, v, g, scale, h0, cu, do, dF)
    loss = (ro * do.cpu().double()).sum()
    if with_dfinal:
        loss = loss + (rht * dF.cpu().double()).sum()
    used = [x for x in leaves if x is not None]
    rgrads = iter(torch.autograd.grad(loss, used))
    names = ["dq", "dk", "dv", "dg", "dinitial_state"]
    for name, x, got in zip(names, (q, k, v, g, h0), grads):
        if x is None:
            assert got.numel() == 0 and got.dtype == torch.float32, f"{name} should be empty float32"
            continue
        ref = next(rgrads)
        assert got.shape == x.shape and got.dtype == x.dtype, f"{name}: {got.shape} {got.dtype}"
        err = rel(got, ref)
        assert err <= grad_tol, f"{name} rel err {err}"


# ---------------------------------------------------------------------------- CPU (interpreter)
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="interpreter tests run only without a GPU")
CPU_TOL = 1e-5


@cpu_only
@pytest.mark.parametrize("gate", ["none", "head", "key"])
@pytest.mark.parametrize("B,T", [(2, 37), (1, 1)])
def test_cpu_batched(gate, B, T):
    check(*make_inputs(B, T, 4, 2, 64, 64, gate, torch.float32, "cpu"), CPU_TOL, CPU_TOL)


@cpu_only
@pytest.mark.parametrize("gate", ["head", "key"])
def test_cpu_varlen_strong_decay(gate):
    # 3 packed sequences over 70 tokens (two chunks, partial sub-blocks), g down to -20 per step
    check(*make_inputs(1, 70, 4, 2, 64, 64, gate, torch.float32, "cpu", n_seq=3, strong=True), CPU_TOL, CPU_TOL)


@cpu_only
def test_cpu_varlen_no_state_no_dfinal():
    q, k, v, g, h0, cu = make_inputs(1, 70, 2, 1, 64, 64, "key", torch.float32, "cpu", n_seq=2, with_h0=False)
    check(q, k, v, g, h0, cu, CPU_TOL, CPU_TOL, with_dfinal=False)


@cpu_only
def test_cpu_fp16_varlen():
    check(*make_inputs(1, 70, 4, 2, 64, 64, "key", torch.float16, "cpu", n_seq=2), 2e-3, 2e-3)


@cpu_only
@pytest.mark.parametrize("T,D,n_seq,scale", [(200, 64, 4, 0.3), (130, 128, 3, None)])
def test_cpu_fp16_head_gate_dg_strong_decay_scale_not_power_of_two(T, D, n_seq, scale):
    # Head-gate d b = sum_h q.dq - k.dk: under strong decay its t == s terms are large and must cancel
    # exactly. dk once used round16(scale * q) while dq used q, which left a residue that the dg
    # reverse cumsum amplified (bf16 on an H100: dg 6e-2 at T=1000, K=128). Only 16-bit inputs with a
    # scale that is not a power of two show it (K=64's default scale 1/8 rounds exactly). fp16 here,
    # because the interpreter cannot run bf16 dots: dg was 3e-3 to 8e-3 before the fix, 2e-4 to 6e-4 after.
    check(*make_inputs(1, T, 4, 2, D, D, "head", torch.float16, "cpu", n_seq=n_seq, strong=True),
          1e-3, 1e-3, scale=scale)


@cpu_only
def test_cpu_k128_v64_mha():
    check(*make_inputs(1, 20, 2, 2, 128, 64, "key", torch.float32, "cpu"), CPU_TOL, CPU_TOL, scale=0.3)


def test_bad_head_dim_is_a_clear_error():
    q, k, v, g, h0, cu = make_inputs(1, 4, 2, 1, 32, 64, "none", torch.float32, "cpu")
    with pytest.raises(ValueError, match="K"):
        LA.linear_attn_fwd(q, k, v, g, 1.0, h0, cu)
    q, k, v, g, h0, cu = make_inputs(1, 4, 2, 1, 64, 96, "none", torch.float32, "cpu")
    with pytest.raises(ValueError, match="V"):
        LA.linear_attn_fwd(q, k, v, g, 1.0, h0, cu)


def test_config_loading():
    cfg = LA.load_config(128, 128, "key", torch.bfloat16)
    for key in ("BT", "h_BK", "h_BV", "h_warps", "o_warps", "bwd_warps", "aux_warps", "num_stages"):
        assert key in cfg
    assert cfg["BT"] % 16 == 0


# --------------------------------------------------------------------------------------- GPU
gpu_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@gpu_only
@pytest.mark.parametrize("gate", ["none", "head", "key"])
@pytest.mark.parametrize("T", [1, 63, 1000])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16(gate, T, D):
    check(*make_inputs(2 if T < 1000 else 1, T, 6, 2, D, D, gate, torch.bfloat16, "cuda"), 1e-2, 2e-2)


@gpu_only
@pytest.mark.parametrize("gate", ["head", "key"])
def test_gpu_bf16_varlen_strong(gate):
    check(*make_inputs(1, 1000, 8, 2, 128, 128, gate, torch.bfloat16, "cuda", n_seq=4, strong=True), 1e-2, 2e-2)


@gpu_only
def test_gpu_bf16_gate_in_bf16():
    check(*make_inputs(1, 300, 4, 1, 128, 64, "key", torch.bfloat16, "cuda", g_dtype=torch.bfloat16), 1e-2, 2e-2)


@gpu_only
def test_gpu_fp32_exact():
    check(*make_inputs(1, 300, 4, 2, 64, 64, "key", torch.float32, "cuda", n_seq=3), 1e-5, 1e-5)
