# Decode B=1 / B=32 of the 7B bf16 model under CUDA graphs with side-stream L2 prefetches of each layer's o_proj
# weight (+ the first X MB of its fused gate_up weight) forked after the q/k/v GEMM, joined at the layer's end.
# python l2_model.py  (needs /tmp/libl2p.so from l2p_lib.cu)
import ctypes, sys, time, torch
import sbops
from sbops.bench.model import qwen2_config, default_dtype
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
from sbops.models.graphs import DecodeGraphs
from sbops.models.spikingbrain import DecoderLayer
from sbops.nn import attention as att

lib = ctypes.CDLL("/tmp/libl2p.so")
lib.l2_prefetch.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
MB = 1 << 20
PLAN = {"gu_mb": None}   # None: no prefetch
side = None

orig_qkv = att._QKVOProjections._qkv
def qkv(self, x, extra=()):
    out = orig_qkv(self, x, extra)
    if PLAN["gu_mb"] is not None and x.shape[1] == 1:
        cur = torch.cuda.current_stream()
        side.wait_stream(cur)
        lay = self._sbops_layer
        w = self.o_proj.weight
        lib.l2_prefetch(w.data_ptr(), w.numel() * w.element_size(), side.cuda_stream)
        if PLAN["gu_mb"]:
            g = lay.mlp.gate_proj.weight   # a view at the start of the fused [gate; up] weight
            lib.l2_prefetch(g.data_ptr(), PLAN["gu_mb"] * MB, side.cuda_stream)
        lay._sbops_forked = True
    return out
att._QKVOProjections._qkv = qkv

orig_fwd = DecoderLayer.forward
def fwd(self, x, cache=None, positions=None):
    out = orig_fwd(self, x, cache, positions)
    if self.__dict__.pop("_sbops_forked", False):
        torch.cuda.current_stream().wait_stream(side)
    return out
DecoderLayer.forward = fwd

cfg = SpikingBrainConfig.from_qwen2(qwen2_config(False), "7b")
dev = torch.device("cuda")
with default_dtype(torch.bfloat16), dev:
    model = SpikingBrainForCausalLM(cfg).eval()
for lay in model.model.layers:
    lay.self_attn.__dict__["_sbops_layer"] = lay
side = torch.cuda.Stream()
V = cfg.vocab_size
variants = [None, 0, 16, 32, None, 0, 16, 32]
res = {}
with torch.inference_mode(), sbops.data_checks(False):
    for B in (1, 32):
        cache = model.new_cache(B + 1)
        for t in cache.tensors():
            t.normal_(0, 0.02)
        slots = torch.arange(B, device=dev)
        graphs = {}
        for v in set(variants):
            PLAN["gu_mb"] = v
            cache.seq_lens.fill_(4096); cache.seq_lens[B] = 0
            g = DecodeGraphs(model, cache, B, B)
            g.capture(B)
            graphs[v] = g
        for rnd, v in enumerate(variants):
            g = graphs[v]
            cache.seq_lens.fill_(4096); cache.seq_lens[B] = 0
            ids = torch.randint(0, V, (B,), device=dev)
            for _ in range(3):
                ids = g.step(ids, slots).argmax(-1)
            torch.cuda.synchronize()
            n = 100
            t = time.perf_counter()
            for _ in range(n):
                ids = g.step(ids, slots).argmax(-1)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / n * 1e3
            res.setdefault((B, v), []).append(ms)
            print(f"B={B} prefetch={'off' if v is None else f'o+gu{v}MB'} round {rnd // 4}: {ms:.3f} ms/step", flush=True)
        del graphs, cache
        torch.cuda.empty_cache()
for (B, v), ms in sorted(res.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
    print(f"SUMMARY B={B} prefetch={'off' if v is None else f'o+gu{v}MB'}: best {min(ms):.3f} ms/step of {ms}")
