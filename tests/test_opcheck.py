"""torch.library.opcheck on every sbops op: schema, fake kernel, autograd registration, AOT dispatch."""
import pytest
import torch

import sbops  # noqa: F401  (loads the ops)
from op_samples import backward_samples, samples
from conftest import requires_cuda

CASES = samples("cpu")


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]._qualified_op_name.split('::')[-1]}-{i}" for i, c in enumerate(CASES)])
def test_opcheck_cpu(i):
    op, args = samples("cpu")[i]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_opcheck_cpu_other_float_dtypes(dtype):
    for op, args in samples("cpu", dtype)[:len(samples("cpu"))]:
        torch.library.opcheck(op, args)


BWD = backward_samples("cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("i", range(len(BWD)), ids=[f"{c[0]._qualified_op_name.split('::')[-1]}-{i}" for i, c in enumerate(BWD)])
def test_opcheck_backward_ops_cpu(i, dtype):
    op, args = backward_samples("cpu", dtype)[i]
    torch.library.opcheck(op, args)


def test_every_backward_op_has_a_sample():
    names = {op._qualified_op_name.split("::")[-1] for op, _ in BWD}
    schemas = {s.name.split("::")[-1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("sbops::")}
    assert {n for n in schemas if n.endswith("_bwd")} == names


def test_every_schema_has_a_sample_or_is_a_backward():
    names = {op._qualified_op_name.split("::")[-1] for op, _ in CASES}
    schemas = {s.name.split("::")[-1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("sbops::")}
    backward = {n for n in schemas if n.endswith("_bwd")}
    assert schemas - backward - names == set()


@requires_cuda
@pytest.mark.parametrize("i", range(len(CASES)))
def test_opcheck_gpu(i):
    op, args = samples("cuda", torch.bfloat16)[i]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@requires_cuda
@pytest.mark.parametrize("head_dim,T", [(64, 9), (128, 256)], ids=["d64", "d128-sm90"])
def test_opcheck_backward_ops_gpu(head_dim, T):
    # D=128 bf16 without sinks or varlen takes the sm_90 SWA backward on Hopper
    for op, args in backward_samples("cuda", torch.bfloat16, head_dim=head_dim, T=T):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
