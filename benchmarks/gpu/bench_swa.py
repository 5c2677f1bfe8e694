"""Benchmark: sliding-window attention vs FlexAttention and SDPA (a script, not a test).

Ours = what the op runs: the Triton forward, or on sm_90 the CUDA C++ wgmma forward (backends/cuda/sm90.py)
where it applies and backends/cuda/tuning/sm90.json routes it; the Triton backward. On sm_90, forward rows
also time both forwards in the same run.

SpikingBrain-7B SWA layer: B=1, H=28, HKV=4, D=128, window 4096, bfloat16, on one GPU.
  fwd   T=32k, 128k        ours vs torch.compile'd flex_attention (sliding-window block mask, GQA)
  fwd+bwd T=32k            ours vs flex_attention
  full causal fwd T=32k    ours (window=-1) vs SDPA flash backend (is_causal=True)
Medians of triton.testing.do_bench(return_mode="median"), each after 1 s of back-to-back calls (the power-cap
clock dip; see bench()). Effective TFLOP/s count only the
(query, key) pairs inside the window: 4*D FLOPs per pair and head forward, 2.5x that backward
(so fwd+bwd = 3.5x). ``--sweep`` first times a few block configs of our kernels and uses the
fastest (print them; copy the winners into backends/cuda/tuning/swa.json).
Writes a JSON of all numbers to $OUT/bench_swa.json when $OUT is set.

``--options`` times the opt-in config keys against the default in the same process (default
first, then each option, on the same inputs; interleaved in 2 rounds): split_masks (fwd and bwd
configs) and bwd_atomic_dq (bwd config), on fwd T=32k/128k, bwd and fwd+bwd T=32k; it also
checks the options' outputs against the default at T=32k. See NOTES_swa.md.

    python benchmarks/gpu/bench_swa.py [--sweep] [--skip-peers] [--options] [--options-only]
"""
import argparse
import json
import os
import pathlib
import sys
import time

import torch
import triton
from triton.testing import do_bench

ROOT = pathlib.Path(__file__).resolve().parents[2]
B, H, HKV, D, WINDOW = 1, 28, 4, 128, 4096
DT = torch.bfloat16

FWD_SWEEP = [
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
]
BWD_SWEEP = [
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
]


sys.path.insert(0, str(ROOT / "tests"))
import triton_kernels  # noqa: E402  (the installed kernel module, else the source tree)


def load_swa():
    return triton_kernels.load("swa")


def pairs(T, window):
    """(query, key) pairs inside the causal window of one head."""
    if window < 0 or window >= T:
        return T * (T + 1) // 2
    w = window + 1
    return w * (w + 1) // 2 + (T - w) * w


def tflops(T, window, ms, factor):
    return factor * 4 * D * H * pairs(T, window) / (ms * 1e-3) / 1e12


def bench(fn, settle_s=1.0):
    """Median of do_bench after settle_s seconds of back-to-back calls: the H100 runs these kernels at its
    ~700 W power cap, and its clock dips during the first second of load (a measurement taken in the dip read
    up to 12% slow); ours and the peers settle alike."""
    t_end = time.perf_counter() + settle_s
    while time.perf_counter() < t_end:
        fn()
        torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=250, return_mode="median")


def inputs(T):
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda h: torch.randn(B, T, h, D, device="cuda", dtype=DT, generator=g)  # noqa: E731
    return mk(H), mk(HKV), mk(HKV)


def load_sm90():
    """backends/cuda/sm90.py when the Hopper forward runs here, else None."""
    try:
        import sbops  # noqa: F401
        from sbops import _platform
        from sbops._backends.cuda import sm90
    except ImportError:
        return None
    available = _platform.native_kernel_available("swa_attn_fwd_sm90_available", torch.cuda.current_device())
    return sm90 if available else None


class Ours:
    """The forward and backward the op dispatches to (the sm_90 wgmma kernels where they apply, are
    routed and no Triton config is forced, else Triton); ``triton_fwd`` times the Triton forward alone,
    ``bwd(..., variant=...)`` one named backward."""

    def __init__(self, swa, sm90=None):
        self.swa = swa
        self.sm90 = sm90

    def _fwd(self, q, k, v, window, cfg, force_sm90=False):
        if (cfg is None and self.sm90 is not None and (force_sm90 or self.sm90.routes().get("swa_fwd"))
                and self.sm90.swa_applies(q, k, v, None, None)):
            return self.sm90.swa_fwd(q, k, v, window, None)
        return self.swa.swa_attn_fwd(q, k, v, window, None, None, None, None, config=cfg)

    def fwd(self, T, window, cfg=None):
        q, k, v = inputs(T)
        return bench(lambda: self._fwd(q, k, v, window, cfg))

    def sm90_fwd(self, T, window):
        q, k, v = inputs(T)
        return bench(lambda: self._fwd(q, k, v, window, None, force_sm90=True))

    def triton_fwd(self, T, window, cfg=None):
        q, k, v = inputs(T)
        return bench(lambda: self.swa.swa_attn_fwd(q, k, v, window, None, None, None, None, config=cfg))

    BWD_VARIANTS = ("triton", "sm90_fused_dq", "sm90_triton_dq")

    def _bwd(self, q, k, v, o, lse, do, window, cfg, variant="routed"):
        """The backward the op dispatches to ("routed": tuning/sm90.json), or the named variant."""
        if variant == "routed":
            routes = self.sm90.routes() if self.sm90 is not None else {}
            variant = "triton"
            if cfg is None and routes.get("swa_bwd") and self.sm90.swa_applies(q, k, v, None, None):
                variant = "sm90_fused_dq" if routes.get("swa_bwd_fused_dq", True) else "sm90_triton_dq"
        if variant == "triton":
            return self.swa.swa_attn_bwd(q, k, v, o, lse, do, None, window, None, None, None, None,
                                         config=cfg)
        return self.sm90.swa_bwd(q, k, v, o, lse, do, None, window, None,
                                 fuse_dq=variant == "sm90_fused_dq")

    def fwd_bwd(self, T, window, fcfg=None, bcfg=None, variant="routed"):
        q, k, v = inputs(T)
        do = torch.randn_like(q)

        def step():
            o, lse = self._fwd(q, k, v, window, fcfg)
            self._bwd(q, k, v, o, lse, do, window, bcfg, variant)
        return bench(step)

    def bwd(self, T, window, fcfg=None, bcfg=None, variant="routed"):
        q, k, v = inputs(T)
        do = torch.randn_like(q)
        o, lse = self._fwd(q, k, v, window, fcfg)
        return bench(lambda: self._bwd(q, k, v, o, lse, do, window, bcfg, variant))

    def bwd_agreement(self, T, window):
        """Relative max |sm90 - triton| of dq, dk, dv per sm_90 variant (same o, lse, do)."""
        q, k, v = inputs(T)
        do = torch.randn_like(q)
        o, lse = self._fwd(q, k, v, window, None)
        ref = self._bwd(q, k, v, o, lse, do, window, None, "triton")
        out = {}
        for variant in self.BWD_VARIANTS[1:]:
            got = self._bwd(q, k, v, o, lse, do, window, None, variant)
            out[variant] = {n: ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                            for n, a, b in zip(("dq", "dk", "dv"), got, ref)}
        return out


class Flex:
    """torch.compile'd flex_attention with a sliding-window causal block mask, [B,H,T,D]."""

    def __init__(self):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        self.create_block_mask = create_block_mask
        self.flex = torch.compile(flex_attention, dynamic=False)

    def _setup(self, T, grad):
        def swa_mask(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx <= WINDOW)
        # _compile=True builds the block mask blockwise; the eager path materializes a dense
        # [T, T] mask (128 GiB at T=128k, out of memory)
        mask = self.create_block_mask(swa_mask, None, None, T, T, device="cuda", _compile=True)
        q, k, v = (x.transpose(1, 2).contiguous().requires_grad_(grad) for x in inputs(T))
        return mask, q, k, v

    def fwd(self, T):
        mask, q, k, v = self._setup(T, False)
        return bench(lambda: self.flex(q, k, v, block_mask=mask, enable_gqa=True))

    def fwd_bwd(self, T):
        mask, q, k, v = self._setup(T, True)
        do = torch.randn_like(q)

        def step():
            o = self.flex(q, k, v, block_mask=mask, enable_gqa=True)
            torch.autograd.grad(o, (q, k, v), do)
        return bench(step)


def sdpa_causal(T):
    """SDPA flash backend, full causal; GQA either native (enable_gqa) or k/v repeated
    outside the timing; returns the faster of the two."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    q, k, v = (x.transpose(1, 2).contiguous() for x in inputs(T))
    kr, vr = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
    times = {}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        times["repeat_kv"] = bench(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True))
        try:
            times["enable_gqa"] = bench(lambda: F.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=True))
        except RuntimeError as e:  # flash backend without native GQA on this build
            print(f"  SDPA enable_gqa unavailable: {str(e).splitlines()[0]}")
    best = min(times, key=times.get)
    return times[best], best


# name -> (keys added to the fwd config, keys added to the bwd config)
OPTIONS = {
    "default": ({}, {}),
    "split_masks": ({"split_masks": True}, {"split_masks": True}),
    "bwd_atomic_dq": ({}, {"bwd_atomic_dq": True}),
    "split+atomic": ({"split_masks": True}, {"split_masks": True, "bwd_atomic_dq": True}),
}


def _with(cfg, extra, swa, kind):
    """The config actually used (given or tuned default) plus the option keys."""
    base = dict(cfg) if cfg else swa.default_config(kind, D, DT)
    return {**base, **extra}


def check_options(swa, fcfg, bcfg, T=32768):
    """Max |option - default| of o, lse, dq, dk, dv at T (bf16; atomics reorder dq's sums)."""
    q, k, v = inputs(T)
    do = torch.randn_like(q)
    out = {}
    for name, (fo, bo) in OPTIONS.items():
        fc, bc = _with(fcfg, fo, swa, "fwd"), _with(bcfg, bo, swa, "bwd")
        o, lse = swa.swa_attn_fwd(q, k, v, WINDOW, None, None, None, None, config=fc)
        g = swa.swa_attn_bwd(q, k, v, o, lse, do, None, WINDOW, None, None, None, None, config=bc)
        out[name] = (o, lse) + tuple(g[:3])
    names = ["o", "lse", "dq", "dk", "dv"]
    diffs = {}
    for name in OPTIONS:
        if name != "default":
            diffs[name] = {n: (a.float() - b.float()).abs().max().item()
                           for n, a, b in zip(names, out[name], out["default"])}
            print(f"options check {name}: max |diff| vs default {diffs[name]}", flush=True)
    return diffs


def time_options(ours, fcfg, bcfg, rounds=2):
    """Default vs each option, interleaved in `rounds` rounds; keeps the best median."""
    swa = ours.swa
    cases = [("fwd T=32k", 32768, "fwd"), ("fwd T=128k", 131072, "fwd"),
             ("bwd T=32k", 32768, "bwd"), ("fwd+bwd T=32k", 32768, "fwd_bwd")]
    table = {}
    for _ in range(rounds):
        for case, T, kind in cases:
            for name, (fo, bo) in OPTIONS.items():
                if kind == "fwd" and name not in ("default", "split_masks"):
                    continue  # the forward only has split_masks
                fc, bc = _with(fcfg, fo, swa, "fwd"), _with(bcfg, bo, swa, "bwd")
                ms = (ours.fwd(T, WINDOW, fc) if kind == "fwd" else
                      ours.bwd(T, WINDOW, fc, bc) if kind == "bwd" else
                      ours.fwd_bwd(T, WINDOW, fc, bc))
                key = (case, name)
                table[key] = min(table.get(key, float("inf")), ms)
    rows = []
    for case, T, kind in cases:
        base = table[(case, "default")]
        for name in OPTIONS:
            if (case, name) in table:
                ms = table[(case, name)]
                rows.append(dict(case=case, option=name, ms=ms, vs_default=ms / base))
                print(f"option {case:<15} {name:<14} {ms:8.3f} ms  {ms / base:6.3f}x default",
                      flush=True)
    return rows


def bwd_variants(ours, result, save):
    """Every backward variant at T=32k in the same run, and how far the sm_90 ones are from Triton's."""
    if ours.sm90 is None:
        return
    result["bwd_agreement_32k"] = ours.bwd_agreement(32768, WINDOW)
    print(f"bwd agreement vs triton (rel max diff): {result['bwd_agreement_32k']}", flush=True)
    result["bwd_variants_32k_ms"] = {}
    for variant in Ours.BWD_VARIANTS:
        ms = ours.bwd(32768, WINDOW, None, None, variant)
        result["bwd_variants_32k_ms"][variant] = ms
        print(f"bwd T=32k {variant}: {ms:.3f} ms  {tflops(32768, WINDOW, ms, 2.5):.0f} TFLOP/s", flush=True)
        save()
    # the parts: the native op without dQ (prep + dK/dV kernel) and the Triton dQ alone (delta + dQ kernel)
    q, k, v = inputs(32768)
    do = torch.randn_like(q)
    o, lse = ours._fwd(q, k, v, WINDOW, None)
    window_eff, scale = WINDOW, D ** -0.5
    native = torch.ops.sbops_native.swa_attn_bwd_sm90
    parts = {"sm90 prep + dK/dV kernel": lambda: native(q, k, v, o, lse, do, None, window_eff, scale, False),
             "sm90 prep + fused kernel + dq cast": lambda: native(q, k, v, o, lse, do, None, window_eff, scale, True),
             "triton delta + dQ kernel": lambda: ours.swa.swa_attn_bwd_dq(q, k, v, o, lse, do, None, WINDOW, None)}
    result["bwd_parts_32k_ms"] = {}
    for name, fn in parts.items():
        result["bwd_parts_32k_ms"][name] = ms = bench(fn)
        print(f"bwd part T=32k {name}: {ms:.3f} ms", flush=True)
    save()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="time the configs in FWD/BWD_SWEEP first")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--options", action="store_true",
                    help="also time split_masks / bwd_atomic_dq against the default")
    ap.add_argument("--options-only", action="store_true",
                    help="only the options A/B (with its correctness check), no table")
    ap.add_argument("--bwd-only", action="store_true",
                    help="only the backward variants at T=32k (agreement, times) and fwd+bwd as routed")
    ap.add_argument("--triton-only", action="store_true",
                    help="time the Triton forward even where the sm_90 wgmma forward applies")
    args = ap.parse_args()
    sm90 = None if args.triton_only else load_sm90()
    ours = Ours(load_swa(), sm90)
    out_dir = os.environ.get("OUT")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "sm90_forward": sm90 is not None,
              "shape": dict(B=B, H=H, HKV=HKV, D=D, window=WINDOW, dtype=str(DT)),
              "flop_convention": "4*D per (query,key) pair in the window per head; bwd 2.5x fwd",
              "rows": []}

    def save():
        if out_dir:
            with open(os.path.join(out_dir, "bench_swa.json"), "w") as f:
                json.dump(result, f, indent=1)

    fcfg = bcfg = None
    if args.sweep:
        T = 32768
        sweep = {"fwd": [], "bwd": []}
        for cfg in FWD_SWEEP:
            ms = ours.fwd(T, WINDOW, cfg)
            sweep["fwd"].append((cfg, ms))
            print(f"sweep fwd {cfg}: {ms:.3f} ms  {tflops(T, WINDOW, ms, 1):.0f} TFLOP/s", flush=True)
        fcfg = min(sweep["fwd"], key=lambda r: r[1])[0]
        for cfg in BWD_SWEEP:
            ms = ours.bwd(T, WINDOW, fcfg, cfg)
            sweep["bwd"].append((cfg, ms))
            print(f"sweep bwd {cfg}: {ms:.3f} ms  {tflops(T, WINDOW, ms, 2.5):.0f} TFLOP/s", flush=True)
        bcfg = min(sweep["bwd"], key=lambda r: r[1])[0]
        result["sweep"] = sweep
        result["chosen"] = {"fwd": fcfg, "bwd": bcfg}
        print(f"chosen fwd {fcfg}\nchosen bwd {bcfg}", flush=True)
        save()

    if args.options or args.options_only:
        result["options_check"] = check_options(ours.swa, fcfg, bcfg)
        save()
        result["options"] = time_options(ours, fcfg, bcfg)
        save()
        if args.options_only:
            return 0

    if args.bwd_only:
        bwd_variants(ours, result, save)
        ms = ours.fwd_bwd(32768, WINDOW)
        result["fwd_bwd_32k_routed_ms"] = ms
        print(f"fwd+bwd T=32k (routed): {ms:.3f} ms  {tflops(32768, WINDOW, ms, 3.5):.0f} TFLOP/s", flush=True)
        save()
        return 0

    cases = [  # name, T, window, kind, flop factor, goal ms
        ("fwd T=32k", 32768, WINDOW, "fwd", 1.0, 3.2),
        ("fwd T=128k", 131072, WINDOW, "fwd", 1.0, 13.0),
        ("fwd+bwd T=32k", 32768, WINDOW, "fwd_bwd", 3.5, 14.0),
        ("causal fwd T=32k", 32768, -1, "fwd", 1.0, None),
    ]
    for name, T, window, kind, factor, goal in cases:
        ms = ours.fwd(T, window, fcfg) if kind == "fwd" else ours.fwd_bwd(T, window, fcfg, bcfg)
        row = dict(case=name, T=T, window=window, ours_ms=ms, goal_ms=goal,
                   ours_tflops=tflops(T, window, ms, factor))
        if kind == "fwd" and sm90 is not None:  # both forwards in the same run, for the record
            row["triton_fwd_ms"] = ours.triton_fwd(T, window, fcfg)
            row["sm90_fwd_ms"] = ours.sm90_fwd(T, window)
            print(f"  triton fwd {name}: {row['triton_fwd_ms']:.3f} ms; sm90 fwd {row['sm90_fwd_ms']:.3f} ms",
                  flush=True)
        result["rows"].append(row)
        print(f"ours {name}: {ms:.3f} ms", flush=True)
        save()
    result["bwd_32k_ms"] = ours.bwd(32768, WINDOW, fcfg, bcfg)  # the backward alone, for the notes
    print(f"ours bwd T=32k: {result['bwd_32k_ms']:.3f} ms", flush=True)
    save()
    if sm90 is not None and fcfg is None and bcfg is None:
        bwd_variants(ours, result, save)

    if not args.skip_peers:
        flex = None
        for row in result["rows"]:
            try:
                if row["window"] < 0:
                    row["peer"] = "sdpa-flash"
                    row["peer_ms"], row["peer_variant"] = sdpa_causal(row["T"])
                else:
                    flex = flex or Flex()
                    row["peer"] = "flex"
                    row["peer_ms"] = (flex.fwd(row["T"]) if "bwd" not in row["case"]
                                      else flex.fwd_bwd(row["T"]))
                row["ratio"] = row["ours_ms"] / row["peer_ms"]
                print(f"{row['peer']} {row['case']}: {row['peer_ms']:.3f} ms", flush=True)
            except Exception as e:  # keep our numbers when a peer fails
                row["peer_error"] = repr(e)[:300]
                print(f"peer failed for {row['case']}: {row['peer_error']}", flush=True)
            save()

    print(f"\ndevice: {result['device']}  B={B} H={H} HKV={HKV} D={D} window={WINDOW} bf16")
    print(f"{'case':<18}{'ours ms':>10}{'peer':>12}{'peer ms':>10}{'ratio':>8}{'TFLOP/s':>9}{'goal ms':>9}")
    for r in result["rows"]:
        peer_ms = f"{r['peer_ms']:.3f}" if "peer_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        goal = f"{r['goal_ms']}" if r["goal_ms"] else "1.15x"
        print(f"{r['case']:<18}{r['ours_ms']:>10.3f}{r.get('peer', '-'):>12}{peer_ms:>10}"
              f"{ratio:>8}{r['ours_tflops']:>9.0f}{goal:>9}")
    save()


if __name__ == "__main__":
    sys.exit(main())
