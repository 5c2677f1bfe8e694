"""Bad data: by default the CPU frontend refuses it with a clear error; with the data checks off
(the GPU default: no host reads) the kernels stay memory-safe and give the documented result.

Documented results (checks off):
- linear_attn_decode, state_indices[i] outside [0, S): output row i is NaN, no state slot touched;
- swa_decode, slot outside [0, S) or seq_lens[i] < 1: output row i is NaN;
- swa_cache_write, slot outside [0, S) or positions[i] < 0: row i is not written;
- moe_permute, ids >= num_experts: dropped, like ids < 0;
- moe_unpermute, row_map outside [-1, R): dropped, like -1;
- expert_counts, moe_align_block_size: ids outside [0, E) ignored;
- linear_attn / swa_attn with bad cu_seqlens: offsets clamped into [0, T]; the result is
  unspecified but the call neither crashes nor reads out of bounds.
"""
import pytest
import torch

import sbops


@pytest.fixture
def unchecked():
    with sbops.data_checks(False):
        yield


def _nan_rows(o):
    return torch.isnan(o.reshape(o.shape[0], -1)).all(1)


# ------------------------------------------------------------------ default: the CPU frontend refuses
@pytest.mark.parametrize("case", ["decode_slot", "swa_slot", "swa_len", "write_pos", "permute_id", "row_map",
                                  "counts_id", "cu_seqlens"])
def test_cpu_default_refuses_bad_data_naming_the_argument(case):
    q, k = torch.randn(2, 4, 8), torch.randn(2, 2, 8)
    kc = torch.zeros(3, 5, 2, 8)
    calls = {
        "decode_slot": (IndexError, "state_indices", lambda: sbops.linear_attn_decode(
            q, k, k, None, torch.zeros(3, 2, 8, 8), torch.tensor([0, 3]))),
        "swa_slot": (IndexError, "slot_indices", lambda: sbops.swa_decode(
            q, kc, kc, torch.tensor([1, 2]), 4, slot_indices=torch.tensor([-1, 0]))),
        "swa_len": (ValueError, "seq_lens must be >= 1", lambda: sbops.swa_decode(q, kc, kc, torch.tensor([0, 2]), 4)),
        "write_pos": (ValueError, "positions must be >= 0", lambda: sbops.swa_cache_write(
            k, k, kc, kc, torch.tensor([0, -2]))),
        "permute_id": (ValueError, "expert id 4 but num_experts=4", lambda: sbops.moe_permute(
            torch.randn(2, 8), torch.tensor([[4], [0]], dtype=torch.int32), 4)),
        "row_map": (IndexError, r"row_map must lie in \[-1, 4\)", lambda: sbops.moe_unpermute(
            torch.randn(4, 8), torch.tensor([[4], [0]], dtype=torch.int32), torch.ones(2, 1))),
        "counts_id": (ValueError, "expert id 7", lambda: sbops.expert_counts(torch.tensor([[7]], dtype=torch.int32), 3)),
        "cu_seqlens": (ValueError, "cu_seqlens must start at 0", lambda: sbops.swa_attn(
            torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8), 2,
            cu_seqlens=torch.tensor([0, 4, 3, 6]))),
    }
    err, msg, call = calls[case]
    with pytest.raises(err, match=msg):
        call()


# ------------------------------------------------------------------ checks off: documented results
def test_decode_with_an_out_of_range_state_slot_gives_nan_and_touches_no_state(unchecked):
    N, H, HKV, K = 3, 4, 2, 8
    q, k, v = torch.randn(N, H, K), torch.randn(N, HKV, K), torch.randn(N, HKV, K)
    state = torch.randn(4, HKV, K, K)
    good = state.clone()
    o_ref = sbops.linear_attn_decode(q[:1], k[:1], v[:1], None, good, torch.tensor([2]))
    o = sbops.linear_attn_decode(q, k, v, None, state, torch.tensor([2, 4, -1]))
    assert _nan_rows(o).tolist() == [False, True, True]
    assert torch.equal(o[:1], o_ref)
    assert torch.equal(state, good)           # slot 2 updated as in the valid call, no other slot touched


def test_swa_decode_with_a_bad_slot_or_length_gives_nan_rows(unchecked):
    N, H, HKV, D = 4, 4, 2, 8
    q = torch.randn(N, H, D)
    kc, vc = torch.randn(3, 6, HKV, D), torch.randn(3, 6, HKV, D)
    seq_lens, slots = torch.tensor([5, 3, 0, -2]), torch.tensor([1, 3, 0, 2])
    o = sbops.swa_decode(q, kc, vc, seq_lens, 4, slot_indices=slots)
    assert _nan_rows(o).tolist() == [False, True, True, True]
    ref = sbops.swa_decode(q[:1], kc, vc, seq_lens[:1], 4, slot_indices=slots[:1])
    assert torch.equal(o[:1], ref)


def test_swa_decode_longer_than_the_cache_attends_what_the_ring_still_holds(unchecked):
    q, kc, vc = torch.randn(1, 2, 8), torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8)
    o = sbops.swa_decode(q, kc, vc, torch.tensor([50]), -1)   # full causal, 50 tokens, 4 cached
    # = softmax attention over the 4 rows the ring holds (float64 by hand; one KV head for both)
    p = torch.softmax(torch.einsum("hd,cd->hc", q[0].double(), kc[0, :, 0].double()) * 8 ** -0.5, -1)
    torch.testing.assert_close(o[0].double(), p @ vc[0, :, 0].double(), rtol=1e-5, atol=1e-6)


def test_cache_write_skips_rows_with_a_bad_slot_or_position(unchecked):
    N, HKV, D = 4, 2, 8
    k, v = torch.randn(N, HKV, D), torch.randn(N, HKV, D)
    kc, vc = torch.zeros(3, 5, HKV, D), torch.zeros(3, 5, HKV, D)
    sbops.swa_cache_write(k, v, kc, vc, torch.tensor([6, 2, -1, 3]), torch.tensor([1, 3, 0, -1]))
    want_k, want_v = torch.zeros_like(kc), torch.zeros_like(vc)
    want_k[1, 1], want_v[1, 1] = k[0], v[0]   # only row 0 is valid: position 6 -> row 6 % 5 of slot 1
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)


def test_moe_permute_drops_ids_beyond_the_expert_count(unchecked):
    x = torch.randn(5, 8)
    ids = torch.tensor([[0, 7], [2, 1], [4, 4], [-1, 3], [9, 0]], dtype=torch.int32)
    clean = torch.where(ids >= 4, torch.full_like(ids, -1), ids)
    for a, b in zip(sbops.moe_permute(x, ids, 4), sbops.moe_permute(x, clean, 4)):
        assert torch.equal(a, b)


def test_moe_unpermute_drops_row_map_entries_out_of_range(unchecked):
    y_perm, w = torch.randn(6, 8), torch.rand(3, 2)
    row_map = torch.tensor([[0, 6], [-5, 2], [100, 3]], dtype=torch.int32)
    clean = torch.where((row_map < -1) | (row_map >= 6), torch.full_like(row_map, -1), row_map)
    assert torch.equal(sbops.moe_unpermute(y_perm, row_map, w), sbops.moe_unpermute(y_perm, clean, w))


def test_counts_and_block_alignment_ignore_ids_outside_the_experts(unchecked):
    ids = torch.tensor([[0, 5], [2, 3], [-1, 9], [1, 1]], dtype=torch.int32)
    clean = torch.where(ids >= 3, torch.full_like(ids, -1), ids)
    assert torch.equal(sbops.expert_counts(ids, 3), sbops.expert_counts(clean, 3))
    for a, b in zip(sbops.moe_align_block_size(ids, 3, 2), sbops.moe_align_block_size(clean, 3, 2)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cu", [[0, 4, 3, 9], [0, 20, 9], [-3, 4, 9], [0, 4, 7], [5, 2, -1]])
def test_bad_cu_seqlens_never_crash_or_read_out_of_bounds(unchecked, cu):
    T, H, HKV, D = 9, 4, 2, 8
    q, k, v = torch.randn(1, T, H, D), torch.randn(1, T, HKV, D) / 4, torch.randn(1, T, HKV, D)
    cu = torch.tensor(cu, dtype=torch.int32)
    o, h = sbops.linear_attn(q, k, v, None, output_final_state=True, cu_seqlens=cu)
    assert o.shape == q.shape and h.shape == (len(cu) - 1, HKV, D, D)
    assert not torch.isinf(o).any() and not torch.isinf(h).any()
    o = sbops.swa_attn(q, k, v, 3, cu_seqlens=cu)
    assert o.shape == q.shape and not torch.isinf(o).any()
