"""spike_linear (W8ASpike): the CPU reference and the CUDA kernels against a float64 reference."""
import pytest
import torch

import sbops
from conftest import requires_cuda


def ref_spike_linear(x, wq, scale, k, bias, group_size):
    """float64: vth and counts as spike_encode (float32 threshold and quotient), never saturated."""
    xf = x.float()
    vth = (xf.abs().double().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
    s = torch.round(xf / vth).double()
    w = wq.double()
    if group_size is None:
        w = w * scale.double()[:, None]
    else:
        w = (w.view(w.shape[0], -1, group_size) * scale.double()[:, :, None]).view_as(w)
    y = vth.double() * (s @ w.T)
    return y + bias.double() if bias is not None else y


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("shape", [(1, 64), (7, 96), (3, 5, 128)])
def test_cpu_matches_float64_reference(shape, group_size):
    x = torch.randn(*shape)
    w = torch.randn(24, shape[-1]) * 0.05
    wq, sc = sbops.quantize_weight(w, group_size=group_size)
    bias = torch.randn(24)
    y = sbops.spike_linear(x, wq, sc, 3.0, bias, group_size)
    assert y.shape == (*shape[:-1], 24) and y.dtype == x.dtype
    r = ref_spike_linear(x.reshape(-1, shape[-1]), wq, sc, 3.0, bias, group_size).view(*shape[:-1], 24)
    assert rel(y, r) < 1e-5


def test_counts_beyond_int8_are_not_saturated():
    x = torch.randn(4, 64)
    x[1, 5] = 400.0  # count ~ 1500: far past int8
    wq, sc = sbops.quantize_weight(torch.randn(16, 64) * 0.05)
    y = sbops.spike_linear(x, wq, sc, 3.0)
    r = ref_spike_linear(x, wq, sc, 3.0, None, None)
    assert rel(y, r) < 1e-5
    counts, _ = sbops.spike_encode(x, 3.0, torch.int32)
    assert counts.abs().max() > 127  # the case really exercises wide counts


def test_equals_spike_quant_then_dequantised_matmul():
    x = torch.randn(9, 128)
    wq, sc = sbops.quantize_weight(torch.randn(32, 128) * 0.05, group_size=64)
    w = (wq.double().view(32, 2, 64) * sc.double()[..., None]).view(32, 128)
    y = sbops.spike_linear(x, wq, sc, 2.0, None, 64)
    assert rel(y, sbops.spike_quant(x, 2.0).double() @ w.T) < 1e-6


def test_straight_through_gradient():
    x = torch.randn(5, 64, dtype=torch.float64, requires_grad=True)
    wq, sc = sbops.quantize_weight(torch.randn(8, 64) * 0.1)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    y = sbops.spike_linear(x, wq, sc, 3.0, bias)
    g = torch.randn_like(y)
    y.backward(g)
    w = wq.double() * sc.double()[:, None]
    torch.testing.assert_close(x.grad, g @ w)
    torch.testing.assert_close(bias.grad, g.sum(0))


def test_views_equal_the_contiguous_call():
    big = torch.randn(6, 3 * 64)
    x = big[:, 64:128]  # a slice of a fused projection: strided rows
    wq, sc = sbops.quantize_weight(torch.randn(16, 64) * 0.05, group_size=32)
    assert not x.is_contiguous()
    torch.testing.assert_close(sbops.spike_linear(x, wq, sc, 3.0, None, 32),
                               sbops.spike_linear(x.contiguous(), wq, sc, 3.0, None, 32), rtol=0, atol=0)


def test_errors_name_the_argument():
    x = torch.randn(3, 64)
    wq, sc = sbops.quantize_weight(torch.randn(8, 64))
    with pytest.raises(TypeError, match="weight_q"):
        sbops.spike_linear(x, wq.float(), sc)
    with pytest.raises(ValueError, match="weight_q"):
        sbops.spike_linear(torch.randn(3, 32), wq, sc)
    with pytest.raises(ValueError, match="weight_scale"):
        sbops.spike_linear(x, wq, sc[:4])
    with pytest.raises(ValueError, match="group_size"):
        sbops.spike_linear(x, wq, sc, group_size=48)
    with pytest.raises(ValueError, match="k must"):
        sbops.spike_linear(x, wq, sc, k=0.0)


def test_quantize_weight_round_trips_within_half_a_step():
    w = torch.randn(16, 256)
    for gs in (None, 128):
        wq, sc = sbops.quantize_weight(w, group_size=gs)
        assert wq.dtype == torch.int8 and wq.abs().max() <= 127
        deq = wq.float() * (sc[:, None] if gs is None else sc.repeat_interleave(gs, 1))
        step = sc[:, None] if gs is None else sc.repeat_interleave(gs, 1)
        assert ((deq - w).abs() <= step / 2 + 1e-6).all()


def test_opcheck():
    x = torch.randn(5, 64, requires_grad=True)
    wq, sc = sbops.quantize_weight(torch.randn(8, 64), group_size=32)
    torch.library.opcheck(torch.ops.sbops.spike_linear, (x, wq, sc, 3.0, torch.randn(8), 32))


@requires_cuda
@pytest.mark.parametrize("group_size", [None, 128])
@pytest.mark.parametrize("M,N,K", [(1, 256, 512), (37, 200, 384), (300, 512, 1024)])
def test_gpu_matches_float64_reference(M, N, K, group_size):
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    x[M // 2, 3] = 300.0   # a wide count: the extra-digit pass
    wq, sc = sbops.quantize_weight(torch.randn(N, K, device="cuda") * 0.02, group_size=group_size)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    y = sbops.spike_linear(x, wq, sc, 3.0, bias, group_size)
    assert y.dtype == torch.bfloat16 and y.is_contiguous()
    r = ref_spike_linear(x.cpu(), wq.cpu(), sc.cpu(), 3.0, bias.cpu(), group_size)
    assert rel(y.cpu(), r) < 1e-2


@requires_cuda
def test_gpu_views_and_gradient():
    big = torch.randn(33, 3 * 256, device="cuda", dtype=torch.bfloat16)
    x = big[:, 256:512].detach().requires_grad_(False)
    wq, sc = sbops.quantize_weight(torch.randn(64, 256, device="cuda") * 0.05, group_size=128)
    torch.testing.assert_close(sbops.spike_linear(x, wq, sc, 3.0, None, 128),
                               sbops.spike_linear(x.contiguous(), wq, sc, 3.0, None, 128), rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    sbops.spike_linear(xg, wq, sc, 3.0, None, 128).float().sum().backward()
    w = (wq.float().view(64, 2, 128) * sc[..., None]).view(64, 256)
    torch.testing.assert_close(xg.grad.float(), w.sum(0).expand(33, 256), rtol=2e-2, atol=2e-2)
