"""Spawn P ranks for a test and collect what each reports, with a deadline: a deadlock or a
crashed rank fails the test instead of hanging it.  Shared by the distributed tests (not a test file).

`body(rank, P)` runs in a fresh process (spawn) inside an initialised process group and returns its
failure messages; an exception is reported as a failure of that rank.  gloo: CPU, the cpu backend.
nccl: rank r on GPU r (its current device), sbops' default backend selection; the workplace's
multicast safety settings (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1) are set in every rank's environment before anything initialises."""
from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, P, port, results, body, backend="gloo"):
    bad = []
    try:
        os.environ.update(SAFE_ENV)
        torch.set_num_threads(1)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import sbops
        kw = {}
        if backend == "nccl":
            torch.cuda.set_device(rank)
            kw["device_id"] = torch.device("cuda", rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=P,
                                timeout=timedelta(seconds=60), **kw)
        with (sbops.use_backend("cpu") if backend == "gloo" else contextlib.nullcontext()):
            bad += body(rank, P)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:                                    # noqa: BLE001 - reported to the parent
        bad.append(f"rank {rank} raised:\n{traceback.format_exc()}")
    results.put((rank, bad))


def spawn_ranks(body, P: int, timeout_s: float, backend: str = "gloo") -> None:
    """Run `body` on P ranks; assert every rank reported within `timeout_s` and reported no failure."""
    os.environ.update(SAFE_ENV)       # inherited by the spawned ranks too
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, P, port, results, body, backend), daemon=True)
             for r in range(P)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    got = {}
    try:
        while len(got) < P:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r, bad = results.get(timeout=min(left, 5.0))
                got[r] = bad
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs) and results.empty():
                    time.sleep(1.0)
                    if results.empty():
                        break
    finally:
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()) if len(got) == P else 1.0)
            if p.is_alive():
                p.terminate()
                p.join(5)
    missing = sorted(set(range(P)) - set(got))
    assert not missing, f"ranks {missing} reported nothing within {timeout_s} s (deadlock or crash); " \
                        f"exit codes {[p.exitcode for p in procs]}"
    failures = [b for r in sorted(got) for b in got[r]]
    assert not failures, "\n".join(failures)
