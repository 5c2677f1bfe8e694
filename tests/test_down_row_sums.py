"""SwiGLU's down projection with its spike thresholds from the gate / up epilogue's sums of |h| (#23): the Hopper int8
SwiGLU GEMM writes each row's sum of |h| per 128-column tile (sbops_native.int8_gemm_swiglu_sm90's row_sums), the
redo of flagged blocks rewrites them, and the down projection's encode takes vth from them and reads h once
(spike_linear_swiglu.down_from_row_sums, nn.SwiGLU under FUSE_DOWN_ROW_SUMS).

CPU: the launcher's flow with the GEMM emulated (flagged blocks and a NaN row), the encode from sums against the
two-pass encode, and down_from_row_sums against the float64 reference, under the Triton interpreter.  GPU (sm_90 with
an sm_90a build): the kernel's sums against h's, and nn.SwiGLU with and without the sums."""
import pytest
import torch

import sbops
from conftest import requires_triton
from test_int8_swiglu import (NAN_ROW, OUTLIER_ROWS, _kernel, _setup_flow, _tile_sums, _x_with_outliers,
                              needs_kernel)
from test_spike_linear import _null, ref_spike_linear, rel


@requires_triton
def test_row_sums_are_each_tiles_sum_of_abs_h_after_the_redo(monkeypatch):
    """The flagged blocks' h is redone from side after the GEMM: their sums are rewritten with it; the NaN row's are
    NaN, no other row's."""
    tk, sw, dev = _setup_flow(monkeypatch)
    M, K, I = 37, 256, 256
    x = _x_with_outliers(M, K, seed=3)
    wq, sc = sbops.quantize_weight(torch.randn(2 * I, K) * 0.05)
    with tk.bounds_checked() if dev == "cpu" else _null():
        h, sums = sw.int8_swiglu(x.to(dev), wq.to(dev), sc.to(dev), 3.0, row_sums=True)
        h_plain = sw.int8_swiglu(x.to(dev), wq.to(dev), sc.to(dev), 3.0)
    h, sums = h.cpu(), sums.cpu()
    assert sums.shape == (M, I // 128) and sums.dtype == torch.float32
    want = _tile_sums(h)
    assert torch.isnan(sums[NAN_ROW]).all() and not torch.isnan(sums[torch.arange(M) != NAN_ROW]).any()
    ok = torch.arange(M) != NAN_ROW
    torch.testing.assert_close(sums[ok], want[ok], rtol=1e-5, atol=0)
    for r in OUTLIER_ROWS:   # rows of flagged blocks: the redo's h, and its sums
        torch.testing.assert_close(sums[r], want[r], rtol=1e-5, atol=0)
    assert torch.equal(torch.nan_to_num(h), torch.nan_to_num(h_plain.cpu()))


@requires_triton
@pytest.mark.parametrize("K", [4224, 4352 + 16])
def test_encode_from_row_sums_equals_the_two_pass_encode(K):
    """Rows longer than one 4096-column block: vth from the partial sums (the last tile partial where K % 128 != 0)
    within an ulp of the two-pass encode's, the same flags, counts equal but at the rare quotient an ulp of vth
    moves across a rounding tie."""
    import triton_kernels as tk
    from test_spike_linear import _dev, _triton
    _triton()
    sl = tk.load("spike_linear")
    dev = _dev()
    g = torch.Generator().manual_seed(K)
    x = (torch.randn(40, K, generator=g) * torch.rand(40, 1, generator=g) * 3).bfloat16()
    x[7, 100] = 400.0    # a count past 127: flagged
    x[11, 9] = float("nan")
    n = -(-K // 128)
    part = torch.nn.functional.pad(x.float().abs(), (0, n * 128 - K)).reshape(40, n, 128).sum(-1)
    with tk.bounds_checked() if dev == "cpu" else _null():
        s1, _, v1, f1 = sl.encode_lo(x.to(dev), 3.0, 16, 16, 1, fp8=False, row_sums=part.to(dev))
        s2, _, v2, f2 = sl.encode_lo(x.to(dev), 3.0, 16, 16, 1, fp8=False)
        v3 = sl.encode_lo(x.to(dev), 3.0, 16, 16, 1, fp8=False, row_sums=(2 * part).to(dev))[2]
    v1, v2, v3 = v1.cpu(), v2.cpu(), v3.cpu()
    ok = torch.arange(40) != 11
    assert torch.isnan(v1[11]) == torch.isnan(v2[11])
    assert ((v1[ok] - v2[ok]).abs() <= 1e-5 * v2[ok]).all()   # another summation order
    assert torch.allclose(v3[ok], 2 * v1[ok], rtol=1e-6)       # vth comes from the sums given
    assert torch.equal(f1.cpu(), f2.cpu()) and f1.cpu()[7 // 16].any()
    assert (s1.cpu()[ok] != s2.cpu()[ok]).float().mean() < 1e-4
    with pytest.raises(ValueError, match="row_sums must be float32"):
        sl.encode_lo(x.to(dev), 3.0, 16, 16, 1, fp8=False, row_sums=part.double().to(dev))


@requires_triton
def test_down_from_row_sums_matches_float64():
    """down_from_row_sums(h, ...) = spike_linear(h, ...) of the int_mm path (on the CPU: torch's int8 GEMM and the
    Triton epilogue under the interpreter), against float64; None where the int_mm path does not serve h."""
    import triton_kernels as tk
    from test_spike_linear import _dev, _triton
    _triton()
    sw = tk.load("spike_linear_swiglu")
    dev = _dev()
    M, K, N = 40, 4224, 64
    h = (torch.randn(M, K) * 0.3).bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05)
    bias = torch.randn(N).bfloat16()
    sums = torch.nn.functional.pad(h.float().abs(), (0, 33 * 128 - K)).reshape(M, 33, 128).sum(-1)
    with tk.bounds_checked() if dev == "cpu" else _null():
        y = sw.down_from_row_sums(h.to(dev), wq.to(dev), sc.to(dev), 3.0, bias.to(dev), sums.to(dev)).cpu()
        assert sw.down_from_row_sums(h[:16].to(dev), wq.to(dev), sc.to(dev), 3.0, None, sums[:16].to(dev)) is None
        assert sw.down_from_row_sums(h.to(dev), wq.to(dev), sc.to(dev), 3.0, None, sums[:, :32].to(dev)) is None
        y2 = sw.down_from_row_sums(h.to(dev), wq.to(dev), sc.to(dev), 3.0, bias.to(dev), (4 * sums).to(dev)).cpu()
    ref = ref_spike_linear(h, wq.float(), sc, 3.0, bias, None)
    assert y.shape == (M, N) and y.dtype == h.dtype and rel(y, ref) < 1e-2
    assert rel(y2, ref) > 5e-2   # the thresholds come from the sums: four times too large codes h coarsely
    assert sw.down_takes_row_sums(4224) and not sw.down_takes_row_sums(3584)


@needs_kernel
@pytest.mark.parametrize("M,I,K", [(37, 128, 144), (300, 384, 4112), (129, 256, 256)])
@pytest.mark.parametrize("cluster", [2, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_row_sums_are_each_tiles_sum_of_abs_h(M, I, K, cluster, dtype):
    """Every row (flagged blocks too: the redo rewrites theirs), row tails, 1-3 feature tiles, both dtypes, in a
    wider buffer (ld > I / 128); h is unchanged by asking for them."""
    g = torch.Generator().manual_seed(M + I + K)
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8).cuda()
    b = torch.randint(-128, 128, (2 * I, K), generator=g, dtype=torch.int8).cuda()
    vth = (torch.rand(M, generator=g) * 0.01 + 1e-4).cuda()
    scale = (torch.rand(2 * I, generator=g) * 0.01 + 1e-4).cuda()
    flags = (torch.arange((M + 15) // 16) % 3 == 1).int().cuda()
    buf = torch.full((M + 5, I // 128 + 3), -1.0, device="cuda")
    sums = buf[:M, 1:1 + I // 128]
    h, _ = _kernel()(a, b, vth, scale, None, dtype, flags, cluster, row_sums=sums)
    h0, _ = _kernel()(a, b, vth, scale, None, dtype, flags, cluster)
    assert torch.equal(h, h0)
    torch.testing.assert_close(sums.cpu(), _tile_sums(h.cpu()), rtol=1e-5, atol=0)
    assert (buf[:, 0] == -1).all() and (buf[:, 1 + I // 128:] == -1).all() and (buf[M:] == -1).all()  # nor past
    with pytest.raises(RuntimeError, match="row_sums must be float32"):
        _kernel()(a, b, vth, scale, None, dtype, flags, cluster, row_sums=sums[:, :-1] if I > 128 else sums.double())


@needs_kernel
def test_swiglu_module_down_from_row_sums_matches_the_unfused_down(monkeypatch):
    """sbops.nn.SwiGLU, int8 per channel, intermediate 4352 (down's rows past one encode block), a 300-token prefill on
    the GPU: the down projection from the sums equals the one that sums h itself (FUSE_DOWN_ROW_SUMS off) within the
    spike coding's tie flips, and both are near float64."""
    import sbops.nn.common as common
    torch.manual_seed(0)
    m = common.SwiGLU(256, 4352, spike_k=3.0, weight_quant="int8_channel",
                      down_weight_quant="int8_channel").cuda().bfloat16().eval()
    x = torch.randn(2, 150, 256, device="cuda", dtype=torch.bfloat16)
    sw = common._spike_linear_triton(x, "spike_linear_swiglu", fp8=False)
    calls = []
    monkeypatch.setattr(sw, "down_from_row_sums", lambda *a, f=sw.down_from_row_sums: calls.append(1) or f(*a))
    with torch.inference_mode():
        y = m(x)
        monkeypatch.setattr(common, "FUSE_DOWN_ROW_SUMS", False)
        y0 = m(x)
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
    assert calls == [1]
    q, sc = m.down_proj.int8_weight()
    ref = ref_spike_linear(h.cpu().reshape(-1, 4352), q.cpu().float(), sc.cpu().reshape(-1), 3.0, None, None)
    assert rel(y.cpu(), y0.cpu()) < 5e-3 and rel(y.cpu().reshape(-1, 256), ref) < 1e-2
