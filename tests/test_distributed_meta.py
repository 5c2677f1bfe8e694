"""sbops.distributed's ops refuse meta tensors by name, on the calling rank and before any collective (before, torch
raised "Cannot copy out of meta tensor" from inside the exchange, naming no argument).  No process group is needed
for the refusal."""
import pytest
import torch

import sbops.distributed as sbd


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def test_swa_and_linear_attn_name_the_meta_argument():
    q, k, v = torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"distributed.swa_attn: k is a meta tensor"):
        sbd.swa_attn(q, _meta(1, 8, 2, 16), v, 4)
    with pytest.raises(ValueError, match=r"distributed.linear_attn: q is a meta tensor"):
        sbd.linear_attn(_meta(1, 8, 2, 16), k, v)
    with pytest.raises(ValueError, match=r"distributed.linear_attn: g is a meta tensor"):
        sbd.linear_attn(q, k, v, _meta(1, 8, 2))


def test_moe_dispatch_names_the_meta_argument():
    x, ids, w = torch.randn(6, 8), torch.zeros(6, 2, dtype=torch.long), torch.rand(6, 2)
    with pytest.raises(ValueError, match=r"distributed.moe_dispatch: ids is a meta tensor"):
        sbd.moe_dispatch(x, _meta(6, 2, dtype=torch.long), w, 4)
    with pytest.raises(ValueError, match=r"distributed.moe_dispatch: x is a meta tensor"):
        sbd.moe_dispatch(_meta(6, 8), ids, w, 4)
