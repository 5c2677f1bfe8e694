"""swa_attn / swa_decode / swa_cache_write on the CPU reference backend vs the float64 reference."""
import pytest
import torch

import sbops
from reference import ref_swa_attn, ref_swa_decode, rel_err


def make(B, T, H, HKV, D, dtype=torch.float32, M=0):
    q = torch.randn(B, T, H, D, dtype=dtype)
    k = torch.randn(B, T, HKV, D, dtype=dtype)
    v = torch.randn(B, T, HKV, D, dtype=dtype)
    sk = torch.randn(M, HKV, D, dtype=dtype) if M else None
    sv = torch.randn(M, HKV, D, dtype=dtype) if M else None
    return q, k, v, sk, sv


@pytest.mark.parametrize("T", [1, 63, 300])
@pytest.mark.parametrize("window", [0, 1, 7, 1000, -1])
@pytest.mark.parametrize("H,HKV", [(4, 2), (3, 3)])
def test_forward_and_lse_match_float64_reference(T, window, H, HKV):
    q, k, v, _, _ = make(2, T, H, HKV, 16)
    o, lse = sbops.swa_attn(q, k, v, window, return_lse=True)
    ro, rlse = ref_swa_attn(q, k, v, window)
    assert o.shape == q.shape and lse.shape == (2, T, H) and lse.dtype == torch.float32
    assert rel_err(o, ro) < 1e-5 and rel_err(lse, rlse) < 1e-5


def test_sinks_and_varlen_forward():
    cu = torch.tensor([0, 7, 8, 40], dtype=torch.int64)
    q, k, v, sk, sv = make(1, 40, 4, 2, 8, M=3)
    o, lse = sbops.swa_attn(q, k, v, 5, scale=0.2, cu_seqlens=cu, sink_k=sk, sink_v=sv, return_lse=True)
    ro, rlse = ref_swa_attn(q, k, v, 5, scale=0.2, cu_seqlens=cu, sink_k=sk, sink_v=sv)
    assert rel_err(o, ro) < 1e-5 and rel_err(lse, rlse) < 1e-5


def test_varlen_never_crosses_sequences():
    cu = torch.tensor([0, 10, 30], dtype=torch.int32)
    q, k, v, _, _ = make(1, 30, 2, 1, 8)
    o = sbops.swa_attn(q, k, v, -1, cu_seqlens=cu)
    o2 = sbops.swa_attn(q[:, 10:], k[:, 10:], v[:, 10:], -1)
    assert rel_err(o[:, 10:], o2) < 1e-6


@pytest.mark.parametrize("window,M", [(3, 0), (-1, 2), (0, 4)])
def test_gradients_match_float64_reference(window, M):
    q, k, v, sk, sv = make(2, 29, 4, 2, 8, dtype=torch.float64, M=M)
    leaves = [t.requires_grad_() for t in (q, k, v, sk, sv) if t is not None]
    o, lse = sbops.swa_attn(q, k, v, window, sink_k=sk, sink_v=sv, return_lse=True)
    do, dl = torch.randn_like(o), torch.randn_like(lse)
    grads = torch.autograd.grad((o * do).sum() + (lse * dl).sum(), leaves)
    ro, rlse = ref_swa_attn(q, k, v, window, sink_k=sk, sink_v=sv)
    rgrads = torch.autograd.grad((ro * do).sum() + (rlse * dl.double()).sum(), leaves)
    for a, b in zip(grads, rgrads):
        assert rel_err(a, b) < 1e-5


def test_varlen_gradients_match_reference():
    cu = torch.tensor([0, 4, 19], dtype=torch.int32)
    q, k, v, sk, sv = make(1, 19, 2, 1, 8, dtype=torch.float64, M=2)
    leaves = [t.requires_grad_() for t in (q, k, v, sk, sv)]
    o = sbops.swa_attn(q, k, v, 3, cu_seqlens=cu, sink_k=sk, sink_v=sv)
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), leaves)
    ro, _ = ref_swa_attn(q, k, v, 3, cu_seqlens=cu, sink_k=sk, sink_v=sv)
    for a, b in zip(grads, torch.autograd.grad((ro * do).sum(), leaves)):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("window", [4, -1])
def test_decode_with_ring_buffer_matches_last_row_of_prefill(window):
    N, T, H, HKV, D = 3, 13, 4, 2, 8
    q, k, v, _, _ = make(N, T, H, HKV, D)
    C = window + 1 if window >= 0 else T
    kc = torch.zeros(5, C, HKV, D)
    vc = torch.zeros(5, C, HKV, D)
    slots = torch.tensor([3, 0, 1])
    full = sbops.swa_attn(q, k, v, window)
    for t in range(T):
        pos = torch.full((N,), t, dtype=torch.int64)
        sbops.swa_cache_write(k[:, t].contiguous(), v[:, t].contiguous(), kc, vc, pos, slots)
        o = sbops.swa_decode(q[:, t].contiguous(), kc, vc, pos + 1, window, slot_indices=slots)
        assert rel_err(o, full[:, t]) < 1e-5
    assert rel_err(o, ref_swa_decode(q[:, -1].contiguous(), kc, vc, torch.full((N,), T), window, slot_indices=slots)) < 1e-5
    assert (kc[[2, 4]] == 0).all()


def test_bfloat16_inputs():
    q, k, v, _, _ = make(1, 50, 4, 2, 16, dtype=torch.bfloat16)
    o = sbops.swa_attn(q, k, v, 8)
    assert o.dtype == torch.bfloat16 and rel_err(o, ref_swa_attn(q, k, v, 8)[0]) < 1e-2


# ------------------------------------------------------------------ swa_decode with sinks (meta tokens)
@pytest.mark.parametrize("window", [3, -1])
@pytest.mark.parametrize("M", [1, 4])
def test_decode_with_sinks_matches_float64_reference(window, M):
    N, H, HKV, D, C = 3, 4, 2, 8, 9
    q = torch.randn(N, H, D)
    kc, vc = torch.randn(4, C, HKV, D), torch.randn(4, C, HKV, D)
    sk, sv = torch.randn(M, HKV, D), torch.randn(M, HKV, D)
    seq_lens = torch.tensor([1, 6, 9]) if window < 0 else torch.tensor([1, 6, 20])  # 20 wraps the ring
    slots = torch.tensor([2, 0, 3])
    o = sbops.swa_decode(q, kc, vc, seq_lens, window, scale=0.3, slot_indices=slots, sink_k=sk, sink_v=sv)
    ref = ref_swa_decode(q, kc, vc, seq_lens, window, scale=0.3, slot_indices=slots, sink_k=sk, sink_v=sv)
    assert o.shape == (N, H, D) and rel_err(o, ref) < 1e-5
    # the sinks matter: without them the result differs
    assert rel_err(sbops.swa_decode(q, kc, vc, seq_lens, window, scale=0.3, slot_indices=slots), ref) > 1e-3


def test_decode_with_sinks_equals_last_row_of_prefill_with_sinks():
    T, H, HKV, D, window = 11, 4, 2, 8, 4
    q, k, v, sk, sv = make(1, T, H, HKV, D, M=2)
    full = sbops.swa_attn(q, k, v, window, sink_k=sk, sink_v=sv)
    kc, vc = torch.zeros(1, window + 1, HKV, D), torch.zeros(1, window + 1, HKV, D)
    for t in range(T):
        pos = torch.tensor([t])
        sbops.swa_cache_write(k[:, t].contiguous(), v[:, t].contiguous(), kc, vc, pos)
        o = sbops.swa_decode(q[:, t].contiguous(), kc, vc, pos + 1, window, sink_k=sk, sink_v=sv)
        assert rel_err(o, full[:, t]) < 1e-5


def test_decode_sinks_are_validated():
    q, kc = torch.randn(1, 4, 8), torch.zeros(1, 5, 2, 8)
    with pytest.raises(ValueError, match="sink_k and sink_v must be given together"):
        sbops.swa_decode(q, kc, kc, torch.tensor([3]), 4, sink_k=torch.randn(2, 2, 8))
    with pytest.raises(ValueError, match=r"sink_v must have shape \[2, 2, 8\]"):
        sbops.swa_decode(q, kc, kc, torch.tensor([3]), 4, sink_k=torch.randn(2, 2, 8), sink_v=torch.randn(3, 2, 8))
    with pytest.raises(TypeError, match="sink_k has dtype float64 but q has float32"):
        sbops.swa_decode(q, kc, kc, torch.tensor([3]), 4, sink_k=torch.randn(2, 2, 8).double(),
                         sink_v=torch.randn(2, 2, 8).double())
