"""The wrapper-overhead column: what the public `sbops.<op>(...)` call costs on the host on top of
the kernel call it dispatches to.

`measure_wrapper(public, device)` is what the main job reports: the paired measurement below with
the kernel call replaced by a no-op that returns the kernel's real result, so only host work of the
wrapper differs between the two sides; a Triton launch's own 100-300 us of host time (and its
jitter on a busy host) no longer enters the difference.  The measurement with the kernel running is
kept in the row (`overhead_with_kernel_us`).

`direct_call(public)` runs a zero-argument public call once while recording what the wrapper hands
to its backend (the op, the kernel the dispatcher picks for that call, the schema arguments after
validation and defaults), and returns a callable that makes exactly that kernel call: for the
built-in backends `torch.ops.sbops.<op>(...)`, for a backend with Python kernels (Triton) that
kernel.  So both sides do the same device work on the same inputs.

`measure_overhead(public, direct, device)` times both on the host, call by call, in adjacent pairs
(public then direct, the order swapped every other block), in blocks of at most 50 pairs (well
inside the CUDA launch queue, so the host never waits for the GPU) with one device synchronisation
between blocks (not timed); overhead = the median over all pairs of (public - direct).  Pairing
cancels the host's slow drifts (clocks, other processes, a busy machine right after boot), which
moved the earlier block-minimum estimate by tens of microseconds on a 200-300 us Triton launch (kept
as `overhead_min_block_us`).  It runs under the default data-checks mode,
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


def measure_wrapper(public: Callable[[], Any], device: str, budget_s: float = 0.5) -> Dict[str, Any]:
    """The wrapper column: host microseconds that `public()` adds to the kernel call it dispatches to,
    measured with that kernel call replaced by a no-op returning its real result (so the 100-300 us of
    host time of a Triton launch, and its jitter, stay out of the difference), paired as in
    measure_overhead; plus the same measurement with the kernel running (`*_with_kernel_us`).  The
    dispatch cache entries of the op are swapped for the no-op only inside a try whose finally puts
    them back (a timeout or Ctrl-C included)."""
    op, direct = direct_call(public)
    result = direct()
    synchronize(device)
    with_kernel = measure_overhead(public, direct, device, budget_s / 2)
    noop = lambda *args: result  # noqa: E731
    saved: Dict[tuple, Any] = {}
    try:
        for _ in range(2):  # the second round catches an entry the first public() call creates
            for k, v in list(_dispatch._kernels.items()):
                if k[0] == op and v is not noop and k not in saved:
                    saved[k] = v
                    _dispatch._kernels[k] = noop
            public()
        bare = measure_overhead(public, noop, device, budget_s / 2)
    finally:
        _dispatch._kernels.update(saved)
    out = dict(bare)
    out.update({"public_with_kernel_us": with_kernel["public_us"], "direct_with_kernel_us": with_kernel["direct_us"],
                "overhead_with_kernel_us": with_kernel["overhead_us"]})
    return out


def _pairs(public, direct, device: str, calls: int, flip: bool):
    """`calls` adjacent (public, direct) pairs, each call timed on its own (order swapped when flip),
    between two device synchronisations that are not timed; per-call host microseconds."""
    synchronize(device)
    pub, dir_ = [], []
    clock = time.perf_counter
    for _ in range(calls):
        if flip:
            t0 = clock(); direct(); t1 = clock(); public(); t2 = clock()  # noqa: E702
            dir_.append(t1 - t0)
            pub.append(t2 - t1)
        else:
            t0 = clock(); public(); t1 = clock(); direct(); t2 = clock()  # noqa: E702
            pub.append(t1 - t0)
            dir_.append(t2 - t1)
    synchronize(device)
    return [1e6 * t for t in pub], [1e6 * t for t in dir_]


def measure_overhead(public: Callable[[], Any], direct: Callable[[], Any], device: str,
                     budget_s: float = 0.5) -> Dict[str, Any]:
    """Host microseconds per call of `public` and `direct` and their difference (see the module
    docstring).  Uses about `budget_s` seconds (at least 5 rounds)."""
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
    pub, dir_, diff, block_p, block_d = [], [], [], [], []
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 25):
        p, d = _pairs(public, direct, device, calls, flip=rounds % 2 == 1)
        pub += p
        dir_ += d
        diff += [a - b for a, b in zip(p, d)]
        block_p.append(sum(p) / len(p))
        block_d.append(sum(d) / len(d))
        rounds += 1
    # the median of paired differences: each public call is compared with the direct call next to it,
    # so slow drifts of the host (clocks, other processes) cancel, and one stall moves one pair only
    return {"public_us": statistics.median(pub), "direct_us": statistics.median(dir_),
            "overhead_us": statistics.median(diff), "overhead_min_block_us": min(block_p) - min(block_d),
            "calls_per_block": calls, "rounds": rounds}
