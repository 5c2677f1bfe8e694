"""How sparse a model's spike coding is on given inputs: the figure SpikingBrain reports (about 69%
sparsity at k=3 with bitwise ternary trains on its converted 7B model).

`spike_report(model, input_ids)` runs one forward pass with a hook on every spike-coded linear layer
(`sbops.nn.SpikeLinear` with `k` set). Each hook codes the layer's input exactly as the layer does
(`sbops.spike_encode`: per token vth = clamp(mean|x| / k, 1e-5, 1e4), counts = round(x / vth); for
weight_quant="int8_static" layers the released order, the mean taken in x's dtype) and
summarises the counts with `sbops.spike_stats` in each requested train mode, without materialising
the trains. The result holds, per layer and over the whole model:

- sparsity: zero entries / all entries of the [T, ...] spike trains (T: the steps the layer's largest
  count needs in that mode, so every count is represented; so the figure depends on the largest count
  seen, and differs from a fixed-T train such as SPEC section 0's 3-step one);
- spikes_per_neuron: mean non-zero steps per count;
- silent_fraction: fraction of zero counts;
- T and numel (counts seen); the model-wide figures weight each layer by its train entries
  (sparsity) or by its counts (the other two).

A host-side summary: every hook reads a histogram back (a GPU synchronisation per layer).  During the
report every layer runs on its own (no fused q/k/v or gate/up GEMMs, whose modules would not see
their inputs) and MoE blocks run each expert on its routed tokens only (not every expert on every
token, as small inference batches otherwise do), so each counted input is one the layer really codes.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from ..nn import common
from ..nn.moe import MoEBlock
from ..nn.spike import SpikeLinear
from ..ops.spike import spike_encode, spike_stats

MODES = ("bitwise", "ternary", "binary")


def spike_report(model: torch.nn.Module, input_ids: torch.Tensor, *, modes: Sequence[str] = ("bitwise", "ternary"),
                 **forward_kwargs: Any) -> Dict[str, Any]:
    """Spike statistics of every spike-coded linear input of `model` on `model(input_ids, **forward_kwargs)`.

    Returns {"layers": {module name: {mode: stats}}, "overall": {mode: stats}, "k": {module name: k}}
    with stats = {"sparsity", "spikes_per_neuron", "silent_fraction", "T", "numel"} (see the module
    docstring). `binary` needs non-negative counts: it is valid only for inputs that never go negative.
    A model without spike-coded layers is an error (nothing to report)."""
    for m in modes:
        if m not in MODES:
            raise ValueError(f"spike_report: modes must be among {', '.join(MODES)}; got {m!r}")
    layers = {name: mod for name, mod in model.named_modules() if isinstance(mod, SpikeLinear) and mod.k is not None}
    if not layers:
        raise ValueError("spike_report: the model has no spike-coded linear layer (SpikeLinear with k set); "
                         "build it with spike_k, e.g. SpikingBrainConfig(..., spike_k=3.0)")
    per_layer: Dict[str, Dict[str, Dict[str, float]]] = {}
    totals = {m: {"zeros": 0.0, "entries": 0.0, "spikes": 0.0, "silent": 0.0, "numel": 0} for m in modes}

    def hook(name: str, k: float, released: bool):
        def pre(_mod, args):
            x = args[0].detach()
            if released:  # spike_fake_quant_released's order: the mean in x's dtype
                vth = (x.abs().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
                counts = (x / vth).round().to(torch.int32)
            else:
                counts, _ = spike_encode(x, k, torch.int32)
            rows = per_layer.setdefault(name, {})
            for m in modes:
                st = spike_stats(counts, m)
                n, T = st["numel"], st["T"]
                agg = rows.setdefault(m, {"zeros": 0.0, "entries": 0.0, "spikes": 0.0, "silent": 0.0,
                                          "numel": 0, "T": 0})
                for d in (agg, totals[m]):
                    d["zeros"] += st["sparsity"] * T * n
                    d["entries"] += T * n
                    d["spikes"] += st["spikes_per_neuron"] * n
                    d["silent"] += st["silent_fraction"] * n
                    d["numel"] += n
                agg["T"] = max(agg["T"], T)
        return pre

    handles = [mod.register_forward_pre_hook(hook(name, mod.k, mod.weight_quant == "int8_static"))
               for name, mod in layers.items()]
    moes = [m for m in model.modules() if isinstance(m, MoEBlock)]
    saved = [m.__dict__.get("sync_free_max_tokens") for m in moes]
    fuse = common.FUSE_PROJECTIONS
    try:
        common.FUSE_PROJECTIONS = False
        for m in moes:
            m.sync_free_max_tokens = -1
        with torch.no_grad():
            model(input_ids, **forward_kwargs)
    finally:
        common.FUSE_PROJECTIONS = fuse
        for m, v in zip(moes, saved):
            if v is None:
                del m.sync_free_max_tokens
            else:
                m.sync_free_max_tokens = v
        for h in handles:
            h.remove()
    return {"layers": {name: {m: _finish(a) for m, a in rows.items()} for name, rows in per_layer.items()},
            "overall": {m: _finish(a) for m, a in totals.items()},
            "k": {name: mod.k for name, mod in layers.items()}}


def _finish(a: Dict[str, float]) -> Dict[str, float]:
    n = a["numel"]
    out = {"sparsity": a["zeros"] / a["entries"] if a["entries"] else 1.0,
           "spikes_per_neuron": a["spikes"] / n if n else 0.0,
           "silent_fraction": a["silent"] / n if n else 1.0,
           "numel": n}
    if "T" in a:
        out["T"] = a["T"]
    return out
