"""Session 27 audit of the ops and the dispatcher; each test fails on the code before it.

- the CPU MoE kernels wrote -1 into the caller's int64 ids / row_map where an entry was out of range
  (the index guard worked in place when the input already was contiguous int64);
"""
import numpy as np
import pytest
import torch

import sbops
from sbops import Backend, OpCaps


# ------------------------------------------------------------------ MoE kernels leave their inputs alone
def _index_views(values, dtype):
    """The values as a contiguous [n, 1] tensor and as a strided column of a wider one."""
    dense = torch.tensor(values, dtype=dtype).view(-1, 1)
    wide = torch.full((dense.shape[0], 3), 99, dtype=dtype)
    wide[:, 1:2] = dense
    return [dense, wide[:, 1:2]]


_IDS = [0, 5, -7, 2]          # E = 3: 5 and -7 are out of range (dropped)


@pytest.mark.parametrize("call", ["expert_counts", "moe_permute", "moe_align_block_size"])
def test_moe_ops_leave_out_of_range_ids_unchanged(call):
    fns = {"expert_counts": lambda i: torch.ops.sbops.expert_counts(i, 3),
           "moe_permute": lambda i: torch.ops.sbops.moe_permute(torch.randn(4, 2), i, 3),
           "moe_align_block_size": lambda i: torch.ops.sbops.moe_align_block_size(i, 3, 2)}
    for dtype in (torch.int32, torch.int64):
        for ids in _index_views(_IDS, dtype):
            before = ids.clone()
            fns[call](ids)
            assert torch.equal(ids, before), f"{call} changed {dtype} ids: {before.flatten().tolist()} -> " \
                                             f"{ids.flatten().tolist()}"
        ids = torch.tensor([[0], [-5]], dtype=dtype)       # through the public wrapper (data checks on)
        getattr(sbops, call)(*{"expert_counts": (ids, 3), "moe_permute": (torch.randn(2, 2), ids, 3),
                                "moe_align_block_size": (ids, 3, 2)}[call])
        assert ids.flatten().tolist() == [0, -5]


@pytest.mark.parametrize("call", ["moe_unpermute", "moe_permute_bwd"])
def test_moe_ops_leave_out_of_range_row_map_unchanged(call):
    for dtype in (torch.int32, torch.int64):
        for rm in _index_views([0, 7, -9, 1], dtype):
            before = rm.clone()
            if call == "moe_unpermute":
                torch.ops.sbops.moe_unpermute(torch.randn(3, 2), rm, torch.ones(4, 1))
            else:
                torch.ops.sbops.moe_permute_bwd(torch.randn(3, 2), rm)
            assert torch.equal(rm, before), f"{call} changed {dtype} row_map: {before.flatten().tolist()} -> " \
                                            f"{rm.flatten().tolist()}"


@pytest.mark.parametrize("op,args", [
    ("expert_counts", lambda ids: (ids, 3)),
    ("moe_align_block_size", lambda ids: (ids, 3, 2)),
    ("moe_permute", lambda ids: (torch.randn(4, 2), ids, 3)),
])
def test_opcheck_schema_with_out_of_range_ids(op, args):
    ids = torch.tensor([[0], [-5], [7], [1]])
    torch.library.opcheck(getattr(torch.ops.sbops, op).default, args(ids), test_utils=("test_schema",))


def test_opcheck_schema_with_out_of_range_row_map():
    rm = torch.tensor([[0], [7], [-9]])
    torch.library.opcheck(torch.ops.sbops.moe_unpermute.default, (torch.randn(3, 2), rm, torch.ones(3, 1)),
                          test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.sbops.moe_permute_bwd.default, (torch.randn(3, 2), rm),
                          test_utils=("test_schema",))
