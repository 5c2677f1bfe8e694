"""Dev check of the C++ CPU attention references (backends/cpu/linear_attn.cpp, swa.cpp).

Builds only those two files plus the schemas into a throwaway extension (no package build) and
compares every op with the float64 references of tests/reference.py on fresh random inputs:
forward outputs and autograd gradients, float64 / float32 (bound 1e-5) and bfloat16 inputs
(bound 1e-2, gradients 2e-2), decode vs prefill.  Run from the repo root:

    python backends/cpu/cpu_attn_dev_check.py
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from reference import (ref_linear_attn, ref_linear_attn_decode, ref_swa_attn,  # noqa: E402
                       ref_swa_decode, rel_err)

BUILD = "/tmp/h_cpu_attn_build"
os.makedirs(BUILD, exist_ok=True)
load(name="sbops_cpu_attn_dev",
     sources=[os.path.join(ROOT, p) for p in
              ("csrc/ops.cpp", "backends/cpu/linear_attn.cpp", "backends/cpu/swa.cpp")],
     extra_include_paths=[os.path.join(ROOT, "csrc/include")], build_directory=BUILD,
     extra_cflags=["-O2", "-fopenmp"], extra_ldflags=["-fopenmp"], is_python_module=False,
     verbose=False)
ops = torch.ops.sbops
f64 = torch.float64
TOL = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 1e-2}
GTOL = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 2e-2}
failures, n_checks = [], 0
worst = {}  # (op, dtype) -> largest relative error seen


def check(name, out, ref, tol):
    global n_checks
    n_checks += 1
    err = rel_err(out, ref)
    words = name.split()
    kind = "grad" if words[-1] in ("dq", "dk", "dv", "dg", "dh0", "dsink_k", "dsink_v") else "out"
    key = (f"{words[0]} {kind}", next(w.split("=")[-1] for w in words if "torch." in w))
    worst[key] = max(worst.get(key, 0.0), err) if err == err else float("nan")
    if not err <= tol:  # NaN fails
        failures.append(f"{name}: rel err {err:.3g} > {tol}")
        print("FAIL", failures[-1])


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=f64).to(dtype)


# --------------------------------------------------------------------------- linear attention
def make_gate(mode, lead, HKV, K, dtype):
    if mode is None:
        return None
    shape = (*lead, HKV) if mode == "head" else (*lead, HKV, K)
    if mode == "strong":  # strongest decay the kernels must handle
        return torch.full((*lead, HKV, K), -20.0, dtype=f64).to(dtype)
    return (F.logsigmoid(torch.randn(shape, dtype=f64)) / 4).to(dtype)


def check_linear_attn(B, T, H, HKV, K, V, gate, init, cu, dtype, g_dtype=None):
    name = f"linear_attn B{B} T{T} H{H}/{HKV} K{K} V{V} g={gate} h0={init} cu={cu} {dtype}"
    q = rand(B, T, H, K, dtype=dtype).relu()
    k = rand(B, T, HKV, K, dtype=dtype).relu()
    v = rand(B, T, HKV, V, dtype=dtype)
    g = make_gate(gate, (B, T), HKV, K, g_dtype or dtype)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    N = B if cu is None else len(cu) - 1
    h0 = torch.randn(N, HKV, K, V) if init else None
    scale = K ** -0.5
    o, hT = ops.linear_attn(q, k, v, g, scale, h0, cu_t)
    assert o.dtype == dtype and hT.dtype == torch.float32 and hT.shape == (N, HKV, K, V)

    # float64 reference on the very same (possibly bf16-rounded) values, with autograd
    leaves = [t.detach().to(f64).requires_grad_() if t is not None else None
              for t in (q, k, v, g, h0)]
    ro, rT = ref_linear_attn(*leaves[:4], scale=scale, initial_state=leaves[4], cu_seqlens=cu_t)
    check(name + " o", o, ro, TOL[dtype])
    check(name + " final_state", hT, rT, TOL[dtype])

    do = torch.randn_like(ro)
    dT = torch.randn_like(rT)
    grads = ops.linear_attn_bwd(q, k, v, g, scale, h0, cu_t, do.to(dtype), dT.float())
    live = [t for t in leaves if t is not None]
    rgrads = torch.autograd.grad((ro * do).sum() + (rT * dT).sum(), live)
    rgrads = iter(rgrads)
    for gname, got, leaf, src in zip(("dq", "dk", "dv", "dg", "dh0"), grads, leaves,
                                     (q, k, v, g, h0)):
        if leaf is None:
            assert got.numel() == 0, f"{name} {gname} should be empty"
            continue
        assert got.shape == src.shape and got.dtype == src.dtype, (name, gname)
        check(f"{name} {gname}", got, next(rgrads), GTOL[dtype])


def check_linear_decode(N, H, HKV, K, V, gate, state_dtype, steps):
    """linear_attn_decode step by step (shuffled slots) vs linear_attn prefill and vs the ref."""
    name = f"linear_attn_decode N{N} H{H}/{HKV} K{K} V{V} g={gate} state={state_dtype}"
    q = torch.randn(N, steps, H, K).relu()
    k = torch.randn(N, steps, HKV, K).relu()
    v = torch.randn(N, steps, HKV, V)
    g = make_gate(gate, (N, steps), HKV, K, torch.float32)
    h0 = torch.randn(N, HKV, K, V)
    S = N + 3
    slots = torch.randperm(S)[:N]
    state = torch.randn(S, HKV, K, V).to(state_dtype)
    state[slots] = h0.to(state_dtype)
    h0 = state[slots].float()  # what the cache actually holds
    untouched = [i for i in range(S) if i not in slots.tolist()]
    before = state[untouched].clone()
    outs = []
    for t in range(steps):
        gt = None if g is None else g[:, t]
        ro, rstate = ref_linear_attn_decode(q[:, t], k[:, t], v[:, t], gt, state, slots,
                                            scale=K ** -0.5)
        o = ops.linear_attn_decode(q[:, t], k[:, t], v[:, t], gt, state, slots, K ** -0.5)
        outs.append(o)
        check(f"{name} step{t} o vs ref", o, ro, 1e-5 if state_dtype == torch.float32 else 1e-2)
        check(f"{name} step{t} state vs ref", state, rstate,
              1e-5 if state_dtype == torch.float32 else 1e-2)
    assert torch.equal(state[untouched], before), name + ": touched a slot not in state_indices"
    po, pT = ops.linear_attn(q, k, v, g, K ** -0.5, h0, None)
    tol = 1e-5 if state_dtype == torch.float32 else 2e-2
    check(name + " vs prefill o", torch.stack(outs, 1), po, tol)
    check(name + " vs prefill state", state[slots], pT, tol)


# --------------------------------------------------------------------------- sliding window
def check_swa(B, T, H, HKV, D, window, M, cu, dtype, with_glse=True):
    name = f"swa_attn B{B} T{T} H{H}/{HKV} D{D} w{window} M{M} cu={cu} {dtype}"
    q = rand(B, T, H, D, dtype=dtype)
    k, v = rand(B, T, HKV, D, dtype=dtype), rand(B, T, HKV, D, dtype=dtype)
    sk = rand(M, HKV, D, dtype=dtype) if M else None
    sv = rand(M, HKV, D, dtype=dtype) if M else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int64)
    scale = D ** -0.5
    o, lse = ops.swa_attn(q, k, v, window, scale, cu_t, sk, sv)
    assert o.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (B, T, H)
    leaves = [t.detach().to(f64).requires_grad_() if t is not None else None
              for t in (q, k, v, sk, sv)]
    ro, rl = ref_swa_attn(*leaves[:3], window, scale=scale, cu_seqlens=cu_t,
                          sink_k=leaves[3], sink_v=leaves[4])
    check(name + " o", o, ro, TOL[dtype])
    check(name + " lse", lse, rl, TOL[dtype])

    do = torch.randn_like(ro)
    dl = torch.randn_like(rl) if with_glse else None
    loss = (ro * do).sum() + ((rl * dl).sum() if with_glse else 0)
    live = [t for t in leaves if t is not None]
    rgrads = iter(torch.autograd.grad(loss, live))
    grads = ops.swa_attn_bwd(q, k, v, o, lse, do.to(dtype), None if dl is None else dl.float(),
                             window, scale, cu_t, sk, sv)
    for gname, got, leaf, src in zip(("dq", "dk", "dv", "dsink_k", "dsink_v"), grads, leaves,
                                     (q, k, v, sk, sv)):
        if leaf is None:
            assert got.numel() == 0, f"{name} {gname} should be empty"
            continue
        assert got.shape == src.shape and got.dtype == src.dtype, (name, gname)
        check(f"{name} {gname}", got, next(rgrads), GTOL[dtype])


def check_swa_decode(N, H, HKV, D, window, C, cache_dtype):
    """Write each sequence's tokens with swa_cache_write, decode the last one, compare with the
    last row of swa_attn on the same sequence and with ref_swa_decode."""
    name = f"swa_decode N{N} H{H}/{HKV} D{D} w{window} C{C} {cache_dtype}"
    S = N + 2
    slots = torch.randperm(S)[:N]
    kc = torch.zeros(S, C, HKV, D, dtype=cache_dtype)
    vc = torch.zeros_like(kc)
    lens = torch.randint(1, 3 * C, (N,)) if window >= 0 else torch.randint(1, C + 1, (N,))
    Lmax = int(lens.max())
    k = torch.randn(N, Lmax, HKV, D)
    v = torch.randn(N, Lmax, HKV, D)
    q = torch.randn(N, H, D)
    for p in range(Lmax):  # token p of every sequence still running at step p
        live = (lens > p).nonzero().flatten()
        pos = torch.full((len(live),), p)
        ops.swa_cache_write(k[live, p], v[live, p], kc, vc, pos, slots[live])
    o = ops.swa_decode(q, kc, vc, lens, window, D ** -0.5, slots)
    check(name + " vs ref", o, ref_swa_decode(q, kc, vc, lens, window, slot_indices=slots),
          TOL[torch.float32])
    for i in range(N):  # prefill on the cache-rounded keys; its last query is q[i]
        L = int(lens[i])
        qs = torch.randn(1, L, H, D)
        qs[0, -1] = q[i]
        ks = k[i, :L].to(cache_dtype).float()[None]
        vs = v[i, :L].to(cache_dtype).float()[None]
        po, _ = ops.swa_attn(qs, ks, vs, window, D ** -0.5, None, None, None)
        check(f"{name} seq{i} vs prefill last row", o[i], po[0, -1], TOL[torch.float32])


def expect_error(fn, needle):
    global n_checks
    n_checks += 1
    try:
        fn()
    except RuntimeError as e:
        if needle in str(e):
            return
        failures.append(f"error message lacks {needle!r}: {e}")
        return
    failures.append(f"no error raised (expected {needle!r})")


def main():
    torch.manual_seed(0)
    # linear attention forward + backward
    for dtype in (f64, torch.float32):
        for T in (1, 63, 300):
            check_linear_attn(2, T, 4, 2, 32, 48, "key", True, None, dtype)
        for gate in (None, "head", "key", "strong"):
            check_linear_attn(1, 130, 2, 2, 64, 64, gate, gate == "head", None, dtype)
        check_linear_attn(1, 300, 4, 1, 16, 24, "key", True, [0, 5, 5, 70, 200, 300], dtype)
        check_linear_attn(1, 300, 4, 2, 16, 8, "head", False, [0, 1, 129, 300], dtype)
    check_linear_attn(1, 63, 4, 2, 128, 128, "key", True, None, torch.float32)
    check_linear_attn(2, 63, 4, 2, 64, 64, "key", True, None, torch.bfloat16)
    check_linear_attn(1, 100, 2, 1, 32, 32, "head", False, [0, 40, 100], torch.bfloat16)
    check_linear_attn(1, 63, 4, 2, 32, 32, "key", True, None, torch.bfloat16, torch.float32)
    check_linear_attn(1, 1000, 4, 2, 16, 16, "key", True, None, torch.float32)
    # linear attention decode
    for gate in (None, "head", "key", "strong"):
        check_linear_decode(3, 4, 2, 32, 16, gate, torch.float32, 5)
    check_linear_decode(2, 2, 2, 64, 64, "key", torch.bfloat16, 4)

    # sliding window forward + backward
    for dtype in (f64, torch.float32):
        for T in (1, 63, 300):
            for window in (0, 1, 7, 500, -1):
                check_swa(2 if T < 300 else 1, T, 4, 2, 64, window, 0, None, dtype)
        check_swa(1, 63, 2, 2, 128, 7, 0, None, dtype)
        check_swa(2, 63, 4, 2, 32, 7, 5, None, dtype)
        check_swa(1, 63, 4, 4, 32, -1, 3, None, dtype, with_glse=False)
        check_swa(1, 300, 4, 2, 32, 7, 2, [0, 1, 64, 64, 250, 300], dtype)
        check_swa(1, 300, 4, 1, 32, -1, 0, [0, 100, 300], dtype)
    check_swa(2, 63, 4, 2, 64, 7, 4, None, torch.bfloat16)
    check_swa(1, 300, 4, 2, 128, 31, 0, [0, 120, 300], torch.bfloat16)
    check_swa(1, 1000, 2, 1, 16, 100, 2, None, torch.float32)
    # sliding window decode
    for window in (0, 1, 7, -1):
        check_swa_decode(3, 4, 2, 32, window, 8 if window < 0 else window + 1 + 2, torch.float32)
    check_swa_decode(2, 4, 4, 64, 5, 6, torch.bfloat16)

    # errors: data-dependent checks name the argument
    q = torch.randn(2, 4, 8)
    cache = torch.zeros(3, 4, 2, 8)
    expect_error(lambda: ops.swa_decode(q, cache, cache, torch.tensor([9, 2]), 7, 1.0, None),
                 "ring buffer holds only C=4")
    expect_error(lambda: ops.swa_decode(q, cache, cache, torch.tensor([1, 2]), 1, 1.0,
                                        torch.tensor([0, 3])), "slot_indices[1]=3")
    state = torch.zeros(3, 2, 8, 8)
    kk = torch.randn(2, 2, 8)
    expect_error(lambda: ops.linear_attn_decode(q, kk, kk, None, state, torch.tensor([1, 1]), 1.0),
                 "holds slot 1 twice")
    expect_error(lambda: ops.linear_attn(torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4),
                                         torch.randn(1, 5, 2, 4), None, 1.0, None,
                                         torch.tensor([0, 6])), "cu_seqlens")

    for (op, dt), err in sorted(worst.items()):
        print(f"worst rel err {op:<23} {dt:<15} {err:.2e}")
    print(f"{n_checks} checks, {len(failures)} failures")
    for f in failures:
        print("  ", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
