"""Fused RMSNorm for inference (sbops.nn.common.RMSNorm.forward in one launch).

Semantics are exactly those of RMSNorm.forward (fla order), for x in float16 / bfloat16 / float32:

    h = float32(x) (+ float32(residual))
    y = h * rsqrt(mean(h^2) + eps) * float32(weight) (+ float32(bias)),   cast to x's dtype once
    prenorm=True also returns h in residual's dtype (float32 when residual is None and
    residual_in_fp32, else x's dtype); y is normalised from the float32 sum, not its rounded copy,
    unless round_sum=True: then h is first rounded to residual's dtype and y normalises that rounded
    sum (what `norm(residual + x)` gives as two ops: a block's residual add fused into the next norm).

One read of x (and residual), one write of y (and h): the torch code makes about ten passes over
float32 copies.  The products are computed in the same order as the torch code and without FMA
contraction (enable_fp_fusion=False), and the mean as torch's CUDA mean (sum * fl32(1/N), not a
division: Triton's '/' is div.full, 2 ulp), so the only difference from it is the order of the
float32 sum of squares (rsqrt: MUFU.RSQ in both).  MAX_N rows are 128 registers a thread at 16
warps (sm_90 compile: no spills, at the limit).

Layout: each program normalises BLOCK_M rows of length N (BLOCK_N = next power of two >= N, one
tile in registers): BLOCK_M = 1 for hidden-size rows (3584 -> 4096 columns), many rows per program
for the per-head norms (head_dim 128: 32 rows).  x / residual are read through a row stride (the
leading dimensions must merge into one, else they are copied; the last stride must be 1, else
copied).  y and h are new contiguous tensors of x's shape.  Rows longer than MAX_N are not served
(supports(N) is False: the caller keeps the torch code).

Nothing is read back to the host and every allocation depends only on shapes: CUDA-graph safe.  With SBOPS_DECODE_PDL=all
the kernel launches on sm_90 as a programmatic dependent of the kernel before it (_common.pdl_options).
Kernel code is torch-free; only the launcher below uses torch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import pdl_options

MAX_N = 32768  # longest row served (float32 tile of BLOCK_M * BLOCK_N <= 32768 values per program)
_TILE = 4096   # target elements per program for short rows


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, h_ptr, M, N, sx, sr, eps, inv_n,
                     HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_H: tl.constexpr,
                     ROUND_H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (_common.pdl_options): wait for the kernel before, let the next launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    h = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h = h + tl.load(r_ptr + rows[:, None] * sr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if ROUND_H:   # the sum as a tensor of residual's dtype (round to nearest even), then normalised
            h = h.to(r_ptr.dtype.element_ty).to(tl.float32)
    var = tl.sum(h * h, axis=1) * inv_n      # torch's CUDA mean: sum * (1/N); '/ N' would be div.full (2 ulp)
    rstd = tl.math.rsqrt(var + eps)
    y = h * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    out = rows[:, None] * N + cols[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_H:
        tl.store(h_ptr + out, h.to(h_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------- launcher
import torch  # noqa: E402  (launcher only)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supports(n: int) -> bool:
    """Whether rows of length n are served (1 <= n <= MAX_N)."""
    return 1 <= n <= MAX_N


def _rows(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """t as a [M, n] matrix with unit column stride: a view when possible, else a copy."""
    if t.dtype not in _DTYPES:
        raise ValueError(f"rms_norm: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    t2 = t.reshape(-1, n)
    if t2.stride(-1) != 1 and n > 1:
        t2 = t2.contiguous()
    return t2


def config(n: int, m: int):
    """(BLOCK_M, BLOCK_N, num_warps) for rows of length n, m rows."""
    block_n = triton.next_power_of_2(n)
    block_m = max(1, min(_TILE // block_n, 128, triton.next_power_of_2(max(m, 1))))
    warps = max(1, min(16, block_m * block_n // 512))
    return block_m, block_n, warps


def rms_norm(x: torch.Tensor, weight, eps: float, residual=None, prenorm: bool = False,
             residual_in_fp32: bool = False, bias=None, round_sum: bool = False):
    """RMSNorm.forward's result (y, or (y, h) with prenorm) in one launch; see the module docstring.
    weight / bias: [N] tensors or None; round_sum needs a residual."""
    n = x.shape[-1] if x.dim() else 0
    if not supports(n):
        raise ValueError(f"rms_norm: x's last dimension must be in [1, {MAX_N}], got shape {tuple(x.shape)}")
    x2 = _rows(x, "x", n)
    r2 = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"rms_norm: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.device != x.device:
            raise ValueError(f"rms_norm: residual must be on x's device {x.device}, got {residual.device}")
        r2 = _rows(residual, "residual", n)
    elif round_sum:
        raise ValueError("rms_norm: round_sum=True rounds x + residual to residual's dtype: it needs a residual")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (n,) or p.device != x.device):
            raise ValueError(f"rms_norm: {name} must be [{n}] on {x.device}, got {tuple(p.shape)} on {p.device}")
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = None
    if prenorm:
        h_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
        h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    m = x2.shape[0]
    if m:
        block_m, block_n, warps = config(n, m)
        _rms_norm_kernel[(triton.cdiv(m, block_m),)](
            x2, r2 if r2 is not None else x2, w if w is not None else x2, b if b is not None else x2,
            y, h if h is not None else y, m, n, x2.stride(0), r2.stride(0) if r2 is not None else 0, float(eps), 1.0 / n,
            HAS_RES=r2 is not None, HAS_W=w is not None, HAS_B=b is not None, STORE_H=h is not None,
            ROUND_H=bool(round_sum),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, enable_fp_fusion=False,
            **pdl_options(_rms_norm_kernel, x2))
    return (y, h) if prenorm else y
