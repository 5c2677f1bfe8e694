# Host time of an eager decode step of the 7B shape (4 layers: gla, swa, gla, swa) on the GPU:
# ms/step synced, ms/step with the queue full, cProfile by function, torch profiler CPU self time.
import cProfile, pstats, sys, time, torch
from sbops.bench.model import qwen2_config, default_dtype
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM

cfg = SpikingBrainConfig.from_qwen2(qwen2_config(False), "7b")
cfg = cfg.replace(layer_types=("gla", "swa") * 2, vocab_size=4096)
dev = torch.device("cuda")
with default_dtype(torch.bfloat16), dev:
    m = SpikingBrainForCausalLM(cfg).eval()
print("layers", cfg.layer_types, flush=True)
with torch.inference_mode():
    cache = m.new_cache(1)
    ids = torch.randint(0, cfg.vocab_size, (1, 512), device=dev)
    m(ids, cache=cache, logits_to_keep=1)
    tok = ids[:, :1]
    def step(): return m(tok, cache=cache)
    for _ in range(10): step()
    torch.cuda.synchronize()
    for label, syn in (("synced", True), ("queued", False)):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(20):
                step()
                if syn: torch.cuda.synchronize()
            torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) / 20)
        print(f"eager step ({label}) {min(ts)*1e3:.3f} ms for {len(cfg.layer_types)} layers "
              f"= {min(ts)*1e6/len(cfg.layer_types):.0f} us/layer (lm_head incl.)", flush=True)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(50): step()
    pr.disable(); torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("tottime").print_stats(40)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(10): step()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
