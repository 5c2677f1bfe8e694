"""Fused activations of a gated-linear-attention layer for inference (one launch instead of four).

gla_act(q, k, gk, normalizer) = (relu(q), relu(k), logsigmoid(gk) / normalizer viewed as k's shape),
    the GLA layer's q / k feature maps and its per-key log-decay (sbops.nn.GatedLinearAttention).
    relu is exact (NaN stays NaN, as in F.relu).  The gate is computed in float32 and rounded once to gk's dtype; the torch code
    rounds logsigmoid(gk) to gk's dtype before the division: in bfloat16 they differ by at most an
    ulp (the fused one is the more accurate).  logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)), with
    log1p by Kahan's log(u) * e / (u - 1), u = 1 + e (no cancellation when exp(-|x|) is tiny).
    q [B, T, H, D] and k [B, T, HKV, D] may be strided views of one fused projection output (their
    heads contiguous in a row: stride(-2) == D, stride(-1) == 1; batch and time read through their
    strides); gk [B, T, HKV * D] with a unit last stride.  Outputs are new contiguous tensors.

Nothing is read back to the host; allocations depend only on shapes (CUDA-graph safe).
Kernel code is torch-free; only the launcher below uses torch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import pdl_options

BLOCK = 1024


@triton.jit
def _relu_row(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for c0 in range(0, n, BLOCK):
        m = c0 + offs < n
        v = tl.load(src + c0 + offs, mask=m, other=0.0).to(tl.float32)
        # where, not tl.maximum: maxnum would turn NaN into 0 (F.relu keeps NaN)
        tl.store(dst + c0 + offs, tl.where(v < 0.0, 0.0, v).to(dst.dtype.element_ty), mask=m)


@triton.jit
def _gla_act_kernel(q_ptr, k_ptr, g_ptr, qo_ptr, ko_ptr, go_ptr, T, nq, nk, qs0, qs1, ks0, ks1, gs0, gs1, norm,
                    BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (_common.pdl_options): wait for the kernel before, let the next launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)  # b * T + t
    b = row // T
    t = row % T
    _relu_row(q_ptr + b * qs0 + t * qs1, qo_ptr + row * nq, nq, BLOCK)
    _relu_row(k_ptr + b * ks0 + t * ks1, ko_ptr + row * nk, nk, BLOCK)
    offs = tl.arange(0, BLOCK)
    gr = g_ptr + b * gs0 + t * gs1
    for c0 in range(0, nk, BLOCK):
        m = c0 + offs < nk
        x = tl.load(gr + c0 + offs, mask=m, other=0.0).to(tl.float32)
        e = tl.exp(-tl.abs(x))
        u = 1.0 + e
        lp = tl.where(u == 1.0, e, tl.log(u) * e / tl.where(u == 1.0, 1.0, u - 1.0))  # log1p(e)
        y = (tl.minimum(x, 0.0) - lp) / norm
        tl.store(go_ptr + row * nk + c0 + offs, y.to(go_ptr.dtype.element_ty), mask=m)


import torch  # noqa: E402  (launcher only)


def supports(q, k, gk) -> bool:
    """Whether gla_act reads these operands in place (else the caller keeps the torch code)."""
    if q.dim() != 4 or k.dim() != 4 or gk.dim() != 3 or q.dtype != k.dtype:
        return False
    B, T, _, D = q.shape
    return (k.shape[:2] == (B, T) and k.shape[3] == D and gk.shape == (B, T, k.shape[2] * D)
            and q.stride(-1) == 1 and k.stride(-1) == 1 and gk.stride(-1) == 1
            and q.stride(-2) == D and k.stride(-2) == D and q.device == k.device == gk.device)


def gla_act(q, k, gk, normalizer: float):
    """-> (relu(q), relu(k), logsigmoid(gk).view(k.shape) / normalizer), new contiguous tensors."""
    if not supports(q, k, gk):
        raise ValueError(f"gla_act: q [B, T, H, D] and k [B, T, HKV, D] with heads contiguous in a row, gk "
                         f"[B, T, HKV * D] with a unit last stride, one device, got q {tuple(q.shape)} / "
                         f"{q.stride()}, k {tuple(k.shape)} / {k.stride()}, gk {tuple(gk.shape)} / {gk.stride()}")
    B, T, H, D = q.shape
    HKV = k.shape[2]
    qo = torch.empty((B, T, H, D), device=q.device, dtype=q.dtype)
    ko = torch.empty((B, T, HKV, D), device=k.device, dtype=k.dtype)
    go = torch.empty((B, T, HKV, D), device=gk.device, dtype=gk.dtype)
    if B * T:
        _gla_act_kernel[(B * T,)](q, k, gk, qo, ko, go, T, H * D, HKV * D, q.stride(0), q.stride(1), k.stride(0),
                                  k.stride(1), gk.stride(0), gk.stride(1), float(normalizer), BLOCK=BLOCK,
                                  num_warps=4, **pdl_options(_gla_act_kernel, qo))
    return qo, ko, go
