"""Dev check for the C++ CPU reference of spike coding and MoE routing (spike.cpp, moe.cpp).

Builds only csrc/ops.cpp + backends/cpu/{spike,moe}.cpp as a throwaway extension (so it runs
while the rest of the package is incomplete), then compares every op against the float64
references in tests/reference.py on fresh random inputs, gradients against torch.autograd on
those references, and checks the data-dependent error messages.

    python backends/cpu/cpu_misc_dev_check.py        # from the repo root; exit code 1 on failure
"""
from __future__ import annotations

import math
import os
import sys

import torch
from torch.utils.cpp_extension import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = "/tmp/h_cpu_misc_build"

# Filled in by build_and_import(): importing this file (it sits in a package folder) has no side effects.
R = None    # tests/reference.py
ops = None  # torch.ops.sbops with the freshly built CPU kernels


def build_and_import() -> None:
    """Build the throwaway extension and import the references (repo checkout only)."""
    global R, ops
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import reference

    os.makedirs(BUILD, exist_ok=True)
    load(name="sbops_cpu_misc_dev",
         sources=[os.path.join(ROOT, p) for p in
                  ("csrc/ops.cpp", "backends/cpu/spike.cpp", "backends/cpu/moe.cpp")],
         build_directory=BUILD, extra_cflags=["-O2", "-fopenmp"], extra_ldflags=["-fopenmp"],
         is_python_module=False)
    R, ops = reference, torch.ops.sbops


FAILED: list[str] = []
N_PASSED = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global N_PASSED
    if ok:
        N_PASSED += 1
    else:
        FAILED.append(f"{name} {detail}")
        print(f"FAIL {name} {detail}")


def check_close(name: str, out, ref, tol: float = 1e-5) -> None:
    if float(ref.detach().double().norm()) < 1e-12:
        # A reference that is zero up to float64 rounding (e.g. the gradient of renormalized
        # top-1 weights, which are identically 1): the relative error means nothing, so
        # require the output to be zero up to float32 rounding instead.
        n = float(out.detach().double().norm())
        check(name, n <= 1e-6, f"|out|={n:.3g} for a zero reference")
        return
    err = R.rel_err(out, ref)
    check(name, err <= tol, f"rel_err={err:.3g} > {tol}")  # NaN fails the comparison too


def check_equal(name: str, out, ref) -> None:
    ok = out.shape == ref.shape and torch.equal(out.long(), ref.long())
    detail = "" if ok else f"shape {tuple(out.shape)} vs {tuple(ref.shape)}, " \
        f"{int((out.long() != ref.long()).sum()) if out.shape == ref.shape else '-'} mismatches"
    check(name, ok, detail)


def check_raises(name: str, fn, *needles: str) -> None:
    try:
        fn()
    except RuntimeError as e:
        msg = str(e).split("\n")[0]
        missing = [n for n in needles if n not in msg]
        check(name, not missing, f"message lacks {missing}: {msg!r}")
        return
    check(name, False, "no error raised")


# ============================================================================ spike coding
def default_T(counts, mode):
    """The Python frontend's default T (SPEC section 3)."""
    m = int(counts.long().abs().max()) if counts.numel() else 0
    if mode == "bitwise":
        return max(1, math.ceil(math.log2(m + 1)))
    return max(1, m)


def spike_checks():
    # encode / quant: odd shapes, every input dtype, every count dtype, several k.
    for shape in [(1, 64), (63, 128), (3, 5, 300), (2, 1000), (7, 1)]:
        for xdt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            x = (torch.randn(shape) * torch.rand(shape[:-1] + (1,)) * 4).to(xdt)
            for k in (2.0, 3.0, 4.0):
                for odt in (torch.int8, torch.int16, torch.int32):
                    c, v = ops.spike_encode(x, k, odt)
                    rc, rv = R.ref_spike_encode(x, k, odt)
                    tag = f"spike_encode{shape} {xdt} k={k} {odt}"
                    check_equal(tag + " counts", c, rc)
                    check(tag + " dtypes", c.dtype == odt and v.dtype == torch.float32)
                    check_close(tag + " vth", v, rv, 1e-6)
                xq = ops.spike_quant(x, k)
                check(f"spike_quant{shape} {xdt} dtype", xq.dtype == xdt)
                tol = 1e-5 if xdt in (torch.float32, torch.float64) else 1e-2
                check_close(f"spike_quant{shape} {xdt} k={k}", xq, R.ref_spike_quant(x, k), tol)

    # saturation: a tiny k makes vth small and the counts large
    x = torch.randn(33, 256) * 10
    for odt in (torch.int8, torch.int16):
        c, _ = ops.spike_encode(x, 1e-3, odt)
        check_equal(f"spike_encode saturation {odt}", c, R.ref_spike_encode(x, 1e-3, odt)[0])
    # vth clamps: an all-zero row (vth = 1e-5) and a huge row (vth = 1e4)
    x = torch.stack([torch.zeros(64), torch.full((64,), 1e9)])
    c, v = ops.spike_encode(x, 3.0, torch.int32)
    check("spike_encode vth clamp", torch.equal(v.view(-1), torch.tensor([1e-5, 1e4])))
    check_equal("spike_encode clamp counts", c, R.ref_spike_encode(x, 3.0, torch.int32)[0])
    # round half to even: k = 1 and mean |x| = 1 make vth exactly 1
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0, 0.0, 0.0]])
    c, v = ops.spike_encode(x, 1.0, torch.int8)
    check("spike_encode half-to-even", v.item() == 1.0 and
          c.tolist() == [[0, 2, 2, 0, -2, -2, 0, 0, 0]], f"got {c.tolist()} vth {v.item()}")
    check("spike_quant half-to-even",
          ops.spike_quant(x, 1.0).tolist() == [[0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 0.0, 0.0, 0.0]])

    # expand / collapse / stats against the references, every mode and count dtype
    for cdt in (torch.int8, torch.int16, torch.int32, torch.int64):
        for shape in [(1,), (63,), (4, 300), (2, 3, 64)]:
            x = torch.randn(shape[:-1] + (shape[-1] * 2,))[..., : shape[-1]].contiguous()
            c, _ = ops.spike_encode(x.view(-1, shape[-1]), 3.0,
                                    cdt if cdt != torch.int64 else torch.int32)
            c = c.view(shape).to(cdt)
            for mode in ("binary", "ternary", "bitwise"):
                cc = c.abs() if mode == "binary" else c
                T0 = default_T(cc, mode)
                for T in (T0, T0 + 3):
                    tr = ops.spike_expand(cc, mode, T)
                    tag = f"spike_expand {mode} {cdt} {shape} T={T}"
                    check_equal(tag, tr, R.ref_spike_expand(cc, mode, T))
                    check(tag + " dtype", tr.dtype == torch.int8)
                    back = ops.spike_collapse(tr, mode)
                    check(tag + " collapse dtype", back.dtype == torch.int32)
                    check_equal(tag + " round trip", back, cc)
                    check_equal(tag + " collapse vs ref", back, R.ref_spike_collapse(tr, mode))
            m = int(c.abs().max())
            for max_abs in (m, m + 2):
                h = ops.spike_stats(c, max_abs)
                ref = torch.bincount(c.long().abs().view(-1), minlength=max_abs + 1)
                check_equal(f"spike_stats {cdt} {shape} max_abs={max_abs}", h, ref)
                check(f"spike_stats dtype {cdt}", h.dtype == torch.int64)

    # large counts: int32 bitwise with many bits, int16 ternary with T in the hundreds
    c = torch.randint(-2**30, 2**30, (257,), dtype=torch.int32)
    tr = ops.spike_expand(c, "bitwise", 31)
    check_equal("spike_expand bitwise 31 bits", tr, R.ref_spike_expand(c, "bitwise", 31))
    check_equal("spike_collapse bitwise 31 bits", ops.spike_collapse(tr, "bitwise"), c)
    c = torch.randint(-300, 301, (5, 17), dtype=torch.int16)
    tr = ops.spike_expand(c, "ternary", 300)
    check_equal("spike_expand ternary T=300", tr, R.ref_spike_expand(c, "ternary", 300))
    check_equal("spike_collapse ternary T=300", ops.spike_collapse(tr, "ternary"), c)
    # a non-contiguous counts tensor
    c = torch.randint(-7, 8, (16, 9), dtype=torch.int8).t()
    check_equal("spike_expand non-contiguous", ops.spike_expand(c, "bitwise", 3),
                R.ref_spike_expand(c, "bitwise", 3))

    # data-dependent errors
    c = torch.tensor([3, -2, 1, -5], dtype=torch.int8)
    check_raises("spike_expand binary negative", lambda: ops.spike_expand(c, "binary", 8),
                 "binary", "-5")
    check_raises("spike_expand ternary T small", lambda: ops.spike_expand(c, "ternary", 4),
                 "largest |count| is 5", "T = 4")
    check_raises("spike_expand bitwise T small", lambda: ops.spike_expand(c, "bitwise", 2),
                 "largest |count| is 5", "T = 2")
    check_raises("spike_expand binary T small",
                 lambda: ops.spike_expand(c.abs(), "binary", 4), "largest |count| is 5", "T = 4")
    check_raises("spike_expand unknown mode", lambda: ops.spike_expand(c, "unary", 8),
                 "'unary'", "binary", "ternary", "bitwise")
    check_raises("spike_collapse unknown mode",
                 lambda: ops.spike_collapse(torch.zeros(2, 3, dtype=torch.int8), "rate"), "'rate'")
    check_raises("spike_collapse int32 overflow",
                 lambda: ops.spike_collapse(torch.ones(40, 3, dtype=torch.int8), "bitwise"),
                 "int32", "T = 40")
    check_raises("spike_stats over max_abs", lambda: ops.spike_stats(c, 4), "5", "max_abs = 4")
    check_raises("spike_encode bad out_dtype",
                 lambda: ops.spike_encode(torch.randn(2, 8), 3.0, torch.int64), "out_dtype")


# ============================================================================ MoE routing
def random_ids(T, k, E, drop=0.0):
    """Distinct experts per token (as a router gives), with a fraction of slots dropped (-1)."""
    ids = torch.rand(T, E).argsort(-1)[:, :k].to(torch.int32)
    ids[torch.rand(T, k) < drop] = -1
    return ids


def gating_cases():
    # (T, E, k, scoring, renormalize, bias, num_groups, topk_groups, scaling)
    return [
        (1, 16, 1, "softmax", False, False, 0, 0, 1.0),      # SpikingBrain-76B router
        (63, 16, 1, "softmax", True, False, 0, 0, 1.0),
        (300, 16, 2, "softmax", True, False, 0, 0, 1.0),
        (63, 128, 8, "softmax", True, False, 8, 4, 1.0),
        (300, 128, 8, "sigmoid", True, True, 8, 4, 2.5),      # DeepSeek-V3 style
        (63, 128, 8, "sigmoid", False, True, 0, 0, 1.0),
        (1000, 64, 6, "softmax", False, False, 4, 2, 16.0),
        (63, 128, 8, "sigmoid", True, False, 16, 1, 1.0),     # exactly k eligible experts
    ]


def moe_checks():
    for (T, E, k, sc, rn, use_bias, G, TG, scl) in gating_cases():
        for ldt in (torch.float32, torch.bfloat16, torch.float64):
            logits = (torch.randn(T, E) * 2).to(ldt)
            bias = torch.randn(E) * 0.1 if use_bias else None
            tag = f"topk_gating T={T} E={E} k={k} {sc} rn={rn} bias={use_bias} G={G}/{TG} {ldt}"
            w, ids = ops.topk_gating(logits, k, sc, rn, bias, G, TG, scl)
            rw, rids = R.ref_topk_gating(logits, k, sc, rn, bias, G or None, TG or None, scl)
            check(tag + " dtypes", w.dtype == torch.float32 and ids.dtype == torch.int32)
            check_equal(tag + " ids", ids, rids)
            check_close(tag + " weights", w, rw)

            # gradient through renormalize and softmax/sigmoid vs autograd on the reference
            lg = logits.detach().to(torch.float64).requires_grad_()
            rw64, _ = R.ref_topk_gating(lg, k, sc, rn, bias, G or None, TG or None, scl)
            gw = torch.randn(T, k)
            rw64.backward(gw.to(torch.float64))
            gl = ops.topk_gating_bwd(gw, logits, rids, sc, rn, scl)
            check(tag + " grad dtype", gl.dtype == ldt)
            tol = 1e-5 if ldt != torch.bfloat16 else 2e-2
            check_close(tag + " grad", gl, lg.grad, tol)

    # ties: equal logits go to the lower expert index, groups tie to the lower group index
    logits = torch.randint(0, 3, (200, 32)).float()
    for sc in ("softmax", "sigmoid"):
        for G, TG in ((0, 0), (8, 3)):
            w, ids = ops.topk_gating(logits, 4, sc, True, None, G, TG, 1.0)
            rw, rids = R.ref_topk_gating(logits, 4, sc, True, None, G or None, TG or None, 1.0)
            check_equal(f"topk_gating ties {sc} G={G}", ids, rids)
            check_close(f"topk_gating ties {sc} G={G} weights", w, rw)
    w, ids = ops.topk_gating(torch.zeros(3, 8), 3, "softmax", False, None, 0, 0, 1.0)
    check("topk_gating all equal -> 0,1,2", ids.tolist() == [[0, 1, 2]] * 3)
    # the bias steers the choice only: weights stay the unbiased scores
    logits = torch.zeros(1, 4)
    w, ids = ops.topk_gating(logits, 1, "sigmoid", False, torch.tensor([0., 0., 1., 0.]), 0, 0, 1.0)
    check("topk_gating bias choice only", ids.item() == 2 and w.item() == 0.5, f"{ids} {w}")

    # permute / unpermute (+ backward) against the references, with dropped slots
    for (T, E, k, drop) in [(1, 16, 1, 0.0), (63, 16, 1, 0.2), (300, 16, 2, 0.1),
                            (63, 128, 8, 0.0), (63, 128, 8, 0.3), (5, 4, 2, 1.0)]:
        for xdt in (torch.float32, torch.bfloat16, torch.float64):
            Hd = 64 if T > 100 else 128
            x = torch.randn(T, Hd).to(xdt)
            ids = random_ids(T, k, E, drop)
            if xdt == torch.float32:
                ids = ids.long()  # int64 ids too
            tag = f"moe T={T} E={E} k={k} drop={drop} {xdt}"
            xp, off, rm = ops.moe_permute(x, ids, E)
            rxp, roff, rrm = R.ref_moe_permute(x, ids, E)
            check(tag + " permute dtypes", xp.dtype == xdt and off.dtype == torch.int64
                  and rm.dtype == torch.int32)
            check_equal(tag + " offsets", off, roff)
            check_equal(tag + " row_map", rm, rrm)
            check(tag + " x_perm", torch.equal(xp, rxp))

            # moe_permute_bwd vs autograd through the reference gather
            gxp = torch.randn(T * k, Hd)
            gx = ops.moe_permute_bwd(gxp.to(xdt), rm)
            tol = 1e-5 if xdt != torch.bfloat16 else 2e-2
            if drop < 1.0:
                x64 = x.detach().to(torch.float64).requires_grad_()
                R.ref_moe_permute(x64, ids, E)[0].backward(gxp.to(torch.float64))
                check_close(tag + " permute_bwd", gx, x64.grad, tol)
            else:  # nothing routed: the reference's output does not depend on x at all
                check(tag + " permute_bwd all dropped", torch.count_nonzero(gx) == 0)
            check(tag + " permute_bwd dtype", gx.dtype == xdt)

            # unpermute and its backward
            y_perm = torch.randn(T * k, Hd).to(xdt)
            w = torch.rand(T, k)
            y = ops.moe_unpermute(y_perm, rm, w)
            check(tag + " unpermute dtype", y.dtype == xdt)
            yp64 = y_perm.detach().to(torch.float64).requires_grad_()
            w64 = w.detach().to(torch.float64).requires_grad_()
            ry = R.ref_moe_unpermute(yp64, rm, w64)
            gy = torch.randn(T, Hd)
            ry.backward(gy.to(torch.float64))
            gyp, gw = ops.moe_unpermute_bwd(gy.to(xdt), y_perm, rm, w)
            check(tag + " unpermute_bwd dtypes", gyp.dtype == xdt and gw.dtype == w.dtype)
            if drop < 1.0:
                check_close(tag + " unpermute", y, ry, tol)
                check_close(tag + " unpermute_bwd y_perm", gyp, yp64.grad, tol)
                check_close(tag + " unpermute_bwd weights", gw, w64.grad, tol)
            else:
                check(tag + " unpermute all dropped", torch.count_nonzero(y) == 0 and
                      torch.count_nonzero(gyp) == 0 and torch.count_nonzero(gw) == 0)

            # routing bookkeeping
            check_equal(tag + " expert_counts", ops.expert_counts(ids, E),
                        R.ref_expert_counts(ids, E))
            if xdt == torch.float32:
                for bs in (1, 16, 64):
                    s, b, n = ops.moe_align_block_size(ids, E, bs)
                    rs, rb, rn = R.ref_moe_align_block_size(ids, E, bs)
                    check_equal(f"{tag} align bs={bs} sorted_ids", s, rs)
                    check_equal(f"{tag} align bs={bs} block_expert_ids", b, rb)
                    check_equal(f"{tag} align bs={bs} num_tokens_post_pad", n, rn)
                    check(f"{tag} align dtypes", s.dtype == b.dtype == n.dtype == torch.int32)

    # data-dependent and argument errors
    bad = torch.tensor([[0, 3], [17, -1]], dtype=torch.int32)
    x = torch.randn(2, 8)
    for name, fn in [("moe_permute", lambda: ops.moe_permute(x, bad, 16)),
                     ("expert_counts", lambda: ops.expert_counts(bad, 16)),
                     ("moe_align_block_size", lambda: ops.moe_align_block_size(bad, 16, 4))]:
        check_raises(f"{name} id >= E", fn, name, "17", "num_experts = 16")
    lg = torch.randn(4, 12)
    check_raises("topk_gating groups do not divide E",
                 lambda: ops.topk_gating(lg, 2, "softmax", True, None, 5, 2, 1.0),
                 "num_groups = 5", "E = 12")
    check_raises("topk_gating too few eligible",
                 lambda: ops.topk_gating(lg, 5, "softmax", True, None, 4, 1, 1.0),
                 "= 3", "k = 5")
    check_raises("topk_gating unknown scoring",
                 lambda: ops.topk_gating(lg, 2, "sparsemax", True, None, 0, 0, 1.0),
                 "'sparsemax'", "softmax", "sigmoid")
    check_raises("topk_gating k > E",
                 lambda: ops.topk_gating(lg, 13, "softmax", True, None, 0, 0, 1.0), "k = 13")
    check_raises("topk_gating_bwd id >= E",
                 lambda: ops.topk_gating_bwd(torch.randn(2, 2), torch.randn(2, 16), bad, "softmax",
                                             True, 1.0), "17")
    check_raises("moe_unpermute row out of range",
                 lambda: ops.moe_unpermute(torch.randn(4, 8),
                                           torch.tensor([[0, 4]], dtype=torch.int32),
                                           torch.rand(1, 2)), "row 4", "4 rows")


if __name__ == "__main__":
    build_and_import()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    spike_checks()
    moe_checks()
    print(f"{N_PASSED} checks passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)
