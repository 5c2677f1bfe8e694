"""GPU kernel time of one prefill chunk and one decode step of the 7B-shaped model, by kernel.
usage: python benchmarks/gpu/probes/model_kernel_profile.py [CHUNK] [--no-fuse-elementwise] [--no-fuse] [--kernels] [--trace] [--fp8]
  [--down-int8] [--int8ch]
--fp8: the W8ASpike model (spike_k=3, fp8 weights), as `python -m sbops.bench.model --weight-quant fp8` builds it;
--down-int8: with its down projections in int8 (`--down-quant int8_channel`);
--int8ch: the W8ASpike model with every projection int8 per channel (`--weight-quant int8_channel`).
--trace: the first TRACE_N (100) kernels of the profiled chunk in launch order, with their times.
--kernels: first time the fused elementwise kernels against the torch code at the 7B shapes of one chunk."""
import os, sys, time, torch, sbops
import sbops.nn.common
_flags = {a for a in sys.argv[1:] if a.startswith("--")}
sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if not a.startswith("--")]
sbops.nn.common.FUSE_ELEMENTWISE = "--no-fuse-elementwise" not in _flags
sbops.nn.common.FUSE_PROJECTIONS = "--no-fuse" not in _flags
print(f"FUSE_ELEMENTWISE={sbops.nn.common.FUSE_ELEMENTWISE} FUSE_PROJECTIONS={sbops.nn.common.FUSE_PROJECTIONS}", flush=True)
from collections import defaultdict
from torch.profiler import profile, ProfilerActivity
from sbops.bench.model import qwen2_config
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
dev = torch.device("cuda")
cfg = SpikingBrainConfig.from_qwen2(qwen2_config(False), "7b")
if "--fp8" in _flags:
    cfg = cfg.replace(spike_k=3.0, weight_quant="fp8")
    if "--down-int8" in _flags:
        cfg = cfg.replace(down_weight_quant="int8_channel")
elif "--int8ch" in _flags:
    cfg = cfg.replace(spike_k=3.0, weight_quant="int8_channel")
torch.manual_seed(0)
with torch.device(dev):
    torch.set_default_dtype(torch.bfloat16)
    model = SpikingBrainForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
print({k: v for k, v in vars(cfg).items() if k in ("spike_k", "layer_types", "window", "hidden_size", "num_hidden_layers")}, flush=True)
def table(prof, title, n=22):
    tot = defaultdict(float); cnt = defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            tot[e.name] += e.device_time; cnt[e.name] += 1
    s = sum(tot.values())
    print(f"=== {title}: GPU kernel time {s/1e3:.3f} ms in {sum(cnt.values())} kernels")
    for k, v in sorted(tot.items(), key=lambda x: -x[1])[:n]:
        print(f"{v/1e3:9.3f} ms {cnt[k]:5d}x  {k[:110]}")
C = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
def kernels_vs_torch(T):
    import torch.nn.functional as F
    from sbops.nn.common import RMSNorm, apply_rope
    from sbops._backends.cuda.triton import fused_norm as fn, fused_rope_swiglu as fr
    Hd, I, H, HKV, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    bf = dict(device=dev, dtype=torch.bfloat16)
    x, r = torch.randn(1, T, Hd, **bf), torch.randn(1, T, Hd, **bf)
    o = torch.randn(1, T, H, D, **bf)
    gu = torch.randn(1, T, 2 * I, **bf); g, u = gu.split(I, -1)
    qkv = torch.randn(1, T, (H + 2 * HKV) * D, **bf)
    q, k, _ = qkv.split([H * D, HKV * D, HKV * D], -1)
    q, k = q.view(1, T, H, D), k.view(1, T, HKV, D)
    ang = torch.arange(T, device=dev).float()[:, None] * torch.rand(D // 2, device=dev)
    cos, sin = [f(torch.cat((ang, ang), -1))[None, :, None] for f in (torch.cos, torch.sin)]
    m, mh = RMSNorm(Hd).to(**bf), RMSNorm(D).to(**bf)
    def t(fn_, n=20):
        fn_(); torch.cuda.synchronize(); a, b = torch.cuda.Event(True), torch.cuda.Event(True); a.record()
        for _ in range(n): fn_()
        b.record(); torch.cuda.synchronize(); return a.elapsed_time(b) / n
    def torch_norm(*a, **kw):
        old, sbops.nn.common.FUSE_ELEMENTWISE = sbops.nn.common.FUSE_ELEMENTWISE, False
        try: return m(*a, **kw)
        finally: sbops.nn.common.FUSE_ELEMENTWISE = old
    def torch_head_norm():
        old, sbops.nn.common.FUSE_ELEMENTWISE = sbops.nn.common.FUSE_ELEMENTWISE, False
        try: return mh(o)
        finally: sbops.nn.common.FUSE_ELEMENTWISE = old
    rows = [("input norm", lambda: fn.rms_norm(x, m.weight, 1e-6), lambda: torch_norm(x), 4 * x.numel()),
            ("prenorm+residual", lambda: fn.rms_norm(x, m.weight, 1e-6, r, True), lambda: torch_norm(x, r, prenorm=True), 8 * x.numel()),
            ("head norm D=128", lambda: fn.rms_norm(o, mh.weight, 1e-6), torch_head_norm, 4 * o.numel()),
            ("silu_mul", lambda: fr.silu_mul(g, u), lambda: F.silu(g) * u, 6 * g.numel()),
            ("rope q,k", lambda: fr.rope(q, k, cos, sin), lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin)),
             4 * (q.numel() + k.numel()))]
    print(f"=== fused elementwise kernels vs torch at T={T} (7B shapes, bf16)")
    for name, fz, tz, nbytes in rows:
        a, b = t(fz), t(tz)
        print(f"{name:18s} fused {a:7.3f} ms ({nbytes / a / 1e6:6.0f} GB/s)   torch {b:7.3f} ms   saved {b - a:7.3f} ms")
if "--kernels" in _flags:
    with torch.inference_mode():
        kernels_vs_torch(C)
with torch.inference_mode():
    cache = model.new_cache(2)
    ids = torch.randint(0, cfg.vocab_size, (1, C), device=dev)
    for _ in range(2):
        cache = model.new_cache(2); model(ids, cache=cache, logits_to_keep=1)
    torch.cuda.synchronize()
    cache = model.new_cache(2)
    model(ids, cache=cache, logits_to_keep=1)   # first chunk fills the cache; profile the second
    torch.cuda.synchronize(); t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        model(ids, cache=cache, logits_to_keep=1); torch.cuda.synchronize()
    print(f"prefill chunk {C} after {C}: wall {1e3*(time.perf_counter()-t):.1f} ms (profiled)")
    table(p, f"prefill chunk of {C}")
    if "--trace" in _flags:   # the first kernels of the chunk in launch order: which projection each one serves
        evs = sorted((e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
        print("=== first kernels of the chunk, in order (us)")
        for e in evs[:int(os.environ.get("TRACE_N", "100"))]:
            print(f"{e.device_time:9.1f}  {e.name[:100]}")
    for B in (1, 32):
        cache = model.new_cache(B + 1)
        cache.seq_lens.fill_(4096)
        slots = torch.arange(B, device=dev); tok = torch.randint(0, cfg.vocab_size, (B, 1), device=dev)
        for _ in range(3): model(tok, cache=cache, slot_indices=slots)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            model(tok, cache=cache, slot_indices=slots); torch.cuda.synchronize()
        table(p, f"decode step B={B}", 26)
