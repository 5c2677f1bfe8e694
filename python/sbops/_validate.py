"""Input checks shared by the public ops: every error names the argument and what was expected."""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterable, Iterator, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(op: str, name: str, x, *, ndim: Optional[int] = None, dtypes: Optional[Sequence[torch.dtype]] = None,
           device: Optional[torch.device] = None, shape: Optional[Sequence[Optional[int]]] = None,
           what: str = "") -> torch.Tensor:
    """Check one tensor argument; `shape` entries of None are free. `what` describes the layout."""
    lay = f" {what}" if what else ""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sbops.{op}: {name} must be a torch.Tensor{lay}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"sbops.{op}: {name} must have {ndim} dimensions{lay}, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"sbops.{op}: {name} must have dtype in ({_names(dtypes)}), got {str(x.dtype).replace('torch.', '')}")
    if device is not None and x.device != device:
        raise ValueError(f"sbops.{op}: {name} is on {x.device} but the other inputs are on {device}; "
                         f"sbops never moves data between devices")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"sbops.{op}: {name} must have shape {want}{lay}, got {list(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"sbops.{op}: {name} must be contiguous (call .contiguous() on it first)")
    return x


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for n, t in others.items():
        if t.dtype != ref.dtype:
            raise TypeError(f"sbops.{op}: {n} has dtype {str(t.dtype).replace('torch.', '')} but {ref_name} has "
                            f"{str(ref.dtype).replace('torch.', '')}; they must match")


def divisible_heads(op: str, H: int, HKV: int) -> None:
    if HKV <= 0 or H % HKV != 0:
        raise ValueError(f"sbops.{op}: the number of query heads ({H}) must be a multiple of the number of "
                         f"key/value heads ({HKV})")


_DATA_CHECKS: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("sbops_data_checks", default=None)
_FALSE = ("0", "false", "off", "no")


def can_sync() -> bool:
    """False while torch.compile traces or a CUDA graph is being captured (no host reads then)."""
    if torch.compiler.is_compiling():
        return False
    # no capture without an initialised CUDA context; is_initialized() is a flag read (0.03 us here)
    # where is_available() queries the device count (0.6 us), and this runs on every op call
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


def checking_data() -> bool:
    """Whether the public ops run their data-dependent checks (index ranges, cu_seqlens order,
    count magnitudes).  They read values back to the host, which synchronises a GPU on every call,
    so they are skipped while torch.compile traces or a CUDA graph is captured, and can be turned off
    with `sbops.set_data_checks(False)`, the `sbops.data_checks(False)` context, or the environment
    variable SBOPS_DATA_CHECKS=0.  The native kernels still never read or write out of bounds."""
    if not can_sync():
        return False
    forced = _DATA_CHECKS.get()
    if forced is not None:
        return forced
    return os.environ.get("SBOPS_DATA_CHECKS", "1").strip().lower() not in _FALSE


def set_data_checks(enabled: Optional[bool]) -> None:
    """Turn the data-dependent input checks on or off for this thread/context (None: back to the
    SBOPS_DATA_CHECKS default).  See `checking_data`."""
    _DATA_CHECKS.set(None if enabled is None else bool(enabled))


@contextlib.contextmanager
def data_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of `set_data_checks`: `with sbops.data_checks(False): ...`."""
    token = _DATA_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _DATA_CHECKS.reset(token)


def cu_seqlens(op: str, cu: Optional[torch.Tensor], B: int, T: int, device: torch.device) -> int:
    """Validate cu_seqlens; return the number of sequences N."""
    if cu is None:
        return B
    tensor(op, "cu_seqlens", cu, ndim=1, dtypes=INDEX_DTYPES, device=device,
           what="(int32/int64 [N+1] sequence offsets)")
    if B != 1:
        raise ValueError(f"sbops.{op}: with cu_seqlens the batch dimension must be 1 (sequences packed along T), got B={B}")
    if cu.numel() < 2:
        raise ValueError(f"sbops.{op}: cu_seqlens must hold at least 2 offsets ([0, ..., T]), got {cu.numel()}")
    if checking_data():
        c = cu.tolist()
        if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
            raise ValueError(f"sbops.{op}: cu_seqlens must start at 0, be non-decreasing and end at T={T}; "
                             f"got {c[:4]}{'...' if len(c) > 4 else ''} ending at {c[-1]}")
    return cu.numel() - 1
