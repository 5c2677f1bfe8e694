"""The fused gate/up product left unscaled (spike_linear.scaled_mm_raw: the fp8 GEMM with unit tensor-wise scales,
the fix-up adding raw products) and silu * up applying vth and the channel scales as it reads it
(fused_rope_swiglu.silu_mul_scaled), as sbops.nn.SwiGLU runs them at a CUDA prefill with e4m3 weights.

Runs the Triton kernels under the interpreter on CPU tensors when there is no GPU, on the GPU otherwise."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/triton_kernels.py)

import sbops
from conftest import requires_triton
from test_spike_linear import _dev, _null, _swiglu_rows, _triton, _worst_row, ref_spike_linear, rel

FP8 = torch.float8_e4m3fn
pytestmark = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                                reason="the scaled_mm path's kernels write e4m3 (sm_89 and newer)")


@requires_triton
@pytest.mark.parametrize("fix_kernel", ["tiles", "grouped"])
@pytest.mark.parametrize("K,N", [(128, 96), (256, 48)])   # one plane; two planes (K > N)
def test_scaled_mm_raw_times_the_scales_is_spike_linear(fix_kernel, K, N, monkeypatch):
    """vth * scale * y_raw equals the float64 reference, counts past 16 (and past 2048: three float16 terms in the
    fix-up) included; y_raw is the scaled path's output before its scales."""
    tk, sl = _triton()
    monkeypatch.setattr(sl._tuning, "FP8_FIX", fix_kernel)
    monkeypatch.setattr(sl, "FIX_CONFIG", (16, 16, 16))
    monkeypatch.setattr(sl, "FIX_GROUPED_CONFIG", (16, 16, 16))
    dev = _dev()
    M = 45
    x = _swiglu_rows(M, K).float()
    x[3, 7] = 300.0        # counts past 16 (and past 264 with two planes)
    x[11, 50] = -1e9       # vth clamps at 1e4: a count of 1e5
    x = x.bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    with tk.bounds_checked() if dev == "cpu" else _null():
        y_raw, vth = sl.scaled_mm_raw(x.to(dev), wq.to(dev), sc.to(dev), 3.0)
        y = sl.spike_linear_fwd(x.to(dev), wq.to(dev), sc.to(dev), 3.0, None, None, path="scaled_mm")
    assert y_raw.dtype == torch.bfloat16 and y_raw.shape == (M, N) and vth.shape == (M,)
    got = vth.cpu().double()[:, None] * sc.double()[None, :] * y_raw.cpu().double()
    r = ref_spike_linear(x, wq.float(), sc, 3.0, None, None)
    assert rel(got, r) < 5e-3 and _worst_row(got, r) < 1e-2
    assert rel(got, y.cpu()) < 5e-3


@requires_triton
def test_scaled_mm_raw_refuses_what_it_cannot_serve():
    _, sl = _triton()
    dev = _dev()
    wq, sc = (t.to(dev) for t in sbops.quantize_weight(torch.randn(32, 64) * 0.05, dtype=FP8))
    for x in (torch.randn(16, 64).bfloat16(), torch.randn(40, 64)):   # decode rows; float32 x
        with pytest.raises(ValueError, match="scaled_mm_raw takes"):
            sl.scaled_mm_raw(x.to(dev), wq, sc, 3.0)


@requires_triton
def test_silu_mul_scaled_applies_the_scales_in_float32():
    tk = _triton()[0]
    frs = tk.load("fused_rope_swiglu")
    dev = _dev()
    M, I = 5, 40
    y_raw = (torch.randn(M, 2 * I) * 30).bfloat16()
    vth = torch.rand(M) + 0.1
    sc = torch.rand(2 * I) * 0.01
    with tk.bounds_checked() if dev == "cpu" else _null():
        h = frs.silu_mul_scaled(y_raw.to(dev), vth.to(dev), sc.to(dev)).cpu()
    y = y_raw.double() * vth.double()[:, None] * sc.double()[None, :]
    want = torch.nn.functional.silu(y[:, :I]) * y[:, I:]
    assert h.dtype == torch.bfloat16 and rel(h, want) < 4e-3
    with pytest.raises(ValueError, match="silu_mul_scaled"):
        frs.silu_mul_scaled(y_raw.to(dev), vth.to(dev), sc[:-2].to(dev))


@requires_triton
def test_swiglu_prefill_takes_the_unscaled_product_and_matches_the_scaled_path(monkeypatch):
    """sbops.nn.SwiGLU with e4m3 gate/up at a prefill: gate_up_silu runs (the dispatcher's cuda backend picked,
    the Triton kernels under the interpreter here) and gives the unfused path's result to bf16 rounding."""
    tk, sl = _triton()
    from sbops.nn import SwiGLU
    from sbops.nn import common
    monkeypatch.setattr(sl, "FIX_GROUPED_CONFIG", (16, 16, 16))
    dev = _dev()
    if dev == "cpu":
        monkeypatch.setattr(common, "_FUSED_DEVICE_TYPES", ("cuda", "cpu"))
        monkeypatch.setattr(common, "_spike_linear_triton", lambda x: sl)
        monkeypatch.setattr(common, "_fused_mods", tuple(tk.load(n) for n in ("fused_norm", "fused_rope_swiglu",
                                                                              "fused_gla_act")))
    torch.manual_seed(0)
    m = SwiGLU(64, 96, spike_k=3.0, weight_quant="fp8").to(dev, torch.bfloat16).eval()
    x = torch.randn(2, 20, 64).bfloat16().to(dev)
    calls = []
    raw = sl.scaled_mm_raw
    monkeypatch.setattr(sl, "scaled_mm_raw", lambda *a: calls.append(1) or raw(*a))
    with torch.no_grad(), tk.bounds_checked() if dev == "cpu" else _null():
        got = m(x)
        assert calls == [1]
        h = common.gate_up_silu(m, m.gate_proj, m.up_proj, x)
        assert torch.equal(got, m.down_proj(h))
        monkeypatch.setattr(common, "FUSE_GATE_UP_SCALES", False)
        assert common.gate_up_silu(m, m.gate_proj, m.up_proj, x) is None
        m(x)
        want_h = common.silu_mul(*common.fused_linears(m, (m.gate_proj, m.up_proj), x))
    assert calls == [1, 1]
    # the down projection's spike coding turns an ulp of h at a rounding tie into a count of 1: compare h, each
    # path against float64 (both round the gate/up product once to bf16, at different points)
    assert h.shape == want_h.shape == (2, 20, 96)
    q, sc = (torch.cat(t) for t in zip(m.gate_proj.int8_weight(), m.up_proj.int8_weight()))
    gu = ref_spike_linear(x.cpu().reshape(-1, 64), q.cpu().float(), sc.cpu(), 3.0, None, None)
    ref = (torch.nn.functional.silu(gu[:, :96]) * gu[:, 96:]).view(2, 20, 96)
    e_raw, e_scaled = rel(h.cpu(), ref), rel(want_h.cpu(), ref)
    assert e_raw < 6e-3 and e_scaled < 6e-3 and e_raw < 1.5 * e_scaled, (e_raw, e_scaled)


@requires_triton
def test_silu_mul_scaled_reads_strided_scales_and_checks_devices():
    tk = _triton()[0]
    frs = tk.load("fused_rope_swiglu")
    dev = _dev()
    y_raw = (torch.randn(6, 32) * 30).bfloat16().to(dev)
    v2, s2 = torch.rand(12).to(dev) + 0.1, torch.rand(64).to(dev) * 0.01
    with tk.bounds_checked() if dev == "cpu" else _null():
        want = frs.silu_mul_scaled(y_raw, v2[::2].contiguous(), s2[::2].contiguous())
        got = frs.silu_mul_scaled(y_raw, v2[::2], s2[::2])
    assert torch.equal(got, want)
    if dev == "cuda":
        with pytest.raises(ValueError, match="on y_raw's device"):
            frs.silu_mul_scaled(y_raw, v2[::2].cpu(), s2[::2])


def test_the_unscaled_gate_up_path_follows_the_dispatcher():
    """gate_up_silu runs the Triton kernels only where sbops' dispatcher gives spike_linear to the built-in cuda
    backend: not for CPU tensors, not when a user's backend of higher priority takes the call."""
    from sbops._dispatch import Backend, OpCaps
    from sbops.nn import common
    assert common._spike_linear_triton(torch.randn(40, 64).bfloat16()) is None   # the cpu backend's call
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(40, 64, device=dev).bfloat16()
    if dev == "cuda":
        assert common._spike_linear_triton(x) is not None
    toy = Backend(name="toy_spike", device_types=(dev,), priority=1000,
                  ops={"spike_linear": OpCaps((torch.bfloat16,), features=frozenset({"fp8_weight"}), impl="python")},
                  kernels={"spike_linear": lambda *a: None})
    sbops.register_backend(toy)
    try:
        assert common._spike_linear_triton(x) is None
    finally:
        sbops._dispatch.unregister_backend("toy_spike")
