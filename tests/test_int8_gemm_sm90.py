"""The Hopper int8 GEMM with spike_linear's int_mm epilogue fused (backends/cuda/kernels/int8_gemm_sm90.cu,
sbops_native::int8_gemm_sm90): y = (float(a @ b^T) * scale[n]) * vth[m] (+ bias[n]) rounded once to y's dtype.

The int32 sums are exact, so the kernel's output must equal, bit for bit, the same float32 arithmetic done by
torch on the exact integer product (no FMA: separate multiplies and add).  GPU only (sm_90 with an sm_90a
build); skipped elsewhere, as the kernel is."""
import pytest
import torch

from conftest import native_kernel_op, requires_cuda


def _op():
    return native_kernel_op("int8_gemm_sm90")


needs_kernel = pytest.mark.skipif(_op() is None,
                                  reason="needs an sm_90 GPU and an sm_90a CUDA build of sbops")


def _emulate(a, b, vth, scale, bias, dtype):
    """The kernel's arithmetic in torch: exact integer product, float32 conversion, two multiplies, an add."""
    acc = (a.cpu().long() @ b.cpu().long().t()).float()
    y = acc * scale.cpu().float()[None, :]
    y = y * vth.cpu().float()[:, None]
    if bias is not None:
        y = y + bias.cpu().float()[None, :]
    return y.to(dtype)


def _case(M, N, K, seed, bias_dtype=None, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    vth = torch.rand(M, generator=g) * 0.1 + 1e-3
    scale = torch.rand(N, generator=g) * 0.01 + 1e-4
    bias = None if bias_dtype is None else (torch.randn(N, generator=g) * 3).to(bias_dtype)
    return a, b, vth, scale, bias


@needs_kernel
@pytest.mark.parametrize("M,N,K", [(1, 2, 16), (127, 258, 144), (300, 512, 4112), (129, 3584, 256)])
@pytest.mark.parametrize("dtype,bias_dtype", [(torch.bfloat16, None), (torch.bfloat16, torch.bfloat16),
                                              (torch.float16, torch.float32), (torch.float16, torch.float16)])
@pytest.mark.parametrize("cluster", [2, 1])
def test_int8_gemm_sm90_bit_exact_on_odd_shapes(M, N, K, dtype, bias_dtype, cluster):
    """Row and column tails of the 128 x 256 tiles, K tails of the 128-byte stages, one to many stages; clusters of
    two row tiles sharing B by multicast (an odd count of row tiles pairs the last with a block past M) or none."""
    a, b, vth, scale, bias = _case(M, N, K, seed=M + N + K, bias_dtype=bias_dtype, dtype=dtype)
    y = _op()(a.cuda(), b.cuda(), vth.cuda(), scale.cuda(), None if bias is None else bias.cuda(), dtype, cluster)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y.cpu(), _emulate(a, b, vth, scale, bias, dtype))


@needs_kernel
@pytest.mark.parametrize("cluster", [2, 1])
@pytest.mark.parametrize("workers,group", [(1, 1), (2, 3), (3, 8), (4, 2), (0, 0), (-1, 1)])
@pytest.mark.parametrize("K", [272, 784])
@pytest.mark.parametrize("N", [5 * 256 - 8, 5 * 256 - 6])
def test_int8_gemm_sm90_every_schedule_gives_the_same_bits(cluster, workers, group, K, N):
    """Persistent workers taking many items each (the ring's stage count running on across items: 3 and 7 stages an
    item against a ring of 4), groups of row units that do and do not divide the rows, the default (workers 0, group
    0) and session 31's launch (a worker per item, columns fastest: workers -1, group 1).  Five row tiles (with
    clusters, the last unit's second block lies past M) and five column tiles with tails; every element is written.
    N % 8 == 0 takes the epilogue through shared memory and TMA stores (its buffers reused across a worker's items),
    N % 8 == 2 the stores from registers."""
    M = 4 * 128 + 37
    a, b, vth, scale, bias = _case(M, N, K, seed=11 + K, bias_dtype=torch.float32)
    y = _op()(a.cuda(), b.cuda(), vth.cuda(), scale.cuda(), bias.cuda(), torch.bfloat16, cluster, workers, group)
    assert torch.equal(y.cpu(), _emulate(a, b, vth, scale, bias, torch.bfloat16))


@needs_kernel
def test_int8_gemm_sm90_extreme_values_and_long_k():
    """|a| = 127 and b = -128 everywhere over K = 18944 (the 7B down projection): the int32 sum's largest magnitude."""
    M, N, K = 130, 260, 18944
    a = torch.full((M, K), 127, dtype=torch.int8)
    a[1::2] = -127
    b = torch.full((N, K), -128, dtype=torch.int8)
    vth, scale = torch.ones(M), torch.full((N,), 1e-3)
    want = _emulate(a, b, vth, scale, None, torch.bfloat16)
    for cluster in (2, 1):
        assert torch.equal(_op()(a.cuda(), b.cuda(), vth.cuda(), scale.cuda(), None, torch.bfloat16, cluster).cpu(), want)


@needs_kernel
def test_int8_gemm_sm90_reads_row_strided_views():
    """A row window of a wider buffer (row stride a multiple of 16 bytes: read in place by TMA) and a view at an
    odd offset (copied first) give the dense result."""
    a, b, vth, scale, _ = _case(70, 264, 160, seed=3)
    wide = torch.zeros(70, 320, dtype=torch.int8)
    wide[:, 32:192] = a
    odd = torch.zeros(264 * 160 + 1, dtype=torch.int8)
    odd[1:].copy_(b.reshape(-1))
    want = _emulate(a, b, vth, scale, None, torch.bfloat16)
    y = _op()(wide.cuda()[:, 32:192], odd.cuda()[1:].view(264, 160), vth.cuda(), scale.cuda(), None, torch.bfloat16)
    assert torch.equal(y.cpu(), want)
    row = a[:1].expand(70, 160)   # rows sharing memory (stride 0): copied, not read as overlapping rows
    y = _op()(row.cuda(), b.cuda(), vth.cuda(), scale.cuda(), None, torch.float16)
    assert torch.equal(y.cpu(), _emulate(row.contiguous(), b, vth, scale, None, torch.float16))


@needs_kernel
def test_int8_gemm_sm90_rejects_what_it_cannot_serve():
    a, b, vth, scale = (t.cuda() for t in _case(8, 16, 32, seed=4)[:4])
    with pytest.raises(RuntimeError, match="out_dtype must be bfloat16 or float16"):
        _op()(a, b, vth, scale, None, torch.float32)
    with pytest.raises(RuntimeError, match="K must be a multiple of 16"):
        _op()(a[:, :24], b[:, :24], vth, scale, None, torch.bfloat16)
    with pytest.raises(RuntimeError, match="a and b must be int8"):
        _op()(a.float(), b, vth, scale, None, torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"vth must be \[M\]"):
        _op()(a, b, vth[:3], scale, None, torch.bfloat16)
    big = torch.zeros(2, 131072, dtype=torch.int8, device="cuda")
    with pytest.raises(RuntimeError, match="K must be <= 131071"):
        _op()(big, big, vth[:2], scale[:2], None, torch.bfloat16)
    with pytest.raises(RuntimeError, match="cluster must be 1 or 2"):
        _op()(a, b, vth, scale, None, torch.bfloat16, 4)
    with pytest.raises(RuntimeError, match="group must be >= 0"):
        _op()(a, b, vth, scale, None, torch.bfloat16, 2, 0, -1)


@needs_kernel
def test_int8_gemm_sm90_in_a_cuda_graph():
    a, b, vth, scale, bias = (t.cuda() for t in _case(256, 512, 512, seed=5, bias_dtype=torch.bfloat16))
    op = _op()
    op(a, b, vth, scale, bias, torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(a, b, vth, scale, bias, torch.bfloat16)
    a.copy_(-a)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y.cpu(), _emulate(a, b, vth, scale, bias, torch.bfloat16))


@requires_cuda
@needs_kernel
def test_spike_linear_int_mm_path_same_with_the_sm90_kernel_and_cublas(monkeypatch):
    """spike_linear's int8 prefill (a SwiGLU down projection's shape, counts past 127 in the fix-up) on the sm_90
    kernel and on torch._int_mm + the Triton epilogue: the same up to the epilogue's last-bit rounding."""
    import sbops
    from sbops._backends.cuda.triton import spike_linear as sl
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(300, 1024, generator=g) * torch.randn(300, 1024, generator=g)).bfloat16()
    x[3, 5] = 500.0
    wq, sc = sbops.quantize_weight(torch.randn(256, 1024, generator=g) * 0.05)
    bias = torch.randn(256, generator=g).bfloat16()
    args = (x.cuda(), wq.cuda(), sc.cuda(), 3.0, bias.cuda(), None)
    assert sl.int8_gemm_sm90_applies(args[0], 1024)
    y_sm90 = sl.spike_linear_fwd(*args, path="int_mm")
    monkeypatch.setattr(sl, "INT8_GEMM_SM90", False)
    y_cublas = sl.spike_linear_fwd(*args, path="int_mm")
    d = (y_sm90.float() - y_cublas.float()).abs()
    assert d.max().item() <= 2 ** -7 * y_cublas.float().abs().max().item()
    assert (d == 0).float().mean().item() > 0.9
