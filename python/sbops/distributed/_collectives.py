"""torch.distributed collectives used by sbops.distributed, and autograd Functions around them.

Everything here is a thin layer over ``torch.distributed`` on the caller's process group
(gloo on CPU, NCCL on NVIDIA, MCCL on MetaX through the same API); there is no home-made
transport. Every autograd Function issues its collective in ``backward`` unconditionally (never
depending on which of its outputs received a gradient), so as long as every rank backpropagates
through the same sbops.distributed calls, every rank issues the same collectives in the same order.
"""
from __future__ import annotations

import struct
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def rank_and_size(group) -> Tuple[int, int]:
    """(rank, world size) of this process in ``group`` (None: the default group)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sbops.distributed: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (or use the simulate_* functions "
                           "of sbops.distributed for a single process)")
    r = dist.get_rank(group)
    if r < 0:
        if group is getattr(dist.GroupMember, "NON_GROUP_MEMBER", object()):
            desc = "(new_group returned GroupMember.NON_GROUP_MEMBER in this process)"
        else:
            try:
                desc = f"with global ranks {dist.get_process_group_ranks(group)}"
            except Exception:                            # noqa: BLE001 - only for the message
                desc = repr(group)
        raise ValueError(f"sbops.distributed: rank {dist.get_rank()} is not a member of group {desc}; "
                         f"call sbops.distributed only on the ranks of the group it runs on")
    return r, dist.get_world_size(group)


# ----------------------------------------------------------------------------- argument agreement
# Arguments that must agree on every rank are gathered as int64 and compared on the host, so every
# rank raises the same ValueError (instead of mismatched collectives: silent garbage or aborts).
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)


def dtype_code(dtype: torch.dtype) -> int:
    """A small int naming ``dtype``, the same in every process (unknown dtypes: a stable hash)."""
    return _DTYPES.index(dtype) if dtype in _DTYPES else 1000 + zlib.crc32(str(dtype).encode())


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]) if 0 <= code < len(_DTYPES) else f"dtype code {code}"


def float_code(x: float) -> int:
    """The bits of float(x) as an int64 (exact comparison across ranks)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _float_of(code: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(code)))[0]


SHOW = {"dtype": _dtype_name, "float": _float_of, "bool": bool, "int": int}


def check_agree(op: str, fields: Sequence[Tuple[str, str]], rows: Sequence[Sequence[int]], start: int = 0) -> None:
    """``rows[r][start + i]`` is rank r's value of ``fields[i] = (argument name, kind in SHOW)``;
    raise one ValueError (the same on every rank: computed from the gathered values) when they differ."""
    bad = []
    for i, (name, kind) in enumerate(fields):
        vals = [row[start + i] for row in rows]
        if any(v != vals[0] for v in vals):
            bad.append(f"{name} {[SHOW[kind](v) for v in vals]}")
    if bad:
        raise ValueError(f"{op}: arguments differ across the ranks of the group (values by group rank): "
                         f"{'; '.join(bad)}; they must agree on every rank")


def gather_and_check(op: str, fields: Sequence[Tuple[str, str, int]], device: torch.device, group,
                     lead: Sequence[int] = (), failure: Optional[Exception] = None) -> List[List[int]]:
    """One all_gather of ``lead + [value for each field]`` (int64) and one host read; raises as
    check_agree when a field differs (``lead`` values may differ). Returns every rank's row.

    ``failure``: this rank's own argument error (local_failure), or None. It travels with the row
    (its kind and message length; the message itself in a second all_gather, only when some rank
    failed), so every rank raises it together instead of one rank raising while the others wait in
    the next collective. Where a rank failed, its lead and field values are not looked at (pass 0s)."""
    kind, msg = encode_failure(failure)
    row = [int(x) for x in lead] + [int(v) for (_, _, v) in fields] + [kind, len(msg)]
    t = torch.tensor(row, dtype=torch.int64, device=device)
    rows = all_gather_stack(t, group).tolist()
    raise_failures(op, [(r[-2], r[-1]) for r in rows], msg, device, group)
    rows = [r[:-2] for r in rows]
    check_agree(op, [(n, k) for (n, k, _) in fields], rows, len(lead))
    return rows


# ----------------------------------------------------------------------------- local argument errors, raised together
# A check of one rank's own arguments (a shape, a dtype, a missing tensor) fails on that rank only;
# raised there at once, the other ranks would wait in the op's next collective until the process
# group's timeout (or read a halo the failing rank never sent). So the ops run their local checks
# first, keep the error, and let it travel with the agreement all_gather: every rank raises it.
_KINDS = {1: ValueError, 2: TypeError}
_MAX_MSG = 2000                                             # bytes of a message sent to the other ranks


def local_failure(check: Callable[[], object]) -> Optional[Exception]:
    """Run ``check()`` (argument checks of this rank alone); return the ValueError / TypeError it
    raises, or None. Outside an initialised process group there is nobody to wait: it raises."""
    try:
        check()
    except (ValueError, TypeError) as e:
        if not (dist.is_available() and dist.is_initialized()):
            raise
        return e
    return None


def is_meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def refuse_meta(op: str, **tensors) -> None:
    """A ValueError naming the first of ``tensors`` on the meta device: the distributed ops exchange data between
    ranks and cannot run on tensors without data.  Called inside local_failure, so that every rank raises it with
    the argument agreement, except where the agreement's own device is meta (then this rank raises alone: no
    collective runs on meta tensors)."""
    for name, t in tensors.items():
        if is_meta(t):
            raise ValueError(f"sbops.distributed.{op}: {name} is a meta tensor; the distributed ops exchange data "
                             f"between ranks and need tensors with data (sbops' single-process ops give shapes on "
                             f"meta tensors)")


def local_failure_refusing_meta(op: str, ref, check: Callable[[], object], **tensors) -> Optional[Exception]:
    """local_failure of refuse_meta(op, **tensors), then check(): every rank raises a meta argument with the
    agreement, except where ref (the agreement's device) is itself meta: then this rank raises at once, as no
    collective runs on meta tensors."""
    if is_meta(ref):
        refuse_meta(op, **tensors)
    return local_failure(lambda: (refuse_meta(op, **tensors), check()))


def first_tensor(*args) -> Optional[torch.Tensor]:
    """The first of ``args`` that is a tensor, or None: where a rank's own arguments failed (one may not even be
    a tensor), the device its agreement gather still runs on, so that it raises with the other ranks."""
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def blank_if(failure: Optional[Exception], values: Callable[[], Sequence[int]], n: int) -> List[int]:
    """``values()``, or n zeros where this rank's arguments already failed (they may not even have
    the attributes ``values`` reads); a failure is raised before any value is compared."""
    return [0] * n if failure is not None else list(values())


def encode_failure(failure: Optional[Exception]) -> Tuple[int, bytes]:
    if failure is None:
        return 0, b""
    kind = 2 if isinstance(failure, TypeError) else 1
    return kind, (str(failure) or type(failure).__name__).encode("utf-8")[:_MAX_MSG]


def raise_failures(op: str, info: Sequence[Tuple[int, int]], msg: bytes, device: torch.device, group) -> None:
    """``info[r]`` = (kind, message length) of group rank r's local failure (kind 0: none). When any
    rank failed, one more all_gather brings the messages and every rank raises the same error (the
    type of the first failing rank's: ValueError or TypeError), naming the failing ranks."""
    bad = [r for r, (kind, _) in enumerate(info) if kind]
    if not bad:
        return
    n = max(1, max(int(m) for _, m in info))
    buf = torch.zeros(n, dtype=torch.int64)
    if msg:
        buf[:len(msg)] = torch.tensor(list(msg), dtype=torch.int64)
    got = all_gather_stack(buf.to(device), group).tolist()
    msgs = {r: bytes(got[r][:int(info[r][1])]).decode("utf-8", "replace") for r in bad}
    msgs = {r: m[len(op) + 2:] if m.startswith(op + ": ") else m for r, m in msgs.items()}   # op named once
    where = f"group rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of {len(info)}"
    if len(set(msgs.values())) == 1:
        body = msgs[bad[0]]
    else:
        body = "; ".join(f"[group rank {r}] {m}" for r, m in msgs.items())
    raise _KINDS.get(int(info[bad[0]][0]), ValueError)(
        f"{op}: invalid arguments on {where}: {body} (every rank of the group raises this error)")


# torch >= 2.13 names it all_gather_single (all_gather_into_tensor is deprecated there)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_stack(t: torch.Tensor, group) -> torch.Tensor:
    """[P, *t.shape]: every rank's ``t`` (same shape and dtype on every rank), stacked by rank."""
    P = dist.get_world_size(group)
    t = t.contiguous()
    out = t.new_empty((P,) + tuple(t.shape))
    _all_gather_single(out.view(-1), t.reshape(-1), group=group)
    return out


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """A new tensor: the sum of ``t`` over the ranks of ``group``."""
    out = t.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_to_all_rows(x: torch.Tensor, send_splits: Sequence[int], recv_splits: Sequence[int], group) -> torch.Tensor:
    """Rows ``x[sum(send_splits[:d]) : ...]`` go to rank d; returns the received rows, ordered by source rank."""
    x = x.contiguous()
    out = x.new_empty((int(sum(recv_splits)),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x, output_split_sizes=list(recv_splits), input_split_sizes=list(send_splits),
                           group=group)
    return out


def exchange(sends: Dict[int, torch.Tensor], recvs: Dict[int, Tuple[Tuple[int, ...], torch.dtype]],
             device: torch.device, group) -> Dict[int, torch.Tensor]:
    """Point-to-point: send ``sends[dst]`` to each group rank dst, receive a tensor of the given
    shape/dtype from each group rank src in ``recvs``. All posted at once (batch_isend_irecv), then waited.
    Ranks are group ranks; they are translated to global ranks for torch.distributed."""
    ops, out = [], {}
    for src, (shape, dtype) in sorted(recvs.items()):
        buf = torch.empty(shape, dtype=dtype, device=device)
        out[src] = buf
        ops.append(dist.P2POp(dist.irecv, buf, _global(src, group), group=group))
    for dst, t in sorted(sends.items()):
        ops.append(dist.P2POp(dist.isend, t.contiguous(), _global(dst, group), group=group))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return out


def _global(rank: int, group) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


class AllToAllRows(torch.autograd.Function):
    """Differentiable all_to_all_single of rows; its backward is the all-to-all with the splits swapped."""

    @staticmethod
    def forward(ctx, x, send_splits, recv_splits, group):
        ctx.splits = (list(send_splits), list(recv_splits))
        ctx.group = group
        return all_to_all_rows(x, send_splits, recv_splits, group)

    @staticmethod
    def backward(ctx, dy):
        send_splits, recv_splits = ctx.splits
        return all_to_all_rows(dy, recv_splits, send_splits, ctx.group), None, None, None


class AllReduceGrad(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over the group (for tensors shared by all ranks)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dx):
        return all_reduce_sum(dx, ctx.group), None


def gathered_lengths(n: int, device: torch.device, group) -> List[int]:
    """Every rank's ``n`` (one small all_gather and a host read: a device sync on GPUs)."""
    t = torch.tensor([int(n)], dtype=torch.int64, device=device)
    return [int(x) for x in all_gather_stack(t, group).view(-1).tolist()]
