"""Bad inputs give errors that name the argument and what was expected."""
import pytest
import torch

import sbops


def test_linear_attn_rejects_bad_inputs():
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple .* key/value heads \(4\)"):
        sbops.linear_attn(q, k, k)
    k = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeError, match="k has dtype float64 but q has float32"):
        sbops.linear_attn(q, k.double(), k)
    with pytest.raises(ValueError, match="g must have shape"):
        sbops.linear_attn(q, k, k, g=torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        sbops.linear_attn(q, k, k, initial_state=torch.zeros(2, 2, 8, 8))
    with pytest.raises(TypeError, match="initial_state must have dtype in \\(float32\\)"):
        sbops.linear_attn(q, k, k, initial_state=torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0.*end at T=4"):
        sbops.linear_attn(q, k, k, cu_seqlens=torch.tensor([0, 2, 3]))
    with pytest.raises(TypeError, match="q must have dtype in"):
        sbops.linear_attn(q.int(), k, k)


def test_decode_rejects_bad_slots():
    q, k = torch.randn(2, 4, 8), torch.randn(2, 2, 8)
    state = torch.zeros(3, 2, 8, 8)
    with pytest.raises(IndexError, match=r"state_indices must lie in \[0, 3\)"):
        sbops.linear_attn_decode(q, k, k, None, state, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="state must have dtype in"):
        sbops.linear_attn_decode(q, k, k, None, state.half())


def test_tensors_written_in_place_need_a_unit_last_stride():
    q, k = torch.randn(2, 4, 8), torch.randn(2, 2, 8)
    state = torch.zeros(3, 2, 8, 8).transpose(2, 3)          # last-dim stride 8
    with pytest.raises(ValueError, match=r"state is updated in place.*last dimension must be contiguous"):
        sbops.linear_attn_decode(q, k, k, None, state)
    kc = torch.zeros(2, 4, 2, 8)
    with pytest.raises(ValueError, match=r"v_cache is updated in place.*stride 1"):
        sbops.swa_cache_write(k, k, kc, torch.zeros(2, 4, 8, 2).transpose(2, 3), torch.tensor([0, 1]))
    # other strides are fine: a cache that is a slice of a bigger buffer along S
    big = torch.zeros(4, 4, 2, 8)
    sbops.swa_cache_write(k, k, big[::2], big[1::2], torch.tensor([0, 1]))
    assert torch.equal(big[0, 0], k[0]) and torch.equal(big[1, 0], k[0])


def test_swa_rejects_bad_inputs():
    q = torch.randn(1, 5, 4, 8)
    k = torch.randn(1, 5, 2, 8)
    with pytest.raises(ValueError, match="sink_k and sink_v must be given together"):
        sbops.swa_attn(q, k, k, 2, sink_k=torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"sink_k must have shape \[1, 2, 8\]"):
        sbops.swa_attn(q, k, k, 2, sink_k=torch.randn(1, 3, 8), sink_v=torch.randn(1, 3, 8))
    with pytest.raises(TypeError, match="window must be an int"):
        sbops.swa_attn(q, k, k, 2.5)
    kc = torch.zeros(2, 3, 2, 8)
    with pytest.raises(ValueError, match="C must be >= window \\+ 1"):
        sbops.swa_decode(torch.randn(1, 4, 8), kc, kc, torch.tensor([10]), 5)


def test_moe_and_spike_reject_bad_inputs():
    with pytest.raises(ValueError, match="k must be an int in \\[1, E=4\\]"):
        sbops.topk_gating(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match="num_groups must be a positive divisor of E=6"):
        sbops.topk_gating(torch.randn(3, 6), 1, num_groups=4, topk_groups=1)
    with pytest.raises(ValueError, match="scoring must be one of softmax, sigmoid"):
        sbops.topk_gating(torch.randn(3, 6), 1, scoring="relu")
    with pytest.raises(ValueError, match="ids must have shape \\[T=3, k\\]"):
        sbops.moe_permute(torch.randn(3, 4), torch.zeros(2, 1, dtype=torch.int32), 2)
    with pytest.raises(TypeError, match="out_dtype must be one of int8, int16, int32"):
        sbops.spike_encode(torch.randn(2, 4), out_dtype=torch.float16)
    with pytest.raises(ValueError, match="k must be a positive finite number"):
        sbops.spike_quant(torch.randn(2, 4), k=0)


# ------------------------------------------------------------------ data checks: CPU by default, switchable
def _bad_decode_call():
    q, k, v = torch.randn(2, 4, 16), torch.randn(2, 2, 16), torch.randn(2, 2, 16)
    return lambda: sbops.linear_attn_decode(q, k, v, None, torch.zeros(3, 2, 16, 16), torch.tensor([0, 5]))


def test_data_checks_run_by_default_on_cpu_and_name_the_argument():
    with pytest.raises(IndexError, match=r"state_indices must lie in \[0, 3\), got values in \[0, 5\]"):
        _bad_decode_call()()


def test_data_checks_off_leaves_bad_data_to_the_kernel_and_the_context_restores_them():
    with sbops.data_checks(False):
        try:
            _bad_decode_call()()      # the kernel's documented result (tests/test_data_checks.py)
        except RuntimeError:
            pass                      # or a kernel-side refusal: never the frontend's IndexError
    with pytest.raises(IndexError):   # the context ended: frontend checks again
        _bad_decode_call()()


class _GpuLike:
    """Stands in for a GPU tensor on a machine without one: checking_data reads only where a tensor lives."""
    device = torch.device("cuda")
    is_cpu = False


def test_default_mode_checks_cpu_tensors_only_and_env_and_override_switch_it(monkeypatch):
    from sbops import _validate as V
    cpu, gpu = torch.zeros(1), _GpuLike()   # stands in for a GPU tensor
    try:
        monkeypatch.delenv("SBOPS_DATA_CHECKS", raising=False)
        sbops.set_data_checks(None)                              # re-reads the environment
        assert V.checking_data(cpu) and not V.checking_data(gpu) and not V.checking_data()
        monkeypatch.setenv("SBOPS_DATA_CHECKS", "0")
        assert V.checking_data(cpu)                              # read at import / set_data_checks(None) only
        sbops.set_data_checks(None)
        assert not V.checking_data(cpu) and not V.checking_data(gpu)
        sbops.set_data_checks(True)                              # debug mode: everywhere
        assert V.checking_data(cpu) and V.checking_data(gpu)
        assert not V.checking_data(torch.zeros(1, device="meta"))   # except on tensors without data
        with sbops.data_checks(False):
            assert not V.checking_data(cpu)
        assert V.checking_data(gpu)
        monkeypatch.setenv("SBOPS_DATA_CHECKS", "1")
        sbops.set_data_checks(None)
        assert V.checking_data(cpu) and V.checking_data(gpu)
    finally:
        monkeypatch.delenv("SBOPS_DATA_CHECKS", raising=False)
        sbops.set_data_checks(None)


def test_without_data_checks_no_values_are_read_back(monkeypatch):
    # what a GPU call gets by default: no per-call syncs, usable under CUDA graph capture
    ids = torch.tensor([[0, 3], [1, -1], [2, 3]], dtype=torch.int32)
    x = torch.randn(3, 8)
    q, k, v = torch.randn(1, 9, 4, 64), torch.randn(1, 9, 2, 64), torch.randn(1, 9, 2, 64)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    kc, vc = torch.randn(3, 6, 2, 16), torch.randn(3, 6, 2, 16)
    slots = torch.tensor([2, 0])

    def no_read(*a, **kw):
        raise AssertionError("a value was read back to the host")
    with sbops.data_checks(False):
        for name in ("item", "tolist", "__int__", "__bool__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, no_read)
        x_perm, offsets, row_map = sbops.moe_permute(x, ids, 4)
        sbops.moe_unpermute(x_perm, row_map, torch.rand(3, 2))
        sbops.moe_align_block_size(ids, 4, 2)
        sbops.expert_counts(ids, 4)
        sbops.linear_attn(q, k, v, None, cu_seqlens=cu)
        sbops.linear_attn_decode(q[0, :2], k[0, :2], v[0, :2], None, torch.zeros(3, 2, 64, 64), slots)
        sbops.swa_attn(q, k, v, window=3, cu_seqlens=cu)
        sbops.swa_cache_write(torch.randn(2, 2, 16), torch.randn(2, 2, 16), kc, vc, torch.tensor([5, 1]), slots)
        sbops.swa_decode(torch.randn(2, 4, 16), kc, vc, torch.tensor([5, 2]), window=4, slot_indices=slots)
        sbops.spike_expand(torch.tensor([1, -2], dtype=torch.int32), "ternary", T=2)
        monkeypatch.undo()


@pytest.mark.parametrize("gate", [None, "head", "key", "key_f32"])
def test_linear_attn_fast_path_dispatches_as_the_full_checks(monkeypatch, gate):
    """The plain-comparison fast path of sbops.linear_attn hands the dispatcher the same head dims and
    features as the full checks (and the same call), views included."""
    import sys
    la = sys.modules["sbops.ops.linear_attn"]                 # the module (sbops.ops.linear_attn is the op)
    seen = []
    monkeypatch.setattr(la, "run", lambda op, x, hd, feats, *args: seen.append((op, hd, feats, args)) or (x, None))
    qkv = torch.randn(2, 5, 6 + 2 + 2, 8)
    q, k, v = qkv.split([6, 2, 2], dim=2)                       # views of a fused projection
    g = {None: None, "head": -torch.rand(2, 5, 2), "key": -torch.rand(2, 5, 2, 8),
         "key_f32": -torch.rand(2, 5, 2, 8, dtype=torch.float64)[..., :8].float()}[gate]
    sbops.linear_attn(q, k, v, g)
    hd, feats = la._check(q, k, v, g, None, None)
    assert seen[0][1:3] == (hd, feats)
    assert seen[0][3][:4] == (q, k, v, g) and seen[0][3][4] == 8 ** -0.5
    sbops.linear_attn(q, k, v, g, initial_state=torch.zeros(2, 2, 8, 8))   # the full path
    assert seen[1][1] == hd and seen[1][2][0] == feats[0] and seen[1][2][2] == "initial_state"


def test_data_check_switches_take_only_what_they_understand(monkeypatch):
    """SBOPS_DATA_CHECKS=none / never / disabled mean off (they turned the checks on everywhere, GPU syncs included);
    a value it does not know warns and keeps the default; set_data_checks / data_checks take True, False or None
    only ("false" turned them on, data_checks(None) off)."""
    from sbops import _validate as V
    cpu, gpu = torch.zeros(1), _GpuLike()   # stands in for a GPU tensor
    try:
        for off in ("none", "never", "disabled", "Disable", " OFF "):
            monkeypatch.setenv("SBOPS_DATA_CHECKS", off)
            sbops.set_data_checks(None)
            assert not V.checking_data(cpu) and not V.checking_data(gpu), off
        for on in ("1", "on", "always", "yes"):
            monkeypatch.setenv("SBOPS_DATA_CHECKS", on)
            sbops.set_data_checks(None)
            assert V.checking_data(gpu), on
        monkeypatch.setenv("SBOPS_DATA_CHECKS", "sometimes")
        with pytest.warns(UserWarning, match="SBOPS_DATA_CHECKS='sometimes' is not understood"):
            sbops.set_data_checks(None)
        assert V.checking_data(cpu) and not V.checking_data(gpu)      # the default
        for bad in ("false", 0, 1):
            with pytest.raises(TypeError, match="set_data_checks: enabled must be True, False or None"):
                sbops.set_data_checks(bad)
            with pytest.raises(TypeError, match="data_checks: enabled must be True, False or None"):
                with sbops.data_checks(bad):
                    pass
        with sbops.data_checks(False):
            with sbops.data_checks(None):                                # the default mode again, inside a block
                assert V.checking_data(cpu) and not V.checking_data(gpu)
            assert not V.checking_data(cpu)
    finally:
        monkeypatch.delenv("SBOPS_DATA_CHECKS", raising=False)
        sbops.set_data_checks(None)
