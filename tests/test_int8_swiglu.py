"""SwiGLU's gate / up with int8 per-channel weights and silu(g) * u in the Hopper int8 GEMM's epilogue
(backends/cuda/triton/spike_linear_swiglu.py, sbops_native::int8_gemm_swiglu_sm90).

CPU: the launcher's flow -- encode, flag lists, the rows of flagged blocks through side, the fix-up of counts past
127 and the redo of h -- under the Triton interpreter, with the GEMM emulated in torch as the kernel specifies it,
against the float64 reference.  GPU (sm_90 with an sm_90a build): the kernel against that emulation, the launcher
against the float64 reference, and sbops.nn.SwiGLU fused against unfused."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/triton_kernels.py)

import sbops
from conftest import native_kernel_op, requires_triton
from test_spike_linear import _dev, _null, ref_spike_linear, rel


def _kernel():
    return native_kernel_op("int8_gemm_sm90") and torch.ops.sbops_native.int8_gemm_swiglu_sm90


needs_kernel = pytest.mark.skipif(not _kernel(), reason="needs an sm_90 GPU and an sm_90a CUDA build of sbops")


def _emulate(a, b, vth, scale, bias, dtype, row_flags):
    """The kernel's (h, side): g / u = float(a @ b^T) * scale * vth (+ bias) in float32 (separate roundings, as the
    kernel), h = g / (1 + exp(-g)) * u rounded once; side holds g | u rounded to dtype in the rows of flagged 16-row
    blocks (zeros elsewhere: the kernel leaves them unwritten)."""
    acc = (a.cpu().long() @ b.cpu().long().t()).float()
    y = acc * scale.cpu().float()[None, :] * vth.cpu().float()[:, None]
    if bias is not None:
        y = y + bias.cpu().float()[None, :]
    half = b.shape[0] // 2
    g, u = y[:, :half], y[:, half:]
    h = (g / (1 + torch.exp(-g)) * u).to(dtype)
    side = torch.zeros((a.shape[0] if row_flags is not None else 0, b.shape[0]), dtype=dtype)
    if row_flags is not None:
        rows = (row_flags.cpu() > 0).repeat_interleave(16)[: a.shape[0]]
        side[rows] = y[rows].to(dtype)
    return h, side


def _swiglu_ref(x, wq, sc, k):
    """float64 silu(g) * u of the exact spike_linear outputs (every count, never saturated)."""
    y = ref_spike_linear(x, wq.float(), sc, k, None, None)
    half = wq.shape[0] // 2
    g, u = y[:, :half], y[:, half:]
    return g / (1 + torch.exp(-g)) * u


def _x_with_outliers(M, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    x[3, 17] = 300.0       # counts past 127 in row 3: its 16-row block goes through side
    x[21, 100] = -900.0
    return x.bfloat16()


@requires_triton
def test_int8_swiglu_flow_matches_float64_with_counts_past_127(monkeypatch):
    """The launcher around the kernel: flagged blocks (rows 3 and 21) get the exact counts through side, the fix-up
    and the redo; the other blocks keep the epilogue's h.  The GEMM is the emulation (CPU) or the kernel (GPU)."""
    import triton_kernels as tk
    from test_spike_linear import _triton
    _triton()
    sw = tk.load("spike_linear_swiglu")
    dev = _dev()
    if dev == "cpu":
        monkeypatch.setattr(sw, "_gemm", lambda s, w, vth, sc, dt, fl: tuple(
            t.to(dev) for t in _emulate(s, w, vth, sc, None, dt, fl)))
    elif not _kernel():
        pytest.skip("needs the sm_90a kernel on this GPU")
    M, K, I = 37, 256, 128
    x = _x_with_outliers(M, K)
    wq, sc = sbops.quantize_weight(torch.randn(2 * I, K) * 0.05)
    c = sbops.spike_encode(x.float(), 3.0, torch.int32)[0]
    assert (c.abs() > 127).sum() >= 2
    with tk.bounds_checked() if dev == "cpu" else _null():
        h = sw.int8_swiglu(x.to(dev), wq.to(dev), sc.to(dev), 3.0).cpu()
    r = _swiglu_ref(x, wq, sc, 3.0)
    assert h.shape == (M, I) and h.dtype == x.dtype
    for rows in (slice(0, 16), slice(16, 32), slice(32, M)):   # flagged blocks and the rest, each close
        assert rel(h[rows], r[rows]) < 1e-2
    # the flagged rows needed the counts past 127: clamped to 127 they would be far off
    xf = x.float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    y_cl = (torch.round(xf / vth).clamp(-127, 127).double() @ (wq.double() * sc.double()[:, None]).t()) * vth.double()
    h_cl = y_cl[:, :I] / (1 + torch.exp(-y_cl[:, :I])) * y_cl[:, I:]
    assert rel(h_cl[3], r[3]) > 0.05 and rel(h_cl[21], r[21]) > 0.05
    assert rel(h[3], r[3]) < 1e-2 and rel(h[21], r[21]) < 1e-2


@needs_kernel
@pytest.mark.parametrize("M,I,K", [(37, 128, 144), (300, 384, 4112), (129, 256, 256)])
@pytest.mark.parametrize("dtype,bias_dtype", [(torch.bfloat16, None), (torch.float16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("cluster", [2, 1])
@pytest.mark.parametrize("flags", [False, True])
def test_int8_gemm_swiglu_kernel_matches_its_emulation(M, I, K, dtype, bias_dtype, cluster, flags):
    """Row tails of the 128-row tiles, K tails, 1-3 feature tiles, both output dtypes, a bias, clusters of two row
    tiles sharing B or none; with row_flags, the flagged blocks' g and u in side bit for bit."""
    g = torch.Generator().manual_seed(M + I + K)
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (2 * I, K), generator=g, dtype=torch.int8)
    vth = torch.rand(M, generator=g) * 0.01 + 1e-4
    scale = torch.rand(2 * I, generator=g) * 0.01 + 1e-4
    bias = None if bias_dtype is None else (torch.randn(2 * I, generator=g)).to(bias_dtype)
    row_flags = (torch.arange((M + 15) // 16) % 3 == 1).int() if flags else None
    h, side = _kernel()(a.cuda(), b.cuda(), vth.cuda(), scale.cuda(), None if bias is None else bias.cuda(), dtype,
                        None if row_flags is None else row_flags.cuda(), cluster)
    h_ref, side_ref = _emulate(a, b, vth, scale, bias, dtype, row_flags)
    assert h.shape == (M, I) and h.dtype == dtype and side.shape == side_ref.shape
    torch.testing.assert_close(h.cpu().float(), h_ref.float(), rtol=1e-2, atol=1e-3)
    if flags:
        rows = (row_flags > 0).repeat_interleave(16)[:M]
        assert torch.equal(side.cpu()[rows], side_ref[rows])


@needs_kernel
@pytest.mark.parametrize("workers,group", [(1, 1), (3, 2), (-1, 1), (0, 0)])
def test_int8_gemm_swiglu_every_schedule_gives_the_same_bits(workers, group):
    """Persistent workers over many items (3 feature tiles x 3 row tiles), the ring running on across items."""
    M, I, K = 3 * 128 - 5, 384, 784
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8).cuda()
    b = torch.randint(-128, 128, (2 * I, K), generator=g, dtype=torch.int8).cuda()
    vth, scale = (torch.rand(M, generator=g) * 0.01).cuda(), (torch.rand(2 * I, generator=g) * 0.01).cuda()
    op = _kernel()
    base, _ = op(a, b, vth, scale, None, torch.bfloat16, None, 2, -1, 1)
    for cluster in (2, 1):
        h, _ = op(a, b, vth, scale, None, torch.bfloat16, None, cluster, workers, group)
        assert torch.equal(h, base)


@needs_kernel
def test_int8_gemm_swiglu_rejects_a_width_not_two_feature_tiles():
    a = torch.zeros(32, 64, dtype=torch.int8, device="cuda")
    b = torch.zeros(2 * 100, 64, dtype=torch.int8, device="cuda")
    with pytest.raises(Exception, match="multiple of 128"):
        _kernel()(a, b, torch.ones(32, device="cuda"), torch.ones(200, device="cuda"), None, torch.bfloat16)


@needs_kernel
def test_swiglu_module_fused_equals_unfused_int8_channel(monkeypatch):
    """sbops.nn.SwiGLU with int8 per-channel gate / up at a 300-token prefill: the fused epilogue's h, through
    down_proj, against the product then silu_mul (FUSE_GATE_UP_SWIGLU off)."""
    import sbops.nn.common as common
    torch.manual_seed(0)
    m = common.SwiGLU(256, 384, spike_k=3.0, weight_quant="int8_channel").cuda().bfloat16().eval()
    x = torch.randn(2, 150, 256, device="cuda", dtype=torch.bfloat16)
    calls = []
    sw = common._spike_linear_triton(x, "spike_linear_swiglu", fp8=False)
    monkeypatch.setattr(sw, "int8_swiglu", lambda *a, f=sw.int8_swiglu: calls.append(1) or f(*a))
    with torch.inference_mode():
        fused = m(x)
        monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", False)
        unfused = m(x)
    assert calls and rel(fused.float(), unfused.float()) < 1e-2
