"""swa_decode speed as the 7B model decodes: GPU time under CUDA graphs, one call per SWA layer.

Shape: H = 28 query heads, HKV = 4, D = 128, bf16, window 4096 (ring C = 4097, full), batch B in
{1, 8, 32, 128}.  Each timed graph replays 14 calls (the model's 14 SWA layers), each on its own
cache, so the caches are read from HBM as in a decode step (14 x 8.4 MB per sequence).  Reports
the median per call over 20 replays, the bytes' floor at the H200's 4.8 TB/s, and the peer:
SDPA (flash backend where it takes the shape) over a contiguous window with K/V repeated to 28
heads outside the timing (it reads 7x the bytes).  Correctness: rel. error vs float64 on 2 rows.
Prints one JSON line per case.  Run: python benchmarks/gpu/bench_swa_decode.py [B ...] [hm]
hm: the caches stored head-major ([B, HKV, C, D] memory, passed as the [B, C, HKV, D] view), so each KV head's keys
are contiguous; the default is the model's [B, C, HKV, D] (a key's heads contiguous)."""
import json
import sys

import torch

import sbops
from sbops.bench import peers as P

dev, dt = "cuda", torch.bfloat16
H, HKV, D, W, LAYERS = 28, 4, 128, 4096, 14
C = W + 1


def graph_time(fn, reps=20):
    """Median ms of one replay of a graph of fn()."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def copy_bw():
    x = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    ms = graph_time(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e9  # TB/s (read + write), reported only


def rel_err(o, q, kc, vc, lens):
    from sbops.bench import reference as R
    n = min(2, q.shape[0])
    r = R.swa_decode(q[:n].double().cpu(), kc[:n].double().cpu(), vc[:n].double().cpu(), lens[:n].cpu(), W)
    return ((o[:n].double().cpu() - r).norm() / r.norm()).item()


def cache_pair(B, head_major):
    if head_major:
        return tuple(torch.randn(B, HKV, C, D, device=dev, dtype=dt).permute(0, 2, 1, 3) for _ in range(2))
    return torch.randn(B, C, HKV, D, device=dev, dtype=dt), torch.randn(B, C, HKV, D, device=dev, dtype=dt)


def main(batches, head_major=False):
    bw = copy_bw()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_TBps": round(bw, 3)}),
          flush=True)
    torch.manual_seed(0)
    for B in batches:
        caches = [cache_pair(B, head_major) for _ in range(LAYERS)]
        q = torch.randn(B, H, D, device=dev, dtype=dt)
        lens = torch.full((B,), C, dtype=torch.int64, device=dev)  # the ring holds the full window
        with sbops.data_checks(False):
            o = sbops.swa_decode(q, caches[0][0], caches[0][1], lens, W)
            err = rel_err(o, q, caches[0][0], caches[0][1], lens)
            ms = graph_time(lambda: [sbops.swa_decode(q, k, v, lens, W) for k, v in caches]) / LAYERS
        nbytes = 2 * B * C * HKV * D * 2
        row = {"B": B, "head_major": head_major, "ms_per_call": round(ms, 5), "us_per_call": round(ms * 1e3, 2),
               "TBps": round(nbytes / ms / 1e9, 3), "floor_us": round(nbytes / 4.8e6, 2), "of_4.8TBps": round(nbytes / ms / 4.8e9, 3), "rel_err": err}
        try:
            peer = [P.sdpa_decode_window(q, k, v) for k, v in caches[:4]]
            row["sdpa_repeated_us"] = round(graph_time(lambda: [p() for p in peer]) / 4 * 1e3, 2)
        except Exception as e:  # noqa: BLE001  (memory at large B: reported)
            row["sdpa_repeated_us"] = f"failed: {str(e)[:80]}"
        print(json.dumps(row), flush=True)
        caches = peer = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(b) for b in args if b != "hm"] or [1, 8, 32, 128], head_major="hm" in args)
