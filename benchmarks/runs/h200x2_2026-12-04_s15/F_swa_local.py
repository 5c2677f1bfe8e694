"""One GPU: the local part of sbd.swa_attn on a shard with a 4096-row halo (new: the shard in place + a small
head call; old: [zero q; q] over [halo; k]) against sbops.swa_attn on the shard alone (the one-GPU baseline)."""
import statistics, torch, sbops
from sbops.distributed.swa import local_attn
H, HKV, D, W = 28, 4, 128, 4096
def timed(fn, reps=5):
    fn(); ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)
def old(q, k, v, hk, hv):
    n = hk.shape[1]; B, T = q.shape[:2]
    qe = torch.cat([q.new_zeros(B, n, H, D), q], 1)
    kv = torch.cat([torch.cat([hk, hv], -1), torch.cat([k, v], -1)], 1)
    return sbops.swa_attn(qe, kv[..., :D].contiguous(), kv[..., D:].contiguous(), W)[:, n:]
for T in (524288, 2097152):
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)
    q, k, v, hk, hv = mk(1, T, H, D), mk(1, T, HKV, D), mk(1, T, HKV, D), mk(1, W, HKV, D), mk(1, W, HKV, D)
    with torch.no_grad():
        ref = torch.cat([hk, k], 1), torch.cat([hv, v], 1)
        full = sbops.swa_attn(torch.cat([q.new_zeros(1, W, H, D), q], 1), ref[0], ref[1], W)[:, W:]
        new_o = local_attn(q, k, v, hk, hv, W, D ** -0.5, None, None)
        err = float((new_o.float() - full.float()).norm() / full.float().norm())
        t_base = timed(lambda: sbops.swa_attn(q, k, v, W)); t_new = timed(lambda: local_attn(q, k, v, hk, hv, W, D ** -0.5, None, None))
        t_old = timed(lambda: old(q, k, v, hk, hv))
    print(f"T/GPU={T}: shard alone {t_base:.2f} ms | new local {t_new:.2f} ms ({t_base/t_new:.3f}) | old local {t_old:.2f} ms "
          f"({t_base/t_old:.3f}) | new vs old-path output rel diff {err:.2e}", flush=True)
    for t in (q, k, v): t.requires_grad_()
    do = mk(1, T, H, D)
    def fb(fn):
        fn().backward(do)
        for t in (q, k, v): t.grad = None
    t_base = timed(lambda: fb(lambda: sbops.swa_attn(q, k, v, W)), 3)
    t_new = timed(lambda: fb(lambda: local_attn(q, k, v, hk, hv, W, D ** -0.5, None, None)), 3)
    print(f"  fwd+bwd: shard alone {t_base:.2f} ms | new local {t_new:.2f} ms ({t_base/t_new:.3f})", flush=True)
    del q, k, v, do; torch.cuda.empty_cache()
