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


def _gate_up_rows(case, M, K):
    """bf16 x [M, K] for the fused fix-up: Gaussian rows, with the listed counts past the plane placed per case."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(M, K, generator=g)
    if case == "none":       # no count past 16 anywhere: every row block only runs silu * up
        x = x.clamp(-2.0, 2.0)
    elif case == "many":     # rows 16-31 list 12 chunks of 16 columns (> CB = 8: chunk by chunk per tile)
        x = x.clamp(-2.0, 2.0)
        for j in range(12):
            x[17 + j % 5, 16 * j + 3] = 40.0 * (-1) ** j
    elif case == "huge":     # vth clamps at 1e4: a count of 1e5 (three float16 terms), in the last, partial block
        x[40, 9] = -1e9
        x[5, 130] = 60.0
    elif case == "nan":      # a NaN count poisons its row, as in the unfused fix-up
        x[20, 33] = float("nan")
    return x.bfloat16()


@requires_triton
@pytest.mark.parametrize("case", ["gaussian", "none", "many", "huge", "nan", "strided"])
def test_silu_mul_scaled_mm_equals_the_unfused_fix_up_and_silu_mul(case, monkeypatch):
    """The fix-up fused into silu * up (spike_linear_swiglu) gives scaled_mm_raw's fix-up + silu_mul_scaled bit for
    bit, whatever the row blocks list (nothing, a batch, more than a batch, counts past float16's exact integers,
    NaN), on a strided x; and the float64 reference within bf16 rounding where the values are finite."""
    tk, sl = _triton()
    swiglu = tk.load("spike_linear_swiglu")
    frs = tk.load("fused_rope_swiglu")
    monkeypatch.setattr(sl, "FIX_GROUPED_CONFIG", (16, 16, 16))
    dev = _dev()
    M, K, I = 45, 256, 40
    x = _gate_up_rows("gaussian" if case == "strided" else case, M, K)
    if case == "strided":    # rows of a wider buffer: read in place at their row stride
        xs = torch.zeros(M, K + 24).bfloat16()
        xs[:, 8:8 + K] = x
        xd = xs.to(dev)[:, 8:8 + K]
        assert xd.stride(0) == K + 24
    else:
        xd = x.to(dev)
    wq, sc = sbops.quantize_weight(torch.randn(2 * I, K) * 0.05, dtype=FP8)
    wq, sc = wq.to(dev), sc.to(dev)
    with tk.bounds_checked() if dev == "cpu" else _null():
        h = swiglu.silu_mul_scaled_mm(xd, wq, sc, 3.0)
        y_raw, vth = sl.scaled_mm_raw(xd, wq, sc, 3.0)
        want = frs.silu_mul_scaled(y_raw, vth, sc)
    assert h.shape == (M, I) and h.dtype == torch.bfloat16
    assert torch.equal(h.isnan(), want.isnan()) and torch.equal(h.nan_to_num(), want.nan_to_num())
    if case == "nan":
        assert h[20].isnan().all() and not h[:20].isnan().any() and not h[21:].isnan().any()
        return
    gu = ref_spike_linear(x, wq.cpu().float(), sc.cpu(), 3.0, None, None)
    ref = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
    # h rounds the gate/up product to bf16 once, then silu * up: two roundings of ~2e-3 each on a row's largest values
    assert rel(h.cpu(), ref) < 1.2e-2 and _worst_row(h.cpu(), ref) < 2e-2


@requires_triton
def test_silu_mul_scaled_mm_refuses_what_it_cannot_serve():
    tk, _ = _triton()
    swiglu = tk.load("spike_linear_swiglu")
    dev = _dev()
    wq, sc = (t.to(dev) for t in sbops.quantize_weight(torch.randn(32, 64) * 0.05, dtype=FP8))
    x = torch.randn(40, 64).bfloat16().to(dev)
    with pytest.raises(ValueError, match="silu_mul_scaled_mm: takes"):
        swiglu.silu_mul_scaled_mm(x[:16], wq, sc, 3.0)          # decode rows
    with pytest.raises(ValueError, match="fused gate/up weight"):
        swiglu.silu_mul_scaled_mm(x, wq[:31], sc[:31], 3.0)    # an odd number of output rows
    with pytest.raises(ValueError, match=r"x must be \[M, K\]"):
        swiglu.silu_mul_scaled_mm(x[None], wq, sc, 3.0)


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
@pytest.mark.parametrize("fused_fix", [True, False])
def test_swiglu_prefill_takes_the_unscaled_product_and_matches_the_scaled_path(fused_fix, monkeypatch):
    """sbops.nn.SwiGLU with e4m3 gate/up at a prefill: gate_up_silu runs (the dispatcher's cuda backend picked,
    the Triton kernels under the interpreter here), its fix-up fused into silu * up or not (FUSE_GATE_UP_FIX),
    and gives the unfused path's result to bf16 rounding."""
    tk, sl = _triton()
    from sbops.nn import SwiGLU
    from sbops.nn import common
    monkeypatch.setattr(sl, "FIX_GROUPED_CONFIG", (16, 16, 16))
    monkeypatch.setattr(common, "FUSE_GATE_UP_FIX", fused_fix)
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
    mod, name = (tk.load("spike_linear_swiglu"), "silu_mul_scaled_mm") if fused_fix else (sl, "scaled_mm_raw")
    raw = getattr(mod, name)
    monkeypatch.setattr(mod, name, lambda *a: calls.append(1) or raw(*a))
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
