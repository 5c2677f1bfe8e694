"""What every public op does after validating: pick the backend and run its kernel."""
from __future__ import annotations

import contextvars
from typing import Tuple

import torch
import torch.autograd.forward_ad as _fwAD

from .. import _dispatch
from .._dispatch import Request

# Set by sbops.explain: public ops validate their inputs, then hand back their Request instead of running.
_explaining: contextvars.ContextVar[bool] = contextvars.ContextVar("sbops_explaining", default=False)
_is_compiling = torch.compiler.is_compiling
_kernels = _dispatch._kernels      # cleared by the dispatcher whenever the registry changes
_forced = _dispatch._forced
_functorch_level = torch._C._functorch.maybe_current_level   # None outside torch.func transforms


def _check_transforms(op: str, args) -> None:
    """Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) and torch.func's grad transforms
    have no rule for sbops' ops: PyTorch would give a silent zero tangent (jvp) or a message about
    autograd.Function internals (grad); refuse them naming the op.  vmap passes (PyTorch's per-sample
    fallback)."""
    ft = torch._C._functorch
    for a in args:
        if not isinstance(a, torch.Tensor) or not (a.is_floating_point() or a.is_complex()):
            continue
        if _fwAD._current_level >= 0:
            try:
                dual = _fwAD.unpack_dual(a).tangent is not None
            except RuntimeError:   # e.g. under vmap inside jvp: no batching rule for _unpack_dual
                dual = True
            if dual:
                raise NotImplementedError(f"sbops.{op} has no forward-mode derivative (torch.func.jvp / "
                                          "torch.autograd.forward_ad); use reverse mode (backward, "
                                          "torch.autograd.grad)")
        # grad tracking at the current level and reached by the differentiated input (requires_grad):
        # constants made inside the transformed function pass
        if ft.is_functorch_wrapped_tensor(a) and ft.is_gradtrackingtensor(a) and a.requires_grad:
            raise NotImplementedError(f"sbops.{op} does not support torch.func.grad / vjp / jacrev; use "
                                      "torch.autograd.grad (vmap is supported)")


class Explained(Exception):
    def __init__(self, req: Request):
        super().__init__(req.op)
        self.req = req


def request(op: str, x: torch.Tensor, head_dims=(), features=()) -> Request:
    return Request(op=op, device_type=x.device.type, dtype=x.dtype,
                   head_dims=tuple(head_dims), features=frozenset(f for f in features if f))


def run(op: str, x: torch.Tensor, head_dims: Tuple[int, ...], features: tuple, *args):
    """Run `op` with the schema's arguments `args` on the backend the dispatcher selects for a call
    on x's device and dtype using `head_dims` and `features` (a tuple; None entries are ignored).

    The decision is cached under a plain tuple key, so a repeated call costs one dict lookup.
    While torch.compile traces, the op is called directly: PyTorch then routes it by the inputs'
    device to the kernel registered for that dispatch key (the built-in backend), and the traced
    graph stays free of Python-side dispatch logic.  Meta tensors (shape inference, as nn.Linear and
    fla allow) go straight to the op too, whose fake kernel serves them.
    """
    if _is_compiling() or x.device.type == "meta":  # meta: the registered fake kernel gives the shapes
        return getattr(torch.ops.sbops, op)(*args)
    if _fwAD._current_level >= 0 or _functorch_level() is not None:   # ~80 ns when neither is active
        _check_transforms(op, args)
    key = (op, x.device, x.dtype, head_dims, features, _forced.get() or _dispatch._ENV_BACKEND)
    fn = _kernels.get(key)
    if fn is None or _explaining.get():
        req = request(op, x, head_dims, features)
        if _explaining.get():
            raise Explained(req)
        fn = _dispatch.kernel_for(req)
        _kernels[key] = fn
    return fn(*args)


_below_autograd = torch._C._AutoDispatchBelowAutograd


def run_no_grad(op: str, x: torch.Tensor, head_dims: Tuple[int, ...], features: tuple, grad_inputs: tuple, *args):
    """run() for an op whose registered autograd kernel is Python (the decode ops': it only raises in
    backward; spike_encode's vth): when grad mode is off or none of `grad_inputs` (tensors or None)
    requires grad, the call skips that kernel."""
    if _is_compiling() or (torch.is_grad_enabled()
                           and any(t is not None and t.requires_grad for t in grad_inputs)):
        return run(op, x, head_dims, features, *args)
    with _below_autograd():
        return run(op, x, head_dims, features, *args)
