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
    return native_kernel_op("int8_gemm_sm90") and getattr(torch.ops.sbops_native, "int8_gemm_swiglu_sm90", None)


needs_kernel = pytest.mark.skipif(not _kernel(), reason="needs an sm_90 GPU and an sm_90a CUDA build of sbops")


def _emulate(a, b, vth, scale, bias, dtype, row_flags, row_sums=None):
    """The kernel's (h, side): g / u = float(a @ b^T) * scale * vth (+ bias) in float32 (separate roundings, as the
    kernel), h = g / (1 + exp(-g)) * u rounded once; side holds g | u rounded to dtype in the rows of flagged 16-row
    blocks (zeros elsewhere: the kernel leaves them unwritten); row_sums (given: written in place) the sums of |h| as
    rounded over each 128-column tile of every row."""
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
    if row_sums is not None:
        row_sums.copy_(_tile_sums(h).to(row_sums.device))
    return h, side


def _tile_sums(h):
    """sum |h| over each 128-column tile of every row (float32; h's columns a multiple of 128)."""
    return h.float().abs().reshape(h.shape[0], -1, 128).sum(-1)


def _swiglu_ref(x, wq, sc, k):
    """float64 silu(g) * u of the exact spike_linear outputs (every count, never saturated)."""
    y = ref_spike_linear(x, wq.float(), sc, k, None, None)
    half = wq.shape[0] // 2
    g, u = y[:, :half], y[:, half:]
    return g / (1 + torch.exp(-g)) * u


OUTLIER_ROWS = (3, 21, 35)   # counts past 127: their 16-row blocks go through side (35: the partial last block)
NAN_ROW = 10


def _x_with_outliers(M, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    for i, r in enumerate(OUTLIER_ROWS):
        x[r, 17 + 41 * i] = (300.0, -900.0, 500.0)[i]
    x[NAN_ROW, 5] = float("nan")
    return x.bfloat16()


def _setup_flow(monkeypatch):
    """(triton_kernels, spike_linear_swiglu, device), the GEMM emulated on CPU; skips on a GPU without the kernel."""
    import triton_kernels as tk
    from test_spike_linear import _triton
    _triton()
    sw = tk.load("spike_linear_swiglu")
    dev = _dev()
    if dev == "cpu":
        monkeypatch.setattr(sw, "_gemm", lambda s, w, vth, sc, dt, fl, rs=None: tuple(
            t.to(dev) for t in _emulate(s, w, vth, sc, None, dt, fl, rs)))
    elif not _kernel():
        pytest.skip("needs the sm_90a kernel on this GPU")
    return tk, sw, dev


@requires_triton
def test_int8_swiglu_flow_matches_float64_with_counts_past_127(monkeypatch):
    """The launcher around the kernel: flagged blocks (OUTLIER_ROWS, the last one partial) get the exact counts
    through side, the fix-up and the redo; the other blocks keep the epilogue's h; a NaN input row is NaN, only it.
    The GEMM is the emulation (CPU) or the kernel (GPU)."""
    tk, sw, dev = _setup_flow(monkeypatch)
    M, K, I = 37, 256, 128
    x = _x_with_outliers(M, K)
    wq, sc = sbops.quantize_weight(torch.randn(2 * I, K) * 0.05)
    c = sbops.spike_encode(x.float(), 3.0, torch.int32)[0]
    assert all((c[i].abs() > 127).any() for i in OUTLIER_ROWS)
    with tk.bounds_checked() if dev == "cpu" else _null():
        h = sw.int8_swiglu(x.to(dev), wq.to(dev), sc.to(dev), 3.0).cpu()
    r = _swiglu_ref(x, wq, sc, 3.0)
    assert h.shape == (M, I) and h.dtype == x.dtype
    assert torch.isnan(h[NAN_ROW]).all() and not torch.isnan(h[torch.arange(M) != NAN_ROW]).any()
    for i in range(M):
        if i != NAN_ROW:
            assert rel(h[i], r[i]) < 1e-2, i
    # the flagged rows needed the counts past 127: clamped to 127 they would be far off
    xf = x.float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / 3.0).clamp(1e-5, 1e4)
    y_cl = (torch.round(xf / vth).clamp(-127, 127).double() @ (wq.double() * sc.double()[:, None]).t()) * vth.double()
    h_cl = y_cl[:, :I] / (1 + torch.exp(-y_cl[:, :I])) * y_cl[:, I:]
    assert all(rel(h_cl[i], r[i]) > 0.05 for i in OUTLIER_ROWS)


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
    if flags:
        row_flags[-1] = 2   # the last block, partial where M % 16 != 0
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
    row_flags = (torch.arange((M + 15) // 16, device="cuda") % 4 == 0).int()
    rows = (row_flags > 0).repeat_interleave(16)[:M]
    base, base_side = op(a, b, vth, scale, None, torch.bfloat16, row_flags, 2, -1, 1)
    for cluster in (2, 1):
        h, side = op(a, b, vth, scale, None, torch.bfloat16, row_flags, cluster, workers, group)
        assert torch.equal(h, base) and torch.equal(side[rows], base_side[rows])


@needs_kernel
def test_int8_gemm_swiglu_rejects_a_width_not_two_feature_tiles():
    a = torch.zeros(32, 64, dtype=torch.int8, device="cuda")
    b = torch.zeros(2 * 100, 64, dtype=torch.int8, device="cuda")
    with pytest.raises(Exception, match="multiple of 128"):
        _kernel()(a, b, torch.ones(32, device="cuda"), torch.ones(200, device="cuda"), None, torch.bfloat16)


@needs_kernel
def test_swiglu_module_fused_h_is_as_close_to_float64_as_the_unfused(monkeypatch):
    """sbops.nn.SwiGLU with int8 per-channel gate / up at a 300-token prefill on the GPU: the fused epilogue's h and
    the product-then-silu_mul h (FUSE_GATE_UP_SWIGLU off) against float64 (h, not the module's output: the down
    projection's spike coding turns an ulp of h at a rounding tie into a count of 1)."""
    import sbops.nn.common as common
    torch.manual_seed(0)
    m = common.SwiGLU(256, 384, spike_k=3.0, weight_quant="int8_channel").cuda().bfloat16().eval()
    x = torch.randn(2, 150, 256, device="cuda", dtype=torch.bfloat16)
    calls = []
    sw = common._spike_linear_triton(x, "spike_linear_swiglu", fp8=False)
    monkeypatch.setattr(sw, "int8_swiglu", lambda *a, f=sw.int8_swiglu: calls.append(1) or f(*a))
    with torch.inference_mode():
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
        monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", False)
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x) is None
        want = common.silu_mul(*common.fused_linears(m, (m.gate_proj, m.up_proj), x))
    assert calls == [1]
    q, sc = (torch.cat(t) for t in zip(m.gate_proj.int8_weight(), m.up_proj.int8_weight()))
    ref = _swiglu_ref(x.cpu().reshape(-1, 256), q.cpu(), sc.cpu().reshape(-1), 3.0).view(2, 150, 384)
    e_fused, e_unfused = rel(h.cpu(), ref), rel(want.cpu(), ref)
    assert e_fused < 6e-3 and e_fused < 1.5 * e_unfused, (e_fused, e_unfused)


@requires_triton
def test_swiglu_module_takes_the_int8_epilogue_path_only_where_it_applies(monkeypatch):
    """sbops.nn.SwiGLU with int8 per-channel gate / up: a prefill (more than 32 rows of bf16 x) goes through
    int8_swiglu (on CPU: the launcher under the interpreter, the GEMM emulated, `applies` forced) and matches the
    unfused path; a decode, float32 x, the switch off, or gate / up of other formats do not."""
    from sbops.nn import common
    tk, sw, dev = _setup_flow(monkeypatch)
    if dev == "cpu":
        monkeypatch.setattr(common, "_FUSED_DEVICE_TYPES", ("cuda", "cpu"))
        monkeypatch.setattr(common, "_fused_mods", tuple(tk.load(n) for n in ("fused_norm", "fused_rope_swiglu",
                                                                              "fused_gla_act")))
        monkeypatch.setattr(common, "_spike_linear_triton", lambda x, module="spike_linear", fp8=True: sw)
        monkeypatch.setattr(sw, "applies", lambda x, q: True)
    calls = []
    run = sw.int8_swiglu
    monkeypatch.setattr(sw, "int8_swiglu", lambda *a: calls.append(a[0].shape) or run(*a))
    torch.manual_seed(0)
    m = common.SwiGLU(128, 256, spike_k=3.0, weight_quant="int8_channel").to(dev, torch.bfloat16).eval()
    x = torch.randn(2, 20, 128).bfloat16().to(dev)
    with torch.no_grad(), tk.bounds_checked() if dev == "cpu" else _null():
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
        assert calls == [(40, 128)] and h.shape == (2, 20, 256)
        want = common.silu_mul(*common.fused_linears(m, (m.gate_proj, m.up_proj), x))
        assert rel(h.float(), want.float()) < 1e-2
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x[:, :16]) is None          # 32 rows: decode
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x.float()) is None          # float32 x
        monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", False)
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x) is None
        monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", True)
        # groups of 128 of 256 input channels
        g8 = common.SwiGLU(256, 256, spike_k=3.0, weight_quant="int8").to(dev, torch.bfloat16).eval()
        assert common.gate_up_silu(g8, g8.gate_proj, g8.up_proj, torch.cat([x, x], -1)) is None
    assert len(calls) == 1
