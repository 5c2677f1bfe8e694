"""spike_linear's "scaled_mm" prefill path (e4m3 weights per channel, bf16 x): the encode of clamped
counts, the flag lists and the sparse fix-up, against spike_encode and the float64 reference.

Runs the Triton kernels under the interpreter on CPU tensors (torch's CPU _scaled_mm) when there is no
GPU, on the GPU otherwise."""
import importlib.util
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


@pytest.fixture(params=["tiles", "grouped"])
def fix_kernel(request, monkeypatch):
    """The tests of the fix-up run with both of its kernels (spike_linear_tuning.FP8_FIX)."""
    if importlib.util.find_spec("triton") is not None:
        tk, sl = _triton()
        monkeypatch.setattr(sl._tuning, "FP8_FIX", request.param)
    return request.param


def _run(sl, tk, x, wq, sc, k, bias=None, config=None):
    dev = _dev()
    with tk.bounds_checked() if dev == "cpu" else _null():
        return sl.spike_linear_fwd(x.to(dev), wq.to(dev), sc.to(dev), k, None if bias is None else bias.to(dev),
                                   None, config=config, path="scaled_mm").cpu()


@requires_triton
@pytest.mark.parametrize("M,K,BM,FC", [(37, 256, 16, 16), (5, 4352, 16, 64), (70, 512, 64, 16)])
def test_encode_lo_is_spike_encode_clamped_and_flags_every_cut_count(M, K, BM, FC):
    """s holds exactly clamp(count, -16, 16) as e4m3, the count being round(x / vth) by true division (the
    reciprocal-and-fma quotient is exact), vth is spike_encode's (to float32 summation), and a chunk of
    FC columns of a row block is flagged iff one of its counts is past 16 (one- and two-pass encodes)."""
    tk, sl = _triton()
    dev = _dev()
    x = torch.randn(M, K)
    x[::3, 7] *= 30
    x[1, K - 1] = -1e4
    x = x.bfloat16()
    with tk.bounds_checked() if dev == "cpu" else _null():
        s, hi, vth, flags = sl.encode_lo(x.to(dev), 3.0, BM, FC)
    v = sbops.spike_encode(x.float(), 3.0, torch.int32)[1].view(-1)
    vth = vth.cpu()
    torch.testing.assert_close(vth, v, rtol=1e-6, atol=0)   # float32 sums (spike_encode's is in double)
    c = torch.round(x.float() / vth[:, None])               # the counts of that vth, by true division
    assert torch.equal(s.cpu().view(FP8).float(), c.clamp(-16, 16).float())
    # byte for byte: a count of -0 (a small negative x) is +0's byte, as the integer encoding wrote it
    assert torch.equal(s.cpu(), (c.clamp(-16, 16) + 0.0).to(FP8).view(torch.int8)) and (c == 0).any()
    cut = (c.abs() > 16)
    want = torch.zeros(flags.shape, dtype=torch.bool)
    for i in range(M):
        want[i // BM] |= cut[i].view(-1, FC).any(1)
    assert hi is None and cut.any() and torch.equal(flags.cpu() != 0, want)


@requires_triton
def test_scaled_mm_config_is_checked():
    _, sl = _triton()
    x = torch.randn(40, 64).bfloat16().to(_dev())
    wq, sc = (t.to(_dev()) for t in sbops.quantize_weight(torch.randn(32, 64) * 0.05, dtype=FP8))
    for bad in ((16, 32, 16, 3), (16, 24), (16, 32, 8), (128, 128, 128, 8, 8, 4), (16,), (16.0, 32)):
        with pytest.raises(ValueError, match="scaled_mm config is"):
            sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, config=bad, path="scaled_mm")


@requires_triton
def test_two_planes_hold_swiglu_counts_and_flag_only_what_is_past_them():
    """PLANES = 2: lo + hi is the count exactly up to |c| = 264 (a SwiGLU product's counts at k = 3, ~2.6%
    of them past 16, all fit), and only chunks with a count past that are flagged."""
    tk, sl = _triton()
    dev = _dev()
    x = _swiglu_rows(20, 512)
    x[17, 300] = 1e30                      # vth clamps at 1e4: a count of 1e26, past both planes
    with tk.bounds_checked() if dev == "cpu" else _null():
        s, hi, vth, flags = sl.encode_lo(x.to(dev), 3.0, 16, 16, planes=2)
    c = torch.round(x.float() / vth.cpu()[:, None])
    got = s.cpu().view(FP8).float() + hi.cpu().float()
    keep = torch.arange(20) != 17
    assert torch.equal(s.cpu()[keep], (got[keep] - hi.cpu().float()[keep] + 0.0).to(FP8).view(torch.int8))
    assert (c[keep].abs() > 16).float().mean() > 0.01 and torch.equal(got[keep], c[keep])
    want = torch.zeros(flags.shape, dtype=torch.bool)
    want[1, 300 // 16] = True
    assert torch.equal(flags.cpu() != 0, want)


@requires_triton
@pytest.mark.parametrize("planes", [1, 2])
@pytest.mark.parametrize("k", [3.0, 40.0])
def test_dense_counts_past_16_everywhere_are_exact(k, planes, fix_kernel):
    """k = 40: almost every count is past 16 (every chunk flagged, the fix-up a dense GEMM); counts past
    2048 need three float16 terms of r.  The result stays the reference's."""
    tk, sl = _triton()
    M, N, K = 33, 48, 128
    x = torch.randn(M, K)
    x[3, 11] = 1e7              # a count of about 5000 at k = 40: three float16 terms
    x[4, :] *= torch.linspace(0.01, 50, K)
    x = x.bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    bias = torch.randn(N).bfloat16()
    c = sbops.spike_encode(x.float(), k, torch.int32)[0]
    assert (c.abs() > 16).float().mean() > (0.5 if k > 10 else 1e-4)
    y = _run(sl, tk, x, wq, sc, k, bias, config=(16, 16, 16, planes))
    r = ref_spike_linear(x, wq.float(), sc, k, bias, None)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert rel(y, r) < 5e-3 and _worst_row(y, r) < 1e-2


@requires_triton
@pytest.mark.parametrize("planes", [1, 2])
def test_nan_input_makes_only_its_row_nan(planes, fix_kernel):
    tk, sl = _triton()
    M, N, K = 20, 32, 64
    x = torch.randn(M, K).bfloat16()
    x[6, 9] = float("nan")
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    y = _run(sl, tk, x, wq, sc, 3.0, config=(16, 16, 16, planes))
    assert torch.isnan(y[6]).all()
    keep = torch.arange(M) != 6
    assert torch.isfinite(y[keep]).all()
    assert _worst_row(y[keep], ref_spike_linear(x[keep], wq.float(), sc, 3.0, None, None)) < 1e-2


@requires_triton
@pytest.mark.parametrize("FC,K", [(16, 192), (64, 208)])
def test_outlier_channels_and_ragged_tiles(FC, K, fix_kernel):
    """LLM-like outlier channels (every row cut in the same chunks) on one plane, M, N and (FC = 64) K not
    multiples of the fix-up tiles: only flagged rows are rewritten, every row equals the reference."""
    tk, sl = _triton()
    M, N = 45, 80
    x = torch.randn(M, K)
    x[:, 40:44] *= 25
    x[7, K - 3] = 50.0                     # a count past 16 in the last, partial chunk (K % 64 = 16)
    x = x.bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    with tk.bounds_checked() if _dev() == "cpu" else _null():
        flags = sl.encode_lo(x.to(_dev()), 3.0, 16, FC)[3].cpu()
    assert flags[:, 40 // FC].all() and flags[0, (K - 3) // FC]   # the fix-up has work in every row block
    y = _run(sl, tk, x, wq, sc, 3.0, config=(16, 32, FC, 1))
    r = ref_spike_linear(x, wq.float(), sc, 3.0, None, None)
    assert _worst_row(y, r) < 1e-2


@requires_triton
def test_grouped_fix_up_batches_and_tile_groups_give_the_same_rows(monkeypatch):
    """The grouped fix-up: a row block with more flagged chunks than one of its batches holds (12 chunks of 16 columns,
    batches of 128 columns), one row whose cut count needs three float16 terms, and N over several tiles:
    one program per tile and one program for every tile of a row block give the same bits, and the
    reference's rows."""
    tk, sl = _triton()
    monkeypatch.setattr(sl._tuning, "FP8_FIX", "grouped")
    M, N, K = 40, 96, 320
    x = torch.randn(M, K)
    x[:, ::26] *= 40                        # counts past 16 in 13 chunks of every row block
    x[5, 3] = 1e6                           # a count past 2048 after the clamp: three terms
    x = x.bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    with tk.bounds_checked() if _dev() == "cpu" else _null():
        flags = sl.encode_lo(x.to(_dev()), 3.0, 16, 16)[3].cpu()
    assert (flags.sum(1) > sl.FIX_BATCH_COLS // 16).all()
    y_tiles = _run(sl, tk, x, wq, sc, 3.0, config=(16, 32, 16, 1))        # a program per (row block, tile)
    monkeypatch.setattr(sl, "_sms", lambda dev: 1)
    monkeypatch.setattr(sl, "FIX_PROGRAMS_PER_SM", 1)
    y_group = _run(sl, tk, x, wq, sc, 3.0, config=(16, 32, 16, 1))        # a program per row block
    assert torch.equal(y_tiles, y_group)
    r = ref_spike_linear(x, wq.float(), sc, 3.0, None, None)
    assert _worst_row(y_tiles, r) < 1e-2


@requires_triton
def test_grouped_fix_up_agrees_with_the_tiles_kernel_over_many_batches(monkeypatch):
    """Batches of one chunk (FIX_BATCH_COLS = FC), so a row block lists more chunks than a batch holds: the grouped
    kernel then takes its tiles as the "tiles" kernel does and y is read, added to and rounded once per tile (a
    read-add-round per batch drifted 3.6% of a row's largest |y| here under the interpreter's truncating bf16
    store): the same bits as the "tiles" kernel, and the float64 reference's rows."""
    tk, sl = _triton()
    M, N, K = 33, 80, 288
    x = torch.randn(M, K)
    x[:, ::20] *= 50                        # counts past 16 in most chunks of every row block
    x = x.bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(N, K) * 0.05, dtype=FP8)
    monkeypatch.setattr(sl._tuning, "FP8_FIX", "tiles")
    y_tiles = _run(sl, tk, x, wq, sc, 3.0, config=(16, 32, 16, 1))
    monkeypatch.setattr(sl._tuning, "FP8_FIX", "grouped")
    monkeypatch.setattr(sl, "FIX_BATCH_COLS", 16)
    y_group = _run(sl, tk, x, wq, sc, 3.0, config=(16, 32, 16, 1))
    assert torch.equal(y_group, y_tiles)
    r = ref_spike_linear(x, wq.float(), sc, 3.0, None, None)
    assert _worst_row(y_group, r) < 1e-2


@requires_triton
def test_grouped_fix_up_fits_its_launch_to_the_devices_shared_memory(monkeypatch):
    """A config the default stages and batch would not fit gets fewer stages, then smaller batches; one that cannot
    fit even then is refused before any work, naming the config and both sizes."""
    tk, sl = _triton()
    dev = torch.device(_dev())
    monkeypatch.setattr(sl, "_smem_per_block", lambda d: 232448)
    assert sl._grouped_fix_launch(64, 128, 16, dev) == (sl.FIX_BATCH_COLS // 16, sl.FIX_STAGES)
    cb, st = sl._grouped_fix_launch(64, 512, 16, dev)
    assert (cb, st) != (sl.FIX_BATCH_COLS // 16, sl.FIX_STAGES) and st * cb * 16 * 512 * 2 < 232448
    monkeypatch.setattr(sl, "_smem_per_block", lambda d: 65536)    # a 64 KiB part
    cb, st = sl._grouped_fix_launch(64, 128, 16, dev)
    assert st == 1 and cb < sl.FIX_BATCH_COLS // 16
    monkeypatch.setattr(sl._tuning, "FP8_FIX", "grouped")
    x = torch.randn(8, 64).bfloat16()
    wq, sc = sbops.quantize_weight(torch.randn(16, 64), dtype=FP8)
    with pytest.raises(ValueError, match=r"grouped fix-up config .*\(256, 512, 64\).*65536"):
        _run(sl, tk, x, wq, sc, 3.0, config=(256, 512, 64))


@requires_triton
@pytest.mark.parametrize("planes", [1, 2])
def test_encode_lo_gpu_rint_branch_gives_the_same_bytes(planes, monkeypatch):
    """The GPU branch of the encodes (HW: rint as one instruction, which keeps the sign of a zero) run under the
    interpreter with an emulated rint that keeps it too: the same bytes, vth and flags as the interpreter's branch
    (a -0 count must still be +0's byte).  On a GPU the real instruction runs in the tests above."""
    if _dev() != "cpu":
        pytest.skip("the interpreter's emulation; the GPU runs the real branch in the other tests")
    import types

    import triton_kernels
    tk, sl = _triton()
    from sbops._backends.cuda.triton import spike_linear_kernels as F   # where the GPU branch's libdevice lives

    x = _swiglu_rows(20, 512) if planes == 2 else torch.randn(37, 256)
    x[::3, 7] *= 30
    x[1, 9] = -1e-3                            # counts of -0
    x[5, 200] = 1e30                           # a count past both planes: flagged
    x = x.bfloat16()
    with tk.bounds_checked():
        want = sl.encode_lo(x, 3.0, 16, 16, planes=planes)
        monkeypatch.setattr(F, "libdevice", types.SimpleNamespace(rint=triton_kernels.rint_keeping_zero_sign()))
        monkeypatch.setattr(sl, "_interpreted", lambda kernel: False)
        got = sl.encode_lo(x, 3.0, 16, 16, planes=planes)
        # and the int8 / fp8 Triton GEMM's pre-pass (its counts through the same quotient), its GPU branch alike
        got8 = [sl.encode(x, 3.0, fp8, 64) for fp8 in (False, True)]
        monkeypatch.setattr(sl, "_interpreted", lambda kernel: True)
        want8 = [sl.encode(x, 3.0, fp8, 64) for fp8 in (False, True)]
    for a, b in zip(got, want):
        assert (a is None and b is None) or torch.equal(a.view(torch.int8) if a.dtype == FP8 else a,
                                                        b.view(torch.int8) if b.dtype == FP8 else b)
    assert (want[3] != 0).any()
    for g, w in zip(got8, want8):
        s8, big, vth, nd, flags = w
        wide = nd > 1
        assert torch.equal(g[0], s8) and torch.equal(g[2], vth) and torch.equal(g[3], nd) and wide.any()
        assert torch.equal(g[1][wide], big[wide]) and torch.equal(g[4][wide], flags[wide])
