"""SwiGLU's fused gate/up spike_linear at prefill with e4m3 weights, its fix-up folded into silu * up (launcher).

    h = silu(g) * u,   [g | u] = spike_linear(x, [Wg; Wu])   (x [M, K] bf16, e4m3 weights per channel)

spike_linear.scaled_mm_raw leaves the product unscaled, y_raw = s @ W^T (the vendor fp8 GEMM with unit scales), and
its sparse fix-up adds r @ W^T, what the count plane does not hold, into y_raw in place: a read and a write of
every [16-row block, 2 I] slab that lists a chunk, about half of y_raw on Gaussian rows at the 7B shapes (H100,
session 37, M = 16384: 0.44-0.49 ms a layer, 16% of the GEMM's 3.0 ms). silu_mul_scaled then reads y_raw again.
Here spike_linear_fp8._fix_silu_mul_kernel does both in one pass: it reads the g and u tiles once, adds the fix-up's
dots where the rows need them, and writes h, so y_raw is read once and never rewritten.

The result equals scaled_mm_raw + silu_mul_scaled bit for bit: the same dots in the same order, y rounded to its
dtype where the fix-up would have stored it, and the same float32 expression for silu * up.
"""
from __future__ import annotations

import torch
import triton

from . import spike_linear as sl
from .spike_linear_fp8 import _fix_silu_mul_kernel


# the silu-only launch's tile width and warps (a [BM, 512] tile at 4 warps: 64 values of g and u a thread in flight)
SILU_BN, SILU_WARPS = 512, 4


def silu_mul_scaled_mm(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float) -> torch.Tensor:
    """h [M, I] = silu(g) * u of y = [g | u] = spike_linear(x, weight_q, weight_scale, k) for a fused gate/up
    weight [2 I, K] (float8_e4m3fn, per-channel scales [2 I]) and bf16 x [M, K] of more than DECODE_MAX_M rows;
    as fused_rope_swiglu.silu_mul_scaled(*scaled_mm_raw(x, ...), weight_scale) with the fix-up fused into it."""
    if x.dim() != 2:
        raise ValueError(f"silu_mul_scaled_mm: x must be [M, K], got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:  # rows are read in place at any row stride; a strided last dim is copied
        x = x.contiguous()
    two_i = weight_q.shape[0]
    if two_i % 2 or weight_scale.shape != (two_i,):
        raise ValueError(f"silu_mul_scaled_mm: weight_q must be a fused gate/up weight [2 I, K] with scales [2 I], got "
                         f"{tuple(weight_q.shape)} and scales {tuple(weight_scale.shape)}")
    if not (sl.scaled_mm_applies(x, weight_q, None, None) and x.shape[0] > sl.DECODE_MAX_M):
        raise ValueError("silu_mul_scaled_mm: takes float8_e4m3fn weights with per-channel scales, bfloat16 x of more "
                         f"than {sl.DECODE_MAX_M} rows, K and N multiples of 16, on a GPU with fp8 tensor cores")
    scale = weight_scale.to(torch.float32).contiguous()
    return sl._prefill_scaled_mm(x, weight_q, scale, k, None, raw=True,
                                 fix=lambda *a: _fix_silu_mul(*a, scale=scale))


def _fix_silu_mul(x, w, vth, flags, y_raw, config, scale):
    M, K = x.shape
    I = y_raw.shape[1] // 2
    BM, BN, FC, planes = config
    cb, stages = sl._grouped_fix_launch(BM, BN, FC, x.device)
    lst, cnt = sl.flag_lists(flags)
    n_bm, n_fc = flags.shape
    h = torch.empty((M, I), device=x.device, dtype=y_raw.dtype)
    # the row blocks listing no chunk: silu * up alone, SILU_BN-column tiles; then the others with the fix-up's dots
    for listed, bn, warps, st in ((False, max(BN, SILU_BN), SILU_WARPS, 1), (True, BN, sl.FIX_WARPS, stages)):
        n_tiles = triton.cdiv(I, bn)
        tiles_per = sl.fix_groups(n_bm, n_tiles, x.device)
        _fix_silu_mul_kernel[(n_bm, triton.cdiv(n_tiles, tiles_per))](
            x, w, scale, vth, lst, cnt, y_raw, h, M, I, K, n_fc, tiles_per, x.stride(0), w.stride(0), y_raw.stride(0),
            BM=BM, BN=bn, FC=FC, CB=cb, PLANES=planes, LISTED=listed, num_warps=warps, num_stages=st)
    return h
