"""CUDA-graph decode: one captured decode step per bucketed batch size, replayed with static buffers."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

import sbops

from .spikingbrain import ModelCache

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    """Decode steps of `model` on `cache`, each batch size rounded up to a bucket whose step is
    captured in a CUDA graph on first use and replayed afterwards.

    Static buffers hold the input ids [bucket, 1] and slot indices [bucket]; a step copies the
    live rows in and points the padding rows at `scratch_slot`, a cache slot no sequence uses
    (its length is zeroed inside the graph after every step, so padding rows always decode at
    position 0 and never touch a live slot).  Positions and seq_lens are read from the cache's
    seq_lens inside the graph.  The op's host-side data checks are skipped while capturing, and
    nothing in the captured step reads device data on the host.  The returned logits are a view of
    the graph's output buffer, valid until the next step.
    """

    def __init__(self, model, cache: ModelCache, scratch_slot: int, max_batch_size: int,
                 buckets=DEFAULT_BUCKETS, capture: bool = True):
        """capture=False runs the same padded, bucketed step eagerly (any device; for testing)."""
        if capture and not cache.seq_lens.is_cuda:
            raise ValueError("DecodeGraphs needs a model and cache on a CUDA device (or capture=False)")
        if not 0 <= scratch_slot < cache.num_slots:
            raise ValueError(f"scratch_slot must be a slot of the cache (0..{cache.num_slots - 1}), got {scratch_slot}")
        self.model, self.cache, self.scratch = model, cache, scratch_slot
        self.buckets: List[int] = sorted({b for b in buckets if b < max_batch_size} | {max_batch_size})
        dev = cache.seq_lens.device
        top = self.buckets[-1]
        self.ids = torch.zeros(top, 1, dtype=torch.int64, device=dev)
        self.slots = torch.full((top,), scratch_slot, dtype=torch.int64, device=dev)
        self.capturing = capture
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        self.pool = None
        self.kept: list = []

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"a decode batch of {n} sequences exceeds the largest bucket {self.buckets[-1]}")

    def _step(self, b: int) -> torch.Tensor:
        logits = self.model(self.ids[:b], cache=self.cache, slot_indices=self.slots[:b]).logits[:, 0]
        self.cache.seq_lens[self.scratch:self.scratch + 1].zero_()
        return logits

    def capture(self, b: int) -> None:
        """Capture the step of bucket b (padding rows only, so no live slot is touched)."""
        self.ids[:b].zero_()
        self.slots[:b].fill_(self.scratch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), sbops.data_checks(False):
            for _ in range(2):  # warm up: backend selection, Triton/cuBLAS autotuning, allocator
                self._step(b)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), sbops.data_checks(False):
            out = self._step(b)
        self.pool = graph.pool()
        self.graphs[b], self.outputs[b] = graph, out
        # the fused projection weights the graph reads: kept alive even if the model un-fuses them (state_dict())
        self.kept.extend(m.__dict__[k] for m in self.model.modules() for k in ("_sbops_fused", "_sbops_fused_spike")
                         if k in m.__dict__)

    def step(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """ids [n] (or [n, 1]) int64 and slots [n] on the cache's device -> logits [n, vocab]."""
        n = ids.shape[0]
        b = self.bucket(n)
        if self.capturing and b not in self.graphs:
            self.capture(b)
        self.ids[:n].copy_(ids.view(n, 1))
        self.slots[:n].copy_(slots)
        if b > n:
            self.ids[n:b].zero_()
            self.slots[n:b].fill_(self.scratch)
        if not self.capturing:
            return self._step(b)[:n]
        self.graphs[b].replay()
        return self.outputs[b][:n]


def graphs_supported(model, device: torch.device) -> Optional[str]:
    """None if the decode step can be captured on this device, else why not."""
    if device.type != "cuda":
        return f"device is {device.type}, not cuda"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None
