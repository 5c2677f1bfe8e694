"""Shared set-up of the spike_linear fp8 prefill probes (import it first: it sets the Triton interpreter up).
PROBE_DRY=1 runs a probe's logic on the CPU (Triton interpreter, tiny shapes); SZ scales a 7B size down then."""
import os
import time

DRY = os.environ.get("PROBE_DRY") == "1"
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"

dev = "cpu" if DRY else "cuda"
SZ = (lambda v: max(16, v // 256 // 16 * 16)) if DRY else (lambda v: v)


def bench_ms(fn, rep=40):
    """Milliseconds per call of fn: triton.testing.do_bench on a GPU, one timed call under PROBE_DRY."""
    if DRY:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=rep)
