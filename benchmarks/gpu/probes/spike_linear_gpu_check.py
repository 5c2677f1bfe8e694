"""spike_linear Triton kernels on the GPU vs float64: every path (int8 / e4m3 weights, per channel /
per group 128, prefill / decode incl. split-K and the vth pre-pass) on ~16 shapes with outliers.
Run: python benchmarks/gpu/probes/spike_linear_gpu_check.py   (prints one line per case and 'ALL OK' or FAILED n)"""
import os, sys, time
import torch
if not torch.cuda.is_available():  # a smoke run of this script on a CPU: interpreter, tiny shapes
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
import triton_kernels  # noqa: E402
import sbops  # noqa: E402
sl = triton_kernels.load("spike_linear")
dev = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn


def quant(w, gs, dt):
    return sbops.quantize_weight(w, gs, dtype=dt)


def ref(x, wq, sc, k, bias, gs):
    vth = (x.float().abs().double().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
    s = torch.round(x.float() / vth).double()
    w = wq.double()
    w = w * sc.double()[:, None] if gs is None else (w.view(w.shape[0], -1, gs) * sc.double()[..., None]).view_as(w)
    y = vth.double() * (s @ w.T)
    return y + bias.double() if bias is not None else y


torch.manual_seed(0)
cases = [  # (M, N, K, path, config)
    (1, 4608, 3584, None, None), (1, 3584, 18944, None, None), (8, 37888, 3584, None, None),
    (32, 3584, 18944, None, None), (17, 1000, 3584, "decode", (64, 128, 1, False, 4, 3)),
    (32, 4608, 3584, "decode", (128, 128, 5, True, 4, 3)), (5, 4608, 3584, "prefill", None),
    (33, 1000, 3584, None, None), (300, 1000, 3584, None, None), (1000, 4608, 3584, None, None),
    (4096, 4608, 3584, None, None), (2048, 3584, 18944, None, None), (4097, 37888, 3584, None, None),
    (640, 640, 640, None, None), (8192, 4608, 3584, "prefill", (128, 256, 128, 8, 8, 3)),
    (8192, 4608, 3584, "prefill", (256, 128, 128, 8, 8, 3)),
]
if dev == "cpu":
    cases = [(1, 48, 256, None, None), (7, 40, 384, "decode", (16, 128, 3, False, 4, 2)),
             (45, 40, 256, "prefill", (32, 32, 128, 2, 4, 2))]
fails = 0
t0 = time.time()
for (M, N, K, path, cfg) in cases:
    w = torch.randn(N, K, device=dev) * 0.02
    for dt in (torch.int8, FP8):
        for gs in (None, 128):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            x[M // 2, 3] = 500.0                    # counts far past 127 (and 2047 at decode for big K)
            if M > 2:
                x[1, 100:108] *= 12                 # an outlier-channel row: counts past 16
            if M > 4:
                x[M - 1, 9] = 1e30                  # a count past int32: this row must be NaN
            wq, sc = quant(w, gs, dt)
            bias = torch.randn(N, device=dev, dtype=torch.bfloat16) if gs else None
            y = sl.spike_linear_fwd(x, wq, sc, 3.0, bias, gs, config=cfg, path=path)
            keep = torch.ones(M, dtype=torch.bool, device=dev)
            nan_ok = True
            if M > 4:
                keep[M - 1] = False
                nan_ok = bool(torch.isnan(y[M - 1]).all())
            r = ref(x[keep], wq[:, :], sc, 3.0, bias, gs)
            yk = y[keep].double()
            err = ((yk - r).norm() / r.norm()).item()
            ok = err < 1e-2 and nan_ok and bool(torch.isfinite(yk).all())
            fails += not ok
            print(f"M={M} N={N} K={K} {str(dt)[6:]} gs={gs} path={path or 'auto'} cfg={cfg}: rel {err:.2e} "
                  f"nan_row={'ok' if nan_ok else 'BAD'} {'OK' if ok else 'FAIL'}", flush=True)
print(f"{'ALL OK' if not fails else f'FAILED {fails}'} in {time.time() - t0:.0f} s")
