"""Per-layer decode caches (slot-indexed, fixed size) and CacheBatch, the description of which
sequences, slots and positions one forward call covers.

A cache holds S slots; sequence i of a call uses slot `CacheBatch.slots[i]`, so sequences can join
and leave a running batch (a slot is reused after `ModelCache.reset`).  Sizes are fixed when a
cache is allocated and never grow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch


def _count(name: str, v, minimum: int) -> int:
    """v as an int >= minimum (a Python or numpy integer, or a 0-d integer tensor), else a ValueError naming it."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
            raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
        v = int(v)
    if isinstance(v, bool) or not hasattr(v, "__index__") or int(v.__index__()) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v.__index__())


@dataclass
class LinearAttnCache:
    """Recurrent state of a linear-attention layer: one [K, V] matrix per slot and KV head.

    state: [S, HKV, K, V] float32, updated in place (sbops.linear_attn_decode / index_copy_ after
    a chunk). Constant size.
    """
    state: torch.Tensor

    @classmethod
    def empty(cls, batch_size, num_kv_heads, head_dim, device=None) -> "LinearAttnCache":
        batch_size = _count("new_cache: batch_size", batch_size, 0)
        return cls(torch.zeros(batch_size, num_kv_heads, head_dim, head_dim, dtype=torch.float32, device=device))

    def nbytes(self) -> int:
        return self.state.numel() * self.state.element_size()


@dataclass
class SWACache:
    """Ring buffer of keys/values: the token at position p lives at row p % C of its slot.

    k, v: [S, C, HKV, D] with C = window + 1 for sliding-window layers (constant size), or the
    longest length the cache must hold for full-attention layers (window < 0).  Keys are stored
    after RoPE.
    """
    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, batch_size, window: int, num_kv_heads, head_dim, max_length: Optional[int] = None,
              device=None, dtype=torch.float32) -> "SWACache":
        batch_size = _count("new_cache: batch_size", batch_size, 0)
        if max_length is not None:
            max_length = _count("new_cache: max_length", max_length, 1)
        if window >= 0:
            rows = window + 1
        elif max_length is None:
            raise ValueError("a full-attention layer (window < 0) needs max_length to size its cache")
        else:
            rows = max_length
        shape = (batch_size, rows, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass
class HybridCache:
    """Cache of a HybridAttention layer: the linear branch's state and the softmax branch's ring buffer."""
    linear: LinearAttnCache
    softmax: SWACache

    def nbytes(self) -> int:
        return self.linear.nbytes() + self.softmax.nbytes()


def _dev(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> device without waiting for the device (no stream sync)."""
    return t.to(device, non_blocking=True)


def _dev_long(values, device) -> torch.Tensor:
    return _dev(torch.tensor(values, dtype=torch.int64), device)


@dataclass
class _WindowPlan:
    """Where each sequence's cached window goes before its new tokens (packed): index tensors for
    several sequences; for one (a long prompt's chunks) `single` = (cached rows, cache slot, first ring
    row) instead, so the packing is slice copies (index_put / gathers ran at ~0.2 TB/s on the H200)."""
    total: int                                   # rows of the packed [cached window; chunk] sequences
    cu_seqlens: Optional[torch.Tensor] = None    # [N + 1] of the packed sequences
    dst_new: Optional[torch.Tensor] = None       # packed row of every new token (in the flattened input's order)
    dst_old: Optional[torch.Tensor] = None       # packed row of every cached token
    src_slot: Optional[torch.Tensor] = None      # its cache slot
    src_row: Optional[torch.Tensor] = None       # its ring-buffer row
    single: Optional[Tuple[int, int, int]] = None


@dataclass
class _WritePlan:
    """The new tokens that end up in a ring buffer of C rows: the last min(t_i, C) of each sequence."""
    rows: Optional[torch.Tensor]   # rows of the flattened input (None when row_range says them)
    positions: torch.Tensor
    slots: torch.Tensor
    row_range: Optional[Tuple[int, int]] = None   # `rows` as [start, stop) when they are contiguous


@dataclass
class CacheBatch:
    """Which sequences, cache slots and positions one forward call covers (built by the model).

    decode: one new token per sequence (x is [N, 1, hidden]); every field is a device tensor, so
        the step can be captured in a CUDA graph.  Else a prefill chunk: x is [B, T, hidden]
        (B sequences of T tokens) or [1, total, hidden] packed by cu_seqlens, and the host lists
        starts (tokens each sequence already has in the cache) and lens (its new tokens) describe it.
    slots: [N] int64 cache slot of each sequence (None without a cache).
    positions: int64 positions of the tokens, [B or 1, T] (broadcast over the batch when 1).
    seq_lens: decode only, [N] = position + 1 (the current token included).
    """
    decode: bool
    positions: torch.Tensor
    slots: Optional[torch.Tensor] = None
    seq_lens: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    starts: Optional[List[int]] = None
    lens: Optional[List[int]] = None
    offsets: Optional[List[int]] = None      # first row of each sequence in the flattened input
    slot_list: Optional[List[int]] = None    # prefill: slots on the host
    _memo: Dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def prefill(cls, lens: List[int], offsets: List[int], starts: List[int], device, batched_T: Optional[int],
                slots: Optional[List[int]] = None, cu_seqlens: Optional[torch.Tensor] = None) -> "CacheBatch":
        """batched_T: T when the input is [B, T] (no packing), else None (packed [1, total]).
        slots: the host list of cache slots (None without a cache)."""
        if batched_T is not None and not any(starts):
            positions = torch.arange(batched_T, device=device)[None]
        elif batched_T is not None:
            positions = _dev(torch.tensor(starts, dtype=torch.int64)[:, None] + torch.arange(batched_T)[None], device)
        else:
            positions = torch.cat([torch.arange(s, s + n, dtype=torch.int64) for s, n in zip(starts, lens)])
            positions = _dev(positions[None], device)
        return cls(decode=False, positions=positions, slots=None if slots is None else _dev_long(slots, device),
                   cu_seqlens=cu_seqlens, starts=list(starts), lens=list(lens), offsets=list(offsets),
                   slot_list=None if slots is None else list(slots))

    @classmethod
    def for_decode(cls, positions: torch.Tensor, slots: torch.Tensor) -> "CacheBatch":
        """positions [N] (the new token's position in each sequence), slots [N]."""
        return cls(decode=True, positions=positions[:, None], slots=slots, seq_lens=positions + 1)

    @classmethod
    def from_legacy(cls, x: torch.Tensor, cache, positions: Optional[torch.Tensor]) -> "CacheBatch":
        """The layers' older calling convention: layer(x, cache, positions).  With a cache, T == 1 and
        positions [B, 1] decode; otherwise x [B, T] is a prefill starting at positions[:, 0] (0 if None)."""
        B, T = x.shape[:2]
        dev = x.device
        if cache is not None and T == 1 and positions is not None:
            return cls.for_decode(positions.reshape(B).to(torch.int64), torch.arange(B, device=dev))
        starts = [0] * B if positions is None else [int(p) for p in positions[:, 0].tolist()]
        return cls.prefill([T] * B, [i * T for i in range(B)], starts, dev, T,
                           list(range(B)) if cache is not None else None)

    # ------------------------------------------------------------------ shared per call
    @property
    def has_history(self) -> bool:
        """Prefill only: whether some sequence already has tokens in the cache."""
        return any(self.starts)

    def rope(self, rotary, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [B or 1, T, 1, D] of this call's positions, computed once per call and theta."""
        key = ("rope", head_dim, float(theta))
        if key not in self._memo:
            cos, sin = rotary(self.positions)
            self._memo[key] = (cos[:, :, None, :], sin[:, :, None, :])
        return self._memo[key]

    def fresh_mask(self, device) -> Optional[torch.Tensor]:
        """[N, 1, 1, 1] float: 0 for sequences with no cached tokens (their slot's stale state is
        ignored), 1 otherwise; None when every sequence has history."""
        if all(self.starts):
            return None
        key = ("fresh", device)
        if key not in self._memo:
            self._memo[key] = _dev(torch.tensor([1.0 if s else 0.0 for s in self.starts]), device).view(-1, 1, 1, 1)
        return self._memo[key]

    def window_plan(self, window: int, rows: int, device) -> _WindowPlan:
        """Prefill with history: the packed layout [cached window_i; chunk_i] per sequence.  Sequence i
        brings min(starts_i, window) cached tokens (all of them for window < 0), read from ring rows
        p % rows in position order, so its chunk's queries see exactly their window."""
        key = ("window", window, rows, device)
        if key in self._memo:
            return self._memo[key]
        if len(self.starts) == 1:
            s = self.starts[0]
            old = s if window < 0 else min(s, window)
            plan = _WindowPlan(old + self.lens[0], single=(old, int(self.slot_list[0]), (s - old) % rows))
        else:
            cu, dst_new, dst_old, src_slot, src_row = [0], [], [], [], []
            slots = self.slot_list
            for i, (s, n) in enumerate(zip(self.starts, self.lens)):
                old = s if window < 0 else min(s, window)
                base = cu[-1]
                dst_old.append(torch.arange(base, base + old))
                src_row.append(torch.arange(s - old, s) % rows)
                src_slot.append(torch.full((old,), slots[i], dtype=torch.int64))
                dst_new.append(torch.arange(base + old, base + old + n))
                cu.append(base + old + n)
            plan = _WindowPlan(cu[-1], _dev_long(cu, device), _dev(torch.cat(dst_new), device),
                               _dev(torch.cat(dst_old), device), _dev(torch.cat(src_slot), device),
                               _dev(torch.cat(src_row), device))
        self._memo[key] = plan
        return plan

    def write_plan(self, rows: int, device) -> _WritePlan:
        key = ("write", rows, device)
        if key not in self._memo:
            slots = self.slot_list
            r, p, sl = [], [], []
            for i, (s, n, off) in enumerate(zip(self.starts, self.lens, self.offsets)):
                m = min(n, rows)
                r.append(torch.arange(off + n - m, off + n))
                p.append(torch.arange(s + n - m, s + n))
                sl.append(torch.full((m,), slots[i], dtype=torch.int64))
            rng = None
            if len(r) == 1 and len(r[0]):
                rng = (int(r[0][0]), int(r[0][-1]) + 1)
            # one sequence's rows are a range: no index tensor to build and copy to the device
            self._memo[key] = _WritePlan(None if rng is not None else _dev(torch.cat(r), device),
                                         _dev(torch.cat(p), device), _dev(torch.cat(sl), device), rng)
        return self._memo[key]

    def check_full_cache(self, rows: int):
        longest = max(s + n for s, n in zip(self.starts, self.lens))
        if longest > rows:
            raise ValueError(f"full-attention cache holds {rows} tokens but a sequence reaches {longest}; "
                             f"allocate the cache with a larger max_length")
