"""Whole-model benchmark (issue 19): TTFT 8k..4M, decode ms/token, memory; SpikingBrain-7B shape vs Qwen2-7B.

    python -m sbops.bench.model                                   # the default run (~6-8 min on an H200)
    python -m sbops.bench.model --lengths 8k,128k,1m --contexts 4k,1m --budget-s 300
    python -m sbops.bench.model --tiny                            # CPU smoke test (tiny shapes)
    python -m sbops.bench --model [same options]                  # the same, through sbops.bench

Ours: `SpikingBrainConfig.from_qwen2(<Qwen2-7B config>, "7b")` (28 layers alternating GLA / SWA
window 4096, 28 query heads on 4 KV heads, head dim 128, vocab 152064), random weights in bf16.
TTFT = `sbops.models.generate(model, ids, max_new_tokens=1, prefill_chunk_size=--chunk)` end to
end (cache allocation, chunked prefill with logits at the last position only, the first token),
one run per length after a warm-up.  Peer: Hugging Face `Qwen2ForCausalLM` of the same shape,
SDPA attention, bf16, `logits_to_keep=1`, `use_cache=False`, one forward; measured while a call is
predicted to take at most --peer-limit-s (and fits in memory), then extrapolated with
t(L) = a*L + b*L^2 fitted (least squares, relative) on the measured points: a*L is the
non-attention part, b*L^2 attention.  Extrapolated points are marked.
Decode: CUDA-graph steps of generate's DecodeGraphs (eager on CPU or with --no-graphs) at batch
sizes --batches, for contexts --contexts.  The context is faked: the cache's positions are set to
the context length and its ring buffers/states filled with random values, without prefilling.
The step's cost depends on the context only through min(context, window + 1) SWA rows.
Memory: peak allocated bytes during a call minus what was allocated before it (weights).
Everything runs under torch.inference_mode() with the ops' data checks off.
Outputs (--out, default sbops-model-bench in $OUT or the cwd): model_bench.json (rewritten after every point),
model_bench.md (tables), model_bench.png (when matplotlib is installed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import torch

import sbops

from .model_args import fmt_len, parse_counts, parse_len, parse_lens  # noqa: F401 (parse_*: public here)
from .model_args import parse_args as _parse_args

HBM = {"H200": 4.8e12, "H100": 3.35e12, "H800": 3.35e12, "A100": 2.0e12}


def qwen2_config(tiny: bool):
    fields = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6, rms_norm_eps=1e-6,
                  max_position_embeddings=1 << 23, tie_word_embeddings=False)
    if tiny:
        fields.update(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    try:
        from transformers import Qwen2Config
        return Qwen2Config(**fields, attn_implementation="sdpa")
    except ImportError:
        return SimpleNamespace(**fields)


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mem_now(device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


@contextlib.contextmanager
def peak_extra(device, out: Dict[str, Any]):
    """out['peak_extra_gib'] = peak allocated during the block minus allocated before it."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    out["peak_extra_gib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)


def gib(row: Dict[str, Any]) -> str:
    """The row's peak extra memory as text; '-' where none was measured (CPU rows: CUDA only)."""
    v = row.get("peak_extra_gib")
    return "-" if v is None else f"{v} GiB"


def peak_note(row: Dict[str, Any]) -> str:
    """', peak extra X GiB' for a progress line, or nothing where none was measured (CPU)."""
    return "" if row.get("peak_extra_gib") is None else f", peak extra {row['peak_extra_gib']} GiB"


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Run:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.device = torch.device(args.device)
        self.res: Dict[str, Any] = {"env": self.env(), "args": vars(args), "ttft": [], "decode": [], "notes": []}
        os.makedirs(args.out, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[model-bench {self.elapsed():7.1f}s] {msg}", flush=True)

    def env(self) -> Dict[str, Any]:
        e = {"torch": torch.__version__, "python": platform.python_version(), "sbops": getattr(sbops, "__version__", "?")}
        if torch.cuda.is_available():
            e["gpu"] = torch.cuda.get_device_name()
            e["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            import transformers
            e["transformers"] = transformers.__version__
        except ImportError:
            e["transformers"] = None
        return e

    def save(self) -> None:
        with open(os.path.join(self.args.out, "model_bench.json"), "w") as f:
            json.dump(self.res, f, indent=1)


# --------------------------------------------------------------------------- ours
def build_ours(run: Run):
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
    a = run.args
    cfg = SpikingBrainConfig.from_qwen2(qwen2_config(a.tiny), "7b", **({"window": 64} if a.tiny else {}))
    if a.weight_quant:  # W8ASpike: spike-coded inputs (k=3) x 8-bit weights on sbops.spike_linear
        cfg = cfg.replace(spike_k=3.0, weight_quant=a.weight_quant, down_weight_quant=a.down_quant)
    with torch.device(run.device), default_dtype(a.dtype):
        model = SpikingBrainForCausalLM(cfg).eval()
    if a.weight_quant and a.drop_float_weights:  # inference only: the 8-bit weights without their float masters
        from sbops.nn import drop_float_weights
        freed = drop_float_weights(model)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        run.log(f"dropped {freed / 2**30:.2f} GiB of float weights (sbops.nn.drop_float_weights)")
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    wbytes += sum(t.numel() * t.element_size() for m in model.modules() if getattr(m, "weight_q", None) is not None
                  for t in (m.weight_q, m.weight_scale))  # layers whose float weights were dropped
    rbytes = decode_read_bytes(model)
    run.res["ours"] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
                       "weight_gib": round(wbytes / 2**30, 3), "decode_read_gib": round(rbytes / 2**30, 3)}
    if a.chunk is None:  # generate()'s default prefill chunk for this model
        from sbops.models.generate import default_prefill_chunk
        a.chunk = run.res["args"]["chunk"] = default_prefill_chunk(model)
    if a.weight_quant:
        make_8bit_copies(run, model)
    if run.device.type == "cuda":  # what the model holds on the device (weights, 8-bit copies, buffers), measured
        sync(run.device)
        run.res["ours"]["resident_gib"] = round(torch.cuda.memory_allocated(run.device) / 2**30, 3)
    return model, rbytes


def make_8bit_copies(run: Run, model) -> None:
    """The 8-bit weights (and their per-block concatenations) are made at a model's first inference call: make
    them with a one-token forward before anything is measured, so that no measurement includes quantising the
    weights, and their memory counts as the model's (resident_gib), not as the first row's peak extra."""
    t = time.perf_counter()
    with torch.inference_mode():
        model(torch.zeros(1, 1, dtype=torch.long, device=run.device))
    sync(run.device)
    run.log(f"ours: 8-bit weight copies made ({time.perf_counter() - t:.1f} s, before any measurement)")


def decode_read_bytes(model) -> int:
    """Bytes of weights a decode step reads: every parameter once, except that a SpikeLinear running on its
    8-bit copy at inference (k set, weight_quant "fp8", or "int8" over whole groups) counts that copy (a byte
    per weight, its float32 scales) instead of its float weight.  The embedding table counts whole, as in
    issue 19's floor (its lm_head reads it when tied)."""
    from sbops.nn import SpikeLinear
    eight, total = {}, 0
    for m in model.modules():
        if isinstance(m, SpikeLinear) and m._has_8bit_path():
            groups = 1 if m.weight_quant == "fp8" else m.in_features // m.group_size
            nbytes = m.out_features * m.in_features + 4 * m.out_features * groups
            if m.weight is None:  # drop_float_weights: the 8-bit buffers are all it has
                total += nbytes
            else:
                eight[m.weight.data_ptr()] = nbytes
    seen = set()
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += eight.get(p.data_ptr(), p.numel() * p.element_size())
    return total


def ttft_ours(run: Run, model) -> None:
    from sbops.models import generate
    a = run.args
    chunk = a.chunk

    def once(L):
        ids = torch.randint(0, model.config.vocab_size, (1, L), device=run.device)
        sync(run.device)
        t = time.perf_counter()
        out = generate(model, ids, 1, prefill_chunk_size=chunk, cuda_graphs=False)
        int(out[0, -1])  # the first token on the host
        return time.perf_counter() - t

    run.log(f"ours: warm-up prefill ({2 * chunk + 17} tokens, chunk {chunk})")
    once(2 * chunk + 17)
    once(min(a.lengths))
    last = None
    for L in a.lengths:
        row: Dict[str, Any] = {"T": L, "model": "sbops"}
        predicted = None if last is None else last[1] * L / last[0] * 1.05
        reserve = a.peer_reserve_s if a.peer else 0.0
        if predicted is not None and predicted > run.left() - reserve:
            row["skipped"] = f"predicted {predicted:.1f} s exceeds the time budget left ({run.left() - reserve:.1f} s)"
            run.log(f"ours: TTFT T={fmt_len(L)} skipped: {row['skipped']}")
        else:
            run.log(f"ours: TTFT T={fmt_len(L)}" + (f" (predicted {predicted:.1f} s)" if predicted else ""))
            try:
                with peak_extra(run.device, row):
                    row["ttft_s"] = round(once(L), 4)
                last = (L, row["ttft_s"])
                run.log(f"ours: TTFT T={fmt_len(L)}: {row['ttft_s']:.3f} s{peak_note(row)}")
            except Exception as e:  # noqa: BLE001 - a benchmark row records any failure
                row["error"] = ("OOM: " if is_oom(e) else "") + f"{type(e).__name__}: {str(e)[:300]}"
                run.log(f"ours: TTFT T={fmt_len(L)} failed: {row['error']}")
                torch.cuda.empty_cache() if run.device.type == "cuda" else None
        run.res["ttft"].append(row)
        run.save()


def decode_ours(run: Run, model, rbytes: int) -> None:
    from sbops.models import DecodeGraphs
    a = run.args
    use_graphs = run.device.type == "cuda" and not a.no_graphs
    bw = next((v for k, v in HBM.items() if k in run.res["env"].get("gpu", "")), None)
    if bw:
        run.res["decode_floor_ms"] = round(rbytes / bw * 1e3, 3)
        run.res["notes"].append(f"decode floor = bytes of weights a step reads (8-bit copies where the layers run "
                                f"on them) / {bw / 1e12:.1f} TB/s (nominal HBM)")
    run.res["notes"].append("decode contexts are faked: cache positions set to the context, ring buffers and "
                            "states filled with random values, no prefill")
    V = model.config.vocab_size
    for B in a.batches:
        cache = model.new_cache(B + 1)
        graphs = DecodeGraphs(model, cache, B, B) if use_graphs else None
        slots = torch.arange(B, device=run.device)

        def step(ids):
            if graphs is not None:
                return graphs.step(ids, slots)
            return model(ids[:, None], cache=cache, slot_indices=slots).logits[:, 0]

        for ctx in a.contexts:
            row: Dict[str, Any] = {"B": B, "context": ctx, "graphs": use_graphs}
            if run.left() < (a.peer_reserve_s if a.peer else 0) + a.ttft_reserve_s:
                row["skipped"] = "time budget"
                run.res["decode"].append(row)
                continue
            try:
                for t in cache.tensors():
                    t.normal_(0, 0.02)
                cache.seq_lens.fill_(ctx)
                cache.seq_lens[B] = 0
                ids = torch.randint(0, V, (B,), device=run.device)
                with peak_extra(run.device, row):
                    for _ in range(3):
                        ids = step(ids).argmax(-1)
                    sync(run.device)
                    n = a.decode_steps if (use_graphs or not a.tiny) else min(a.decode_steps, 20)
                    t = time.perf_counter()
                    for _ in range(n):  # tokens stay on the device: no host sync per step
                        ids = step(ids).argmax(-1)
                    sync(run.device)
                    row["ms_per_step"] = round((time.perf_counter() - t) / n * 1e3, 3)
                    t = time.perf_counter()
                    for _ in range(n):  # as generate() does it: the tokens read on the host every step
                        ids = step(ids).argmax(-1)
                        ids.tolist()
                    row["ms_per_step_host_sync"] = round((time.perf_counter() - t) / n * 1e3, 3)
                run.log(f"ours: decode B={B} context={fmt_len(ctx)}: {row['ms_per_step']} ms/step "
                        f"({row['ms_per_step_host_sync']} with a host read per step)")
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                run.log(f"ours: decode B={B} context={fmt_len(ctx)} failed: {row['error']}")
            run.res["decode"].append(row)
            run.save()
        if use_graphs and a.eager_decode:
            row = {"B": B, "context": a.contexts[0], "graphs": False}
            try:
                cache.seq_lens.fill_(a.contexts[0])
                ids = torch.randint(0, V, (B,), device=run.device)
                with sbops.data_checks(False):
                    for _ in range(2):
                        ids = model(ids[:, None], cache=cache, slot_indices=slots).logits[:, 0].argmax(-1)
                    sync(run.device)
                    t = time.perf_counter()
                    for _ in range(10):
                        ids = model(ids[:, None], cache=cache, slot_indices=slots).logits[:, 0].argmax(-1)
                    sync(run.device)
                row["ms_per_step"] = round((time.perf_counter() - t) / 10 * 1e3, 3)
                run.log(f"ours: eager decode B={B}: {row['ms_per_step']} ms/step")
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            run.res["decode"].append(row)
        del graphs, cache
        if run.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- peer
def fit_quadratic(points):
    """Least squares of t = a*L + b*L^2, relative residuals, a, b >= 0. None with < 2 points."""
    if len(points) < 2:
        return None
    X = torch.tensor([[L / t, L * L / t] for L, t in points], dtype=torch.float64)
    y = torch.ones(len(points), dtype=torch.float64)
    a, b = torch.linalg.lstsq(X, y[:, None]).solution[:, 0].tolist()
    if b < 0:
        a, b = sum(t / L for L, t in points) / len(points), 0.0
    elif a < 0:
        a, b = 0.0, sum(t / (L * L) for L, t in points) / len(points)
    return a, b


def ttft_peer(run: Run) -> None:
    a = run.args
    try:
        from transformers import Qwen2ForCausalLM
    except ImportError:
        run.res["notes"].append("peer skipped: transformers is not installed")
        run.log("peer: transformers is not installed, skipped")
        return
    run.log("peer: building Qwen2ForCausalLM (SDPA, random weights)")
    cfg = qwen2_config(a.tiny)
    with torch.device(run.device), default_dtype(a.dtype):
        peer = Qwen2ForCausalLM(cfg).eval()
    run.res["peer"] = {"model": "transformers Qwen2ForCausalLM", "attn_implementation":
                       getattr(cfg, "_attn_implementation", None),
                       "weight_gib": round(sum(p.numel() * p.element_size() for p in peer.parameters()) / 2**30, 3)}

    def once(L):
        ids = torch.randint(0, cfg.vocab_size, (1, L), device=run.device)
        sync(run.device)
        t = time.perf_counter()
        try:
            logits = peer(input_ids=ids, logits_to_keep=1, use_cache=False).logits
        except TypeError:  # transformers < 4.50
            logits = peer(input_ids=ids, num_logits_to_keep=1, use_cache=False).logits
        int(logits[0, -1].argmax())
        return time.perf_counter() - t

    once(min(a.lengths))
    measured = []
    for L in a.lengths:
        row: Dict[str, Any] = {"T": L, "model": "qwen2"}
        fit = fit_quadratic(measured)
        if fit is None and measured:
            fit = (0.0, measured[-1][1] / measured[-1][0] ** 2)
        predicted = None if fit is None else fit[0] * L + fit[1] * L * L
        too_long = predicted is not None and (predicted > a.peer_limit_s or predicted > run.left())
        if not too_long:
            run.log(f"peer: TTFT T={fmt_len(L)}" + (f" (predicted {predicted:.1f} s)" if predicted else ""))
            try:
                with peak_extra(run.device, row):
                    row["ttft_s"] = round(once(L), 4)
                row["extrapolated"] = False
                measured.append((L, row["ttft_s"]))
                run.log(f"peer: TTFT T={fmt_len(L)}: {row['ttft_s']:.3f} s{peak_note(row)}")
            except Exception as e:  # noqa: BLE001
                row["error"] = ("OOM: " if is_oom(e) else "") + f"{type(e).__name__}: {str(e)[:200]}"
                run.log(f"peer: TTFT T={fmt_len(L)} failed: {row['error']}")
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()
        run.res["ttft"].append(row)
        run.save()
    fit = fit_quadratic(measured)
    if fit is None:
        run.res["notes"].append("peer: fewer than 2 measured lengths, no extrapolation")
    else:
        run.res["peer"]["fit"] = {"a_s_per_token": fit[0], "b_s_per_token2": fit[1],
                                  "measured_T": [L for L, _ in measured]}
        for row in run.res["ttft"]:
            if row["model"] == "qwen2" and "ttft_s" not in row:
                row["ttft_s"] = round(fit[0] * row["T"] + fit[1] * row["T"] ** 2, 3)
                row["extrapolated"] = True
                row["attention_share"] = round(fit[1] * row["T"] ** 2 / row["ttft_s"], 3)
    del peer
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    run.save()


# --------------------------------------------------------------------------- report
def resident_note(res: Dict[str, Any]) -> str:
    """' The model holds X GiB on the device (...).' where measured (CUDA), else nothing."""
    o = res.get("ours", {})
    if o.get("resident_gib") is None:
        return ""
    return (f" The model holds {o['resident_gib']} GiB on the device ({o['weight_gib']} GiB of parameters"
            + (", the rest its 8-bit weight copies and buffers" if res["args"].get("weight_quant") else
               ", the rest buffers") + "); peak extra memory is counted beyond that.")


def markdown(res: Dict[str, Any]) -> str:
    ours = {r["T"]: r for r in res["ttft"] if r["model"] == "sbops"}
    peer = {r["T"]: r for r in res["ttft"] if r["model"] == "qwen2"}
    env = res["env"]
    shape = "tiny shapes (smoke test)" if res["args"].get("tiny") else "7B shape"
    wq = res["args"].get("weight_quant")
    fmt = res["args"]["dtype_name"] + (f", W8ASpike ({wq} weights, spike-coded inputs)" if wq else "")
    lines = [f"## Whole model, {shape}, {fmt} (`python -m sbops.bench.model`)", "",
             f"{env.get('gpu', 'CPU')}, torch {env['torch']}, transformers {env.get('transformers')}; "
             f"prefill chunk {res['args']['chunk']} tokens." + resident_note(res), "",
             "| prompt | sbops TTFT | Qwen2 (HF SDPA) TTFT | ratio | sbops peak extra memory | Qwen2 peak extra |",
             "| --- | --- | --- | --- | --- | --- |"]
    for T in sorted(set(ours) | set(peer)):
        o, p = ours.get(T, {}), peer.get(T, {})
        ot = f"{o['ttft_s']:.3f} s" if "ttft_s" in o else (o.get("error") or o.get("skipped") or "-")
        ot = ot if len(ot) <= 90 else ot[:89] + "…"   # an error's first line, marked where cut
        pt = (f"{p['ttft_s']:.3f} s" + (" (extrapolated)" if p.get("extrapolated") else "")) if "ttft_s" in p \
            else (p.get("error") or "-")[:40]
        ratio = f"{p['ttft_s'] / o['ttft_s']:.1f}x" if "ttft_s" in o and "ttft_s" in p else "-"
        lines.append(f"| {fmt_len(T)} | {ot} | {pt} | {ratio} | {gib(o)} | "
                     f"{gib(p) if not p.get('extrapolated') else '-'} |")
    floor = res.get("decode_floor_ms")
    lines += ["", "| decode (CUDA graphs or eager) | context | ms/step | x weight-read floor | "
              "ms/step with a host read per step | peak extra memory |", "| --- | --- | --- | --- | --- | --- |"]
    for r in res["decode"]:
        val = r.get("ms_per_step", r.get("error", r.get("skipped", "-")))
        times = f"{r['ms_per_step'] / floor:.2f}x" if floor and isinstance(r.get("ms_per_step"), (int, float)) else "-"
        lines.append(f"| B={r['B']} {'graphs' if r['graphs'] else 'eager'} | {fmt_len(r['context'])} | {val} | "
                     f"{times} | {r.get('ms_per_step_host_sync', '-')} | {gib(r)} |")
    if floor:
        lines.append(f"\nWeight-read floor: {floor} ms/step (the bytes of weights a step reads, "
                     f"{res['ours'].get('decode_read_gib', '?')} GiB, at nominal HBM bandwidth).")
    on_cuda = str(res["args"].get("device", "")).startswith("cuda")
    notes = res["notes"] + ([] if on_cuda else ["peak extra memory is measured on CUDA devices only"])
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(res: Dict[str, Any], path: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, style in (("sbops", "o-"), ("qwen2", "s-")):
        rows = [r for r in res["ttft"] if r["model"] == model and "ttft_s" in r]
        meas = [r for r in rows if not r.get("extrapolated")]
        ext = [r for r in rows if r.get("extrapolated")]
        tiny = res["args"].get("tiny")
        wq = res["args"].get("weight_quant")
        label = (f"SpikingBrain-{'tiny' if tiny else '7B'} shape (sbops{', W8ASpike ' + wq if wq else ''})"
                 if model == "sbops"
                 else f"Qwen2-{'tiny' if tiny else '7B'} (HF SDPA)")
        line = ax1.plot([r["T"] for r in meas], [r["ttft_s"] for r in meas], style, label=label)[0]
        if ext:
            join = meas[-1:] + ext
            ax1.plot([r["T"] for r in join], [r["ttft_s"] for r in join], style[0] + "--", mfc="none",
                     color=line.get_color(), label=label + ", extrapolated")
    ax1.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="time to first token (s)", title="TTFT")
    ax1.legend(fontsize=8)
    for B in sorted({r["B"] for r in res["decode"]}):
        for graphs in (True, False):
            rows = [r for r in res["decode"] if r["B"] == B and r["graphs"] == graphs and "ms_per_step" in r]
            if rows:
                ax2.plot([r["context"] for r in rows], [r["ms_per_step"] for r in rows], "o-" if graphs else "x",
                         label=f"B={B}" + ("" if graphs else " eager"))
    if "decode_floor_ms" in res:
        ax2.axhline(res["decode_floor_ms"], ls=":", color="gray", label="weight-read floor")
    ax2.set(xscale="log", xlabel="context tokens", ylabel="ms per decode step", title="decode", ylim=(0, None))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    return _parse_args(argv, __doc__)


def stage(run: Run, name: str, fn, *args) -> None:
    """Run one stage; a failure is recorded (and printed) and the next stage still runs."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        msg = f"{name} stage failed: {type(e).__name__}: {str(e)[:500]}"
        run.res.setdefault("errors", []).append(msg)
        run.log(msg)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    run.save()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import sbops.nn.common
    sbops.nn.common.FUSE_PROJECTIONS = args.fuse
    if args.fuse_elementwise is not None:
        sbops.nn.common.FUSE_ELEMENTWISE = args.fuse_elementwise
    run = Run(args)
    run.res["args"] = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(args).items()}
    run.log(f"device {run.device} ({run.res['env'].get('gpu', 'cpu')}), lengths {[fmt_len(x) for x in args.lengths]}, "
            f"contexts {[fmt_len(x) for x in args.contexts]}, batches {args.batches}, budget {args.budget_s:.0f} s")
    checks = sbops.data_checks(False) if run.device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), checks:
        run.log(f"ours: building the SpikingBrain-{'tiny' if args.tiny else '7B'}-shaped model (random weights)")
        model, rbytes = build_ours(run)
        run.log(f"ours: {run.res['ours']['weight_gib']:.2f} GiB of weights, a decode step reads "
                f"{rbytes / 2**30:.2f} GiB of them")
        stage(run, "decode", decode_ours, run, model, rbytes)
        stage(run, "ttft", ttft_ours, run, model)
        del model
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        if args.peer:
            stage(run, "peer", ttft_peer, run)
    run.res["wall_s"] = round(run.elapsed(), 1)
    run.save()
    md = markdown(run.res)
    with open(os.path.join(args.out, "model_bench.md"), "w") as f:
        f.write(md)
    png = plot(run.res, os.path.join(args.out, "model_bench.png"))
    print(md)
    run.log(f"wrote {args.out}/model_bench.json, model_bench.md" + (", model_bench.png" if png else ""))
    return 1 if run.res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
