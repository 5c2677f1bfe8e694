"""The Hopper int8 GEMM with the int_mm epilogue fused (sbops_native::int8_gemm_sm90, kernels/int8_gemm_sm90.cu)
against what it replaces, torch._int_mm (cuBLASLt int8, int32 out) + the Triton epilogue, with bf16 x @ W^T and
torch._scaled_mm e4m3 (tensor-wise) as reference points, at the 7B projection shapes; then spike_linear's whole
int_mm prefill path (encode, GEMM, fix-up) with the kernel on and off.  Alternated rounds, medians of CUDA-event
times; outputs compared (the kernel must equal _int_mm + epilogue up to the epilogue's last-bit rounding).
    python3 benchmarks/gpu/probes/int8_gemm_sm90_ab.py [M ...]
"""
import os
import statistics
import sys

import torch
import triton

import sbops
from sbops._backends.cuda.triton import spike_linear as sl
from sbops._backends.cuda.triton.spike_linear_intmm import _int_mm_epilogue_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_vs_fp8_gemm import SHAPES as _VENDOR_SHAPES, alternated_medians, timed  # noqa: E402  (the same timer)

SHAPES = {name: _VENDOR_SHAPES[name] for name in ("down", "o", "qkv", "gate_up")}


def int_mm_and_epilogue(s, w, vth, scale):
    acc = torch._int_mm(s, w.t())
    M, N = acc.shape
    y = torch.empty((M, N), device=s.device, dtype=torch.bfloat16)
    br, bc, ew = sl.INT_MM_EPILOGUE
    _int_mm_epilogue_kernel[(triton.cdiv(M, br), triton.cdiv(N, bc))](acc, vth, scale, y, y, M, N, HAS_BIAS=False,
                                                                       BR=br, BC=bc, num_warps=ew)
    return y


def main():
    Ms = [int(v) for v in sys.argv[1:]] or [16384, 65536]
    dev = "cuda"
    print(torch.cuda.get_device_name(), torch.__version__, "int8_gemm_sm90 available:",
          sl.int8_gemm_sm90_applies(torch.empty(1, 16, device=dev, dtype=torch.bfloat16), 16), flush=True)
    op = torch.ops.sbops_native.int8_gemm_sm90
    for M in Ms:
        for name, (N, K) in SHAPES.items():
            if M > 16384 and name != "down":
                continue
            s = torch.randint(-20, 21, (M, K), device=dev, dtype=torch.int8)
            w = torch.randint(-127, 128, (N, K), device=dev, dtype=torch.int8)
            vth = torch.rand(M, device=dev) * 0.1 + 1e-3
            scale = torch.rand(N, device=dev) * 1e-3 + 1e-5
            x16 = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            w16 = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
            xf, wf = s.clamp(-16, 16).to(torch.float8_e4m3fn), w16.to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev)
            fns = {
                "bf16": lambda: x16 @ w16.t(),
                "int_mm+epilogue": lambda: int_mm_and_epilogue(s, w, vth, scale),
                "sm90_int8": lambda: op(s, w, vth, scale, None, torch.bfloat16),
                "sm90_int8_nocluster": lambda: op(s, w, vth, scale, None, torch.bfloat16, 1),
                # session 31's launch: a block (cluster) per item, the column tiles fastest over all rows
                "sm90_tiles": lambda: op(s, w, vth, scale, None, torch.bfloat16, 2, -1, 1),
                "sm90_g4": lambda: op(s, w, vth, scale, None, torch.bfloat16, 2, 0, 4),
                "sm90_g16": lambda: op(s, w, vth, scale, None, torch.bfloat16, 2, 0, 16),
                "fp8_tensor": lambda: torch._scaled_mm(xf, wf.t(), one, one, out_dtype=torch.bfloat16),
            }
            a, b = fns["int_mm+epilogue"](), fns["sm90_int8"]()
            d = (a.float() - b.float()).abs()
            d1 = (a.float() - fns["sm90_int8_nocluster"]().float()).abs().max().item()
            same = all(torch.equal(b, fns[k]()) for k in ("sm90_int8_nocluster", "sm90_tiles", "sm90_g4", "sm90_g16"))
            med = alternated_medians(fns)
            fl = 2 * M * N * K
            print(f"M={M} {name} {N}x{K}: " + ", ".join(
                f"{k} {v:.3f} ms ({fl / v / 1e9:.0f} T/s, {med['int_mm+epilogue'] / v:.2f}x int_mm)"
                for k, v in med.items())
                + f"; |sm90 - int_mm| max {d.max().item():.3g} (of {a.float().abs().max().item():.3g}), "
                  f"equal {(d == 0).float().mean().item():.4f}; no cluster: max {d1:.3g}; every sm90 launch the same "
                  f"bits: {same}", flush=True)
            del s, w, x16, w16, xf, wf, a, b
            torch.cuda.empty_cache()
    whole_paths(Ms[0])
    # spike_linear's whole int_mm path: SwiGLU-like rows (counts past 127 exist), the down shape
    for M in Ms:
        N, K = SHAPES["down"]
        g = torch.Generator(device=dev).manual_seed(0)
        x = (torch.randn(M, K, device=dev, generator=g) * torch.randn(M, K, device=dev, generator=g)).bfloat16()
        wq, sc = sbops.quantize_weight(torch.randn(N, K, device=dev, generator=g) * 0.02)
        res = {True: [], False: []}
        outs = {}
        for _ in range(3):
            for on in (True, False):
                sl.INT8_GEMM_SM90 = on
                outs[on] = sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="int_mm")
                res[on].append(timed(lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="int_mm")))
        sl.INT8_GEMM_SM90 = True
        r = sbops.spike_linear(x[:64].float().cpu(), wq.cpu(), sc.cpu(), 3.0).double()
        e_on = ((outs[True][:64].double().cpu() - r).norm() / r.norm()).item()
        e_off = ((outs[False][:64].double().cpu() - r).norm() / r.norm()).item()
        on, off = statistics.median(res[True]), statistics.median(res[False])
        print(f"spike_linear int_mm path M={M} down {N}x{K}: sm90 {on:.3f} ms, int_mm {off:.3f} ms ({off / on:.3f}x); "
              f"rel. error vs CPU reference (64 rows): {e_on:.2e} / {e_off:.2e}", flush=True)
        del x, wq, sc
        torch.cuda.empty_cache()


def whole_paths(M):
    """spike_linear's whole prefill (encode, GEMM, fix-up) at every shape: int8 per-channel weights on the int_mm path
    against e4m3 weights on the scaled_mm path (the fp8 model's gate/up, qkv and o) and bf16 x @ W^T; x Gaussian
    (an RMSNorm output) for K = 3584, a product of two Gaussians (a SwiGLU product) for down.  Errors vs float64."""
    dev = "cuda"
    for name, (N, K) in SHAPES.items():
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(M, K, device=dev, generator=g)
        if name == "down":
            x = x * torch.randn(M, K, device=dev, generator=g)
        x = x.bfloat16()
        w = torch.randn(N, K, device=dev, generator=g) * 0.02
        w16 = w.bfloat16()
        wq, sc = sbops.quantize_weight(w)
        w8, sc8 = sbops.quantize_weight(w, dtype=torch.float8_e4m3fn)
        fns = {"bf16": lambda: x @ w16.t(),
               "int8 int_mm": lambda: sl.spike_linear_fwd(x, wq, sc, 3.0, None, None, path="int_mm"),
               "fp8 scaled_mm": lambda: sl.spike_linear_fwd(x, w8, sc8, 3.0, None, None, path="scaled_mm")}
        med = alternated_medians(fns)
        rows = slice(0, 64)
        errs = {}
        for k in ("int8 int_mm", "fp8 scaled_mm"):
            wk, sk = (wq, sc) if k.startswith("int8") else (w8, sc8)
            ref = sbops.spike_linear(x[rows].double().cpu(), wk.cpu(), sk.cpu(), 3.0).double()
            errs[k] = ((fns[k]()[rows].double().cpu() - ref).norm() / ref.norm()).item()
        print(f"whole path M={M} {name} {N}x{K}: " + ", ".join(
            f"{k} {v:.3f} ms ({med['bf16'] / v:.2f}x bf16)" for k, v in med.items())
            + "; rel. err vs float64 (64 rows): " + ", ".join(f"{k} {e:.2e}" for k, e in errs.items()), flush=True)
        del x, w, w16, wq, sc, w8, sc8
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
