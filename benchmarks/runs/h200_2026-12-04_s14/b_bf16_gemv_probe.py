"""Probe: bf16 x[1,K] @ W[N,K]^T, a Triton CUDA-core GEMV (split-K, last-arriver) vs cuBLAS, GPU time under
CUDA graphs with the weights rotated over > 200 MB.  Shapes of the 7B decode at B = 1."""
import json, torch, triton, triton.language as tl


@triton.jit
def gemv_kernel(x_ptr, w_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, k_per, SPLIT, USE_WS: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rn64 = (rn % N).to(tl.int64)
    rk = tl.arange(0, BK)
    w_rows = w_ptr + rn64[:, None] * K
    k_begin = pid_k * k_per
    k_end = tl.minimum(K, k_begin + k_per)
    acc2 = tl.zeros([BN, BK], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BK):
        kk = k0 + rk
        km = kk < k_end
        xv = tl.load(x_ptr + kk, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w_rows + kk[None, :], mask=km[None, :], other=0.0).to(tl.float32)
        acc2 += w * xv[None, :]
    acc = tl.sum(acc2, axis=1)
    nmask = rn < N
    if USE_WS:
        ws = ws_ptr + rn.to(tl.int64)
        tl.store(ws + pid_k.to(tl.int64) * N, acc, mask=nmask)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            acc = tl.zeros([BN], dtype=tl.float32)
            for s in range(0, SPLIT):
                acc += tl.load(ws + s * N, mask=nmask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=nmask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)
    else:
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=nmask)


CNT = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")


def gemv(x, w, y, ws, BN, BK, split, warps):
    N, K = w.shape
    grid_n = triton.cdiv(N, BN)
    k_per = triton.cdiv(triton.cdiv(K, split), BK) * BK
    split = triton.cdiv(K, k_per)
    gemv_kernel[(grid_n, split)](x, w, y, ws, CNT, N, K, k_per, split, USE_WS=split > 1, BN=BN, BK=BK, num_warps=warps)


def gbench(fns, reps=20):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns: f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns: f()
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[reps // 2] / len(fns)


for N, K in [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944), (152064, 3584)]:
    nrot = max(2, -(-400_000_000 // (N * K * 2)))
    Ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(nrot)]
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1, N, device="cuda", dtype=torch.bfloat16)
    ws = torch.empty(64 * N, device="cuda", dtype=torch.float32)
    tb = gbench([lambda W=W: torch.mm(x, W.t()) for W in Ws])
    row = {"N": N, "K": K, "cublas_us": round(tb * 1e3, 2), "cublas_TBps": round(N * K * 2 / tb / 1e9, 3)}
    best = None
    for BN, BK, warps in [(8, 512, 4), (16, 512, 8), (8, 1024, 8), (4, 1024, 4), (16, 256, 4), (32, 256, 8), (4, 2048, 8), (2, 2048, 4)]:
        grid_n = triton.cdiv(N, BN)
        for per_sm in (4, 8, 16):
            split = max(1, min(triton.cdiv(per_sm * 132, grid_n), triton.cdiv(K, BK)))
            try:
                gemv(x, Ws[0], y, ws, BN, BK, split, warps)
                err = ((y.float() - torch.mm(x, Ws[0].t()).float()).norm() / torch.mm(x, Ws[0].t()).float().norm()).item()
                t = gbench([lambda W=W: gemv(x, W, y, ws, BN, BK, split, warps) for W in Ws])
            except Exception as e:
                print(json.dumps({"failed": [BN, BK, warps, split], "e": str(e)[:100]})); continue
            row[f"{BN}x{BK}w{warps}s{split}"] = round(t * 1e3, 2)
            if best is None or t < best[0]:
                best = (t, (BN, BK, warps, split), err)
    row["best"] = {"cfg": best[1], "us": round(best[0] * 1e3, 2), "TBps": round(N * K * 2 / best[0] / 1e9, 3),
                   "x_cublas": round(tb / best[0], 3), "rel_err": best[2]}
    print(json.dumps(row), flush=True)
    del Ws
    torch.cuda.empty_cache()
