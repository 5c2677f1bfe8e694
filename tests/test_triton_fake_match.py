"""The Triton kernels (registered for CUDA) return what the ops' fake kernels promise.

torch.library.opcheck's test_faketensor compares the real outputs with the fake kernels' (shape,
dtype, strides); on a GPU that runs the Triton kernels.  This checks the same property on the CPU,
running the Triton kernels through the interpreter on the opcheck samples (head dim 64, the
smallest the kernels take), forward and backward.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported
pytest.importorskip("triton")

import test_triton_linear_attn as TLA  # noqa: E402  (kernel module + interpreter shim)
import test_triton_swa as TSWA  # noqa: E402
from op_samples import samples  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
LA, SWA = TLA.LA, TSWA.swa


def _fake(op, args):
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fargs)


def _same_meta(real, fake, what):
    real = real if isinstance(real, (tuple, list)) else (real,)
    fake = fake if isinstance(fake, (tuple, list)) else (fake,)
    assert len(real) == len(fake), what
    for i, (r, f) in enumerate(zip(real, fake)):
        if r is None or f is None:
            assert r is None and f is None, f"{what}[{i}]: {r is None=} {f is None=}"
            continue
        assert (tuple(r.shape), r.dtype, r.stride()) == (tuple(f.shape), f.dtype, f.stride()), (
            f"{what}[{i}]: kernel {tuple(r.shape)} {r.dtype} {r.stride()} vs fake {tuple(f.shape)} {f.dtype} "
            f"{f.stride()}")


def _detached(args):
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


SAMPLES = [(i, op, args) for i, (op, args) in enumerate(samples(DEV, head_dim=64))
           if op._qualified_op_name in ("sbops::linear_attn", "sbops::swa_attn")]


@pytest.mark.parametrize("i", [s[0] for s in SAMPLES])
def test_triton_outputs_match_the_fake_kernels(i):
    _, op, args = next(s for s in SAMPLES if s[0] == i)
    args = _detached(args)
    name = op._qualified_op_name.split("::")[-1]
    ops = torch.ops.sbops
    if name == "linear_attn":
        q, k, v, g, scale, h0, cu = args
        out = LA.linear_attn_fwd(q, k, v, g, scale, h0, cu)
        _same_meta(out, _fake(ops.linear_attn, args), "linear_attn")
        do, dht = torch.randn_like(out[0]), torch.randn_like(out[1])
        bargs = [q, k, v, g, scale, h0, cu, do, dht]
        _same_meta(LA.linear_attn_bwd(*bargs), _fake(ops.linear_attn_bwd, bargs), "linear_attn_bwd")
    else:
        q, k, v, window, scale, cu, sk, sv = args
        o, lse = SWA.swa_attn_fwd(q, k, v, window, scale, cu, sk, sv)
        _same_meta((o, lse), _fake(ops.swa_attn, args), "swa_attn")
        do, dlse = torch.randn_like(o), torch.randn_like(lse)
        bargs = [q, k, v, o, lse, do, dlse, window, scale, cu, sk, sv]
        _same_meta(SWA.swa_attn_bwd(*bargs), _fake(ops.swa_attn_bwd, bargs), "swa_attn_bwd")
