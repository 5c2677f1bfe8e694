"""spike_linear's one-launch CUDA-core "gemv" path (decode rows: counts computed in the prologue, float32
products, split-K reduced by the last program) against the float64 reference.

Runs the Triton kernel under the interpreter on CPU tensors when there is no GPU, on the GPU otherwise."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/triton_kernels.py)

import sbops
from conftest import requires_triton
from test_spike_linear import _dev, _null, _outliers, _swiglu_rows, _triton, ref_spike_linear, rel

FP8 = torch.float8_e4m3fn


def _gemv(sl, tk, x, wq, sc, k, bias, group_size, config):
    dev = _dev()
    with tk.bounds_checked() if dev == "cpu" else _null():
        return sl.spike_linear_fwd(x.to(dev), wq.to(dev), sc.to(dev), k, None if bias is None else bias.to(dev),
                                   group_size, config=config, path="gemv").cpu()


@requires_triton
@pytest.mark.parametrize("wdtype", [torch.int8, FP8])
@pytest.mark.parametrize("group_size", [None, 64])
@pytest.mark.parametrize("M,split", [(1, 1), (1, 3), (3, 2)])
def test_gemv_matches_float64_reference_with_wide_counts(wdtype, group_size, M, split):
    """Counts past e4m3's 16, int8's 127 and float16's 2047 (k = 8 with a 3e5 spike) are never cut; N = 40 is
    not a multiple of the 16-row block (rows past N masked); the split-K counters are back at 0 after a call."""
    tk, sl = _triton()
    N, K = 40, 384
    x = _outliers(torch.randn(M, K), big=True)
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, group_size=group_size, dtype=wdtype)
    bias = torch.randn(N) if M % 2 else None
    k = 8.0
    assert sbops.spike_encode(x, k, torch.int32)[0].abs().max() > 2047
    r = ref_spike_linear(x, wq.float(), sc, k, bias, group_size)
    cfg = (16, 64 if group_size else 128, split, 4)   # BN, BK, SPLIT, warps
    for _ in range(2):
        y = _gemv(sl, tk, x, wq, sc, k, bias, group_size, cfg)
        assert y.shape == (M, N) and torch.isfinite(y).all()
        assert rel(y, r) < 1e-5


@requires_triton
@pytest.mark.parametrize("wdtype", [torch.int8, FP8])
def test_gemv_swiglu_rows_and_default_route(wdtype, monkeypatch):
    """A SwiGLU-product row (2.6% of its counts past 16) at M = 1 takes the gemv path by default (the
    launcher's own config) and equals the reference; a count of 1e26 (x = 1e30, vth clamped at 1e4) too."""
    tk, sl = _triton()
    dev = _dev()
    K, N = 512, 48
    calls = []
    gemv = sl._gemv
    monkeypatch.setattr(sl, "_gemv", lambda *a, **kw: calls.append(1) or gemv(*a, **kw))
    x = _swiglu_rows(1, K).float()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=wdtype)
    with tk.bounds_checked() if dev == "cpu" else _null():
        y = sl.spike_linear_fwd(x.to(dev), wq.to(dev), sc.to(dev), 3.0, None, None).cpu()
        y16 = sl.spike_linear_fwd(x.bfloat16().to(dev), wq.to(dev), sc.to(dev), 3.0, None, None).cpu()
    assert calls == [1, 1], "M = 1 takes the gemv path by default"
    assert rel(y, ref_spike_linear(x, wq.float(), sc, 3.0, None, None)) < 1e-5
    assert y16.dtype == torch.bfloat16 and rel(y16, ref_spike_linear(x.bfloat16(), wq.float(), sc, 3.0, None, None)) < 1e-2
    x[0, 10] = 1e30
    y = _gemv(sl, tk, x, wq, sc, 3.0, None, None, None)
    assert rel(y, ref_spike_linear(x, wq.float(), sc, 3.0, None, None)) < 1e-5


@requires_triton
def test_gemv_nan_input_makes_only_its_row_nan():
    tk, sl = _triton()
    x = torch.randn(3, 256)
    x[1, 77] = float("nan")
    wq, sc = sbops.quantize_weight(torch.randn(32, 256) * 0.05, dtype=FP8)
    y = _gemv(sl, tk, x, wq, sc, 3.0, None, None, (16, 128, 2, 4))
    assert torch.isnan(y[1]).all()
    keep = torch.tensor([0, 2])
    assert rel(y[keep], ref_spike_linear(x[keep], wq.float(), sc, 3.0, None, None)) < 1e-5


def test_gemv_config_fits_the_group_and_the_device():
    """The default config: BK is the group (per group) or a power of two <= 1024, BN * BK <= 16K weights,
    and the grid holds about 8 programs per SM (K slices otherwise)."""
    pytest.importorskip("triton")
    import triton_kernels
    sl = triton_kernels.load("spike_linear")
    cpu = torch.device("cpu")  # 132 SMs assumed off the GPU
    for N, K, g in [(4608, 3584, None), (37888, 3584, None), (3584, 18944, None), (3584, 18944, 128)]:
        BN, BK, split, warps = sl.gemv_config(N, K, g, cpu)
        assert (BK == g) if g else (BK <= 1024 and BK & (BK - 1) == 0)
        assert BN * BK <= 16384 and split >= 1 and warps in (4, 8)
        assert -(-N // BN) * split >= 8 * 132 or split * 2 * BK >= K
