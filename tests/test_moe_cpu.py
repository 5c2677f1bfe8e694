"""MoE routing ops on the CPU backend vs the float64 references."""
import pytest
import torch

import sbops
from reference import (ref_expert_counts, ref_moe_align_block_size, ref_moe_permute, ref_moe_unpermute,
                       ref_topk_gating, rel_err)


@pytest.mark.parametrize("E,k,groups", [(16, 1, None), (128, 8, (8, 4)), (7, 3, None), (64, 6, (8, 3))])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_gating_matches_reference(E, k, groups, scoring, renormalize):
    logits = torch.randn(37, E)
    bias = torch.randn(E) * 0.1 if scoring == "sigmoid" else None
    ng, tg = groups if groups else (None, None)
    w, ids = sbops.topk_gating(logits, k, scoring, renormalize, bias, ng, tg, scaling=2.5)
    rw, rids = ref_topk_gating(logits, k, scoring, renormalize, bias, ng, tg, 2.5)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids, rids)
    assert rel_err(w, rw) < 1e-6


def test_topk_ties_go_to_the_lower_index():
    logits = torch.zeros(3, 8)
    w, ids = sbops.topk_gating(logits, 3)
    assert ids.tolist() == [[0, 1, 2]] * 3
    assert torch.allclose(w, torch.full((3, 3), 1 / 3))


@pytest.mark.parametrize("scoring,renormalize", [("softmax", True), ("sigmoid", True), ("softmax", False)])
def test_topk_gating_gradient_matches_reference(scoring, renormalize):
    logits = torch.randn(21, 16, dtype=torch.float64, requires_grad=True)
    w, ids = sbops.topk_gating(logits, 4, scoring, renormalize, num_groups=4, topk_groups=2, scaling=1.5)
    gw = torch.randn_like(w)
    (g,) = torch.autograd.grad((w * gw).sum(), logits)
    rw, _ = ref_topk_gating(logits, 4, scoring, renormalize, None, 4, 2, 1.5)
    (rg,) = torch.autograd.grad((rw * gw.double()).sum(), logits)
    assert rel_err(g, rg) < 1e-5


def _ids_with_drops(T, k, E):
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    ids[torch.rand(T, k) < 0.2] = -1
    return ids


@pytest.mark.parametrize("T,k,E", [(1, 1, 4), (33, 2, 8), (100, 8, 16)])
def test_permute_matches_reference(T, k, E):
    x = torch.randn(T, 24)
    ids = _ids_with_drops(T, k, E)
    xp, off, rm = sbops.moe_permute(x, ids, E)
    rxp, roff, rrm = ref_moe_permute(x, ids, E)
    assert xp.shape == (T * k, 24) and off.dtype == torch.int64 and rm.dtype == torch.int32
    assert torch.equal(off, roff) and torch.equal(rm, rrm) and torch.equal(xp, rxp)


def test_permute_unpermute_round_trip_and_gradients():
    T, k, E, Hd = 40, 3, 6, 16
    x = torch.randn(T, Hd, dtype=torch.float64, requires_grad=True)
    ids = _ids_with_drops(T, k, E)
    w = torch.rand(T, k, dtype=torch.float64, requires_grad=True)
    xp, off, rm = sbops.moe_permute(x, ids, E)
    y = sbops.moe_unpermute(xp * 2.0, rm, w)
    ry = ref_moe_unpermute(ref_moe_permute(x, ids, E)[0] * 2.0, rm, w)
    assert rel_err(y, ry) < 1e-12
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * gy).sum(), (x, w))
    rgx, rgw = torch.autograd.grad((ry * gy).sum(), (x, w))
    assert rel_err(gx, rgx) < 1e-12 and rel_err(gw, rgw) < 1e-12
    assert (gw[rm < 0] == 0).all()


def test_unpermute_bfloat16_accumulates_in_float32():
    T, k, Hd = 64, 4, 32
    yp = torch.randn(T * k, Hd, dtype=torch.bfloat16)
    rm = torch.randperm(T * k).view(T, k).to(torch.int32)
    w = torch.rand(T, k)
    y = sbops.moe_unpermute(yp, rm, w)
    # one bf16 rounding of y is ~1.6e-3; summing the k products in bf16 would be ~3.4e-3
    assert y.dtype == torch.bfloat16 and rel_err(y, ref_moe_unpermute(yp, rm, w)) < 2.5e-3


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_align_block_size_matches_reference(block_size):
    ids = _ids_with_drops(29, 2, 5)
    got = sbops.moe_align_block_size(ids, 5, block_size)
    ref = ref_moe_align_block_size(ids, 5, block_size)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_expert_counts_matches_reference():
    ids = _ids_with_drops(77, 4, 9).to(torch.int64)
    assert torch.equal(sbops.expert_counts(ids, 9), ref_expert_counts(ids, 9))


def test_expert_ids_out_of_range_are_errors_on_cpu_by_default():
    # with the data checks off the kernels ignore such ids instead (tests/test_data_checks.py)
    with pytest.raises(ValueError, match="expert id 9 but num_experts=9"):
        sbops.moe_permute(torch.randn(2, 4), torch.tensor([[9], [0]], dtype=torch.int32), 9)
    with pytest.raises(ValueError, match="ids holds expert id 3 but num_experts=2"):
        sbops.moe_align_block_size(torch.tensor([[3]], dtype=torch.int32), 2, 4)
