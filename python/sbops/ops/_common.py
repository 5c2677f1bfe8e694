"""What every public op does after validating: pick the backend and run its kernel."""
from __future__ import annotations

import contextvars

import torch

from .. import _dispatch
from .._dispatch import Request

# Set by sbops.explain: public ops validate their inputs, then hand back their Request instead of running.
_explaining: contextvars.ContextVar[bool] = contextvars.ContextVar("sbops_explaining", default=False)


class Explained(Exception):
    def __init__(self, req: Request):
        super().__init__(req.op)
        self.req = req


def run(req: Request, *args):
    """Run `req.op` with the schema's arguments on the backend the dispatcher selects.

    While torch.compile traces, the op is called directly: PyTorch then routes it by the
    inputs' device to the kernel registered for that dispatch key (the built-in backend), and
    the traced graph stays free of Python-side dispatch logic.
    """
    if torch.compiler.is_compiling():
        return getattr(torch.ops.sbops, req.op)(*args)
    if _explaining.get():
        raise Explained(req)
    return _dispatch.kernel_for(req)(*args)


def request(op: str, x: torch.Tensor, head_dims=(), features=()) -> Request:
    return Request(op=op, device_type=x.device.type, dtype=x.dtype,
                   head_dims=tuple(head_dims), features=frozenset(f for f in features if f))
