"""sbops.distributed on NCCL, one process per GPU (issue 24): sequence-parallel GLA / SWA, expert-parallel
MoE dispatch + combine against the machine's all-to-all, and the 7B-shaped model's TTFT over the GPUs.

    python benchmarks/gpu/bench_distributed.py --parts sp,moe --lengths 128k,1m,4m --out DIR
    python benchmarks/gpu/bench_distributed.py --parts ttft --ttft-lengths 1m,4m --out DIR

Spawns one rank per visible GPU (--world to use fewer) with the workplace's multicast settings
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1).  Shapes: SpikingBrain-7B,
B = 1, 28 query heads over 4 KV heads, D = 128, per-key gate logsigmoid(x) / 16, window 4096, bf16.

sp: for each total length T (split evenly over the P ranks), per layer, medians over --reps:
  * forward without gradients (sbd.linear_attn's one-pass path; sbd.swa_attn's halo exchange) and
    forward + backward (autograd path), every rep started behind a barrier, time = the slowest rank;
  * the same op on one GPU at the same tokens per GPU (T / P, every rank at once, rank 0's median):
    scaling efficiency = t_1GPU(T / P) / t_P(T); and on one GPU at the full T where it fits;
  * bytes per call in each rank's collective outputs, counted by wrapping the torch.distributed calls
    (an all_gather output includes the rank's own slice; point-to-point: the bytes received), next to
    the formulas: GLA P * B * HKV * K * (V + 1) float32 gathered (backward 2 * P * B * HKV * K * V);
    SWA min(window, start_r) halo rows of keys + values (bf16), the same back in the backward, plus
    the shard lengths' all_gather (8 * P bytes).  A failure in a distributed call stops the run.
moe: T = 16k tokens per GPU, Hd = 3584, bf16, router ids from random logits (E = 16 top-1, E = 128 top-8),
  identity experts: sbd.moe_dispatch, sbd.moe_combine, each behind a barrier; the bandwidth is set against
  dist.all_to_all_single with even splits of the same bytes, measured in the same run.
ttft: SpikingBrain-7B shape, random bf16 weights (the same on every rank), a random prompt of T tokens;
  each rank runs model(shard, logits_to_keep=1) under sequence_parallel (layer by layer over the whole
  shard, the dense FFN in token chunks); the first token is the last rank's argmax, broadcast to all.
  Next to it, one GPU (rank 0 while the others wait): generate(..., max_new_tokens=1,
  prefill_chunk_size=16384) at the same T, and the cache-less forward of T / P tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(SAFE_ENV)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

H, HKV, D, WINDOW = 28, 4, 128, 4096
BF16 = torch.bfloat16
DEV = "cuda"          # --smoke: "cpu" (gloo, the cpu backend, tiny lengths: checks this script without GPUs)


def parse_len(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "km" else t) * mult)


def fmt_len(n: int) -> str:
    return f"{n // 1048576}M" if n % 1048576 == 0 else (f"{n // 1024}k" if n % 1024 == 0 else str(n))


def log(rank, msg):
    if rank == 0:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------- timing
def timed(fn, reps, warmup=1, barrier=True):
    """Median ms over reps of fn() on this GPU, each rep behind a barrier (barrier=True); the value is
    the slowest rank's per rep (max over ranks), so it is the time of the distributed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if barrier:
            dist.barrier()
        if DEV == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    t = torch.tensor(times, device=DEV, dtype=torch.float64)
    if barrier:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return statistics.median(t.tolist())


class ByteCounter:
    """Bytes in this rank's outputs of sbops.distributed's torch.distributed calls (all_gather: the whole
    output, own slice included; all_reduce: the tensor; all_to_all: the output; point-to-point: received)."""

    def __init__(self):
        self.bytes = {}

    def _add(self, name, n):
        self.bytes[name] = self.bytes.get(name, 0) + int(n)

    @contextlib.contextmanager
    def patch(self):
        from sbops.distributed import _collectives as col
        saved = (col._all_gather_single, dist.all_reduce, dist.all_to_all_single, dist.batch_isend_irecv)

        def ag(out, inp, *a, **k):
            self._add("all_gather", out.numel() * out.element_size())
            return saved[0](out, inp, *a, **k)

        def ar(t, *a, **k):
            self._add("all_reduce", t.numel() * t.element_size())
            return saved[1](t, *a, **k)

        def a2a(out, inp, *a, **k):
            self._add("all_to_all", out.numel() * out.element_size())
            return saved[2](out, inp, *a, **k)

        def p2p(ops):
            for op in ops:
                if op.op in (dist.irecv,):
                    self._add("recv", op.tensor.numel() * op.tensor.element_size())
            return saved[3](ops)

        col._all_gather_single, dist.all_reduce, dist.all_to_all_single, dist.batch_isend_irecv = ag, ar, a2a, p2p
        try:
            yield self
        finally:
            col._all_gather_single, dist.all_reduce, dist.all_to_all_single, dist.batch_isend_irecv = saved


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def free():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def count_bytes(fn):
    c = ByteCounter()
    with c.patch():
        fn()
    sync()
    return c.bytes


# ----------------------------------------------------------------------------- sequence parallel
def gla_inputs(T, grad):
    q = torch.randn(1, T, H, D, device=DEV, dtype=BF16).relu_()
    k = torch.randn(1, T, HKV, D, device=DEV, dtype=BF16).relu_()
    v = torch.randn(1, T, HKV, D, device=DEV, dtype=BF16)
    g = F.logsigmoid(torch.randn(1, T, HKV, D, device=DEV, dtype=BF16)) / 16
    return [t.requires_grad_(grad) for t in (q, k, v, g)]


def swa_inputs(T, grad):
    q = torch.randn(1, T, H, D, device=DEV, dtype=BF16)
    k = torch.randn(1, T, HKV, D, device=DEV, dtype=BF16)
    v = torch.randn(1, T, HKV, D, device=DEV, dtype=BF16)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def sp_calls(op, dist_mode):
    """(make inputs, forward fn, forward+backward fn) for op in gla / swa, distributed or one GPU."""
    import sbops
    import sbops.distributed as sbd
    if op == "gla":
        make = gla_inputs

        def fwd(x):
            return sbd.linear_attn(*x, output_final_state=True)[0] if dist_mode else \
                sbops.linear_attn(*x, output_final_state=True)[0]
    else:
        make = swa_inputs

        def fwd(x):
            return sbd.swa_attn(*x, WINDOW) if dist_mode else sbops.swa_attn(*x, WINDOW)

    def run_fwd(x):
        with torch.no_grad():
            fwd(x)

    def run_fb(x, do):
        fwd(x).backward(do)
        for t in x:
            t.grad = None
    return make, run_fwd, run_fb


def formula_bytes(op, P, Tr, rank):
    if op == "gla":
        return {"fwd": P * 1 * HKV * D * (D + 1) * 4, "bwd": 2 * P * 1 * HKV * D * D * 4}
    halo = min(WINDOW, rank * Tr) * HKV * D * 2 * 2          # keys + values, bf16
    return {"fwd": halo, "bwd_send_back": halo}


def one_point(rank, P, op, T, reps, full_one_gpu, gla_fb_max):
    """One (op, T) row: one-GPU and distributed forward, forward+backward, bytes."""
    Tr = T // P
    row = {"op": op, "T": T, "T_per_gpu": Tr, "P": P}
    for mode in ("one_gpu_shard", "dist", "one_gpu_full"):
        if mode == "one_gpu_full" and not full_one_gpu:
            continue
        n = T if mode == "one_gpu_full" else Tr
        make, run_fwd, run_fb = sp_calls(op, mode == "dist")
        barrier = mode == "dist"
        for what in ("fwd", "fwd_bwd"):
            key = f"{mode}_{what}_ms"
            x = None
            if what == "fwd_bwd" and op == "gla" and n > gla_fb_max:
                row[key] = f"skipped: > {fmt_len(gla_fb_max)} tokens per GPU (--gla-fb-max)"
                continue
            try:
                if mode == "one_gpu_full" and rank != 0:
                    raise RuntimeError("rank 0 only")
                x = make(n, what == "fwd_bwd")
                if what == "fwd":
                    row[key] = timed(lambda: run_fwd(x), reps, barrier=barrier)
                else:
                    do = torch.randn(1, n, H, D, device=DEV, dtype=BF16)
                    row[key] = timed(lambda: run_fb(x, do), reps, barrier=barrier)
                    del do
                if mode == "dist" and what == "fwd":
                    row["bytes_fwd"] = count_bytes(lambda: run_fwd(x))
                if mode == "dist" and what == "fwd_bwd":
                    do = torch.randn(1, n, H, D, device=DEV, dtype=BF16)
                    row["bytes_fwd_bwd"] = count_bytes(lambda: run_fb(x, do))
                    del do
            except Exception as e:  # noqa: BLE001 - a one-GPU row records what failed
                if mode == "dist":
                    raise   # the ranks' collectives would fall out of step: the run stops instead
                if str(e) != "rank 0 only":
                    row[key] = ("OOM" if is_oom(e) else type(e).__name__) + f": {str(e)[:160]}"
            finally:
                x = None
                free()
        if mode == "one_gpu_full":
            dist.barrier()
    row["formula_bytes"] = formula_bytes(op, P, Tr, rank)
    for what in ("fwd", "fwd_bwd"):
        a, b = row.get(f"one_gpu_shard_{what}_ms"), row.get(f"dist_{what}_ms")
        if isinstance(a, float) and isinstance(b, float):
            row[f"efficiency_{what}"] = round(a / b, 4)
    return row


def part_sp(rank, P, args, res):
    for T in args.lengths:
        for op in ("gla", "swa"):
            log(rank, f"sp {op} T={fmt_len(T)} over {P} GPUs")
            row = one_point(rank, P, op, T, args.reps, not args.no_full, args.gla_fb_max)
            rows = [None] * P
            dist.all_gather_object(rows, {"bytes_fwd": row.get("bytes_fwd"), "bytes_fwd_bwd": row.get("bytes_fwd_bwd"),
                                          "formula": row["formula_bytes"]})
            row["bytes_by_rank"] = rows
            if rank == 0:
                res["sp"].append(row)
                log(rank, json.dumps({k: v for k, v in row.items() if k != "bytes_by_rank"}))


# ----------------------------------------------------------------------------- expert parallel
def part_moe(rank, P, args, res):
    import sbops.distributed as sbd
    Tl, Hd = args.moe_tokens, 3584
    for E, k in ((16, 1), (128, 8)):
        log(rank, f"moe E={E} top-{k}, {Tl} tokens per GPU")
        gen = torch.Generator(device=DEV).manual_seed(100 + rank)
        x = torch.randn(Tl, Hd, device=DEV, dtype=BF16, generator=gen)
        logits = torch.randn(Tl, E, device=DEV, generator=gen)
        w, ids = torch.softmax(logits, -1).topk(k, dim=-1)
        ids = ids.to(torch.int32)
        state = {}

        def dispatch():
            state["d"] = sbd.moe_dispatch(x, ids, w, E)

        def combine():
            xl, _, h = state["d"]
            state["y"] = sbd.moe_combine(xl, h)

        with torch.no_grad():
            t_d = timed(dispatch, args.reps)
            t_c = timed(combine, args.reps)
            t_dc = timed(lambda: (dispatch(), combine()), args.reps)
            sent_rows = Tl * k                                    # every slot routed (none dropped)
            nbytes = sent_rows * Hd * 2
            recv_rows = state["d"][0].shape[0]
            recv = torch.tensor([recv_rows], device=DEV, dtype=torch.int64)
            dist.all_reduce(recv, op=dist.ReduceOp.MAX)
            # the all-to-all reference: even splits of the same bytes per rank
            n_even = (sent_rows // P) * P
            inp = torch.empty(n_even, Hd, device=DEV, dtype=BF16)
            out = torch.empty_like(inp)
            t_a2a = timed(lambda: dist.all_to_all_single(out, inp), args.reps)
            bytes_counted = count_bytes(lambda: (dispatch(), combine()))
        row = {"E": E, "top_k": k, "tokens_per_gpu": Tl, "Hd": Hd, "P": P, "dispatch_ms": t_d, "combine_ms": t_c,
               "dispatch_combine_ms": t_dc, "rows_sent_per_gpu": sent_rows, "max_rows_received": int(recv),
               "bytes_per_gpu_each_way": nbytes, "a2a_same_bytes_ms": t_a2a,
               "a2a_algbw_GBps": round(n_even * Hd * 2 / t_a2a / 1e6, 1),
               "moe_algbw_GBps": round(2 * nbytes / t_dc / 1e6, 1),
               "fraction_of_a2a": round(2 * t_a2a / t_dc, 4), "bytes_counted_rank0": bytes_counted}
        if rank == 0:
            res["moe"].append(row)
            log(rank, json.dumps(row))
        x = inp = out = None
        state.clear()
        free()
    # the machine's all-to-all bandwidth at larger sizes
    for mib in (64, 256, 1024):
        n = mib * 2**20 // 2
        n -= n % P
        inp = torch.empty(n, device=DEV, dtype=BF16)
        out = torch.empty_like(inp)
        with torch.no_grad():
            t = timed(lambda: dist.all_to_all_single(out, inp), args.reps)
        if rank == 0:
            res["a2a"].append({"MiB_per_gpu": mib, "ms": t, "algbw_GBps": round(n * 2 / t / 1e6, 1),
                               "busbw_GBps": round(n * 2 / t / 1e6 * (P - 1) / P, 1)})
            log(rank, json.dumps(res["a2a"][-1]))
        inp = out = None


# ----------------------------------------------------------------------------- model TTFT
def part_ttft(rank, P, args, res):
    import sbops.distributed as sbd
    from sbops.bench.model import qwen2_config
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate
    tiny = DEV == "cpu"
    cfg = SpikingBrainConfig.from_qwen2(qwen2_config(tiny), "7b", **({"window": 64} if tiny else {}))
    from sbops.bench.model import default_dtype
    torch.manual_seed(0)
    with torch.device(DEV), default_dtype(BF16):
        model = SpikingBrainForCausalLM(cfg).eval()

    def sp_ttft(T):
        ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(T)).to(DEV)
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode(), sbd.sequence_parallel(None) as sp:
            out = model(sp.shard(ids), logits_to_keep=1).logits
            tok = out[0, -1].argmax().to(torch.int64).reshape(1)
            dist.broadcast(tok, src=P - 1)
            first = int(tok)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
        t = torch.tensor([dt], device=DEV, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t), first, peak

    log(rank, "ttft warm-up (256k over the GPUs: the chunked FFN too; one GPU: a 40k-token chunked prefill, "
              "a 16k forward)")
    sp_ttft(256 if tiny else 262144)
    if rank == 0 and not args.no_one_gpu_ttft:
        ids = torch.randint(0, cfg.vocab_size, (1, 300 if tiny else 40000), device=DEV)
        with torch.inference_mode():
            int(generate(model, ids, 1, prefill_chunk_size=args.chunk, cuda_graphs=False)[0, -1])
            int(model(ids[:, :args.chunk], logits_to_keep=1).logits[0, -1].argmax())
    dist.barrier()
    for T in args.ttft_lengths:
        row = {"T": T, "P": P}
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # no try: a failure on one rank would leave the others inside sp_ttft's collectives
        row["sp_ttft_s"], row["first_token"], row["peak_gib_rank"] = sp_ttft(T)
        free()
        log(rank, f"ttft T={fmt_len(T)} over {P} GPUs: {row}")
        if rank == 0 and not args.no_one_gpu_ttft:
            ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(T)).to(DEV)
            for name, fn in (("one_gpu_shard_forward_s", lambda: int(model(ids[:, :T // P], logits_to_keep=1)
                                                                    .logits[0, -1].argmax())),
                             ("one_gpu_generate_s", lambda: int(generate(model, ids, 1, prefill_chunk_size=args.chunk,
                                                                         cuda_graphs=False)[0, -1]))):
                if name == "one_gpu_generate_s" and T > args.one_gpu_generate_max:
                    continue
                try:
                    sync()
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        fn()
                    row[name] = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    row[name] = ("OOM" if is_oom(e) else type(e).__name__) + f": {str(e)[:200]}"
                free()
                log(rank, f"  one GPU {name} T={fmt_len(T)}: {row[name]}")
        dist.barrier()
        if rank == 0:
            res["ttft"].append(row)


# ----------------------------------------------------------------------------- driver
def env_info(P):
    import sbops
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "gpus": P,
            "sbops": getattr(sbops, "__version__", "?"), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        v = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception as e:  # noqa: BLE001
        info["nccl"] = f"? ({e})"
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    info["env"] = {k: os.environ.get(k) for k in SAFE_ENV}
    return info


def rank_main(rank, P, port, args):
    global DEV, H, HKV, D, WINDOW
    os.environ.update(SAFE_ENV)
    if args.smoke:
        DEV = "cpu"
        H, HKV, D, WINDOW = 4, 2, 64, 32
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=P,
                                timeout=timedelta(minutes=5))
    else:
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=P,
                                timeout=timedelta(minutes=20), device_id=torch.device("cuda", rank))
    res = {"env": env_info(P), "args": {k: v for k, v in vars(args).items()}, "sp": [], "moe": [], "a2a": [],
           "ttft": []}
    path = os.path.join(args.out, "dist_bench.json")
    try:
        for part in args.parts:
            {"sp": part_sp, "moe": part_moe, "ttft": part_ttft}[part](rank, P, args, res)
            if rank == 0:
                with open(path, "w") as f:
                    json.dump(res, f, indent=1, default=str)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="sp,moe", help="comma list of sp, moe, ttft")
    ap.add_argument("--lengths", default="128k,1m,4m", help="total sequence lengths of the sp part")
    ap.add_argument("--ttft-lengths", default="1m,4m")
    ap.add_argument("--one-gpu-generate-max", type=parse_len, default=parse_len("4m"),
                    help="longest T whose one-GPU chunked-prefill TTFT is measured")
    ap.add_argument("--no-one-gpu-ttft", action="store_true")
    ap.add_argument("--no-full", action="store_true", help="skip the one-GPU full-T sp baselines")
    ap.add_argument("--gla-fb-max", type=parse_len, default=parse_len("4m"),
                    help="longest tokens per GPU of a GLA forward+backward")
    ap.add_argument("--moe-tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--world", type=int, default=0, help="ranks (default: every visible GPU)")
    ap.add_argument("--chunk", type=int, default=16384, help="one-GPU generate's prefill chunk")
    ap.add_argument("--smoke", action="store_true", help="2 gloo ranks on the CPU, tiny shapes (checks the script)")
    ap.add_argument("--out", default="benchmarks/distributed")
    args = ap.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.lengths = [parse_len(x) for x in args.lengths.split(",") if x]
    args.ttft_lengths = [parse_len(x) for x in args.ttft_lengths.split(",") if x]
    P = args.world or (2 if args.smoke else torch.cuda.device_count())
    if P < 2:
        sys.exit(f"bench_distributed: needs at least 2 GPUs, found {torch.cuda.device_count()}")
    os.makedirs(args.out, exist_ok=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    mp.spawn(rank_main, args=(P, port, args), nprocs=P, join=True)


if __name__ == "__main__":
    main()
