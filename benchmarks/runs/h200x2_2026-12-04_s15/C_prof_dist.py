"""Profile (rank 0) sbd.linear_attn no-grad forward at 2M tokens/GPU vs the one-GPU op, and MoE dispatch+combine."""
import os, sys, time
from datetime import timedelta
os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity

def table(p, n=14):
    return p.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=60)

def main(rank, P, port):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=P,
                            timeout=timedelta(minutes=5), device_id=torch.device("cuda", rank))
    import sbops, sbops.distributed as sbd
    T = 2 * 1024 * 1024
    q = torch.randn(1, T, 28, 128, device="cuda", dtype=torch.bfloat16).relu_()
    k = torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16).relu_()
    v = torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16)) / 16
    with torch.no_grad():
        for name, fn in (("one-GPU sbops.linear_attn", lambda: sbops.linear_attn(q, k, v, g, output_final_state=True)),
                         ("sbd.linear_attn", lambda: sbd.linear_attn(q, k, v, g, output_final_state=True))):
            fn(); fn(); torch.cuda.synchronize(); dist.barrier()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                fn(); torch.cuda.synchronize()
            if rank == 0:
                print(f"===== {name} (T/GPU = 2M)\n" + table(p), flush=True)
            dist.barrier()
    del q, k, v, g
    torch.cuda.empty_cache()
    for E, kk in ((16, 1), (128, 8)):
        x = torch.randn(16384, 3584, device="cuda", dtype=torch.bfloat16)
        w, ids = torch.softmax(torch.randn(16384, E, device="cuda"), -1).topk(kk, -1)
        ids = ids.int()
        def dc():
            xl, offs, h = sbd.moe_dispatch(x, ids, w, E)
            return sbd.moe_combine(xl, h)
        with torch.no_grad():
            dc(); dc(); torch.cuda.synchronize(); dist.barrier()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                dc(); torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter(); dc(); torch.cuda.synchronize(); t1 = time.perf_counter()
        if rank == 0:
            print(f"===== moe E={E} top-{kk} (wall {1e3*(t1-t0):.3f} ms)\n" + table(p, 20), flush=True)
            evs = sorted([e for e in p.events() if e.device_type.name == "CUDA"], key=lambda e: e.time_range.start)
            t0 = evs[0].time_range.start
            for e in evs:
                print(f"  {e.time_range.start - t0:9.1f} +{e.time_range.elapsed_us():8.1f} us  {e.name[:70]}")
    dist.destroy_process_group()

if __name__ == "__main__":
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    mp.spawn(main, args=(2, port), nprocs=2)
