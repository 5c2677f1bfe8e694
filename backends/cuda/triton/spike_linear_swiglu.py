"""SwiGLU's gate / up at prefill with int8 per-channel weights: h = silu(gate(x)) * up(x) from one Hopper GEMM.

The int_mm path (spike_linear.py, spike_linear_intmm.py) writes the whole product [g | u] (M x 2I in x's dtype)
and a separate pass reads it back for silu(g) * u.  Here the gate and up rows of a feature block share a tile of
the int8 GEMM, so its epilogue forms h itself and writes M x I once:

    s, vth, flags = encode_lo(x)           [one int8 plane, counts clamped to +-127; flags per (16-row block,
                                            FC-column chunk) holding a count past it (or a NaN)]
    lst, cnt = flag_lists(flags)           [the flagged chunks of each row block, and their count]
    h, side = int8_gemm_swiglu_sm90(s, [Wg; Wu], vth, [sg; su], row_flags=cnt)
                                           [h = silu(g) * u, g = vth * sg * (s @ Wg^T), u likewise, float32,
                                            rounded once; the rows of flagged blocks also get g and u in side]
    side += vth * scale * (r @ W^T)        [the grouped fix-up of spike_linear_fp8.py over the flagged chunks
                                            only, r = c - s: every count exact, NaN rows NaN]
    h[flagged blocks] = silu(g) * u        [_swiglu_redo_kernel from side; other blocks return at once]

With row_sums, the epilogue also writes each row's sum of |h| over every 128-column tile (as stored), the redo
rewrites them for the flagged blocks, and the down projection's encode takes its thresholds from them
(down_from_row_sums): it reads h once instead of twice (18944-column rows do not fit one encode block).

Counts past 127 are rare (~2e-7 of a SwiGLU product's counts at k = 3; an RMSNorm output's fewer), so side is
allocated (as large as the product the int_mm path writes) but written only for flagged blocks.  Unflagged rows
round g and u never: h is float32 silu(g) * u rounded once, where the unfused path rounds g and u to x's dtype
first; flagged rows take that path's roundings.  Torch-free kernel; the launcher needs the CUDA build's
sbops_native.int8_gemm_swiglu_sm90 (sm_90a).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sbops import _platform

from . import spike_linear as sl

ROW_BLOCK = 16  # the kernel's row_flags granularity: one warp's 16 rows (FIX_GROUPED_CONFIG's BM must match)
FEATURE_TILE = 128  # I must be a multiple: a tile's gate rows and up rows


@triton.jit
def _swiglu_redo_kernel(side_ptr, cnt_ptr, h_ptr, M, I, s_side, s_h, BM: tl.constexpr, BC: tl.constexpr,
                        sums_ptr=None, s_sums=0, SUMS: tl.constexpr = False):
    # h[rows of block b] = silu(g) * u from side = [g | u] (float32 math, one rounding), where cnt[b] > 0; SUMS (BC =
    # FEATURE_TILE): each chunk's sum of |h| as stored, to sums[row, c0 / BC]
    b = tl.program_id(0)
    if tl.load(cnt_ptr + b) == 0:
        return
    rows = b * BM + tl.arange(0, BM)
    rm = rows < M
    r64 = rows.to(tl.int64)
    for c0 in range(0, I, BC):
        cols = c0 + tl.arange(0, BC)
        m = rm[:, None] & (cols < I)[None, :]
        g = tl.load(side_ptr + r64[:, None] * s_side + cols[None, :], mask=m, other=0.0).to(tl.float32)
        u = tl.load(side_ptr + r64[:, None] * s_side + I + cols[None, :], mask=m, other=0.0).to(tl.float32)
        h = (g / (1.0 + tl.exp(-g)) * u).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + r64[:, None] * s_h + cols[None, :], h, mask=m)
        if SUMS:
            tl.store(sums_ptr + r64 * s_sums + c0 // BC, tl.sum(tl.abs(h.to(tl.float32)), axis=1), mask=rm)


def _gemm(s, w, vth, scale, dtype, row_flags, row_sums=None):
    """(h, side) of the Hopper kernel (sbops_native.int8_gemm_swiglu_sm90; the CPU tests put an emulation here);
    row_sums [M, I / 128] float32 receives the tiles' sums of |h|."""
    return torch.ops.sbops_native.int8_gemm_swiglu_sm90(s, w, vth, scale, None, dtype, row_flags, row_sums=row_sums)


def applies(x: torch.Tensor, weight_q: torch.Tensor) -> bool:
    """Whether int8_swiglu serves x [M, K] against the fused [gate; up] int8 weight [2I, K]: the int_mm path's
    conditions (spike_linear.int_mm_applies, M > spike_linear.DECODE_MAX_M), the Hopper kernel present for x
    (spike_linear.int8_gemm_sm90_applies), I a multiple of FEATURE_TILE, and the fix-up's row blocks of ROW_BLOCK
    rows; a build that registers the op (sbops_native.int8_gemm_swiglu_sm90).  SBOPS_INT8_GEMM_SM90_ALL=0 (the
    int_mm path off the Hopper kernel where K <= N) keeps gate / up off it here too."""
    M, K = x.shape
    N = weight_q.shape[0]
    return (M > sl.DECODE_MAX_M and N % (2 * FEATURE_TILE) == 0 and sl.FIX_GROUPED_CONFIG[0] == ROW_BLOCK
            and sl.INT8_GEMM_SM90_ALL and sl.int_mm_applies(x, weight_q, None) and sl.int8_gemm_sm90_applies(x, K)
            and _platform.native_op("int8_gemm_swiglu_sm90") is not None)


def int8_swiglu(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float, row_sums: bool = False):
    """h [M, I] = silu(g) * u in x's dtype, [g | u] = spike_linear(x, weight_q, weight_scale, k) with weight_q
    [2I, K] int8 = [gate; up] rows and weight_scale [2I] per channel; every count exact (see the module docstring).
    Where applies(x, weight_q).  row_sums: (h, sums), sums [M, I / 128] float32 the sums of |h| over each 128-column
    tile of a row (down_from_row_sums' input)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    I = weight_q.shape[0] // 2
    BM, BN, FC = sl.FIX_GROUPED_CONFIG
    launch = sl._grouped_fix_launch(BM, BN, FC, x.device)
    s, _, vth, flags = sl.encode_lo(x, k, BM, FC, 1, fp8=False)
    lists = sl.flag_lists(flags)
    w = weight_q if weight_q.is_contiguous() else weight_q.contiguous()
    scale = weight_scale.to(torch.float32).contiguous()
    sums = torch.empty((M, I // FEATURE_TILE), device=x.device, dtype=torch.float32) if row_sums else None
    h, side = _gemm(s, w, vth, scale, x.dtype, lists[1], sums)
    sl._fix_up(x, w, scale, vth, flags, side, BM, BN, FC, 1, launch, fp8=False, lists=lists)
    redo = dict(BC=256) if sums is None else dict(BC=FEATURE_TILE, sums_ptr=sums, s_sums=sums.stride(0), SUMS=True)
    _swiglu_redo_kernel[(triton.cdiv(M, BM),)](side, lists[1], h, M, I, side.stride(0), h.stride(0), BM=BM,
                                               num_warps=4, **redo)
    return h if sums is None else (h, sums)


def down_takes_row_sums(K: int) -> bool:
    """Whether a down projection of K input channels gains from int8_swiglu's row sums: rows longer than one encode
    block (spike_linear.encode_lo_launch), which its encode otherwise reads twice."""
    return not sl.encode_lo_launch(K)[2]


def down_from_row_sums(h: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float, bias,
                       sums: torch.Tensor):
    """spike_linear(h, weight_q, weight_scale, k, bias) by the int_mm path (int8 weight_q [N, K], weight_scale [N] per
    channel) with vth from sums (int8_swiglu's, for this h [M, K]), or None where that path does not serve h."""
    if not sl.int_mm_applies(h, weight_q, None) or sums.shape != (h.shape[0], triton.cdiv(h.shape[1], FEATURE_TILE)):
        return None
    scale = weight_scale.to(torch.float32).reshape(weight_q.shape[0])
    return sl._prefill_int_mm(h, weight_q, scale, k, None if bias is None else bias.contiguous(), row_sums=sums)
