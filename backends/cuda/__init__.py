"""Backend `cuda`: NVIDIA GPUs.

CUDA C++ kernels (backends/cuda/kernels, torch-free, bound in backends/cuda/bindings) are compiled
into sbops._C for the CUDA dispatch key when sbops is built with SBOPS_TARGET=cuda (or auto with a
CUDA torch and nvcc).  The Triton kernels (backends/cuda/triton) are registered for the CUDA key
from Python at import, with tuned configs from backends/cuda/tuning/*.json.
"""
from __future__ import annotations

import os

import torch

from sbops import _platform
from sbops._dispatch import Backend, OpCaps

LOWP = (torch.float16, torch.bfloat16, torch.float32)
IDX = (torch.int32, torch.int64)
INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

# which implementation serves each op: "native" (CUDA C++ in sbops._C) or "triton"
TRITON_OPS = {"linear_attn", "swa_attn", "spike_linear"}

OPS = {
    "linear_attn": OpCaps(LOWP, head_dims=(64, 128),
                          features=frozenset({"gate_per_head", "gate_per_key", "varlen", "initial_state"}),
                          impl="triton"),
    "swa_attn": OpCaps(LOWP, head_dims=(64, 128), features=frozenset({"varlen", "sinks", "full_causal"}),
                       impl="triton; on sm_90 the forward and backward are CUDA C++ wgmma + TMA kernels where "
                            "they apply (tuning/sm90.json)"),
    "linear_attn_decode": OpCaps(LOWP, head_dims=(64, 128), features=frozenset({"gate_per_head", "gate_per_key"}),
                                 impl="cuda c++"),
    "swa_decode": OpCaps(LOWP, head_dims=(64, 128), features=frozenset({"full_causal", "sinks"}), impl="cuda c++"),
    "swa_cache_write": OpCaps(LOWP, impl="cuda c++"),
    "spike_encode": OpCaps(LOWP, impl="cuda c++"),
    "spike_quant": OpCaps(LOWP, impl="cuda c++"),
    "spike_linear": OpCaps(LOWP, features=frozenset({"bias", "group", "fp8_weight"}),
                           impl="triton: fused encode to int8/e4m3 counts + 8-bit tensor-core GEMM (int8 or float8_e4m3fn "
                                "weights; e4m3 per channel with bf16 x: torch._scaled_mm over one or two exact count "
                                "planes + a sparse fix-up); decode M<=32: a planes pre-pass + a split-K GEMV; e4m3 per "
                                "channel with M<=8 and 16-bit x: CUDA C++ (kernels/spike_decode.cu, float16 count "
                                "planes + a tensor-core GEMV; counts >= 2048^2: a float32 pass)"),
    "spike_expand": OpCaps(INTS, impl="cuda c++"),
    "spike_collapse": OpCaps(INTS, impl="cuda c++"),
    "spike_stats": OpCaps(INTS, impl="cuda c++"),
    "topk_gating": OpCaps(LOWP, features=frozenset({"bias", "groups"}), impl="cuda c++"),
    "moe_permute": OpCaps(LOWP, impl="cuda c++"),
    "moe_unpermute": OpCaps(LOWP, impl="cuda c++"),
    "moe_align_block_size": OpCaps(IDX, impl="cuda c++"),
    "expert_counts": OpCaps(IDX, impl="cuda c++"),
}

_triton_error: str | None = None


def _probe(op: str) -> str | None:
    why = _platform.cuda_device_reason()
    if why:
        return why
    if op in TRITON_OPS:
        return _platform.triton_reason() or _triton_error
    target = _platform.native_target()
    if target != "cuda":
        return f"sbops._C was built for '{target}' without CUDA kernels (rebuild with SBOPS_TARGET=cuda)"
    return None


BACKEND = Backend(
    name="cuda",
    device_types=("cuda",),
    priority=10,
    probe=_probe,
    ops=OPS,
    description="NVIDIA GPUs: CUDA C++ (memory-bound ops, decode) and Triton (chunked linear attention, SWA)",
)


# dispatch backend name -> the tuning its Triton kernels were registered with (register_triton)
_TUNING: dict = {}


def tuning(backend_name: str = "cuda"):
    """The tuning ("cuda", "maca") backend `backend_name`'s Triton kernels were registered with, or None."""
    return _TUNING.get(backend_name)


def sm90_routes(backend_name: str = "cuda") -> dict:
    """The Hopper fast paths (tuning/sm90.json) that backend `backend_name`'s registered kernels take: {} where they
    run another tuning (the MACA simulation's) or were not registered.  The model's own fast paths around these ops
    (sbops.nn: the SWA prefill chunk's queries alone, the int8 down projection's row sums) follow them."""
    if _TUNING.get(backend_name) != "cuda":
        return {}
    from . import sm90
    return sm90.routes()


def register_triton(tuning_backend: str, backend: "Backend | None" = None) -> None:
    """Register the Triton kernels for the CUDA dispatch key, tuned for `tuning_backend`; `backend`
    (default this module's BACKEND) receives the Triton extensions (see Backend.extensions)."""
    from . import sm90
    _TUNING[(backend or BACKEND).name] = tuning_backend
    from .triton import linear_attn as la
    from .triton import spike_linear as sl
    from .triton import swa

    def linear_attn(q, k, v, g, scale, initial_state, cu_seqlens):
        return la.linear_attn_fwd(q, k, v, g, scale, initial_state, cu_seqlens, backend=tuning_backend)

    def linear_attn_bwd(q, k, v, g, scale, initial_state, cu_seqlens, grad_o, grad_final_state):
        return la.linear_attn_bwd(q, k, v, g, scale, initial_state, cu_seqlens, grad_o, grad_final_state,
                                  backend=tuning_backend)

    # the Hopper wgmma kernels serve the cases they cover on sm_90 when the tuning data routes them there
    # (never under the MACA tuning data, which stands for MetaX hardware, where it does not exist)
    routes = sm90.routes() if tuning_backend == "cuda" else {}
    sm90_fwd, sm90_bwd = routes.get("swa_fwd", False), routes.get("swa_bwd", False)

    def sm90_serves(q, k, v, scale, cu_seqlens, sink_k, sink_v):
        swa._check_inputs(q, k, v, sink_k, sink_v, cu_seqlens)  # the Triton launchers' errors first
        return sm90.swa_applies(q, k, v, cu_seqlens, sink_k, scale)

    def swa_attn(q, k, v, window, scale, cu_seqlens, sink_k, sink_v):
        if sm90_fwd and sm90_serves(q, k, v, scale, cu_seqlens, sink_k, sink_v):
            return sm90.swa_fwd(q, k, v, window, scale)
        return swa.swa_attn_fwd(q, k, v, window, scale, cu_seqlens, sink_k, sink_v, backend=tuning_backend)

    def swa_attn_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale, cu_seqlens, sink_k, sink_v):
        if sm90_bwd and sm90_serves(q, k, v, scale, cu_seqlens, sink_k, sink_v):
            return sm90.swa_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale,
                                fuse_dq=routes.get("swa_bwd_fused_dq", True))
        return swa.swa_attn_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale, cu_seqlens, sink_k, sink_v,
                                backend=tuning_backend)

    def spike_linear(x, weight_q, weight_scale, k, bias, group_size):
        return sl.spike_linear_fwd(x, weight_q, weight_scale, k, bias, group_size if group_size > 0 else None,
                                   backend=tuning_backend)

    def linear_attn_fwd_carry(q, k, v, g, scale, carry):
        return la.linear_attn_fwd_carry(q, k, v, g, scale, carry, backend=tuning_backend)

    def linear_attn_dh0(q, k, v, g, do, scale):
        return la.linear_attn_dh0(q, k, v, g, do, scale, backend=tuning_backend)

    ext = (backend or BACKEND).extensions
    ext["linear_attn_fwd_carry"], ext["linear_attn_dh0"] = linear_attn_fwd_carry, linear_attn_dh0

    for name, fn in (("linear_attn", linear_attn), ("linear_attn_bwd", linear_attn_bwd),
                     ("swa_attn", swa_attn), ("swa_attn_bwd", swa_attn_bwd), ("spike_linear", spike_linear)):
        torch.library.register_kernel(f"sbops::{name}", "cuda", fn)


def register() -> None:
    global _triton_error
    if _platform.cuda_import_reason() or _platform.triton_reason():   # at import: CUDA stays uninitialised
        return
    try:
        # SBOPS_TRITON_TUNING=maca runs the MACA tuning configs on NVIDIA (the MACA simulation tests)
        register_triton(os.environ.get("SBOPS_TRITON_TUNING", "cuda"))
    except Exception as e:  # reported through sbops.backends() / explain(), never silently used
        _triton_error = f"the Triton kernels failed to load: {type(e).__name__}: {e}"
