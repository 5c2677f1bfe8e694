"""Usage: python benchmarks/gpu/probes/host_time_per_call.py (an installed CUDA build of sbops).

Where the host time of one sbops call goes on the GPU: public, torch.ops (custom op + autograd
layer), the Python backend kernel itself, the wrapper's checks alone; then cProfile of public calls."""
import cProfile, importlib, pstats, io, time, torch, sbops
torch.set_num_threads(1)
dev = "cuda"; bf = torch.bfloat16
ops = torch.ops.sbops
def r(*s, dt=bf): return torch.randn(*s, device=dev, dtype=dt)
q, k, v = r(1, 64, 4, 128), r(1, 64, 2, 128), r(1, 64, 2, 128)
g = torch.nn.functional.logsigmoid(r(1, 64, 2, dt=torch.float32))
qd, kd, vd, gd = r(1, 4, 128), r(1, 2, 128), r(1, 2, 128), torch.nn.functional.logsigmoid(r(1, 2, dt=torch.float32))
state = torch.zeros(2, 2, 128, 128, device=dev)
idx = torch.tensor([1], device=dev, dtype=torch.int32)
kc, vc = r(2, 64, 2, 128), r(2, 64, 2, 128)
sl = torch.tensor([30], device=dev, dtype=torch.int32); pos = torch.tensor([2], device=dev, dtype=torch.int32)
LA = importlib.import_module("sbops.ops.linear_attn"); SW = importlib.import_module("sbops.ops.swa")
from sbops._backends.cuda.triton import linear_attn as tla, swa as tswa
def best(fn, n=200, rep=7):
    for _ in range(30): fn()
    torch.cuda.synchronize(); out = []
    for _ in range(rep):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return min(out)
cases = {
 "linear_attn": [("public", lambda: sbops.linear_attn(q, k, v, g)), ("torch.ops", lambda: ops.linear_attn(q, k, v, g, 0.088, None, None)),
                 ("triton fn", lambda: tla.linear_attn_fwd(q, k, v, g, 0.088, None, None)), ("check", lambda: LA._check(q, k, v, g, None, None))],
 "swa_attn": [("public", lambda: sbops.swa_attn(q, k, v, 16)), ("torch.ops", lambda: ops.swa_attn(q, k, v, 16, 0.088, None, None, None)),
              ("triton fn", lambda: tswa.swa_attn_fwd(q, k, v, 16, 0.088, None, None, None))],
 "linear_attn_decode": [("public", lambda: sbops.linear_attn_decode(qd, kd, vd, gd, state, idx)), ("torch.ops", lambda: ops.linear_attn_decode(qd, kd, vd, gd, state, idx, 0.088))],
 "swa_decode": [("public", lambda: sbops.swa_decode(qd, kc, vc, sl, 16, slot_indices=idx)), ("torch.ops", lambda: ops.swa_decode(qd, kc, vc, sl, 16, 0.088, idx))],
 "swa_cache_write": [("public", lambda: sbops.swa_cache_write(kd, vd, kc, vc, pos, idx)), ("torch.ops", lambda: ops.swa_cache_write(kd, vd, kc, vc, pos, idx))],
}
for mode in ("grad-enabled", "no_grad", "inference_mode"):
    ctx = {"grad-enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with ctx():
        for name, fns in cases.items():
            print(f"[{mode}] {name:20s} " + "  ".join(f"{lab} {best(fn):6.1f}" for lab, fn in fns), flush=True)
for name in ("linear_attn", "swa_attn", "swa_decode"):
    pub = cases[name][0][1]
    pr = cProfile.Profile(); pr.enable()
    for _ in range(500): pub()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18); print(f"=== cProfile {name} x500\n" + s.getvalue()[:3500])
