"""spike_linear's "int_mm" prefill path (int8 weights per channel): one int8 count plane on the vendor int8 GEMM,
an epilogue and the sparse fix-up of counts past 127, against spike_encode and the float64 reference.

Runs the Triton kernels under the interpreter on CPU tensors (torch's CPU _int_mm) when there is no GPU, on the
GPU otherwise."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/triton_kernels.py)

import sbops
from conftest import requires_triton
from test_spike_linear import _dev, _null, _swiglu_rows, _triton, _worst_row, ref_spike_linear, rel


def _run(sl, tk, x, wq, sc, k, bias=None, path="int_mm", config=None, group_size=None):
    dev = _dev()
    with tk.bounds_checked() if dev == "cpu" else _null():
        return sl.spike_linear_fwd(x.to(dev), wq.to(dev), sc.to(dev), k, None if bias is None else bias.to(dev),
                                   group_size, config=config, path=path).cpu()


@requires_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_int_mm_path_matches_float64_with_counts_past_127(dtype):
    """SwiGLU rows, one scaled up so its counts pass 127 in a few chunks, one huge value (a count past 2048 where the
    dtype allows it: three float16 terms in the fix-up), a bias; M and N not multiples of the fix-up's tiles."""
    tk, sl = _triton()
    M, N, K = 37, 40, 256
    x = _swiglu_rows(M, K).float()
    x[5, 17] = 900.0
    x[9, 200] = -6e4 if dtype == torch.float16 else -1e9   # the latter: vth clamps at 1e4, a count of 1e5
    x = x.to(dtype)
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05)
    bias = torch.randn(N).to(dtype)
    c = sbops.spike_encode(x.float(), 3.0, torch.int32)[0]
    assert (c.abs() > 127).sum() >= 2 and (c.abs() > 16).float().mean() > 0.01
    y = _run(sl, tk, x, wq, sc, 3.0, bias, config=(16, 16, 16))
    r = ref_spike_linear(x, wq.float(), sc, 3.0, bias, None)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel(y, r) < (1e-5 if dtype == torch.float32 else 5e-3) and _worst_row(y, r) < 1e-2


@requires_triton
def test_int8_encode_is_the_clamped_count_and_flags_every_cut_chunk():
    tk, sl = _triton()
    dev = _dev()
    M, K, BM, FC = 40, 192, 16, 16
    x = torch.randn(M, K)
    x[::7, 33] *= 400
    x = x.bfloat16()
    s = torch.empty(M, K, dtype=torch.int8, device=dev)
    vth = torch.empty(M, device=dev)
    flags = torch.zeros((M + BM - 1) // BM, K // FC, dtype=torch.int8, device=dev)
    rows, block, one_pass, warps = sl.encode_lo_launch(K)
    with tk.bounds_checked() if dev == "cpu" else _null():
        sl._encode_lo_kernel[((M + rows - 1) // rows,)](x.to(dev), s, s, vth, flags, M, K, K // FC, K, 3.0, R=rows,
                                                        BLOCK=block, ONE_PASS=one_pass, BM=BM, FC=FC, PLANES=1,
                                                        HW=False, FP8=False, num_warps=warps)
    c = torch.round(x.float() / vth.cpu()[:, None])
    assert torch.equal(s.cpu(), c.clamp(-127, 127).to(torch.int8))
    cut = c.abs() > 127
    want = torch.zeros(flags.shape, dtype=torch.bool)
    for i in range(M):
        want[i // BM] |= cut[i].view(-1, FC).any(1)
    assert cut.any() and torch.equal(flags.cpu() != 0, want)


@requires_triton
def test_int_mm_nan_input_makes_only_its_row_nan():
    tk, sl = _triton()
    M, N, K = 24, 32, 64
    x = torch.randn(M, K).bfloat16()
    x[6, 9] = float("nan")
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05)
    y = _run(sl, tk, x, wq, sc, 3.0, config=(16, 16, 16))
    assert torch.isnan(y[6]).all()
    keep = torch.arange(M) != 6
    assert torch.isfinite(y[keep]).all()
    assert _worst_row(y[keep], ref_spike_linear(x[keep], wq.float(), sc, 3.0, None, None)) < 1e-2


@requires_triton
def test_width_reducing_int8_prefill_routes_to_int_mm_and_one_group_is_per_channel(monkeypatch):
    """path=None: int8 per-channel weights with K > N take "int_mm" (spike_linear_tuning.INT8_PREFILL), K <= N the
    Triton GEMM; one scale group per row (group_size = K, SpikeLinear(group_size=in_features)) is served as per
    channel, with the same result."""
    tk, sl = _triton()
    calls = []
    real = sl._prefill_int_mm
    monkeypatch.setattr(sl, "_prefill_int_mm", lambda *a, **kw: calls.append(a[1].shape) or real(*a, **kw))
    monkeypatch.setattr(sl, "FIX_GROUPED_CONFIG", (16, 16, 16))
    x = _swiglu_rows(40, 128)
    wq, sc = sbops.quantize_weight(torch.randn(32, 128) * 0.05)
    y = _run(sl, tk, x, wq, sc, 3.0, path=None)
    y1 = _run(sl, tk, x, wq, sc[:, None].clone(), 3.0, path=None, group_size=128)
    assert calls == [(32, 128), (32, 128)] and torch.equal(y, y1)
    assert rel(y, ref_spike_linear(x, wq.float(), sc, 3.0, None, None)) < 5e-3
    wide, scw = sbops.quantize_weight(torch.randn(160, 128) * 0.05)
    _run(sl, tk, x, wide, scw, 3.0, path=None, config=(32, 32, 32, 1, 4, 1))
    assert len(calls) == 2   # K <= N: the Triton GEMM


@requires_triton
def test_int_mm_path_refuses_what_it_cannot_serve():
    tk, sl = _triton()
    x = torch.randn(40, 100).bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(32, 100) * 0.05)
    with pytest.raises(ValueError, match="int_mm path takes int8 weights with per-channel scales"):
        _run(sl, tk, x, wq, sc, 3.0)             # K not a multiple of 8
    wq, sc = sbops.quantize_weight(torch.randn(32, 128) * 0.05, 64)
    with pytest.raises(ValueError, match="int_mm path takes"):
        _run(sl, tk, torch.randn(40, 128).bfloat16(), wq, sc, 3.0, group_size=64)
    wq, sc = sbops.quantize_weight(torch.randn(32, 128) * 0.05)
    for bad in ((16, 24), (16,), (16, 16, 16, 16), (16.0, 16)):
        with pytest.raises(ValueError, match="int_mm config is"):
            _run(sl, tk, torch.randn(40, 128).bfloat16(), wq, sc, 3.0, config=bad)
