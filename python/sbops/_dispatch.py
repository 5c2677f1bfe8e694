"""The backend dispatcher: capabilities as data, one decision per distinct request, cached.

A backend is a name, the torch device types it runs on, a probe (is it usable in this process?)
and, per op, its capabilities (dtypes, head dims, features).  A public op describes its call as
a `Request`; `select` picks the backend that serves it: the one forced by `use_backend(name)` /
`SBOPS_BACKEND` (read once, at import; `use_backend(None)` turns forcing off for a block), else the
highest-priority backend that can.  When none can, the error lists every backend with every reason it
cannot (a probe that raises is such a reason, not an error).  Data never moves between devices behind the caller's back.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
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
        """None if this backend can serve `req`, else why not: every failing check, joined by "; "."""
        if req.device_type not in self.device_types:
            # decisive, and the probe is not asked: probing another device's backend could initialise it
            # (a CUDA context for a CPU call) or import its compiler (Triton)
            return f"runs on {'/'.join(self.device_types)} tensors, the inputs are on {req.device_type}"
        why = []
        caps = self.ops.get(req.op)
        if caps is None:
            why.append(f"does not implement {req.op}")
            return "; ".join(why)
        unusable = self.probe_reason(req.op)
        if unusable:
            why.append(f"not available here: {unusable}")
        if req.dtype not in caps.dtypes:
            why.append(f"dtype {_dt(req.dtype)} not supported for {req.op} "
                       f"(supports {', '.join(_dt(d) for d in caps.dtypes)})")
        if caps.head_dims is not None:
            bad = sorted({d for d in req.head_dims if d not in caps.head_dims})
            if bad:
                why.append(f"head dim{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} not supported "
                           f"for {req.op} (supports {', '.join(map(str, caps.head_dims))})")
        missing = req.features - caps.features
        if missing:
            why.append(f"feature(s) {', '.join(sorted(missing))} not supported for {req.op}")
        return "; ".join(why) or None

    def probe_reason(self, op: str) -> Optional[str]:
        """The probe's answer; a probe that raises makes the backend unusable, with the exception as reason."""
        try:
            return self.probe(op)
        except Exception as e:  # a broken backend must not break the calls the others can serve
            return f"probe raised {type(e).__name__}: {e}"

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
# What use_backend(None) stores: "force nothing, not even SBOPS_BACKEND".  A truthy string, so the public
# ops' cache key (`_forced.get() or _ENV_BACKEND`) tells it apart from "not set"; never a backend name.
_UNFORCED = "<unforced>"
_cache: Dict[tuple, Backend] = {}
# The public ops' per-call cache: (op, device, dtype, head dims, features, forced backend) -> kernel,
# built from plain call metadata so a hit constructs no Request.  Cleared with `_cache`.
_kernels: Dict[tuple, Callable] = {}
# SBOPS_BACKEND is read once, when sbops is imported; setting it later has no effect.
# use_backend(name) overrides it for a block, use_backend(None) turns it off for a block.
_ENV_BACKEND: Optional[str] = os.environ.get("SBOPS_BACKEND") or None


_COLLECTIONS = (tuple, list, set, frozenset)   # what a Backend's and an OpCaps' fields may be (never a bare str)


def _check_backend(backend) -> None:
    """register_backend's argument, field by field: a malformed one would fail later, inside other backends' calls."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend: backend must be a sbops.Backend, got {type(backend).__name__}")
    where = f"register_backend: backend {backend.name!r}:"
    if not isinstance(backend.name, str) or not backend.name:
        raise ValueError(f"register_backend: a backend's name must be a non-empty str, got {backend.name!r}")
    dev = backend.device_types
    if not isinstance(dev, _COLLECTIONS) or not dev or not all(isinstance(d, str) for d in dev):
        raise ValueError(f"{where} device_types must be a tuple of device type names such as ('cuda',), got {dev!r}")
    if not isinstance(backend.ops, dict):
        raise ValueError(f"{where} ops must be a dict of op name -> OpCaps, got {type(backend.ops).__name__}")
    p = backend.priority
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not math.isfinite(p):
        raise ValueError(f"{where} priority must be a finite int or float (higher wins), got {p!r}")
    ops = op_names()
    for op, caps in backend.ops.items():
        if op not in ops:
            raise ValueError(f"{where} ops names {op!r}, which is not an sbops op (sbops ops: {', '.join(ops)})")
        if not isinstance(caps, OpCaps):
            raise ValueError(f"{where} ops[{op!r}] must be an OpCaps, got {type(caps).__name__}")
        if not isinstance(caps.dtypes, _COLLECTIONS) or not all(isinstance(d, torch.dtype) for d in caps.dtypes):
            raise ValueError(f"{where} ops[{op!r}].dtypes must be a tuple of torch dtypes, got {caps.dtypes!r}")
        hd = caps.head_dims
        if hd is not None and (not isinstance(hd, _COLLECTIONS + (range,)) or
                               not all(isinstance(d, int) and not isinstance(d, bool) for d in hd)):
            raise ValueError(f"{where} ops[{op!r}].head_dims must be None or a tuple of ints, got {hd!r}")
        # a request's features are a frozenset, and what a backend lacks is their set difference
        if not isinstance(caps.features, (set, frozenset)) or not all(isinstance(f, str) for f in caps.features):
            raise ValueError(f"{where} ops[{op!r}].features must be a set or frozenset of feature names, "
                             f"got {caps.features!r}")
    if not callable(backend.probe):
        raise ValueError(f"{where} probe must be callable (op name -> None or the reason it is unusable)")
    for what in ("kernels", "extensions"):
        d = getattr(backend, what)
        if not isinstance(d, dict) or not all(callable(f) for f in d.values()):
            raise ValueError(f"{where} {what} must be a dict of name -> callable")
    for op in backend.kernels:
        # a key that is no op of ops (a typo) would be accepted and never called: the op it meant
        # would run the built-in kernel while explain() names this backend
        if op not in backend.ops:
            what = "an op its ops do not list" if op in ops else "not an sbops op"
            raise ValueError(f"{where} kernels names {op!r}, {what}; each key of kernels must be one of "
                             f"the backend's ops: {', '.join(sorted(backend.ops)) or '(ops is empty)'}")


def op_names() -> Tuple[str, ...]:
    """Every sbops op, sorted (their schemas are defined when sbops._C loads: csrc/ops.cpp)."""
    return tuple(sorted(n[len("sbops::"):] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sbops::")))


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend (also one defined outside sbops). Returns it.  Its fields are checked here (a malformed
    backend is refused by name, not left to fail inside other calls)."""
    global _registry_version
    _check_backend(backend)
    if backend.name == _UNFORCED:
        raise ValueError(f"{_UNFORCED!r} is reserved (use_backend(None) stores it)")
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
    f = _forced.get()
    if f == _UNFORCED:
        return None
    return f or _ENV_BACKEND


def _forced_by() -> str:
    return "use_backend" if _forced.get() else "SBOPS_BACKEND"


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force backend `name` for the calls inside the block (an unknown name is an error).

    `use_backend(None)` forces nothing inside the block: the highest-priority backend that can serve
    each call runs it, whatever SBOPS_BACKEND or an enclosing use_backend(...) says.  Blocks nest.
    """
    if name is not None and name not in _registry:
        raise ValueError(f"unknown sbops backend {name!r}; registered: {', '.join(_registry)}")
    token = _forced.set(_UNFORCED if name is None else name)
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
            raise NoBackendError(f"sbops backend {forced!r} (forced by {_forced_by()}) is not "
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


def _first_that_serves(req: Request) -> Optional[str]:
    for b in _ordered():
        if b.reason(req) is None:
            return b.name
    return None


def explain_request(req: Request) -> str:
    head = (f"sbops.{req.op} on {req.device_type} ({_dt(req.dtype)}"
            + (f", head dims {list(req.head_dims)}" if req.head_dims else "")
            + (f", features {sorted(req.features)}" if req.features else "") + ")")
    forced = _forced_name()
    if forced is None:
        chosen = _first_that_serves(req)
        pick = f"runs on backend '{chosen}'" if chosen else "cannot run on any backend"
    else:
        by = _forced_by()
        b = _registry.get(forced)
        why = None if b is None else b.reason(req)
        if b is not None and why is None:
            pick = f"runs on backend '{forced}' (forced by {by})"
        else:
            if b is None:
                pick = (f"cannot run: the forced backend {forced!r} ({by}) is not registered "
                        f"(registered: {', '.join(_registry)})")
            else:
                pick = f"cannot run: the forced backend {forced!r} ({by}) cannot serve it: {why}"
            other = _first_that_serves(req)
            pick += (f"; unforced it would run on backend '{other}'" if other
                     else "; no other backend could serve it either")
    return f"{head} {pick}\n{_reasons_text(req)}"


def backends() -> Dict[str, dict]:
    """Every registered backend: whether it is usable here, and why not, with its capabilities."""
    out = {}
    for b in _ordered():
        probes = {op: b.probe_reason(op) for op in b.ops}
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
