"""The dense decode GEMV (backends/cuda/kernels/dense_decode.cu, sbops_native::dense_decode) and the route to it
(sbops.nn.common.linear / linear_module): y = x @ w^T (+ bias) for at most 32 rows of float16 / bfloat16 x, float32
accumulation, rounded once.  Checked against float64 on odd shapes (row tails of the 16-row tiles, K tails of the
32-column blocks), every block layout, views, NaN rows, CUDA graphs and argument errors.  GPU tests skip without an
sm_80+ CUDA build; the route's CPU behaviour (F.linear, hooks) always runs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import native_kernel_op
from sbops.nn import common


def _op():
    return native_kernel_op("dense_decode")


needs_kernel = pytest.mark.skipif(_op() is None,
                                  reason="needs an sm_80+ NVIDIA GPU and a CUDA build of sbops")
LAYOUTS = (-1, 0, 1, 2, 3, 4, 5)


def _case(M, N, K, dtype, seed, bias_dtype=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = None if bias_dtype is None else torch.randn(N, generator=g).to(bias_dtype)
    return x, w, b


def _check(y, x, w, b):
    """Within a few units of y's last place of the float64 product (one rounding after a float32 sum)."""
    ref = x.double() @ w.double().t()
    if b is not None:
        ref = ref + b.double()
    eps = 2.0 ** -8 if y.dtype == torch.bfloat16 else 2.0 ** -11
    scale = (x.double().abs() @ w.double().abs().t()).clamp_min(1e-6)
    err = (y.double().cpu() - ref.cpu()).abs()
    assert bool((err <= 1.01 * eps * ref.abs().cpu() + 1e-4 * scale.cpu()).all()), float(err.max())


@needs_kernel
@pytest.mark.parametrize("M,N,K", [(1, 1, 8), (1, 17, 40), (2, 19, 48), (3, 200, 264), (5, 40, 56), (8, 33, 1032),
                                   (9, 48, 72), (16, 100, 520), (17, 31, 8), (32, 257, 3584),
                                   (4, 512, 16)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dense_decode_matches_float64_on_odd_shapes_every_layout(M, N, K, dtype, layout):
    x, w, _ = _case(M, N, K, dtype, seed=M * 7 + N + K)
    y = _op()(x.cuda(), w.cuda(), None, layout)
    assert y.dtype == dtype and y.shape == (M, N)
    _check(y, x, w, None)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias_dtype", ["x", torch.float32])
@pytest.mark.parametrize("M", [1, 12, 32])
def test_dense_decode_adds_the_bias_in_float32(dtype, bias_dtype, M):
    x, w, b = _case(M, 96, 136, dtype, seed=M, bias_dtype=dtype if bias_dtype == "x" else bias_dtype)
    y = _op()(x.cuda(), w.cuda(), b.cuda())
    _check(y, x, w, b)


@needs_kernel
@pytest.mark.parametrize("layout", [-1, 3])
def test_dense_decode_sees_what_the_kernel_just_before_it_wrote(layout):
    """x from a long GEMM and the weight from a copy launched right before the GEMV (the fused-weight cat of
    fused_linears): the programmatic launch must wait for both before it reads them."""
    torch.manual_seed(0)
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    parts = [torch.randn(2048, 4096, dtype=torch.bfloat16, device="cuda") / 64 for _ in range(2)]
    w = torch.empty(4096, 4096, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        x = (a @ a)[:4] / 64          # a ~0.1 ms kernel writes x
        torch.cat(parts, out=w)       # then a copy rewrites the same weight memory
        y = _op()(x, w, None, layout)
        torch.cuda.synchronize()
        _check(y, x.cpu(), w.cpu(), None)
        parts = [p * -1.5 for p in parts]


@needs_kernel
def test_dense_decode_empty_rows_or_outputs_give_empty_results():
    w = torch.randn(24, 64, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(3, 64, dtype=torch.bfloat16, device="cuda")
    assert _op()(x[:0], w, None).shape == (0, 24)
    assert _op()(x, w[:0], None).shape == (3, 0)


@needs_kernel
@pytest.mark.parametrize("layout", [-1, 0, 3])
@pytest.mark.parametrize("rows", [5, 23])
def test_dense_decode_reads_row_strided_views_and_copies_misaligned_ones(layout, rows):
    """Rows of a wider tensor (a split of a fused projection) are read in place; a view at an odd element offset
    (not 16-byte aligned) is copied; a weight that is a row block of a fused weight is read in place."""
    dtype = torch.bfloat16
    big = torch.randn(rows, 3 * 64 + 8, dtype=dtype, device="cuda")
    wbig = torch.randn(300, 64, dtype=dtype, device="cuda") / 8
    w = wbig[100:220]
    for x in (big[:, 64:128], big[:, 67:131]):
        y = _op()(x, w, None, layout)
        _check(y, x.cpu(), w.cpu(), None)
    xs = big[::2, :64]   # every other row
    _check(_op()(xs, w, None, layout), xs.cpu(), w.cpu(), None)


@needs_kernel
@pytest.mark.parametrize("layout", [-1, 2])
@pytest.mark.parametrize("M", [4, 29])
def test_dense_decode_nan_row_stays_in_its_token(layout, M):
    x, w, _ = _case(M, 70, 96, torch.float16, seed=3)
    x[2, 17] = float("nan")
    y = _op()(x.cuda(), w.cuda(), None, layout).cpu()
    assert bool(y[2].isnan().all())
    assert bool(torch.isfinite(y[[m for m in range(M) if m != 2]]).all())


@needs_kernel
@pytest.mark.parametrize("M,layout", [(8, -1), (32, -1), (32, 4)])
def test_dense_decode_is_deterministic_and_replays_in_a_cuda_graph(M, layout):
    x, w, b = _case(M, 4608, 3584, torch.bfloat16, seed=5, bias_dtype=torch.bfloat16)
    x, w, b = x.cuda(), w.cuda(), b.cuda()
    y0 = _op()(x, w, b, layout)
    assert torch.equal(y0, _op()(x, w, b, layout))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _op()(x, w, b, layout)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _op()(x, w, b, layout)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, _op()(x, w, b, layout))
    assert not torch.equal(out, y0)


@needs_kernel
def test_dense_decode_errors_name_the_argument():
    x = torch.randn(2, 64, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(16, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match="M <= 32"):
        _op()(torch.randn(33, 64, dtype=torch.bfloat16, device="cuda"), w, None)
    with pytest.raises(RuntimeError, match="K a positive multiple of 8"):
        _op()(x[:, :60], w[:, :60], None)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        _op()(x, w.half(), None)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _op()(x.cpu(), w, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        _op()(x, w, torch.zeros(15, dtype=torch.bfloat16, device="cuda"))
    with pytest.raises(RuntimeError, match="layout"):
        _op()(x, w, None, 6)
    with pytest.raises(RuntimeError, match="bias must have x's dtype"):
        _op()(x, w, torch.zeros(16, dtype=torch.int32, device="cuda"))


@needs_kernel
def test_linear_routes_decode_sizes_to_the_gemv_and_the_rest_to_f_linear(monkeypatch):
    calls = []
    real = torch.ops.sbops_native.dense_decode

    def spy(*a):
        calls.append(a[0].shape)
        assert len(a) == 3   # x, weight, bias: the op's default layout
        return real(*a)
    monkeypatch.setattr(common, "_dense_op", lambda: spy, raising=False)
    w = torch.randn(48, 64, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(2, 1, 64, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        y = common.linear(x, w)
    assert y.shape == (2, 1, 48)
    _check(y.view(2, 48), x.view(2, 64).cpu(), w.cpu(), None)
    assert calls == [(2, 64)]
    with torch.no_grad():
        common.linear(torch.randn(33, 64, dtype=torch.bfloat16, device="cuda"), w)   # 33 rows: F.linear
        common.linear(x.float(), w.float())                                            # float32: F.linear
    assert len(calls) == 1
    wg = w.clone().requires_grad_()
    common.linear(x, wg).sum().backward()                                              # autograd: F.linear
    assert len(calls) == 1 and wg.grad is not None
    with torch.no_grad():
        wt = torch.randn(64, 48, dtype=torch.bfloat16, device="cuda").t()             # a transposed view: cuBLAS
        assert torch.equal(common.linear(x, wt), F.linear(x, wt))
        assert common.linear(x, w[:0]).shape == (2, 1, 0)                              # no outputs: F.linear
        with pytest.raises(RuntimeError):                                              # float32 bias: as F.linear
            common.linear(x, w, torch.zeros(48, device="cuda"))
        xs = torch.randn(3, 2, 64, dtype=torch.bfloat16, device="cuda")
        torch.testing.assert_close(torch.vmap(lambda r: common.linear(r, w))(xs), F.linear(xs, w))   # vmap: F.linear
    assert len(calls) == 1
    monkeypatch.setattr(common, "DENSE_DECODE", False)
    with torch.no_grad():
        common.linear(x, w)
    assert len(calls) == 1


@needs_kernel
def test_bf16_model_decode_with_the_gemv_matches_f_linear(monkeypatch):
    """A bf16 model's greedy decode (3 sequences: 3-row GEMVs) runs its projections on the GEMV and gives the same
    first-step scores as F.linear to bf16 rounding."""
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate
    torch.manual_seed(0)
    cfg = SpikingBrainConfig(vocab_size=256, hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2,
                             head_dim=64, layer_types=("gla", "swa", "gla", "swa"), window=16)
    model = SpikingBrainForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(0, 256, (3, 9), device="cuda")
    calls = []
    real = torch.ops.sbops_native.dense_decode

    def spy(*a):
        calls.append(a[0].shape[0])
        return real(*a)
    monkeypatch.setattr(common, "_dense_op", lambda: spy)
    outs = []
    for on in (True, False):
        monkeypatch.setattr(common, "DENSE_DECODE", on)
        outs.append(generate(model, prompt, 6, cuda_graphs=False, output_scores=True))
        if on:
            assert calls and set(calls) == {3}   # decode steps only: the 27-row prefill stays on cuBLAS
            n_on = len(calls)
    assert len(calls) == n_on
    a, b = (o.scores[0].float() for o in outs)
    assert (a - b).abs().max() <= 2e-2 * b.abs().max()


def test_linear_is_f_linear_off_cuda_and_modules_keep_their_hooks():
    """On CPU (and for anything the GEMV does not take) linear() is F.linear bit for bit; linear_module() calls a
    module that has forward hooks (or is not a plain nn.Linear) through its own __call__, so the hooks run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, generator=g).to(torch.bfloat16)
    lin = nn.Linear(40, 24).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(common.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
        assert torch.equal(common.linear_module(lin, x), lin(x))
    seen = []
    lin.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        common.linear_module(lin, x)
    assert seen == [(3, 24)]
    other = nn.Linear(40, 24).to(torch.bfloat16)
    other.forward = lambda inp: torch.zeros(2)                      # a forward replaced on the instance is called
    assert torch.equal(common.linear_module(other, x), torch.zeros(2))


@pytest.mark.parametrize("shape", [(2, 3), (4, 1), (1, 5), (0, 3)])
def test_linear_of_a_strided_view_with_bias_is_one_addmm(shape):
    """A strided 3-D view with a bias (GLA's low-rank gate: a split of the fused q/k/v output) runs one GEMM with the
    bias in its epilogue (aten.addmm), not F.linear's GEMM + separate add, with F.linear's value; gradients flow."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(1)
    fused = torch.randn(*shape, 40, generator=g, dtype=torch.float64, requires_grad=True)
    x = fused[..., 8:24]
    w = torch.randn(5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    with Ops() as rec:
        y = common.linear(x, w, b)
    assert y.shape == (*shape, 5)
    assert "addmm" in rec.seen and "add" not in rec.seen and "mm" not in rec.seen, rec.seen
    ref = F.linear(x, w, b)
    assert torch.allclose(y, ref, rtol=1e-12, atol=1e-12)
    if y.numel():
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        assert all(torch.allclose(a, r, rtol=1e-12, atol=1e-12) for a, r in
                   zip(torch.autograd.grad(y, (fused, w, b), gy), torch.autograd.grad(ref, (fused, w, b), gy)))
