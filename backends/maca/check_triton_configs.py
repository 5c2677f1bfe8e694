"""Check the MACA Triton configs (backends/maca/tuning/*.json) against MetaX C500-class limits.

For each case (kernel family, head dims, gate mode / sinks, dtype), the real launchers in
backends/cuda/triton/{linear_attn,swa,spike_linear}.py are run with ``backend="maca"`` on small CPU tensors,
but every Triton kernel launch is intercepted and replaced by an ahead-of-time compile of that
exact kernel specialisation (same constexprs, num_warps, num_stages) for a chosen target.  From
each compiled kernel's metadata we read the shared memory it needs and its num_warps, and check:

  * shared memory <= 64 KB (``--smem-limit``), the per-block shared memory of a C500;
  * num_warps is a power of two <= 16 (mcTriton: 64-thread warps, at most 1024 threads).

What this proves and what not: the compile is done by NVIDIA's Triton backend (for the GPU present,
else ``--arch``, default sm_80, which C500 reports itself as), not by mcTriton, whose layouts and
shared-memory allocation may differ; a config that fits here with margin is very likely to fit
on MACA, but only a MetaX run is proof.  Threads per warp differ too (32 here, 64 on MACA): the
MACA configs keep the NVIDIA thread count per program with half the warps, so the NVIDIA compile
sees half the threads MACA would use; shared memory is driven by tiles and stages, not warps.

No GPU is needed (the compile never touches a driver); on a GPU machine the target defaults to
the current device.

The same check serves the NVIDIA tuning data: ``--backend cuda --arch 90 --smem-limit 232448``
(an H100 block's 227 KB), and ``--options`` adds opt-in config keys on top of the tuned configs
(e.g. '{"swa_fwd": {"split_masks": true}, "linear_attn": {"h_seg": 16}}'), so a variant that
would not fit is caught on a CPU, before a GPU run.

    python backends/maca/check_triton_configs.py [--arch 80] [--quick] [--json out.json]
                                                 [--backend maca|cuda] [--options JSON]

``check_configs(...)`` returns the results as a list of dicts (used by tests/test_maca_gpu.py).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TRITON_DIR = os.path.join(os.path.dirname(HERE), "cuda", "triton")

MACA_SMEM_LIMIT = 64 * 1024
MACA_MAX_WARPS = 16


@dataclass
class Case:
    family: str            # "linear_attn", "swa" or "spike_linear"
    dim: int               # K = V (linear_attn), D (swa) or K (spike_linear)
    dtype: torch.dtype
    variant: str           # linear_attn: gate "none" | "head" | "key";  swa: "plain" | "sinks";
    #                        spike_linear: int8 weight scales "channel" | "group128"
    results: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.family}-d{self.dim}-{self.variant}-{str(self.dtype).replace('torch.', '')}"


def all_cases(quick: bool = False, dtypes=(torch.bfloat16, torch.float32)) -> list[Case]:
    """Every (head dim, variant, dtype) the MACA configs serve; `quick`: bfloat16 and the variants
    that change the kernels' tiles (per-key gate, sinks) only."""
    cases = []
    for dt in ((torch.bfloat16,) if quick else dtypes):
        for d in (64, 128):
            for gate in (("key",) if quick else ("none", "head", "key")):
                cases.append(Case("linear_attn", d, dt, gate))
            for v in (("sinks",) if quick else ("plain", "sinks")):
                cases.append(Case("swa", d, dt, v))
        for v in ("channel", "group128"):   # prefill (encode + GEMM) and decode (vth + split-K) kernels
            cases.append(Case("spike_linear", 256, dt, v))
    return cases


def _load(name: str):
    """A fresh copy of a kernel module from the source tree (fresh JITFunction objects): the folder is
    loaded afresh as a private package, so the module's relative imports of its siblings work."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("check_triton_configs needs compiled Triton kernels: unset TRITON_INTERPRET")
    pkg = f"_sbops_maca_check_{name}"
    for key in [k for k in sys.modules if k == pkg or k.startswith(pkg + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(pkg, os.path.join(TRITON_DIR, "__init__.py"),
                                                  submodule_search_locations=[TRITON_DIR])
    sys.modules[pkg] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[pkg])
    return importlib.import_module(f"{pkg}.{name}")


def default_target():
    """The current GPU's target when one is present, else None (the caller picks an arch)."""
    if torch.cuda.is_available():
        from triton.runtime import driver
        return driver.active.get_current_target()
    return None


class _Recorder:
    """Replaces `kernel[grid](...)` launches of the JIT kernels of a module by an ahead-of-time
    compile for `target`; records (kernel, shared bytes, num_warps, num_stages) per launch."""

    def __init__(self, module, target):
        from triton.compiler import ASTSource, compile, make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        self.target = target
        self.backend = make_backend(target)
        self.records: list[dict] = []
        self._compile, self._src = compile, ASTSource
        self._kernels = {n: f for n, f in vars(module).items() if isinstance(f, JITFunction)}
        self._binders = {n: create_function_from_signature(f.signature, f.params, self.backend)
                         for n, f in self._kernels.items()}

    def __enter__(self):
        for name, fn in self._kernels.items():
            fn.run = self._make_run(name, fn)  # instance attribute shadows JITFunction.run
        return self

    def __exit__(self, *exc):
        for fn in self._kernels.values():
            del fn.run
        return False

    def _make_run(self, name, fn):
        def run(*args, grid, warmup, **kwargs):
            from triton import knobs
            kwargs.setdefault("debug", False)
            kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
            bound, spec, opts = self._binders[name](*args, **kwargs)
            opts, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound, spec, opts)
            k = self._compile(self._src(fn, signature, constexprs, attrs), target=self.target,
                              options=opts.__dict__)
            self.records.append({"kernel": name, "shared": int(k.metadata.shared),
                                 "num_warps": int(k.metadata.num_warps),
                                 "num_stages": int(opts.num_stages)})
            return None
        return run


def _run_linear_attn(mod, case: Case, backend: str = "maca", options: dict | None = None):
    B, T, H, HKV, d = 1, 80, 2, 1, case.dim
    q = torch.randn(B, T, H, d, dtype=case.dtype)
    k = torch.randn(B, T, HKV, d, dtype=case.dtype)
    v = torch.randn(B, T, HKV, d, dtype=case.dtype)
    g = {"none": None, "head": -torch.rand(B, T, HKV), "key": -torch.rand(B, T, HKV, d)}[case.variant]
    h0 = torch.zeros(B, HKV, d, d)
    cfg = {**mod.load_config(d, d, case.variant, case.dtype, backend), **(options or {}).get("linear_attn", {})}
    mod.linear_attn_fwd(q, k, v, g, d ** -0.5, h0, None, config=cfg, backend=backend)
    mod.linear_attn_bwd(q, k, v, g, d ** -0.5, h0, None, torch.randn_like(q), torch.randn(B, HKV, d, d),
                        config=cfg, backend=backend)


def _run_swa(mod, case: Case, backend: str = "maca", options: dict | None = None):
    B, T, H, HKV, d = 1, 80, 2, 1, case.dim
    q = torch.randn(B, T, H, d, dtype=case.dtype)
    k = torch.randn(B, T, HKV, d, dtype=case.dtype)
    v = torch.randn(B, T, HKV, d, dtype=case.dtype)
    sk = sv = None
    if case.variant == "sinks":
        sk, sv = torch.randn(4, HKV, d, dtype=case.dtype), torch.randn(4, HKV, d, dtype=case.dtype)
    o = torch.randn_like(q)
    lse = torch.randn(B, T, H)
    options = options or {}
    mod.swa_attn_fwd(q, k, v, 16, None, None, sk, sv, config=options.get("swa_fwd"), backend=backend)
    mod.swa_attn_bwd(q, k, v, o, lse, torch.randn_like(q), None, 16, None, None, sk, sv,
                     config=options.get("swa_bwd"), backend=backend)


def _run_spike_linear(mod, case: Case, backend: str = "maca", options: dict | None = None):
    from sbops import quantize_weight
    K, N = case.dim, 96
    group = None if case.variant == "channel" else 128
    wq, scale = quantize_weight(torch.randn(N, K) * 0.05, group_size=group)
    for M, path in ((48, "prefill"), (4, "decode")):
        x = torch.randn(M, K, dtype=case.dtype)
        mod.spike_linear_fwd(x, wq, scale, 3.0, None, group, path=path, backend=backend)


def check_configs(cases: list[Case] | None = None, target=None, arch: int = 80,
                  smem_limit: int = MACA_SMEM_LIMIT, max_warps: int = MACA_MAX_WARPS,
                  backend: str = "maca", options: dict | None = None) -> list[dict]:
    """Compile every kernel launch of every case with `backend`'s configs (plus `options`: extra
    config keys under "linear_attn", "swa_fwd", "swa_bwd"); one dict per launch with keys case,
    kernel, shared, num_warps, num_stages, ok, why."""
    from triton.backends.compiler import GPUTarget

    if target is None:
        target = default_target() or GPUTarget("cuda", arch, 32)
    cases = all_cases() if cases is None else cases
    modules = {"linear_attn": _load("linear_attn"), "swa": _load("swa"), "spike_linear": _load("spike_linear")}
    runners = {"linear_attn": _run_linear_attn, "swa": _run_swa, "spike_linear": _run_spike_linear}
    out = []
    for case in cases:
        mod = modules[case.family]
        with _Recorder(mod, target) as rec:
            runners[case.family](mod, case, backend, options)
        for r in rec.records:
            why = []
            if r["shared"] > smem_limit:
                why.append(f"shared memory {r['shared']} B > {smem_limit} B")
            w = r["num_warps"]
            if w > max_warps or w & (w - 1):
                why.append(f"num_warps {w} is not a power of two <= {max_warps}")
            out.append({"case": case.name, **r, "ok": not why, "why": "; ".join(why),
                        "target": f"{target.backend}:{target.arch}"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=80, help="NVIDIA arch to compile for when no GPU is present")
    ap.add_argument("--quick", action="store_true", help="bfloat16, per-key gate and sinks only")
    ap.add_argument("--smem-limit", type=int, default=MACA_SMEM_LIMIT)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--backend", default="maca", help="whose tuning data: maca (default) or cuda")
    ap.add_argument("--options", default="{}", help='extra config keys, JSON: {"linear_attn": {...}, '
                    '"swa_fwd": {...}, "swa_bwd": {...}}')
    args = ap.parse_args(argv)
    from triton.backends.compiler import GPUTarget
    target = default_target() or GPUTarget("cuda", args.arch, 32)
    res = check_configs(all_cases(args.quick), target=target, smem_limit=args.smem_limit,
                        backend=args.backend, options=json.loads(args.options))
    width = max(len(r["case"]) for r in res)
    for r in res:
        print(f"{r['case']:<{width}}  {r['kernel']:<24} smem {r['shared']:>6} B  warps {r['num_warps']:>2}  "
              f"stages {r['num_stages']}  {'ok' if r['ok'] else 'FAIL: ' + r['why']}")
    bad = [r for r in res if not r["ok"]]
    print(f"{len(res) - len(bad)}/{len(res)} kernel launches fit (target {res[0]['target'] if res else '?'}, "
          f"limit {args.smem_limit} B, <= {MACA_MAX_WARPS} warps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
