"""The Hopper GEMM with bfloat16 operands (backends/cuda/kernels/int8_gemm_sm90.cu with kBf,
sbops_native::bf16_gemm_sm90 / bf16_gemm_swiglu_sm90): y = a @ b^T (+ bias) with float32 accumulation rounded once to
bfloat16, and SwiGLU's h = silu(g) * u from b = [gate; up].  Against float64 on odd shapes; every schedule gives the
same bits; views; what it rejects: GPU only (sm_90 and an sm_90a build).  The SwiGLU module's choice of the fused
path: on CPU with the GEMM emulated."""
import pytest
import torch

from conftest import native_kernel_op

needs_kernel = pytest.mark.skipif(
    native_kernel_op("int8_gemm_sm90") is None or not hasattr(torch.ops.sbops_native, "bf16_gemm_sm90"),
    reason="needs an sm_90 GPU and an sm_90a CUDA build of sbops with bf16_gemm_sm90")


def _ops():
    return torch.ops.sbops_native.bf16_gemm_sm90, torch.ops.sbops_native.bf16_gemm_swiglu_sm90


def _case(M, N, K, seed, bias_dtype=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g).bfloat16()
    b = (torch.randn(N, K, generator=g) / K ** 0.5).bfloat16()
    bias = None if bias_dtype is None else torch.randn(N, generator=g).to(bias_dtype)
    return a, b, bias


def _ref(a, b, bias):
    y = a.double() @ b.double().t()
    return y if bias is None else y + bias.double()


def _assert_rounded_once(y, ref, K):
    # one rounding to bfloat16 (half an ulp: 2^-9 relative) plus float32 accumulation (~K 2^-24 of the row's terms)
    y = y.double().cpu()
    tol = ref.abs() * 2.0 ** -8 + 1e-5 * K ** 0.5
    bad = (y - ref).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} of {y.numel()} off, max |y - ref| {(y - ref).abs().max().item():.3g}"


@needs_kernel
@pytest.mark.parametrize("M,N,K", [(1, 8, 8), (127, 264, 72), (300, 520, 4104), (129, 3584, 256)])
@pytest.mark.parametrize("bias_dtype", [None, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cluster", [2, 1])
def test_bf16_gemm_sm90_matches_float64_on_odd_shapes(M, N, K, bias_dtype, cluster):
    op, _ = _ops()
    a, b, bias = _case(M, N, K, seed=M + N + K, bias_dtype=bias_dtype)
    y = op(a.cuda(), b.cuda(), None if bias is None else bias.cuda(), cluster)
    assert y.shape == (M, N) and y.dtype == torch.bfloat16
    _assert_rounded_once(y, _ref(a, b, bias), K)


@needs_kernel
@pytest.mark.parametrize("cluster", [2, 1])
@pytest.mark.parametrize("workers,group", [(1, 1), (3, 8), (0, 0), (-1, 1)])
@pytest.mark.parametrize("K", [136, 392])   # 3 and 7 stages: items start at every ring position
def test_bf16_gemm_sm90_every_schedule_gives_the_same_bits(cluster, workers, group, K):
    op, op_sw = _ops()
    a, b, bias = (t.cuda() for t in _case(390, 5 * 256 - 8, K, seed=3, bias_dtype=torch.float32))
    base = op(a, b, bias, 2, -1, 1)   # one item per block
    assert torch.equal(op(a, b, bias, cluster, workers, group), base)
    a2, b2, bias2 = (t.cuda() for t in _case(390, 4 * 256, K, seed=4, bias_dtype=torch.bfloat16))
    assert torch.equal(op_sw(a2, b2, bias2, cluster, workers, group), op_sw(a2, b2, bias2, 2, -1, 1))


@needs_kernel
@pytest.mark.parametrize("M,I,K,bias_dtype", [(1, 128, 64, None), (257, 384, 520, torch.bfloat16),
                                               (64, 256, 3584, None), (300, 256, 136, torch.float32)])
def test_bf16_gemm_swiglu_sm90_is_silu_gate_times_up(M, I, K, bias_dtype):
    _, op_sw = _ops()
    a, b, bias = _case(M, 2 * I, K, seed=M + I, bias_dtype=bias_dtype)
    h = op_sw(a.cuda(), b.cuda(), None if bias is None else bias.cuda())
    assert h.shape == (M, I) and h.dtype == torch.bfloat16
    y = _ref(a, b, bias)
    gt, up = y[:, :I], y[:, I:]
    ref = gt / (1 + torch.exp(-gt)) * up
    err = (h.double().cpu() - ref).abs()
    # g and u in float32 (not rounded), silu with the fast exponential and division, one rounding of h
    assert (err <= ref.abs() * 2.0 ** -7 + 1e-4).all(), err.max().item()


@needs_kernel
def test_bf16_gemm_sm90_reads_row_strided_views():
    op, _ = _ops()
    a, b, bias = _case(200, 264, 136, seed=9, bias_dtype=torch.bfloat16)
    big_a = torch.zeros(200, 200, dtype=torch.bfloat16)
    big_a[:, 32:168] = a
    big_b = torch.zeros(264, 144, dtype=torch.bfloat16)
    big_b[:, 8:144] = b
    y = op(big_a.cuda()[:, 32:168], big_b.cuda()[:, 8:144], bias.cuda())
    assert torch.equal(y, op(a.cuda(), b.cuda(), bias.cuda()))
    y_t = op(a.t().contiguous().t().cuda(), b.cuda(), bias.cuda())   # a column-major view: copied for TMA
    assert torch.equal(y_t, y)


@needs_kernel
def test_bf16_gemm_sm90_rejects_what_it_cannot_serve():
    op, op_sw = _ops()
    a, b, _ = (t.cuda() if t is not None else None for t in _case(16, 64, 64, seed=1))
    with pytest.raises(RuntimeError, match="a and b must be bfloat16"):
        op(a.half(), b)
    with pytest.raises(RuntimeError, match="K must be a positive multiple of 8"):
        op(a[:, :60], b[:, :60])
    with pytest.raises(RuntimeError, match=r"a \[M, K\] and b \[N, K\]"):
        op(a, b[:, :32])
    with pytest.raises(RuntimeError, match="I a multiple of 128"):
        op_sw(a, b)
    with pytest.raises(RuntimeError, match="cluster must be 1 or 2"):
        op(a, b, None, 3)
    with pytest.raises(RuntimeError, match=r"bias must be \[N\]"):
        op(a, b, torch.zeros(8, device="cuda"))


@needs_kernel
def test_bf16_gemm_sm90_in_a_cuda_graph():
    op, _ = _ops()
    a, b, bias = (t.cuda() for t in _case(256, 512, 512, seed=5, bias_dtype=torch.bfloat16))
    want = op(a, b, bias)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = op(a, b, bias)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want)


def _emulated_swiglu_gemm(a, b, bias=None):
    """bf16_gemm_swiglu_sm90's arithmetic in float32 on the device of a (for the CPU test of the module's branch)."""
    y = a.float() @ b.float().t()
    I = b.shape[0] // 2
    return (torch.nn.functional.silu(y[:, :I]) * y[:, I:]).bfloat16()


def test_swiglu_module_takes_the_bf16_epilogue_path_only_where_it_applies(monkeypatch):
    """sbops.nn.SwiGLU with plain bfloat16 nn.Linear gate / up: a prefill of more than BF16_SWIGLU_MIN_M rows goes
    through the fused GEMM (here emulated, on CPU) with the fused [gate; up] weight and matches the unfused path;
    fewer rows, float32, a bias, a width not a multiple of 128, or the switch off do not.  Runs on CPU."""
    from sbops.nn import common
    monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", True)
    monkeypatch.setattr(common, "_FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(common, "BF16_SWIGLU_MIN_M", 8)
    calls = []
    monkeypatch.setattr(common, "_bf16_swiglu_op",
                        lambda x: (lambda a, b: calls.append((a.shape, b.shape)) or _emulated_swiglu_gemm(a, b)))
    torch.manual_seed(0)
    m = common.SwiGLU(64, 128).bfloat16().eval()
    x = torch.randn(2, 5, 64).bfloat16()
    with torch.no_grad():
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
        assert calls == [((10, 64), (256, 64))] and h.shape == (2, 5, 128)
        gate, up = common.fused_linears(m, (m.gate_proj, m.up_proj), x)
        want = (torch.nn.functional.silu(gate.float()) * up.float())
        assert (h.float() - want).abs().max() <= 2e-2 * want.abs().max()
        assert torch.equal(m(x), m.down_proj(h))                                      # the module's forward uses it
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x[:, :4]) is None      # 8 rows: not past the minimum
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x.float()) is None     # float32 x
        m32 = common.SwiGLU(64, 128).eval()
        assert common.gate_up_silu(m32, m32.gate_proj, m32.up_proj, x) is None       # float32 weights
        odd = common.SwiGLU(64, 96).bfloat16().eval()
        assert common.gate_up_silu(odd, odd.gate_proj, odd.up_proj, x) is None       # I = 96
        m.up_proj.bias = torch.nn.Parameter(torch.zeros(128).bfloat16())
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x) is None             # a bias
        m.up_proj.bias = None
        monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", False)
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x) is None
    assert len(calls) == 2


@needs_kernel
def test_swiglu_module_bf16_fused_h_matches_the_unfused_on_the_gpu(monkeypatch):
    """The same on the GPU with the real kernel: a 1100-row prefill's h against cuBLAS + silu_mul (float64 on 32
    rows: the fused h is at least as close)."""
    from sbops.nn import common
    monkeypatch.setattr(common, "FUSE_GATE_UP_SWIGLU", True)
    torch.manual_seed(0)
    m = common.SwiGLU(256, 384).cuda().bfloat16().eval()
    x = torch.randn(1100, 256, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
        assert h is not None
        want = common.silu_mul(*common.fused_linears(m, (m.gate_proj, m.up_proj), x))
    w = torch.cat([m.gate_proj.weight, m.up_proj.weight]).double().cpu()
    y = x[:32].double().cpu() @ w.t()
    ref = y[:, :384] / (1 + torch.exp(-y[:, :384])) * y[:, 384:]
    e_fused = ((h[:32].double().cpu() - ref).norm() / ref.norm()).item()
    e_unfused = ((want[:32].double().cpu() - ref).norm() / ref.norm()).item()
    assert e_fused <= 1.1 * e_unfused + 1e-4, (e_fused, e_unfused)


def test_linear_takes_the_opt_in_hopper_gemm_only_where_it_applies(monkeypatch):
    """sbops.nn.common.linear with SBOPS_DENSE_PREFILL_SM90 on (here the flag, the GEMM emulated on CPU): bfloat16
    prefills of at least MIN_ROWS rows go through bf16_gemm_sm90 with the weight in place and the bias; decode-sized
    inputs, float32, odd widths, a transposed weight, autograd, or the flag off keep F.linear.  Runs on CPU."""
    from sbops.nn import common, hopper_gemm
    calls = []

    def emulated(a, w, b=None):
        calls.append((a.shape, w.data_ptr()))
        y = a.float() @ w.float().t()
        return (y if b is None else y + b.float()).bfloat16()

    monkeypatch.setattr(hopper_gemm, "_op", lambda x, name: emulated if name == "bf16_gemm_sm90" else None)
    monkeypatch.setattr(hopper_gemm, "MIN_ROWS", 8)
    monkeypatch.setattr(hopper_gemm, "MIN_K", 16)
    monkeypatch.setattr(hopper_gemm, "DENSE_PREFILL", True)
    torch.manual_seed(0)
    w, b = torch.randn(24, 16).bfloat16(), torch.randn(24).bfloat16()
    x = torch.randn(2, 6, 16).bfloat16()
    with torch.no_grad():
        y = common.linear(x, w, b)
        assert calls == [((12, 16), w.data_ptr())] and y.shape == (2, 6, 24)
        assert (y.float() - torch.nn.functional.linear(x, w, b).float()).abs().max() <= 0.05
        for args in [(x[:, :3], w, b), (x.float(), w.float(), b.float()), (x[..., :12], w[:, :12], b),
                     (x[..., :8], w[:, :8], b),                                        # K = 8 < MIN_K
                     (x, w.t().contiguous().t(), b)]:
            common.linear(*args)
        assert len(calls) == 1
    common.linear(x, w.requires_grad_(), b)   # autograd: F.linear
    assert len(calls) == 1
    monkeypatch.setattr(hopper_gemm, "DENSE_PREFILL", False)
    with torch.no_grad():
        common.linear(x, w, b)
    assert len(calls) == 1


@needs_kernel
def test_linear_opt_in_hopper_gemm_matches_float64_on_the_gpu(monkeypatch):
    from sbops.nn import common, hopper_gemm
    monkeypatch.setattr(hopper_gemm, "DENSE_PREFILL", True)
    monkeypatch.setattr(hopper_gemm, "MIN_K", 8)
    a, w, bias = (t.cuda() for t in _case(1100, 264, 200, seed=2, bias_dtype=torch.float32))
    with torch.inference_mode():
        y = common.linear(a.view(2, 550, 200), w, bias)
        assert torch.equal(y.view(1100, 264), torch.ops.sbops_native.bf16_gemm_sm90(a, w, bias))
    _assert_rounded_once(y.view(1100, 264), _ref(a.cpu(), w.cpu(), bias.cpu()), 200)
