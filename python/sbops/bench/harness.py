"""Timing: medians of repeated calls, CUDA events on GPU, perf_counter on CPU; device roofline data.

`measure(fn, device, budget_s)` returns the median time of `fn()` in milliseconds:
- GPU: `triton.testing.do_bench(fn, return_mode="median")` (it warms up, flushes L2 between calls
  and times with CUDA events), falling back to CUDA events per call when Triton is missing;
- CPU: a warm-up call, then as many calls as fit in the budget (at least 3, at most 50).
A first (untimed) call estimates the cost so that slow cases run fewer repetitions and stay
inside `budget_s`.  `rotating(...)` cycles through several input sets so that memory-bound ops
read from DRAM/HBM rather than from a cache that a single small input set would fit in.
"""
from __future__ import annotations

import itertools
import math
import os
import platform
import signal
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional

import torch

L2_BYTES = 50 * 2**20          # H100 L2; input sets are rotated until they exceed twice this

# nominal peak dense bf16 tensor-core FLOP/s and HBM bandwidth (datasheets) by device name fragment
NOMINAL = {
    "H200": (989e12, 4.8e12),
    "H100 PCIe": (756e12, 2.0e12),
    "H100": (989e12, 3.35e12),
    "H800": (989e12, 3.35e12),
    "A100": (312e12, 2.0e12),
    "L40S": (362e12, 0.864e12),
    "C550": (280e12, 1.6e12),      # MetaX C550 (vendor figures, approximate)
}


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def rotating(make: Callable[[], Any], set_bytes: float, max_sets: int = 8) -> List[Any]:
    """Enough input sets (built by `make`) to exceed 2x L2 in total, at most `max_sets`."""
    n = 1 if set_bytes <= 0 else min(max_sets, max(1, math.ceil(2 * L2_BYTES / set_bytes)))
    return [make() for _ in range(n)]


def cycling(fn: Callable[[Any], Any], sets: List[Any]) -> Callable[[], Any]:
    """A zero-argument callable that applies `fn` to the next input set each call."""
    it = itertools.cycle(sets)
    return lambda: fn(next(it))


def measure(fn: Callable[[], Any], device: str, budget_s: float = 10.0) -> float:
    """Median milliseconds of fn() (see the module docstring)."""
    t0 = time.perf_counter()
    fn()                                   # compile / autotune / first-touch, not timed
    synchronize(device)
    first = time.perf_counter() - t0
    if device == "cpu":
        return _measure_cpu(fn, budget_s, first)
    # a call that already takes most of the budget: time a few directly
    if first > budget_s / 4:
        return _measure_events(fn, reps=max(1, min(3, int(budget_s / max(first, 1e-9)))))
    try:
        from triton.testing import do_bench
    except ImportError:
        return _measure_events(fn, reps=max(3, min(100, int(0.5 * budget_s / max(first, 1e-6)))))
    # do_bench's warmup/rep are time targets in ms; keep them inside the budget
    rep_ms = min(100.0, 1e3 * budget_s / 4)
    return float(do_bench(fn, warmup=min(25.0, rep_ms / 4), rep=rep_ms, return_mode="median"))


def _measure_cpu(fn, budget_s, first):
    if first < 0.2 * budget_s:
        fn()                               # second warm-up (caches, allocator) when it is cheap
    reps = max(3, min(50, int(0.6 * budget_s / max(first, 1e-6))))
    times = []
    deadline = time.perf_counter() + budget_s
    for i in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return 1e3 * statistics.median(times)


def _measure_events(fn, reps):
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class CaseTimeout(Exception):
    """A case ran past its hard time limit."""


@contextmanager
def time_limit(seconds: Optional[float]):
    """Raise CaseTimeout in this (main) thread after `seconds` (POSIX; a no-op elsewhere).

    Python code is interrupted at the next bytecode; a single long native call is not, so this
    is a backstop against runaway loops and repetitions, not against a hung kernel.
    """
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise CaseTimeout(f"ran past the per-case limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def device_name(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def roofline(device: str, dtype: torch.dtype) -> Dict[str, Any]:
    """Peak FLOP/s and memory bandwidth for the floors: nominal where the device is known, else
    measured (a large matmul in `dtype`, a large copy); measured bandwidth is always recorded."""
    info: Dict[str, Any] = {}
    name = device_name(device)
    nominal = next((v for k, v in NOMINAL.items() if k in name), None) if device != "cpu" else None
    # bandwidth: copy of a buffer much larger than the caches (read + write)
    n = (1 << 30 if device != "cpu" else 1 << 27) // 4
    try:
        a = torch.empty(n, dtype=torch.float32, device=device)
        b = torch.empty_like(a)
        ms = measure(lambda: b.copy_(a), device, budget_s=2.0)
        info["measured_bw"] = 2 * a.numel() * 4 / (ms * 1e-3)
        del a, b
    except Exception as e:  # pragma: no cover - e.g. out of memory
        info["measured_bw_error"] = f"{type(e).__name__}: {e}"
    # compute: a square matmul in the benchmark dtype
    m = 4096 if device != "cpu" else 512
    try:
        x = torch.randn(m, m, device=device, dtype=dtype)
        ms = measure(lambda: x @ x, device, budget_s=2.0)
        info["measured_flops"] = 2 * m ** 3 / (ms * 1e-3)
        del x
    except Exception as e:  # pragma: no cover
        info["measured_flops_error"] = f"{type(e).__name__}: {e}"
    if nominal:
        info["nominal_flops"], info["nominal_bw"] = nominal
    # floors use the measured bandwidth (what a copy achieves) and the higher of the peaks
    info["bw"] = info.get("measured_bw") or (nominal[1] if nominal else None)
    info["flops"] = max(info.get("nominal_flops", 0), info.get("measured_flops", 0)) or None
    info["source"] = ("bandwidth measured (copy); FLOP/s " +
                      ("nominal datasheet peak" if nominal else "measured (matmul)"))
    return info
