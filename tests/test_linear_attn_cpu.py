"""linear_attn / linear_attn_decode on the CPU reference backend vs the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import sbops
from reference import ref_linear_attn, ref_linear_attn_decode, rel_err


def make(B, T, H, HKV, K, V, gate, dtype=torch.float32, strong=False):
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = torch.randn(B, T, HKV, K, dtype=dtype) / K ** 0.5
    v = torch.randn(B, T, HKV, V, dtype=dtype)
    g = None
    if gate == "head":
        g = F.logsigmoid(torch.randn(B, T, HKV)).to(dtype)
    elif gate == "key":
        g = F.logsigmoid(torch.randn(B, T, HKV, K)).to(dtype) / 4
    if strong and g is not None:
        g = torch.full_like(g, -20.0) * torch.rand_like(g)
    return q, k, v, g


@pytest.mark.parametrize("T", [1, 63, 300])
@pytest.mark.parametrize("gate", [None, "head", "key"])
@pytest.mark.parametrize("H,HKV", [(4, 2), (2, 2)])
def test_forward_matches_float64_reference(T, gate, H, HKV):
    q, k, v, g = make(2, T, H, HKV, 16, 12, gate)
    h0 = torch.randn(2, HKV, 16, 12)
    o, ht = sbops.linear_attn(q, k, v, g, initial_state=h0, output_final_state=True)
    ro, rht = ref_linear_attn(q, k, v, g, initial_state=h0)
    assert o.dtype == q.dtype and o.shape == (2, T, H, 12)
    assert rel_err(o, ro) < 1e-5 and rel_err(ht, rht) < 1e-5


def test_final_state_is_none_unless_requested():
    q, k, v, g = make(1, 5, 2, 1, 8, 8, "key")
    assert sbops.linear_attn(q, k, v, g)[1] is None


def test_strong_decay_stays_finite_and_exact():
    q, k, v, g = make(1, 200, 2, 1, 8, 8, "key", strong=True)
    o, _ = sbops.linear_attn(q, k, v, g)
    assert torch.isfinite(o).all()
    assert rel_err(o, ref_linear_attn(q, k, v, g)[0]) < 1e-5


def test_varlen_equals_separate_sequences():
    lens = [5, 1, 17]
    cu = torch.tensor([0, 5, 6, 23], dtype=torch.int32)
    q, k, v, g = make(1, 23, 4, 2, 8, 8, "key")
    h0 = torch.randn(3, 2, 8, 8)
    o, ht = sbops.linear_attn(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    ro, rht = ref_linear_attn(q, k, v, g, initial_state=h0, cu_seqlens=cu)
    assert rel_err(o, ro) < 1e-5 and rel_err(ht, rht) < 1e-5
    s = 0
    for i, L in enumerate(lens):  # each sequence alone
        oi, hi = sbops.linear_attn(q[:, s:s + L], k[:, s:s + L], v[:, s:s + L], g[:, s:s + L],
                                   initial_state=h0[i:i + 1], output_final_state=True)
        assert rel_err(o[:, s:s + L], oi) < 1e-6 and rel_err(ht[i], hi[0]) < 1e-6
        s += L


@pytest.mark.parametrize("gate", [None, "head", "key"])
def test_gradients_match_float64_reference(gate):
    q, k, v, g = make(2, 37, 4, 2, 8, 6, gate, dtype=torch.float64)
    h0 = torch.randn(2, 2, 8, 6, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (q, k, v, g, h0) if t is not None]
    o, ht = sbops.linear_attn(q, k, v, g, initial_state=h0, output_final_state=True)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    ro, rht = ref_linear_attn(q, k, v, g, initial_state=h0)
    rgrads = torch.autograd.grad((ro * do).sum() + (rht * dht.double()).sum(), leaves)
    for a, b in zip(grads, rgrads):
        assert rel_err(a, b) < 1e-5


def test_gradcheck_float64_small():
    q, k, v, g = make(1, 6, 2, 1, 3, 2, "key", dtype=torch.float64)
    h0 = torch.randn(1, 1, 3, 2)
    args = [t.requires_grad_() for t in (q, k, v, g)]
    assert torch.autograd.gradcheck(lambda q, k, v, g: sbops.linear_attn(q, k, v, g)[0], args)


def test_bfloat16_inputs_computed_in_float32():
    q, k, v, g = make(1, 40, 4, 2, 16, 16, "key", dtype=torch.bfloat16)
    o, _ = sbops.linear_attn(q, k, v, g)
    assert o.dtype == torch.bfloat16
    # one bf16 rounding of the output is ~1.6e-3; a state kept in bf16 would be ~5e-3
    assert rel_err(o, ref_linear_attn(q, k, v, g)[0]) < 2.5e-3


@pytest.mark.parametrize("gate", [None, "head", "key"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_decode_step_by_step_matches_prefill(gate, state_dtype):
    B, T, H, HKV, K, V = 3, 9, 4, 2, 8, 8
    q, k, v, g = make(B, T, H, HKV, K, V, gate)
    o_ref, h_ref = sbops.linear_attn(q, k, v, g, output_final_state=True)
    # a cache of 5 slots, sequences in slots 4, 0, 2
    state = torch.zeros(5, HKV, K, V, dtype=state_dtype)
    idx = torch.tensor([4, 0, 2])
    for t in range(T):
        step = [None if x is None else x[:, t].contiguous() for x in (q, k, v, g)]
        o_t = sbops.linear_attn_decode(*step, state, idx)
        tol = 1e-5 if state_dtype == torch.float32 else 2e-2
        assert rel_err(o_t, o_ref[:, t]) < tol
    assert rel_err(state[idx], h_ref) < (1e-5 if state_dtype == torch.float32 else 1e-2)
    assert (state[[1, 3]] == 0).all()  # other slots untouched


def test_decode_matches_decode_reference():
    N, H, HKV, K, V = 4, 4, 1, 8, 4
    q, k, v = torch.randn(N, H, K), torch.randn(N, HKV, K), torch.randn(N, HKV, V)
    g = F.logsigmoid(torch.randn(N, HKV))
    state = torch.randn(N, HKV, K, V)
    ro, rs = ref_linear_attn_decode(q, k, v, g, state.clone(), scale=0.3)
    o = sbops.linear_attn_decode(q, k, v, g, state, scale=0.3)   # updates state in place
    assert rel_err(o, ro) < 1e-5 and rel_err(state, rs) < 1e-5
