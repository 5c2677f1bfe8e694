"""The backend dispatcher: capabilities as data, one decision per distinct request, cached.

A backend is a name, the torch device types it runs on, a probe (is it usable in this process?)
and, per op, its capabilities (dtypes, head dims, features).  A public op describes its call as
a `Request`; `select` picks the backend that serves it: the one forced by `use_backend(...)` /
`SBOPS_BACKEND` (read at import), else the highest-priority backend that can.  When none can, the error lists every
backend with its reason.  Data never moves between devices behind the caller's back.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterator, Optional, Sequence, Tuple

import torch

__all__ = ["Backend", "OpCaps", "Request", "NoBackendError", "register_backend", "backends",
           "explain", "use_backend", "select", "kernel_for"]


@dataclass(frozen=True)
class OpCaps:
    """What a backend supports for one op."""
    dtypes: Tuple[torch.dtype, ...]
    head_dims: Optional[Tuple[int, ...]] = None      # None: any head dim
    features: FrozenSet[str] = frozenset()           # e.g. {"varlen", "sinks", "initial_state"}
    impl: str = ""                                   # informational: "c++", "cuda c++", "triton"


@dataclass(frozen=True)
class Request:
    """What a call needs: the op, where its data lives, its dtype, head dim and features."""
    op: str
    device_type: str
    dtype: torch.dtype
    head_dims: Tuple[int, ...] = ()                  # every head dim the call uses (e.g. K and V)
    features: FrozenSet[str] = frozenset()


@dataclass
class Backend:
    """A backend: capabilities as data plus a probe.

    `kernels` maps an op name to a callable taking exactly the op schema's arguments; ops not in
    it run `torch.ops.sbops.<op>`, which PyTorch routes by the inputs' device to the kernel this
    backend registered for that dispatch key.
    """
    name: str
    device_types: Tuple[str, ...]
    ops: Dict[str, OpCaps]
    priority: int = 0
    probe: Callable[[str], Optional[str]] = lambda op: None   # reason it is unusable, or None
    kernels: Dict[str, Callable] = field(default_factory=dict)
    # named entry points beyond the op schemas that sbops' own layers use when the backend serving a call
    # has them (e.g. "linear_attn_fwd_carry" for sbops.distributed's one-pass sequence-parallel forward);
    # a backend without one gets the generic path
    extensions: Dict[str, Callable] = field(default_factory=dict)
    description: str = ""

    def reason(self, req: Request) -> Optional[str]:
        """None if this backend can serve `req`, else why not."""
        if req.device_type not in self.device_types:
            return f"runs on {'/'.join(self.device_types)} tensors, the inputs are on {req.device_type}"
        caps = self.ops.get(req.op)
        if caps is None:
            return f"does not implement {req.op}"
        why = self.probe(req.op)
        if why:
            return f"not available here: {why}"
        if req.dtype not in caps.dtypes:
            return (f"dtype {_dt(req.dtype)} not supported for {req.op} "
                    f"(supports {', '.join(_dt(d) for d in caps.dtypes)})")
        if caps.head_dims is not None:
            bad = [d for d in req.head_dims if d not in caps.head_dims]
            if bad:
                return (f"head dim {bad[0]} not supported for {req.op} "
                        f"(supports {', '.join(map(str, caps.head_dims))})")
        missing = req.features - caps.features
        if missing:
            return f"feature(s) {', '.join(sorted(missing))} not supported for {req.op}"
        return None

    def kernel(self, op: str) -> Callable:
        fn = self.kernels.get(op)
        return fn if fn is not None else getattr(torch.ops.sbops, op)


def _dt(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


class NoBackendError(RuntimeError):
    """No registered backend can serve a call; the message lists every backend and why."""


_registry: Dict[str, Backend] = {}
_registry_version = 0
_lock = threading.Lock()
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("sbops_backend", default=None)
_cache: Dict[tuple, Backend] = {}
# The public ops' per-call cache: (op, device, dtype, head dims, features, forced backend) -> kernel,
# built from plain call metadata so a hit constructs no Request.  Cleared with `_cache`.
_kernels: Dict[tuple, Callable] = {}
# SBOPS_BACKEND is read once, at import (use_backend(...) overrides it per context).
_ENV_BACKEND: Optional[str] = os.environ.get("SBOPS_BACKEND") or None


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend (also one defined outside sbops). Returns it."""
    global _registry_version
    with _lock:
        if backend.name in _registry and not replace:
            raise ValueError(f"a backend named {backend.name!r} is already registered "
                             f"(pass replace=True to replace it)")
        _registry[backend.name] = backend
        _registry_version += 1
        _cache.clear()
        _kernels.clear()
    return backend


def unregister_backend(name: str) -> None:
    global _registry_version
    with _lock:
        _registry.pop(name, None)
        _registry_version += 1
        _cache.clear()
        _kernels.clear()


def _forced_name() -> Optional[str]:
    return _forced.get() or _ENV_BACKEND


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend `name` for the calls inside the block (an unknown name is an error)."""
    if name not in _registry:
        raise ValueError(f"unknown sbops backend {name!r}; registered: {', '.join(_registry)}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _ordered() -> Sequence[Backend]:
    return sorted(_registry.values(), key=lambda b: -b.priority)


def select(req: Request) -> Backend:
    """The backend that runs `req` (cached per distinct request)."""
    forced = _forced_name()
    key = (req, forced, _registry_version)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    if forced is not None:
        b = _registry.get(forced)
        if b is None:
            raise NoBackendError(f"sbops backend {forced!r} (forced by use_backend/SBOPS_BACKEND) is not "
                                 f"registered; registered: {', '.join(_registry)}")
        why = b.reason(req)
        if why is not None:
            raise NoBackendError(f"sbops.{req.op}: the forced backend {forced!r} cannot serve this call: {why}.\n"
                                 + _reasons_text(req))
        chosen = b
    else:
        chosen = None
        for b in _ordered():
            if b.reason(req) is None:
                chosen = b
                break
        if chosen is None:
            raise NoBackendError(f"sbops.{req.op}: no backend can serve this call "
                                 f"({req.device_type}, {_dt(req.dtype)}"
                                 + (f", head dims {list(req.head_dims)}" if req.head_dims else "")
                                 + (f", features {sorted(req.features)}" if req.features else "")
                                 + ").\n" + _reasons_text(req))
    _cache[key] = chosen
    return chosen


def kernel_for(req: Request) -> Callable:
    return select(req).kernel(req.op)


def _reasons_text(req: Request) -> str:
    lines = []
    for b in _ordered():
        why = b.reason(req)
        lines.append(f"  - {b.name}: {'can serve it' if why is None else why}")
    return "backends:\n" + "\n".join(lines)


def explain_request(req: Request) -> str:
    try:
        chosen = select(req).name
    except NoBackendError:
        chosen = None
    head = (f"sbops.{req.op} on {req.device_type} ({_dt(req.dtype)}"
            + (f", head dims {list(req.head_dims)}" if req.head_dims else "")
            + (f", features {sorted(req.features)}" if req.features else "") + ")")
    forced = _forced_name()
    pick = (f"runs on backend '{chosen}'" if chosen else "cannot run on any backend")
    if forced:
        pick += f" (forced: {forced!r})"
    return f"{head} {pick}\n{_reasons_text(req)}"


def backends() -> Dict[str, dict]:
    """Every registered backend: whether it is usable here, and why not, with its capabilities."""
    out = {}
    for b in _ordered():
        probes = {op: b.probe(op) for op in b.ops}
        usable = [op for op, why in probes.items() if why is None]
        reasons = sorted({why for why in probes.values() if why})
        out[b.name] = {
            "available": bool(usable),
            "reason": None if usable else ("; ".join(reasons) or "no ops"),
            "devices": list(b.device_types),
            "priority": b.priority,
            "ops": {op: {"available": probes[op] is None,
                         "reason": probes[op],
                         "dtypes": [_dt(d) for d in c.dtypes],
                         "head_dims": list(c.head_dims) if c.head_dims else None,
                         "features": sorted(c.features),
                         "impl": c.impl}
                    for op, c in b.ops.items()},
            "description": b.description,
        }
    return out


def explain(op: str, *args, **kwargs) -> str:
    """Which backend runs `sbops.<op>(*args, **kwargs)`, and why each other one does not."""
    from .ops import PUBLIC
    from .ops._common import Explained, _explaining
    fn = PUBLIC.get(op)
    if fn is None:
        raise ValueError(f"unknown sbops op {op!r}; known: {', '.join(sorted(PUBLIC))}")
    token = _explaining.set(True)
    try:
        fn(*args, **kwargs)   # validates the inputs, then raises Explained(request) instead of running
    except Explained as e:
        return explain_request(e.req)
    finally:
        _explaining.reset(token)
    raise AssertionError(f"sbops.{op} did not reach dispatch")
