"""spike_linear's CUDA C++ decode kernel (backends/cuda/kernels/spike_decode.cu, reached through the Triton
registration as sbops_native::spike_linear_decode): e4m3 weights per channel, M <= 8 rows, against the
float64 reference, the Triton decode path, views, counts past float16's exact 2048 and past 2048^2, a
float32 bias (GPU), and the refusal of what it does not take (any machine)."""
import pytest
import torch

import sbops
from conftest import requires_cuda, requires_triton
from test_spike_linear import _triton, _worst_row, ref_spike_linear, rel

FP8 = torch.float8_e4m3fn
pytestmark = requires_triton


def test_cuda_decode_path_refuses_cpu_tensors():
    """CPU tensors (on any build) never reach the kernel: the explicit path raises naming what it takes,
    and the default path (None) does not take it."""
    tk, sl = _triton()
    wq, sc = sbops.quantize_weight(torch.randn(16, 64) * 0.05, dtype=FP8)
    x = torch.randn(2, 64).bfloat16()
    assert not sl.native_decode_applies(x, wq, None, 3.0)
    with pytest.raises(ValueError, match="cuda_decode path takes CUDA float8_e4m3fn"):
        sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode")


def _sl():
    sl = _triton()[1]
    if not sl.native_decode_applies(torch.zeros(1, 16, device="cuda", dtype=torch.bfloat16),
                                    torch.zeros(1, 16, device="cuda", dtype=FP8), None, 3.0):
        pytest.skip("sbops was built without the CUDA kernels")
    return sl


def _weights(N, K, seed=0, wdtype=FP8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05
    return sbops.quantize_weight(w.cuda(), dtype=wdtype)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 77, 208), (3, 300, 3584), (8, 4100, 1040), (5, 33, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("wdtype", [FP8, torch.int8])
def test_cuda_decode_matches_float64_and_the_triton_decode(M, N, K, dtype, with_bias, wdtype):
    sl = _sl()
    wq, sc = _weights(N, K, wdtype=wdtype)
    x = torch.randn(M, K, device="cuda").to(dtype)
    bias = torch.randn(N, device="cuda").to(dtype) if with_bias else None
    y = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="cuda_decode")
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None if bias is None else bias.cpu(), None)
    assert y.dtype == dtype and y.shape == (M, N)
    assert _worst_row(y.cpu(), r) < 1e-2
    yt = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="decode")
    assert rel(y, yt) < 1e-2


@requires_cuda
def test_counts_past_2048_take_the_hi_plane_exactly():
    """A row whose largest count is ~10^4 (and one at ~4 * 10^4, K = 18944) is exact: without the hi plane
    its output would be off by most of its norm."""
    sl = _sl()
    for M, N, K, big in ((2, 300, 3584, 3e4), (3, 64, 18944, -5e4)):
        wq, sc = _weights(N, K, seed=1)
        x = torch.randn(M, K)
        x[0, 5] = big
        x[M - 1, K - 1] = -big
        x = x.bfloat16().cuda()
        r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
        vth = x.float().abs().mean(-1) / 3.0
        assert (x.float().abs().amax(-1) / vth).max() > 2048  # the case is what it claims
        y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode")
        assert _worst_row(y.cpu(), r) < 1e-2


@requires_cuda
def test_views_give_the_dense_calls_bits():
    sl = _sl()
    wq, sc = _weights(96, 512)
    base = torch.randn(4, 512 + 24, device="cuda", dtype=torch.bfloat16)
    for view in (base[:, 8:520], base[:, 3:515]):  # aligned rows are read in place, misaligned ones copied
        assert torch.equal(sl.spike_linear_fwd(view, wq, sc, 3.0, None, None, path="cuda_decode"),
                           sl.spike_linear_fwd(view.contiguous(), wq, sc, 3.0, None, None, path="cuda_decode"))
    wide = torch.empty(96, 1024, device="cuda", dtype=FP8)
    wide[:, :512] = wq
    x = torch.randn(2, 512, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(sl.spike_linear_fwd(x, wide[:, :512], sc, 3.0, None, None, path="cuda_decode"),
                       sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode"))


@requires_cuda
def test_nan_input_makes_only_its_row_nan():
    sl = _sl()
    wq, sc = _weights(40, 256)
    x = torch.randn(3, 256, device="cuda", dtype=torch.bfloat16)
    x[1, 7] = float("nan")
    y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode")
    assert y[1].isnan().all() and not y[0].isnan().any() and not y[2].isnan().any()


@requires_cuda
def test_the_public_op_takes_the_cuda_decode_and_others_fall_back(monkeypatch):
    sl = _sl()
    calls = []
    native = sl._native_decode
    monkeypatch.setattr(sl, "_native_decode", lambda *a: calls.append(1) or native(*a))
    wq, sc = _weights(64, 256)
    x = torch.randn(2, 256, device="cuda", dtype=torch.bfloat16)
    y = sbops.spike_linear(x, wq, sc, k=3.0)
    assert len(calls) == 1
    assert torch.equal(y, sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode"))
    monkeypatch.setattr(sl, "NATIVE_DECODE", False)  # the benchmarks' switch: the Triton decode
    sbops.spike_linear(x, wq, sc, k=3.0)
    assert len(calls) == 2  # (only the explicit call above)
    monkeypatch.setattr(sl, "NATIVE_DECODE", True)
    # what the kernel does not take goes elsewhere: per-group scales, M > 8
    wg, sg = sbops.quantize_weight(torch.randn(64, 256, device="cuda"), group_size=32, dtype=FP8)
    sbops.spike_linear(x, wg, sg, k=3.0, group_size=32)
    sbops.spike_linear(torch.randn(9, 256, device="cuda", dtype=torch.bfloat16), wq, sc, k=3.0)
    assert len(calls) == 2
    # int8 weights per channel take it too (also as one group per row: group_size = K)
    wi, si = sbops.quantize_weight(torch.randn(64, 256, device="cuda"))
    yi = sbops.spike_linear(x, wi, si, k=3.0)
    assert len(calls) == 3 and torch.equal(yi, sbops.spike_linear(x, wi, si[:, None], k=3.0, group_size=256))
    assert len(calls) == 4
    with pytest.raises(ValueError, match="cuda_decode"):
        sl.spike_linear_fwd(torch.randn(9, 256, device="cuda", dtype=torch.bfloat16), wq, sc, 3.0, None, None,
                            path="cuda_decode")
    with pytest.raises(ValueError, match="cuda_decode"):
        sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode", config=(64, 128, 0, 4, 4))
    with pytest.raises(RuntimeError, match="weight_scale must be \\[N\\]"):
        torch.ops.sbops_native.spike_linear_decode(x, wq, sc[:10], 3.0, None)


@requires_cuda
@pytest.mark.parametrize("M,rows", [(4, (1, 2)), (8, (7,)), (1, (0,))])
@pytest.mark.parametrize("wdtype", [FP8, torch.int8])
def test_counts_past_2048_squared_take_the_residual_pass(M, rows, wdtype):
    """A bf16 x of 1e30 (or 5e12) meets vth's clamp at 1e4: a count of ~1e26 (~5e8), which float16 planes cannot
    hold; its row is finite and equals the reference (it was inf / NaN before the residual pass), the other rows
    unchanged.  Rows 1, 2 and 7 put the residual into every lane position of the accumulators (tokens 2t, 2t + 1)."""
    sl = _sl()
    wq, sc = _weights(80, 1040, seed=2, wdtype=wdtype)
    x = torch.randn(M, 1040)
    for i, m in enumerate(rows):
        x[m, 17 + i] = 1e30 if i % 2 == 0 else 5e12
        x[m, 500] = -3e29 if i % 2 == 0 else -1e12
    x = x.bfloat16().cuda()
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    y = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="cuda_decode")
    assert torch.isfinite(y).all()
    assert _worst_row(y.cpu(), r) < 1e-2


@requires_cuda
def test_float32_bias_is_added_in_float32():
    """A bias that cancels row 0's product to ~0.25 out of ~1e3: rounded to bf16 first (as before), it would
    be off by up to 2 there."""
    sl = _sl()
    wq, sc = _weights(64, 512, seed=4)
    x = (torch.randn(2, 512) * 1e3).bfloat16().cuda()
    r0 = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, None, None)
    assert r0[0].abs().max() > 512  # the case is what it claims: bf16 spacing 4 there
    bias = (0.25 - r0[0]).float().cuda()
    y = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="cuda_decode")
    assert (y[0].double().cpu() - 0.25).abs().max() < 0.5


@requires_cuda
def test_float16_hi_plane_and_one_output_channel():
    sl = _sl()
    for N, K, dtype in ((1, 208, torch.float16), (37, 2064, torch.float16), (19, 512, torch.bfloat16)):
        wq, sc = _weights(N, K, seed=3)
        x = torch.randn(3, K)
        x[0, 1] = 300.0 * x[0].abs().mean()  # counts of a few hundred
        x[2, 9] = 2e3 * x[2].abs().mean()    # ~3000 at K = 2064: the hi plane, with float16 x
        x = x.to(dtype).cuda()
        bias = torch.randn(N, device="cuda") * 10
        y = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, None, path="cuda_decode")
        r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, bias.cpu(), None)
        assert y.dtype == dtype and _worst_row(y.cpu(), r) < 1e-2


# (M, N, K, big value at x[M-1, 7], x dtype, row padding (ldx = K + pad), float32 bias): plain, hi plane, residual,
# non-finite counts, float16 x, a strided x and a float32 bias
_PDL_CASES = ((1, 4608, 3584, None, torch.bfloat16, 0, False), (8, 3584, 18944, 3e4, torch.bfloat16, 0, False),
              (4, 80, 1040, 1e30, torch.bfloat16, 0, False), (3, 96, 512, float("inf"), torch.bfloat16, 0, False),
              (2, 40, 208, float("nan"), torch.bfloat16, 0, False), (5, 72, 2064, 5e3, torch.float16, 0, False),
              (3, 64, 528, None, torch.bfloat16, 16, True), (1, 33, 16, 200.0, torch.float16, 8, True))
_PDL_CHILD = """
import sys, torch, sbops
from torch.profiler import ProfilerActivity, profile
from sbops._backends.cuda.triton import spike_linear as sl
cases = torch.load(sys.argv[1])
eager, graphed = [], []
for x, w, s, b, K in cases:
    args = [t.cuda() for t in (x, w, s, b)]
    args[0] = args[0][:, :K]              # a view: rows ldx = x.shape[1] apart
    eager.append(sl.spike_linear_fwd(args[0], args[1], args[2], 3.0, args[3], None, path="cuda_decode").cpu())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = sl.spike_linear_fwd(args[0], args[1], args[2], 3.0, args[3], None, path="cuda_decode")
    y.zero_()
    graph.replay()
    torch.cuda.synchronize()
    graphed.append(y.cpu())
x, w, s, b, K = cases[0]
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    sl.spike_linear_fwd(x.cuda()[:, :K], w.cuda(), s.cuda(), 3.0, b.cuda(), None, path="cuda_decode")
    torch.cuda.synchronize()
kernels = sorted({e.name for e in prof.events() if "spike_decode" in e.name})
torch.save((eager, graphed, kernels), sys.argv[2])
"""


def _child_outputs(tmp_path, cases, **env):
    """(eager outputs, outputs replayed from a CUDA graph, names of the spike_decode kernels one call launched) of the
    cuda_decode path on `cases` ((x, weight_q, scale, bias, K) on the CPU: x[:, :K] is the input), computed by a child
    process with the kernel's switches (read once per process) set as given and the others at their defaults."""
    import os
    import subprocess
    import sys
    torch.save(cases, tmp_path / "in.pt")
    base = {k: v for k, v in os.environ.items() if k not in ("SBOPS_DECODE_PDL", "SBOPS_DECODE_ENCODE")}
    subprocess.run([sys.executable, "-c", _PDL_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                   env=dict(base, **env), check=True, timeout=240, cwd=tmp_path)
    return torch.load(tmp_path / "out.pt")


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def _launched(kernels):
    """(the encode kernel, a fused-encode GEMV) among the kernel names a child saw, e.g.
    `void sbops::(anonymous namespace)::spike_decode_kernel<__nv_bfloat16, 1, 8, 1, true, false, 1>(
    sbops::SpikeDecodeArgs)`
    (template arguments: x's type, WN, WK, UNROLL, FUSED, int8 weights, m16 tiles per warp)"""
    gemv = [k.split("spike_decode_kernel<", 1)[1].split(">", 1)[0].split(", ") for k in kernels
            if "spike_decode_kernel<" in k]
    assert gemv and all(len(a) == 7 for a in gemv), kernels
    return any("spike_decode_encode_kernel" in k for k in kernels), any(a[4] == "true" for a in gemv)


def _pdl_cases():
    cases = []
    for i, (M, N, K, big, dtype, pad, f32_bias) in enumerate(_PDL_CASES):
        wq, sc = _weights(N, K, seed=10 + i)
        x = torch.randn(M, K + pad, generator=torch.Generator().manual_seed(i))
        if big is not None:
            x[M - 1, 7] = big
        b = torch.randn(N) if f32_bias else torch.randn(N).to(dtype)
        cases.append((x.to(dtype), wq.cpu(), sc.cpu(), b, K))
    return cases


@requires_cuda
def test_early_launch_and_fused_encode_change_no_bit(tmp_path):
    """The GEMV launched as a programmatic dependent of its encode (sm_90: it starts and loads its first stage
    while the encode runs) gives the bits of plain launches (SBOPS_DECODE_PDL=0, read once per process: a child
    process), eagerly and replayed from a CUDA graph, for rows that take only the lo plane, the hi plane, the
    residual pass and non-finite counts, float16 x, strided x and float32 biases; so do the early launch of the
    encode too (SBOPS_DECODE_PDL=all, the default: this process), the GEMV's alone (SBOPS_DECODE_PDL=1) and the opt-in
    fused encode (SBOPS_DECODE_ENCODE=fused: the GEMV computes the
    counts itself, launched early or plainly), each in another child, which is checked to have launched the encode
    kernel (or, fused, only the fused GEMV).  (Whether a wait holds against a predecessor that releases it early is
    not tested here: torch's kernels before it never do.)"""
    sl = _sl()
    cases = _pdl_cases()
    plain, plain_graphed, kernels = _child_outputs(tmp_path, cases, SBOPS_DECODE_PDL="0")
    assert _launched(kernels) == (True, False), kernels
    for (x, wq, sc, b, K), want, want_g in zip(cases, plain, plain_graphed):
        x = x[:, :K]
        r = ref_spike_linear(x, wq, sc, 3.0, b, None)
        assert _same_bits(want_g, want) and want.dtype == x.dtype
        if x.isfinite().all():
            assert _worst_row(want, r) < 1e-2   # the baseline itself is right
        else:
            assert not want[-1].isfinite().all() and want[:-1].isfinite().all()
    for env in ({"SBOPS_DECODE_PDL": "all"}, {"SBOPS_DECODE_PDL": "1"}, {"SBOPS_DECODE_ENCODE": "fused"},
                {"SBOPS_DECODE_ENCODE": "fused", "SBOPS_DECODE_PDL": "0"}):
        eager, graphed, kernels = _child_outputs(tmp_path, cases, **env)
        fused = env.get("SBOPS_DECODE_ENCODE") == "fused"
        assert _launched(kernels) == ((False, True) if fused else (True, False)), (env, kernels)
        for i, want in enumerate(plain):
            assert _same_bits(eager[i], want), (env, _PDL_CASES[i])
            assert _same_bits(graphed[i], want), (env, _PDL_CASES[i], "graph replay")
    for (x, wq, sc, b, K), want in zip(cases, plain):   # this process: its mode, and a replay on new x
        args = [t.cuda() for t in (x, wq, sc, b)]
        args[0] = args[0][:, :K]
        y = sl.spike_linear_fwd(args[0], args[1], args[2], 3.0, args[3], None, path="cuda_decode")
        assert _same_bits(y.cpu(), want)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            yg = sl.spike_linear_fwd(args[0], args[1], args[2], 3.0, args[3], None, path="cuda_decode")
        args[0].mul_(-1)  # the replay reads the new x
        yn = sl.spike_linear_fwd(args[0], args[1], args[2], 3.0, args[3], None, path="cuda_decode")
        graph.replay()
        torch.cuda.synchronize()
        assert _same_bits(yg, yn) and not _same_bits(yn.cpu(), want), "graph replay on new x"
