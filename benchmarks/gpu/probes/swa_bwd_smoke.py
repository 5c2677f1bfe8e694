"""Smoke check of the sm_90 SWA backward before the test suite (a hung or wrong kernel shows here first, in
seconds): a few shapes against the float64 reference, both dQ variants. Exit 1 on any miss."""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests"))
from reference import ref_swa_attn, rel_err  # noqa: E402

import sbops  # noqa: E402,F401
from sbops._backends.cuda import sm90  # noqa: E402

ok = True
for (B, T, H, HKV, window) in [(1, 64, 2, 1, 16), (1, 200, 4, 2, 50), (2, 129, 8, 2, -1), (1, 1000, 28, 4, 300)]:
    g = torch.Generator().manual_seed(T)
    q, k, v, do = (torch.randn(B, T, h, 128, generator=g).to("cuda", torch.bfloat16) for h in (H, HKV, HKV, H))
    o, lse = sm90.swa_fwd(q, k, v, window, None)
    leaves = [x.cpu().double().requires_grad_() for x in (q, k, v)]
    ro, _ = ref_swa_attn(*leaves, window)
    want = torch.autograd.grad((ro * do.cpu().double()).sum(), leaves)
    for fuse in (True, False):
        got = sm90.swa_bwd(q, k, v, o, lse, do, None, window, None, fuse_dq=fuse)
        torch.cuda.synchronize()
        errs = [rel_err(a, b) for a, b in zip(got[:3], want)]
        good = all(e <= 2e-2 for e in errs)
        ok &= good
        print(f"B={B} T={T} H={H}/{HKV} w={window} fuse_dq={fuse}: dq {errs[0]:.2e} dk {errs[1]:.2e} "
              f"dv {errs[2]:.2e} {'ok' if good else 'MISS'}", flush=True)
sys.exit(0 if ok else 1)
