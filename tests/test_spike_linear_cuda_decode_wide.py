"""spike_linear's CUDA C++ wide decode GEMV (backends/cuda/kernels/spike_decode_wide.cu: 9 <= M <= 32 rows, split over
K with a last-arriver reduction), reached through sbops_native::spike_linear_decode: against the float64 reference
and the Triton decode, every layout and split, the same bits on every call, counts past 2048 and 2048^2 in every
n-tile of tokens, NaN rows, views, CUDA graphs, and the refusal of layouts it does not take (GPU)."""
import pytest
import torch

import sbops
from conftest import requires_cuda, requires_triton
from test_spike_linear import _worst_row, ref_spike_linear, rel
from test_spike_linear_cuda_decode import _sl, _weights

FP8 = torch.float8_e4m3fn
pytestmark = [requires_triton, requires_cuda]


def _native(x, wq, sc, bias=None, layout=-1, splits=0):
    return torch.ops.sbops_native.spike_linear_decode(x, wq, sc, 3.0, bias, layout, splits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(9, 77, 208), (16, 300, 3584), (32, 4100, 1040), (23, 33, 16), (32, 200, 18944)])
@pytest.mark.parametrize("wdtype", [FP8, torch.int8])
def test_wide_decode_matches_float64_and_the_triton_decode(M, N, K, dtype, wdtype):
    sl = _sl()
    wq, sc = _weights(N, K, wdtype=wdtype)
    x = torch.randn(M, K, device="cuda").to(dtype)
    bias = torch.randn(N, device="cuda").to(dtype)
    y = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="cuda_decode")
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, bias.cpu(), None)
    assert y.dtype == dtype and y.shape == (M, N)
    assert _worst_row(y.cpu(), r) < 1e-2
    assert rel(y, sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="decode")) < 1e-2


@pytest.mark.parametrize("layout", [8, 9, 10])
@pytest.mark.parametrize("splits", [0, 1, 2, 5, 1000])
def test_every_layout_and_split_matches_float64_with_the_same_bits_each_call(layout, splits):
    """splits = 1000 is clamped to the column blocks (K = 1040: 17); the partial sums are added in split order, so
    repeated calls (any arrival order of the blocks) give the same bits."""
    _sl()
    M, N, K = 27, 1000, 1040
    wq, sc = _weights(N, K, seed=3)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    y = _native(x, wq, sc, layout=layout, splits=splits)
    assert _worst_row(y.cpu(), r) < 1e-2
    for _ in range(3):
        assert torch.equal(_native(x, wq, sc, layout=layout, splits=splits), y)


@pytest.mark.parametrize("wdtype", [FP8, torch.int8])
def test_counts_past_2048_in_every_token_tile_take_the_hi_plane(wdtype):
    sl = _sl()
    M, N, K = 32, 260, 3584
    wq, sc = _weights(N, K, seed=1, wdtype=wdtype)
    x = torch.randn(M, K)
    for m in (0, 9, 18, 31):  # one row in each n-tile of 8 tokens
        x[m, 5 + m] = 3e4 if m % 2 == 0 else -3e4
    x = x.bfloat16().cuda()
    vth = x.float().abs().mean(-1) / 3.0
    assert (x.float().abs().amax(-1) / vth).max() > 2048  # the case is what it claims
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    for splits in (0, 1, 3):
        y = _native(x, wq, sc, splits=splits)
        assert _worst_row(y.cpu(), r) < 1e-2


@pytest.mark.parametrize("wdtype", [FP8, torch.int8])
def test_counts_past_2048_squared_in_every_token_tile_take_the_residual_pass(wdtype):
    """Rows 9, 22 and 31 (tiles 1-3, both token parities) hold a count of ~1e26 or ~5e8: finite and equal to the
    reference, the other rows unchanged."""
    _sl()
    M = 32
    wq, sc = _weights(80, 1040, seed=2, wdtype=wdtype)
    x = torch.randn(M, 1040)
    for i, m in enumerate((9, 22, 31)):
        x[m, 17 + i] = 1e30 if i % 2 == 0 else 5e12
        x[m, 500] = -3e29 if i % 2 == 0 else -1e12
    x = x.bfloat16().cuda()
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    for splits in (0, 1, 4):
        y = _native(x, wq, sc, splits=splits)
        assert torch.isfinite(y).all()
        assert _worst_row(y.cpu(), r) < 1e-2


def test_nan_input_makes_only_its_row_nan():
    _sl()
    wq, sc = _weights(40, 256)
    x = torch.randn(20, 256, device="cuda", dtype=torch.bfloat16)
    x[13, 7] = float("nan")
    y = _native(x, wq, sc, splits=2)
    assert y[13].isnan().all()
    assert not y[torch.arange(20, device="cuda") != 13].isnan().any()


def test_views_give_the_dense_calls_bits():
    _sl()
    wq, sc = _weights(96, 512)
    base = torch.randn(17, 512 + 24, device="cuda", dtype=torch.bfloat16)
    for view in (base[:, 8:520], base[:, 3:515]):  # aligned rows are read in place, misaligned ones copied
        assert torch.equal(_native(view, wq, sc), _native(view.contiguous(), wq, sc))


def test_cuda_graph_replay_equals_eager():
    _sl()
    wq, sc = _weights(3584, 3584, seed=4)
    x = torch.randn(32, 3584, device="cuda", dtype=torch.bfloat16)
    eager = _native(x, wq, sc)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        _native(x, wq, sc)  # warm-up on the capture stream
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        y = _native(x, wq, sc)
    for _ in range(3):  # replays reuse the workspace: the counters must start at zero each time
        gr.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, eager)


def test_the_public_op_takes_the_wide_decode_at_9_to_32_rows(monkeypatch):
    sl = _sl()
    calls = []
    native = sl._native_decode
    monkeypatch.setattr(sl, "_native_decode", lambda *a: calls.append(a[0].shape[0]) or native(*a))
    wq, sc = _weights(64, 256)
    for M in (9, 32, 33):
        sbops.spike_linear(torch.randn(M, 256, device="cuda", dtype=torch.bfloat16), wq, sc, k=3.0)
    assert calls == [9, 32]  # 33 rows: the prefill path
    monkeypatch.setattr(sl, "NATIVE_DECODE_MAX_M", 8)  # the benchmarks' switch: M > 8 on the Triton decode
    sbops.spike_linear(torch.randn(9, 256, device="cuda", dtype=torch.bfloat16), wq, sc, k=3.0)
    assert calls == [9, 32]


def test_layouts_it_does_not_take_are_refused_by_name():
    _sl()
    wq, sc = _weights(64, 256)
    wi, si = _weights(64, 256, wdtype=torch.int8)
    x9 = torch.randn(9, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="layout must be"):
        _native(x9, wq, sc, layout=2)  # a narrow layout at M = 9
    with pytest.raises(RuntimeError, match="layout must be"):
        _native(x9[:2], wi, si, layout=5)  # the fused-encode layouts take e4m3 weights only
    with pytest.raises(RuntimeError, match="layout must be"):
        _native(x9, wq, sc, layout=11)
    with pytest.raises(RuntimeError, match="splits must be"):
        _native(x9, wq, sc, splits=-1)
    with pytest.raises(RuntimeError, match="M <= 32"):
        _native(torch.randn(33, 256, device="cuda", dtype=torch.bfloat16), wq, sc)
    # a narrow layout still serves M <= 8, and a wide one too
    x2 = x9[:2]
    r = ref_spike_linear(x2.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    for layout in (0, 3, 8, 10):
        assert _worst_row(_native(x2, wq, sc, layout=layout).cpu(), r) < 1e-2
