"""Spike coding ops on the CPU backend vs the references, and SpikingBrain's sparsity facts."""
import pytest
import torch

import sbops
from reference import (ref_spike_collapse, ref_spike_encode, ref_spike_expand, ref_spike_quant,
                       ref_spike_vth, rel_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int16, torch.int32])
def test_encode_matches_reference(dtype, out_dtype):
    x = (torch.randn(7, 33) * torch.rand(7, 1) * 10).to(dtype)
    counts, vth = sbops.spike_encode(x, k=3.0, out_dtype=out_dtype)
    rc, rv = ref_spike_encode(x, 3.0, out_dtype)
    assert counts.dtype == out_dtype and vth.dtype == torch.float32 and vth.shape == (7, 1)
    assert rel_err(vth, rv) < 1e-6
    assert (counts.long() - rc.long()).abs().max() <= (0 if dtype != torch.float64 else 1)


def test_encode_rounds_half_to_even_and_saturates():
    # mean |x| = 1 with k = 1 -> vth = 1 exactly; x / vth lands on halves (round half away from
    # zero would give 1, 2, 3, -1, -3, 1)
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 0.5, 0.0, 0.0]])
    counts, vth = sbops.spike_encode(x, k=1.0)
    assert vth.item() == 1.0
    assert counts.tolist() == [[0, 2, 2, 0, -2, 0, 0, 0]]
    big = torch.tensor([[1000.0] + [0.0] * 99, [-1000.0] + [0.0] * 99])   # x/vth = 100*k
    c8, _ = sbops.spike_encode(big, k=3.0, out_dtype=torch.int8)
    assert c8[0, 0] == 127 and c8[1, 0] == -128
    c16, _ = sbops.spike_encode(big, k=3.0, out_dtype=torch.int16)
    assert c16[0, 0] == 300


def test_vth_is_clamped():
    _, vth = sbops.spike_encode(torch.zeros(2, 8))
    assert (vth == 1e-5).all()
    _, vth = sbops.spike_encode(torch.full((1, 4), 1e9))
    assert (vth == 1e4).all()


def test_quant_value_and_straight_through_gradient():
    x = torch.randn(5, 64, dtype=torch.float64, requires_grad=True)
    y = sbops.spike_quant(x, k=2.0)
    assert rel_err(y, ref_spike_quant(x, 2.0)) < 1e-12
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    assert torch.equal(gx, g)
    xb = torch.randn(4, 128, dtype=torch.bfloat16)
    assert sbops.spike_quant(xb).dtype == torch.bfloat16


def test_quant_is_counts_times_vth():
    x = torch.randn(9, 40)
    c, vth = sbops.spike_encode(x, out_dtype=torch.int32)
    assert rel_err(sbops.spike_quant(x), c.float() * vth) < 1e-6


@pytest.mark.parametrize("mode", ["binary", "ternary", "bitwise"])
@pytest.mark.parametrize("cdtype", [torch.int8, torch.int16, torch.int32])
def test_expand_collapse_round_trip(mode, cdtype):
    c = torch.randint(-20, 21, (6, 11)).to(cdtype)
    if mode == "binary":
        c = c.abs()
    trains = sbops.spike_expand(c, mode)
    T_default = int(c.abs().max()) if mode != "bitwise" else 5
    assert trains.dtype == torch.int8 and trains.shape == (T_default, 6, 11)
    assert torch.equal(trains, ref_spike_expand(c, mode, T_default))
    assert torch.equal(sbops.spike_collapse(trains, mode).long(), c.long())
    longer = sbops.spike_expand(c, mode, T=T_default + 3)
    assert torch.equal(sbops.spike_collapse(longer, mode).long(), c.long())
    assert torch.equal(ref_spike_collapse(longer, mode), c.long())


def test_expand_errors_are_clear():
    with pytest.raises(ValueError, match="binary.*>= 0"):
        sbops.spike_expand(torch.tensor([1, -2], dtype=torch.int8), "binary")
    with pytest.raises(ValueError, match="T=2.*magnitude 5"):
        sbops.spike_expand(torch.tensor([5], dtype=torch.int8), "ternary", T=2)
    with pytest.raises(ValueError, match="T=2.*magnitude 4"):
        sbops.spike_expand(torch.tensor([4], dtype=torch.int8), "bitwise", T=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        sbops.spike_expand(torch.tensor([1], dtype=torch.int8), "unary")


def test_expand_op_itself_refuses_a_too_small_T():
    # the kernel checks too, so a direct torch.ops call can never wrap silently
    with pytest.raises(RuntimeError):
        torch.ops.sbops.spike_expand(torch.tensor([9], dtype=torch.int8), "bitwise", 3)


def test_stats_match_expanded_trains():
    c = torch.randint(-9, 10, (50, 30), dtype=torch.int8)
    for mode in ("ternary", "bitwise"):
        st = sbops.spike_stats(c, mode)
        tr = sbops.spike_expand(c, mode)
        assert st["T"] == tr.shape[0]
        assert abs(st["sparsity"] - float((tr == 0).double().mean())) < 1e-12
        assert abs(st["spikes_per_neuron"] - float((tr != 0).sum()) / c.numel()) < 1e-12
        assert abs(st["silent_fraction"] - float((c == 0).double().mean())) < 1e-12
        assert st["histogram"] == torch.bincount(c.abs().long().flatten()).tolist()


def test_sparsity_grows_as_k_shrinks():
    # SpikingBrain: smaller k -> larger threshold -> fewer spikes (0.730 / 0.692 / 0.664 for k=2/3/4
    # on real activations).  On Gaussian data the order must hold too.
    x = torch.randn(256, 512)
    sp = [sbops.spike_stats(sbops.spike_encode(x, k=k)[0], "bitwise", T=6)["sparsity"] for k in (2, 3, 4)]
    assert sp[0] > sp[1] > sp[2]


def test_bitwise_collapse_serves_trains_longer_than_31_steps():
    c = torch.tensor([-2 ** 31, 2 ** 31 - 1, 5, 0], dtype=torch.int32)
    trains = sbops.spike_expand(c)
    assert trains.shape[0] == 32
    assert torch.equal(sbops.spike_collapse(trains), c)
    longer = sbops.spike_expand(c, T=40)               # eight leading zero steps
    assert torch.equal(sbops.spike_collapse(longer), c)


@pytest.mark.parametrize("mode", ["bitwise", "ternary"])
def test_collapse_refuses_a_count_outside_int32(mode):
    trains = torch.zeros(33, 2, dtype=torch.int32)
    if mode == "bitwise":
        trains[0, 1] = 1                                # 2^32
    else:
        trains[:, 1] = 2 ** 30                          # 33 * 2^30
    with pytest.raises(RuntimeError, match="does not fit int32"):
        sbops.spike_collapse(trains, mode)


@pytest.mark.parametrize("mode", ["bitwise", "ternary"])
def test_collapse_overflow_check_for_gpu_tensors_agrees_with_the_cpu_kernel(mode):
    from sbops.ops.spike import _collapse_overflows   # the check GPU calls run under data checks
    g = torch.Generator().manual_seed(0)
    seen = set()
    for T in (1, 31, 32, 33, 40):
        for scale in (1, 2 ** 20, 2 ** 31 - 1):
            for zero_lead in (0, T - 2):                # leading zero steps keep long trains in range
                trains = (torch.randint(-1, 2, (T, 16), generator=g) * scale).to(torch.int32)
                trains[:zero_lead] = 0
                try:
                    sbops.spike_collapse(trains, mode)
                    cpu_overflows = False
                except RuntimeError:
                    cpu_overflows = True
                assert _collapse_overflows(trains, mode) == cpu_overflows, (T, scale, zero_lead)
                seen.add(cpu_overflows)
    assert seen == {False, True}
    for vals in ([[2 ** 40], [-2 ** 33 + 5]], [[2 ** 62]] * 4, [[2 ** 40], [-2 ** 40 + 7]]):   # int64 trains
        assert _collapse_overflows(torch.tensor(vals, dtype=torch.int64), mode)
