"""torch.library.opcheck on every sbops op: schema, fake kernel, autograd registration, AOT dispatch."""
import pytest
import torch

import sbops  # noqa: F401  (loads the ops)
from op_samples import samples
from conftest import requires_cuda

CASES = samples("cpu")


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]._qualified_op_name.split('::')[-1]}-{i}" for i, c in enumerate(CASES)])
def test_opcheck_cpu(i):
    op, args = samples("cpu")[i]
    torch.library.opcheck(op, args)


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
