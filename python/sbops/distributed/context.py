"""Process-group holders for model code: which group sequence / expert parallelism runs on.

A model layer asks ``current_sp()`` / ``current_ep()`` (None outside a ``with`` block) and calls
sbops.distributed's ops with ``group=ctx.group`` instead of the single-process ops:

    with sbd.sequence_parallel(sp_group), sbd.expert_parallel(ep_group):
        loss = model(input_ids_shard, labels=labels_shard).loss     # each rank: its contiguous shard
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import List, Optional

import torch

from ._collectives import gathered_lengths, rank_and_size

_state = threading.local()


def _process_group(group, who: str):
    """group as a process group: a one-dimensional DeviceMesh gives its group (torch's own error for a mesh
    passed as a group names no argument); a mesh of more dimensions must be narrowed to one first."""
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:           # a torch built without distributed
        return group
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"sbops.distributed.{who}: group is a {group.ndim}-D DeviceMesh "
                             f"{tuple(group.mesh_dim_names or ())}; pass one dimension (e.g. mesh['cp']) or its "
                             f"process group (mesh['cp'].get_group())")
        return group.get_group()
    return group


@dataclass(frozen=True)
class SequenceParallel:
    """Sequence parallelism on ``group`` (None: the default group): rank r holds the r-th contiguous
    shard of every sequence.  A one-dimensional DeviceMesh stands for its process group."""
    group: object = None

    def __post_init__(self):
        object.__setattr__(self, "group", _process_group(self.group, "SequenceParallel"))

    @property
    def rank(self) -> int:
        return rank_and_size(self.group)[0]

    @property
    def world_size(self) -> int:
        return rank_and_size(self.group)[1]

    def shard_start(self, local_len: int, device: torch.device) -> int:
        """Global position of this rank's first token (one small all_gather + host read)."""
        r = self.rank                     # first: a clear error outside an initialised group / non-member
        lens = gathered_lengths(local_len, device, self.group)
        return sum(lens[:r])

    def positions(self, local_len: int, device: torch.device) -> torch.Tensor:
        """[local_len] int64 global positions of this rank's tokens (for RoPE)."""
        start = self.shard_start(local_len, device)
        return torch.arange(start, start + local_len, device=device)

    @staticmethod
    def split_lengths(total: int, world_size: int) -> List[int]:
        """Contiguous near-even shard lengths (the first ``total % P`` shards one longer; with
        total < P the last ones are empty, T_r = 0, which every sbops.distributed op and the
        models accept)."""
        base, extra = divmod(int(total), int(world_size))
        return [base + (1 if r < extra else 0) for r in range(world_size)]

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous slice of a full sequence tensor along ``dim`` (split_lengths)."""
        lens = self.split_lengths(x.shape[dim], self.world_size)
        return x.split(lens, dim)[self.rank]


@dataclass(frozen=True)
class ExpertParallel:
    """Expert parallelism on ``group`` (None: the default group): rank r owns experts [r*E/P, (r+1)*E/P).
    A one-dimensional DeviceMesh stands for its process group."""
    group: object = None

    def __post_init__(self):
        object.__setattr__(self, "group", _process_group(self.group, "ExpertParallel"))

    def local_experts(self, num_experts: int) -> range:
        r, P = rank_and_size(self.group)
        if num_experts % P:
            raise ValueError(f"sbops.distributed.ExpertParallel: num_experts={num_experts} is not a multiple of "
                             f"the group size {P}")
        n = num_experts // P
        return range(r * n, (r + 1) * n)


def current_sp() -> Optional[SequenceParallel]:
    """The innermost active sequence_parallel(...) context of this thread, or None."""
    return getattr(_state, "sp", None)


def current_ep() -> Optional[ExpertParallel]:
    """The innermost active expert_parallel(...) context of this thread, or None."""
    return getattr(_state, "ep", None)


@contextlib.contextmanager
def _push(name, value):
    old = getattr(_state, name, None)
    setattr(_state, name, value)
    try:
        yield value
    finally:
        setattr(_state, name, old)


def sequence_parallel(group=None):
    """``with sequence_parallel(group) as sp:`` model layers run sequence-parallel on ``group``."""
    return _push("sp", SequenceParallel(group))


def expert_parallel(group=None):
    """``with expert_parallel(group) as ep:`` MoE layers run expert-parallel on ``group``."""
    return _push("ep", ExpertParallel(group))
