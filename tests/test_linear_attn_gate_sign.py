"""linear_attn / linear_attn_decode take log-decays g <= 0 (SPEC section 1): a positive value is refused by name where
data checks run (CPU tensors by default, any device under sbops.set_data_checks(True)); NaN log-decays pass (NaN
output where they reach); with data checks off nothing is read back."""
import pytest
import torch
import torch.nn.functional as F

import sbops


def _inputs(gate_shape):
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 4)
    return q, k, v, F.logsigmoid(torch.randn(*gate_shape))


@pytest.mark.parametrize("per_key", [False, True])
def test_a_positive_log_decay_is_refused_by_name(per_key):
    q, k, v, g = _inputs((1, 5, 2, 8) if per_key else (1, 5, 2))
    sbops.linear_attn(q, k, v, g)   # <= 0: fine
    g[0, 3, 1] = 0.25
    with pytest.raises(ValueError, match=r"linear_attn: g holds log-decays, which must be <= 0.*largest 0\.25"):
        sbops.linear_attn(q, k, v, g)
    with sbops.data_checks(False):
        sbops.linear_attn(q, k, v, g)   # not checked: runs


def test_decode_refuses_a_positive_log_decay():
    q, k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 4)
    state = torch.zeros(3, 2, 8, 4)
    g = torch.full((3, 2), -0.1)
    sbops.linear_attn_decode(q, k, v, g, state)
    g[2, 0] = 1.0
    before = state.clone()
    with pytest.raises(ValueError, match=r"linear_attn_decode: g holds log-decays"):
        sbops.linear_attn_decode(q, k, v, g, state)
    assert torch.equal(state, before)   # refused before the in-place update


def test_nan_log_decays_pass_and_give_nan():
    q, k, v, g = _inputs((1, 5, 2))
    g[0, 2, 0] = float("nan")
    o, _ = sbops.linear_attn(q, k, v, g)
    assert torch.isnan(o[0, 2:, 0]).all() and not torch.isnan(o[0, :2]).any()


def test_meta_and_fake_tensors_are_not_read_even_with_data_checks_on():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with sbops.data_checks(True):
        q = torch.empty(1, 5, 2, 8, device="meta")
        o, _ = sbops.linear_attn(q, q, torch.empty(1, 5, 2, 4, device="meta"), torch.empty(1, 5, 2, device="meta"))
        assert o.shape == (1, 5, 2, 4) and o.device.type == "meta"
        with FakeTensorMode():
            q, v, g = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 4), torch.zeros(1, 5, 2)
            o, _ = sbops.linear_attn(q, q, v, g)
            assert o.shape == (1, 5, 2, 4)
