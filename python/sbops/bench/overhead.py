"""The wrapper-overhead column: what the public `sbops.<op>(...)` call costs on the host on top of
the kernel call it dispatches to.

`direct_call(public)` runs a zero-argument public call once while recording what the wrapper hands
to its backend (the op, the kernel the dispatcher picks for that call, the schema arguments after
validation and defaults), and returns a callable that makes exactly that kernel call: for the
built-in backends `torch.ops.sbops.<op>(...)`, for a backend with Python kernels (Triton) that
kernel.  So both sides do the same device work on the same inputs.

`measure_overhead(public, direct, device)` times both on the host: blocks of back-to-back calls
(at most 50, well inside the CUDA launch queue, so the host never waits for the GPU), one device
synchronisation between blocks (not timed), public and direct blocks alternated; overhead = the
fastest public block's time per call - the fastest direct block's (host timings only gain noise:
the minimum is the estimate, as timeit takes it; the difference of the medians is reported too).  It runs under the default data-checks mode,
so it includes whatever validation a default call does.  On a CPU the kernel itself runs inside
the timed region, so the difference carries that kernel's jitter: there both sides run on one
thread (thread wake-ups on a busy machine cost milliseconds), and CPU overheads are still rough.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable, Dict, Tuple

import torch

from .. import _dispatch
from ..ops import _common
from .harness import synchronize

MAX_CALLS = 50          # calls per timed block (stays well inside the CUDA launch queue)
BLOCK_S = 1e-2          # a timed block lasts about this long (fewer calls when one call is slower)


def direct_call(public: Callable[[], Any]) -> Tuple[str, Callable[[], Any]]:
    """(op name, zero-argument direct kernel call) for the first op `public()` dispatches."""
    real = _common.run
    seen: Dict[str, Any] = {}

    def spy(op, x, head_dims, features, *args):
        if "op" not in seen:                     # the outermost op of the call
            req = _common.request(op, x, head_dims, features)
            seen.update(op=op, fn=_dispatch.kernel_for(req), args=args)
        return real(op, x, head_dims, features, *args)

    # the op modules imported `run` by name: swap it there for the one recording call
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("sbops.ops.") and getattr(m, "run", None) is real]
    for m in modules:
        m.run = spy
    try:
        public()
    finally:
        for m in modules:
            m.run = real
    if "op" not in seen:
        raise RuntimeError("the probe call did not reach sbops' dispatch (sbops.ops._common.run)")
    fn, args = seen["fn"], seen["args"]
    return seen["op"], lambda: fn(*args)


def _block_us(fn: Callable[[], Any], device: str, calls: int) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = time.perf_counter() - t0
    synchronize(device)
    return 1e6 * t / calls


def measure_overhead(public: Callable[[], Any], direct: Callable[[], Any], device: str,
                     budget_s: float = 0.5) -> Dict[str, Any]:
    """Host microseconds per call of `public` and `direct` and their difference (see the module
    docstring).  Uses about `budget_s` seconds (at least 5 alternated rounds)."""
    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _measure(public, direct, device, budget_s)
        finally:
            torch.set_num_threads(threads)
    return _measure(public, direct, device, budget_s)


def _measure(public, direct, device, budget_s):
    for fn in (public, direct, public, direct):        # warm-up: dispatch caches, allocator
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    public()
    synchronize(device)
    first = time.perf_counter() - t0
    calls = max(1, min(MAX_CALLS, int(BLOCK_S / max(first, 1e-7))))
    pub, dir_ = [], []
    deadline = time.perf_counter() + budget_s
    while len(pub) < 5 or (time.perf_counter() < deadline and len(pub) < 25):
        pub.append(_block_us(public, device, calls))
        dir_.append(_block_us(direct, device, calls))
    # the fastest block of each side: host timings only ever gain noise (other processes, GC, cache
    # misses), so the minimum estimates the cost itself (as timeit does); the medians are kept too
    p, d = min(pub), min(dir_)
    pm, dm = statistics.median(pub), statistics.median(dir_)
    return {"public_us": p, "direct_us": d, "overhead_us": p - d, "overhead_median_us": pm - dm,
            "calls_per_block": calls, "rounds": len(pub)}
