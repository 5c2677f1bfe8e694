"""Hopper (sm_90) fast paths of ops the Triton kernels serve everywhere else.

``swa_attn`` forward and backward: CUDA C++ wgmma + TMA kernels (backends/cuda/kernels/swa_fwd_sm90.cu and
swa_bwd_sm90.cu, bound as ``torch.ops.sbops_native.swa_attn_{fwd,bwd}_sm90``; each routed by
tuning/sm90.json) for the SpikingBrain case: bf16/fp16, head dim 128, no ``cu_seqlens``, no sink keys.
Every other case, every other GPU, a build without sm_90a code and the MACA builds use the Triton
kernels. Either backward reads the o and lse of either forward (both produce them the same way).
"""
from __future__ import annotations

import functools
import json
import os

import torch

from sbops import _platform

from .triton import swa

HEAD_DIM = 128
DTYPES = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def routes() -> dict:
    """The tuning data (backends/cuda/tuning/sm90.json): which fast paths the ops use by default."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuning", "sm90.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def swa_applies(q, k, v, cu_seqlens, sink_k, scale=None) -> bool:
    """True when the sm_90 kernels serve this call (inputs already validated). The forward takes
    the running max of the unscaled scores, so it needs scale > 0 (the default D ** -0.5 is)."""
    return (q.is_cuda and q.dtype in DTYPES and q.shape[-1] == HEAD_DIM and cu_seqlens is None
            and (scale is None or float(scale) > 0)
            and (sink_k is None or sink_k.shape[0] == 0) and q.numel() > 0
            and _platform.native_kernel_available(
                "swa_attn_fwd_sm90_available", q.device.index if q.device.index is not None else torch.cuda.current_device()))


def swa_fwd(q, k, v, window, scale):
    """(o, lse) of ``sbops::swa_attn`` by the sm_90 kernel; window < 0 or >= T is full causal
    (window and scale resolved by the Triton launcher's rules, ``swa._prepare``)."""
    _, _, window_eff, scale, *_ = swa._prepare(q, k, v, window, scale, None, None, None, None)
    return torch.ops.sbops_native.swa_attn_fwd_sm90(q, k, v, window_eff, scale)


def swa_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale, fuse_dq=True):
    """(dq, dk, dv, dsink_k, dsink_v) of ``sbops::swa_attn`` by the sm_90 backward (cases of
    ``swa_applies``; no sinks, so the sink gradients are empty). ``fuse_dq``: dQ inside the kernel
    (TMA reductions into a float32 buffer, FlashAttention-3's 5-MMA step); False: dK/dV there, dQ by the
    Triton dQ kernel (a comparison path: it computes delta a second time)."""
    _, _, window_eff, scale, *_ = swa._prepare(q, k, v, window, scale, None, None, None, None)
    grad_o = grad_o.to(q.dtype)
    dq, dk, dv = torch.ops.sbops_native.swa_attn_bwd_sm90(q, k, v, o, lse, grad_o, grad_lse, window_eff, scale,
                                                          fuse_dq)
    if not fuse_dq:
        dq = swa.swa_attn_bwd_dq(q, k, v, o, lse, grad_o, grad_lse, window, scale)
    # no sinks: two empty float32 gradients, separate tensors (the schema's outputs never alias)
    return (dq, dk, dv, torch.empty(0, device=q.device, dtype=torch.float32),
            torch.empty(0, device=q.device, dtype=torch.float32))
