"""Time to first token vs sequence length: a SpikingBrain layer pair vs a Transformer layer pair.

Ours: one linear-attention layer + one sliding-window layer (the 7B model alternates them 1:1),
timed as `sbops.linear_attn` + `sbops.swa_attn` forward.  Baseline: two full causal SDPA layers
(flash on GPU).  Only the attention operators are timed (projections and FFNs cost the same in
both models and are left out).  SDPA grows as T^2: it is measured while a call is predicted to
take at most `sdpa_limit_s` (and fits in memory), and extrapolated beyond as
t(T) = t(T_last) * (T / T_last)^2 from the longest measured length, marked `sdpa_extrapolated`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

import sbops

from . import peers as P
from .cases import Env
from .harness import measure, time_limit
from .runner import _error, _free

GPU_TS = [4096 << i for i in range(9)]             # 4k ... 1M
CPU_TS = [256, 512, 1024, 2048]


def ttft_curve(env: Env, Ts: List[int], H: int, HKV: int, D: int, window: int, budget: float,
               sdpa_limit_s: float, timeout: float, progress: Callable[[str], None] = lambda s: None
               ) -> Dict[str, Any]:
    rows = []
    last = None                                      # (T, ms) of the longest measured SDPA call
    for T in Ts:
        progress(f"ttft T={T}")
        row: Dict[str, Any] = {"T": T}
        q = k = v = None
        try:
            with time_limit(timeout), sbops.use_backend(env.backend):
                q = torch.randn(1, T, H, D, device=env.device, dtype=env.dtype)
                k = torch.randn(1, T, HKV, D, device=env.device, dtype=env.dtype)
                v = torch.randn(1, T, HKV, D, device=env.device, dtype=env.dtype)
                g = (torch.nn.functional.logsigmoid(torch.randn(1, T, HKV, D, device=env.device)) / 16
                     ).to(env.dtype)
                row["linear_attn_ms"] = measure(lambda: sbops.linear_attn(q, k, v, g), env.device, budget)
                del g
                row["swa_ms"] = measure(lambda: sbops.swa_attn(q, k, v, window), env.device, budget)
                row["ours_ms"] = row["linear_attn_ms"] + row["swa_ms"]
        except Exception as e:  # out of memory at the longest lengths, a time limit, ...
            row["error"] = _error(e)
        predicted = None if last is None else last[1] * (T / last[0]) ** 2
        if v is not None and (predicted is None or predicted <= sdpa_limit_s * 1e3):
            try:
                with time_limit(timeout):
                    ms = measure(P.sdpa_causal(q, k, v), env.device, budget)
                row["sdpa_ms"], row["sdpa_extrapolated"] = 2 * ms, False
                last = (T, ms)
            except Exception as e:
                row["sdpa_error"] = _error(e)
        if "sdpa_ms" not in row and last is not None:
            row["sdpa_ms"], row["sdpa_extrapolated"] = 2 * last[1] * (T / last[0]) ** 2, True
        if row.get("ours_ms") and row.get("sdpa_ms"):
            row["speedup"] = row["sdpa_ms"] / row["ours_ms"]
        q = k = v = None
        _free(env.device)
        rows.append(row)
    return {"backend": env.backend, "dtype": str(env.dtype).replace("torch.", ""),
            "config": dict(H=H, HKV=HKV, D=D, window=window, B=1),
            "note": ("ours = linear_attn fwd + swa_attn fwd (one layer each); baseline = 2 x causal SDPA; "
                     "SDPA beyond the longest measured T is extrapolated as T^2"),
            "rows": rows}
