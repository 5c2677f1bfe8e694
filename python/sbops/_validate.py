"""Input checks shared by the public ops: every error names the argument and what was expected.

Two kinds of checks:
- metadata checks (type, dtype, shape, device, head counts): always run; they read no tensor data.
  Strided views are accepted (the kernels read through strides or copy internally); a tensor an
  op updates in place must have a unit stride in its last dimension and no internal overlap (no
  zero stride on a dimension of size > 1, as `expand` makes: its elements would share memory).
- data checks (index ranges, cu_seqlens order, count magnitudes): they read values back to the
  host, which on a GPU is a synchronisation.  See `sbops.set_data_checks` for when they run.

Everything here runs on every op call, so the common path builds no strings and reads no
environment variables: messages are formatted only when raising, the environment is read once.
"""
from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import warnings
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor as _FakeTensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _dt(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def tensor(op: str, name: str, x, *, ndim: Optional[int] = None, dtypes: Optional[Sequence[torch.dtype]] = None,
           device: Optional[torch.device] = None, shape: Optional[Sequence[Optional[int]]] = None,
           what: str = "", inplace: bool = False) -> torch.Tensor:
    """Check one tensor argument; `shape` entries of None are free (a shape without None is
    compared in one step). `what` describes the layout.

    Any strides are accepted, except that a tensor updated in place (`inplace=True`) needs a unit
    stride in its last dimension (the kernels write whole rows through the other strides) and no
    zero stride on a dimension of size > 1 (an expanded tensor: several elements, one location).
    """
    # fast path: plain comparisons only; the ordered checks below build the message on failure
    if (isinstance(x, torch.Tensor)
            and (dtypes is None or x.dtype in dtypes)
            and (device is None or x.device == device)
            and ((x.shape == shape or _shape_ok(x.shape, shape)) if shape is not None
                 else (ndim is None or x.dim() == ndim))
            and (ndim is None or shape is None or len(shape) == ndim)
            and (not inplace or _unit_last_stride(x) and _no_overlap(x))):
        return x
    _raise(op, name, x, ndim, dtypes, device, shape, what, inplace)
    return x


def _shape_ok(have: Sequence[int], want: Sequence[Optional[int]]) -> bool:
    if have == want:
        return True
    if len(have) != len(want):
        return False
    for w, h in zip(want, have):
        if w is not None and w != h:
            return False
    return True


def _unit_last_stride(x: torch.Tensor) -> bool:
    return x.dim() == 0 or x.stride()[-1] == 1 or x.shape[-1] <= 1


def _no_overlap(x: torch.Tensor) -> bool:
    """No zero stride on a dimension of size > 1 (metadata only; what `expand` produces)."""
    st = x.stride()
    return 0 not in st or all(n <= 1 for n, s in zip(x.shape, st) if s == 0)


def _raise(op, name, x, ndim, dtypes, device, shape, what, inplace):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sbops.{op}: {name} must be a torch.Tensor{_lay(what)}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"sbops.{op}: {name} must have {ndim} dimensions{_lay(what)}, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"sbops.{op}: {name} must have dtype in ({_names(dtypes)}), got {_dt(x.dtype)}")
    if device is not None and x.device != device:
        raise ValueError(f"sbops.{op}: {name} is on {x.device} but the other inputs are on {device}; "
                         f"sbops never moves data between devices")
    if shape is not None and not _shape_ok(x.shape, shape):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"sbops.{op}: {name} must have shape {want}{_lay(what)}, got {list(x.shape)}")
    if inplace and not _unit_last_stride(x):
        raise ValueError(f"sbops.{op}: {name} is updated in place, so its last dimension must be contiguous "
                         f"(stride 1), got strides {tuple(x.stride())}; any other strides are fine")
    if inplace and not _no_overlap(x):
        raise ValueError(f"sbops.{op}: {name} is updated in place, so its elements must not share memory, but "
                         f"it has stride 0 on a dimension of size > 1 (shape {list(x.shape)}, strides "
                         f"{tuple(x.stride())}; an expanded tensor?); pass a tensor with its own storage, "
                         f"e.g. .contiguous()")
    raise AssertionError(f"sbops.{op}: inconsistent check of {name}")  # pragma: no cover


def size(x, ndim: int, i: int) -> Optional[int]:
    """x.shape[i] if x is an ndim-dimensional tensor, else None (its check then reports why)."""
    return x.shape[i] if isinstance(x, torch.Tensor) and x.dim() == ndim else None


def _lay(what: str) -> str:
    return f" {what}" if what else ""


def scale(op: str, scale, dim: int, dim_name: str) -> float:
    """The softmax / attention scale: `scale` as a float, or dim ** -0.5 when it is None."""
    if scale is None:
        if dim > 0:
            return dim ** -0.5
        raise ValueError(f"sbops.{op}: the default scale {dim_name} ** -0.5 needs a head dim {dim_name} >= 1, "
                         f"got {dim_name}=0; pass scale explicitly")
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"sbops.{op}: scale must be a number (None: {dim_name} ** -0.5), got {scale!r}") from None


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    d = ref.dtype
    for n, t in others.items():
        if t.dtype != d:
            raise TypeError(f"sbops.{op}: {n} has dtype {_dt(t.dtype)} but {ref_name} has "
                            f"{_dt(ref.dtype)}; they must match")


def divisible_heads(op: str, H: int, HKV: int) -> None:
    if HKV <= 0:
        raise ValueError(f"sbops.{op}: k/v need at least one head (HKV = {HKV})")
    if H % HKV != 0:
        raise ValueError(f"sbops.{op}: the number of query heads ({H}) must be a multiple of the number of "
                         f"key/value heads ({HKV})")


# ------------------------------------------------------------------ data checks
# Mode: None = auto (CPU tensors only: no GPU synchronisation), True = everywhere (debug),
# False = nowhere.  The context variable overrides the environment default.
_DATA_CHECKS: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("sbops_data_checks", default=None)
_TRUE = ("1", "true", "on", "yes", "all", "always")
_FALSE = ("0", "false", "off", "no", "none", "never", "disable", "disabled")
_AUTO = ("", "auto", "cpu", "default")


def _env_mode() -> Optional[bool]:
    raw = os.environ.get("SBOPS_DATA_CHECKS", "")
    v = raw.strip().lower()
    if v in _AUTO:
        return None
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    warnings.warn(f"SBOPS_DATA_CHECKS={raw!r} is not understood: on is one of {_TRUE}, off one of {_FALSE}, the "
                  f"default (CPU tensors only) one of {_AUTO[1:]} or unset; using the default", stacklevel=2)
    return None


def _mode_arg(enabled, fn: str) -> Optional[bool]:
    if enabled is None or isinstance(enabled, bool):
        return enabled
    raise TypeError(f"{fn}: enabled must be True, False or None, got {enabled!r}")


_ENV_MODE: Optional[bool] = _env_mode()   # read once; set_data_checks(None) reads it again
_is_compiling = torch.compiler.is_compiling
try:  # the innermost torch.func transform (vmap, grad, ..) running now, or None
    _functorch_transform = torch._C._functorch.peek_interpreter_stack
except AttributeError:  # pragma: no cover  (a torch without functorch)
    def _functorch_transform():
        return None


def as_int(v) -> Optional[int]:
    """v as a Python int when it is an integer (an int, a numpy integer: anything with __index__ but a bool or a
    tensor), else None."""
    if isinstance(v, (bool, torch.Tensor)):
        return None
    if isinstance(v, int):
        return int(v)
    try:
        return operator.index(v)
    except TypeError:
        return None


def can_sync() -> bool:
    """False while torch.compile traces, a CUDA graph is being captured or a torch.func transform (vmap) runs:
    no host reads then."""
    if torch.compiler.is_compiling() or _functorch_transform() is not None:
        return False
    # no capture without an initialised CUDA context; is_initialized() is a flag read (0.03 us here)
    # where is_available() queries the device count (0.6 us), and this runs on every op call
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


def checking_data(x: Optional[torch.Tensor] = None) -> bool:
    """Whether a public op runs its data checks (index ranges, cu_seqlens order, count magnitudes)
    for inputs living where `x` lives (None: treated as a GPU tensor; never for meta or fake tensors).

    These checks read tensor values back to the host.  By default they run only for CPU tensors,
    where that costs no synchronisation; a call on GPU tensors never reads data back (the kernels
    stay memory-safe on bad data and give the documented result instead: a NaN row, a dropped
    slot, an unwritten row).  `sbops.set_data_checks(True)` / `SBOPS_DATA_CHECKS=1` is a debug mode
    that runs them for GPU tensors too (one synchronisation per check); `set_data_checks(False)` /
    `SBOPS_DATA_CHECKS=0` turns them off everywhere.  They never run while torch.compile traces,
    a CUDA graph is captured or a torch.func transform (vmap) runs.  SBOPS_DATA_CHECKS is read at
    import (and by set_data_checks(None)).
    """
    if _is_compiling():      # first: dynamo cannot trace ContextVar.get
        return False
    if _functorch_transform() is not None:  # vmap's batched tensors cannot be read back (.item() raises)
        return False
    if x is not None and (x.device.type == "meta" or isinstance(x, _FakeTensor)):  # no data to read
        return False
    mode = _DATA_CHECKS.get()
    if mode is None:
        mode = _ENV_MODE
    if mode is None:
        return x is not None and x.is_cpu
    return mode and not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


def set_data_checks(enabled: Optional[bool]) -> None:
    """Data checks for this thread/context: True = everywhere (debug mode: GPU calls synchronise),
    False = nowhere, None = back to the default (SBOPS_DATA_CHECKS, re-read now; unset: CPU tensors
    only).

    Data checks are the checks of tensor values (index ranges, cu_seqlens order, count magnitudes);
    they read values back to the host.  By default they run only for CPU tensors, where that costs
    no synchronisation; a call on GPU tensors never reads data back (the kernels stay memory-safe on
    bad data and give each op's documented result instead: a NaN row, a dropped slot, an unwritten
    row).  SBOPS_DATA_CHECKS=1 / =0 set the default to True / False; it is read at import (and by
    set_data_checks(None)).  The checks never run while torch.compile traces or a CUDA graph is
    captured.  `sbops.data_checks(enabled)` is the context-manager form."""
    global _ENV_MODE
    enabled = _mode_arg(enabled, "set_data_checks")
    if enabled is None:
        _ENV_MODE = _env_mode()
    _DATA_CHECKS.set(enabled)


@contextlib.contextmanager
def data_checks(enabled: Optional[bool]) -> Iterator[None]:
    """Context manager form of `set_data_checks`: `with sbops.data_checks(False): ...` (None: the default mode)."""
    token = _DATA_CHECKS.set(_mode_arg(enabled, "data_checks"))
    try:
        yield
    finally:
        _DATA_CHECKS.reset(token)


def cu_seqlens(op: str, cu: Optional[torch.Tensor], B: int, T: int, device: torch.device) -> int:
    """Validate cu_seqlens; return the number of sequences N.  Its values are checked only where
    `checking_data` says so; the kernels clamp offsets into [0, T] whatever they hold."""
    if cu is None:
        return B
    tensor(op, "cu_seqlens", cu, ndim=1, dtypes=INDEX_DTYPES, device=device,
           what="(int32/int64 [N+1] sequence offsets)")
    if B != 1:
        raise ValueError(f"sbops.{op}: with cu_seqlens the batch dimension must be 1 (sequences packed along T), got B={B}")
    if cu.numel() < 2:
        raise ValueError(f"sbops.{op}: cu_seqlens must hold at least 2 offsets ([0, ..., T]), got {cu.numel()}")
    if checking_data(cu):
        c = cu.tolist()
        if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
            raise ValueError(f"sbops.{op}: cu_seqlens must start at 0, be non-decreasing and end at T={T}; "
                             f"got {c[:4]}{'...' if len(c) > 4 else ''} ending at {c[-1]}")
    return cu.numel() - 1


def index_range(op: str, name: str, idx: torch.Tensor, lo: int, hi: int, err=IndexError) -> None:
    """Data check: every value of `idx` lies in [lo, hi) (one host read of min and max)."""
    if idx.numel() == 0 or not checking_data(idx):
        return
    mn, mx = torch.aminmax(idx)
    mn, mx = int(mn), int(mx)
    if mn < lo or mx >= hi:
        raise err(f"sbops.{op}: {name} must lie in [{lo}, {hi}), got values in [{mn}, {mx}]")
