"""Runs the checks and speed cases on one backend and turns them into JSON-ready rows.

Every case runs inside try/except (and a per-case time limit), so one failing or slow case is
recorded in its row and the run goes on.  A backend that cannot serve a case (dtype, head dim,
feature: `sbops.NoBackendError`) gives a skipped row, not a failure.
"""
from __future__ import annotations

import gc
import math
import time
from typing import Any, Callable, Dict, List, Optional

import torch

import sbops
from sbops._validate import checking_data

from . import peers as P
from .cases import Check, Compared, Env, SpeedCase, bound_for
from .harness import measure, time_limit
from .overhead import measure_wrapper

f64 = torch.float64


def _num(x: float) -> Optional[float]:
    """A JSON-safe float: NaN/inf become None (a row with them never passes)."""
    return float(x) if math.isfinite(x) else None


def _error(e: BaseException) -> str:
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return "out of memory"
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _free(device: str) -> None:
    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


def compare(c: Compared, bound: float) -> Dict[str, Any]:
    """max |out - ref|, ||out - ref|| / ||ref|| (float64) and pass/fail for one output."""
    out = c.out.detach().cpu().to(f64)
    ref = c.ref.detach().cpu().to(f64)
    if out.shape != ref.shape:
        return {"max_abs": None, "rel": None, "exact": c.exact, "passed": False,
                "error": f"shape {list(out.shape)} != reference {list(ref.shape)}"}
    diff = out - ref
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if torch.isnan(out).any():
        max_abs = math.nan
    den = float(ref.norm())
    rel = float(diff.norm()) / den if den > 0 else float(diff.norm())
    row = {"max_abs": _num(max_abs), "rel": _num(rel), "exact": c.exact}
    if c.exact:
        row["mismatches"] = int((out != ref).sum())
        row["passed"] = row["mismatches"] == 0 and not torch.isnan(out).any().item()
    else:
        row["passed"] = math.isfinite(rel) and math.isfinite(max_abs) and rel <= bound
    return row


def run_check(check: Check, env: Env, timeout: Optional[float]) -> Dict[str, Any]:
    bound = bound_for(env.dtype, check.grad)
    row: Dict[str, Any] = {"op": check.op, "backend": env.backend, "dtype": str(env.dtype).replace("torch.", ""),
                           "shape": check.shape, "max_abs": None, "rel": None, "bound": bound, "passed": False}
    gen = torch.Generator().manual_seed(env.seed)
    t0 = time.perf_counter()
    try:
        with time_limit(timeout), sbops.use_backend(env.backend):
            compared = check.run(env, gen)
        outputs = {c.name: compare(c, bound) for c in compared}
    except sbops.NoBackendError as e:
        row.update(passed=None, skipped=str(e).splitlines()[0])
        return row
    except Exception as e:  # CaseTimeout included
        row["error"] = _error(e)
        return row
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 3)
        _free(env.device)
    rels = [o["rel"] for o in outputs.values()]
    abss = [o["max_abs"] for o in outputs.values()]
    row["rel"] = None if None in rels else max(rels)
    row["max_abs"] = None if None in abss else max(abss)
    row["passed"] = all(o["passed"] for o in outputs.values())
    row["outputs"] = outputs
    return row


def _peer_wanted(name: str, wanted: Optional[List[str]]) -> bool:
    """`wanted` holds peer names or dotted prefixes ('torch' selects torch.eager and torch.compile);
    None means every peer."""
    if wanted is None:
        return True
    return any(name == w or name.startswith(w + ".") for w in wanted)


def run_speed(case: SpeedCase, env: Env, roof: Dict[str, Any], budget: float, timeout: Optional[float],
              wanted_peers: Optional[List[str]], progress: Callable[[str], None] = lambda s: None
              ) -> Dict[str, Any]:
    row: Dict[str, Any] = {"case": case.name, "op": case.op, "backend": env.backend,
                           "dtype": str(env.dtype).replace("torch.", ""), "shape": case.shape,
                           "median_ms": None, "floor_ms": None, "peers": {}, "ratios": {}}
    t0 = time.perf_counter()
    prep = None
    try:
        with time_limit(timeout), sbops.use_backend(env.backend):
            prep = case.setup(env)
            # the default call (data checks off for GPU tensors, on for CPU ones), then the other
            # mode: `sbops.set_data_checks(True)` runs the host checks (index ranges, cu_seqlens;
            # on a GPU they read data back and synchronise), `(False)` none
            default_on = checking_data(torch.empty(0, device=env.device))
            ms = measure(prep.ours, env.device, budget)
            with sbops.data_checks(not default_on):
                other = measure(prep.ours, env.device, budget)
        row["median_ms"] = ms
        row["checks_default"] = "on" if default_on else "off"
        row["checks_on_ms"], row["checks_off_ms"] = (ms, other) if default_on else (other, ms)
        _metrics(row, prep, ms, roof)
    except sbops.NoBackendError as e:
        row["skipped"] = str(e).splitlines()[0]
    except Exception as e:  # CaseTimeout included
        row["error"] = _error(e)
    if prep is not None and row["median_ms"] is not None and case.probe is not None:
        progress(f"{case.name}: wrapper overhead")
        try:
            with time_limit(timeout), sbops.use_backend(env.backend):
                public = case.probe(env)
                row["wrapper"] = measure_wrapper(public, env.device, budget_s=min(0.5, budget))
        except Exception as e:  # CaseTimeout included
            row["wrapper_error"] = _error(e)
    if prep is not None and row["median_ms"] is not None:
        skipped: Dict[str, str] = {}
        for name, factory in prep.peers.items():
            if not _peer_wanted(name, wanted_peers):
                continue
            progress(f"{case.name}: peer {name}")
            try:
                with time_limit(timeout):
                    pms = measure(factory(), env.device, budget)
                row["peers"][name] = pms
                row["ratios"][name] = pms / row["median_ms"]
            except (P.PeerUnavailable, NotImplementedError) as e:   # e.g. flex backward on CPU
                skipped[name] = str(e).strip().splitlines()[0][:300]
            except Exception as e:  # CaseTimeout included
                skipped[name] = "error: " + _error(e)
        if skipped:
            row["peers_skipped"] = skipped
    del prep
    _free(env.device)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _metrics(row: Dict[str, Any], prep, ms: float, roof: Dict[str, Any]) -> None:
    """GB/s, TFLOP/s, which resource bounds the op, and the roofline floor."""
    s = ms * 1e-3
    floors = {}
    if prep.bytes:
        row["gbps"] = prep.bytes / s / 1e9
        if roof.get("bw"):
            floors["memory"] = prep.bytes / roof["bw"] * 1e3
    if prep.flops:
        row["tflops"] = prep.flops / s / 1e12
        if roof.get("flops"):
            floors["compute"] = prep.flops / roof["flops"] * 1e3
    row["bytes"], row["flops"] = prep.bytes, prep.flops
    if floors:
        bound = max(floors, key=floors.get)
        row["bound"] = bound
        row["floor_ms"] = floors[bound]
        row["floor_fraction"] = floors[bound] / ms        # 1.0 = at the roofline
