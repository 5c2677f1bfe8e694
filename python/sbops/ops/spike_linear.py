"""W8ASpike linear: spike-coded activations times 8-bit weights (issue 23)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import _validate as V
from ._common import run
from .spike import _check_k

_NO = ()
WEIGHT_DTYPES = (torch.int8, torch.float8_e4m3fn)
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
_T = torch.Tensor
_FLOATS = frozenset(V.FLOAT_DTYPES)
_WDTS = frozenset(WEIGHT_DTYPES)
_FEATS = {(b, g, f): ("bias" if b else None, "group" if g else None, "fp8_weight" if f else None)
          for b in (False, True) for g in (False, True) for f in (False, True)}


def _group_size(op, group_size, K) -> int:
    gs = V.as_int(group_size)
    if gs is None or gs <= 0 or K % gs:
        raise ValueError(f"sbops.{op}: group_size must be a positive divisor of K={K}, got {group_size!r}")
    return gs


def quantize_weight(weight: torch.Tensor, group_size: Optional[int] = None,
                    dtype: torch.dtype = torch.int8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit quantisation of a float weight [N, K] for `spike_linear`.

    Per output channel (group_size=None): weight_scale [N] = max|w| / qmax over each row; per group
    (group_size=g, K % g == 0; W8ASpike uses 128): weight_scale [N, K // g].  dtype torch.int8
    (qmax 127, the W8ASpike checkpoints' format): weight_q = clamp(round(w / scale), -127, 127);
    dtype torch.float8_e4m3fn (qmax 448, served by the fp8 tensor cores on CUDA): weight_q =
    (w / scale) rounded to e4m3.  Returns (weight_q, weight_scale float32)."""
    op = "quantize_weight"
    V.tensor(op, "weight", weight, ndim=2, dtypes=V.FLOAT_DTYPES, what="[N, K]")
    if dtype not in _QMAX:
        raise TypeError(f"sbops.{op}: dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype}")
    qmax = _QMAX[dtype]
    N, K = weight.shape
    if K == 0:
        raise ValueError(f"sbops.{op}: weight must have K >= 1 input channels [N, K], got shape {list(weight.shape)}")
    w = weight.detach().to(torch.float32)
    if group_size is None:
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / qmax
        q = w / scale[:, None]
    else:
        group_size = _group_size(op, group_size, K)
        wg = w.reshape(N, K // group_size, group_size)
        scale = wg.abs().amax(dim=2).clamp_min(1e-12) / qmax
        q = (wg / scale[..., None]).reshape(N, K)
    q = q.clamp_(-qmax, qmax)
    if dtype == torch.int8:
        q = torch.round(q)
    return q.to(dtype).contiguous(), scale.contiguous()


def spike_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float = 3.0,
                 bias: Optional[torch.Tensor] = None, group_size: Optional[int] = None) -> torch.Tensor:
    """y = vth * (s @ dequant(weight_q, weight_scale)^T) + bias, the W8ASpike linear layer.

    x [..., K] float; vth = clamp(mean|x| / k, 1e-5, 1e4) per row and s = round_half_even(x / vth)
    exactly as `spike_encode` (never saturated); weight_q [N, K] int8 or float8_e4m3fn; weight_scale [N] (per output
    channel) or [N, K // group_size] (per group); float32 accumulation; y [..., N] in x's dtype.
    On CUDA (M > 32 rows) the counts are encoded once to 8 bits by a fused pre-pass and multiplied on
    the int8 tensor cores (int8 weights) or the fp8 ones (e4m3 counts, exact for |c| <= 16, with
    float8_e4m3fn weights).  With e4m3 per-channel weights and bfloat16 x the GEMM is torch._scaled_mm, the
    vendor fp8 GEMM (vth x the channel scales in its epilogue), over one e4m3 count plane, or two (c = lo +
    16 hi, exact to |c| = 264) where K > N, and a sparse fix-up adds exactly what the planes do not hold.
    With int8 per-channel weights on CUDA where K > N (a SwiGLU down projection; M > 32, K and N multiples of 8,
    K <= 132104) the GEMM is torch._int_mm, the vendor int8 GEMM, over one int8 count plane (exact to |c| = 127),
    with the same sparse fix-up.
    Otherwise (Triton GEMM) rows with larger counts take extra passes over base-128 (int8) or base-16 (e4m3)
    digits on only the K chunks that need them.  At decode (M <= 32) a pre-pass writes the counts as two
    exact 8-bit planes and a split-K kernel streams the weights through the tensor cores; counts past the
    planes take an exact float16 pass.  With e4m3 or int8 per-channel weights, M <= 8 and 16-bit x, a CUDA C++
    kernel serves decode instead: its encode writes the counts as float16 planes (c = lo + 2048 hi, exact)
    and its GEMV converts the weights to float16 in registers for the tensor cores; counts of 2048^2 or more
    (a huge x against vth's clamp) take a float32 pass of their own.  The result is exact for every count, with one exception: on the
    Triton GEMM path (M > 32, int8 weights, per-group scales, or x not bfloat16) a count of 2^31 or more
    (|x| > 2^31 * vth) makes its row NaN.  The gradient is straight-through, as `spike_quant`:
    dL/dx = dL/dy @ dequant(W), dL/dbias = sum of dL/dy; weight_q and weight_scale get none.
    x may be a strided view (read in place when its last dim is contiguous).
    """
    # fast path (a model's inference call): plain comparisons that imply every check below passes;
    # anything else takes the full checks, which raise naming the argument
    if (x.__class__ is _T and weight_q.__class__ is _T and weight_scale.__class__ is _T and k.__class__ is float
            and 0.0 < k < math.inf and (xs := x.shape) and len(ws := weight_q.shape) == 2 and ws[1] == xs[-1]
            and x.dtype in _FLOATS and weight_q.dtype in _WDTS and weight_scale.dtype in _FLOATS
            and (dev := x.device) == weight_q.device and weight_scale.device == dev
            and (bias is None or (bias.__class__ is _T and bias.shape == ws[:1] and bias.dtype in _FLOATS
                                  and bias.device == dev))):
        K, N = ws[1], ws[0]
        if group_size is None:
            ok, gs = weight_scale.shape == ws[:1], 0
        else:
            ok, gs = (group_size.__class__ is int and group_size > 0 and K % group_size == 0
                      and weight_scale.shape == (N, K // group_size)), group_size
        if ok:
            flat = len(xs) == 2   # reshape / view cost ~1 us each: only for [..., K] with more than 2 dims
            x2 = x if flat else x.reshape(-1, K)
            y = run("spike_linear", x2, _NO, _FEATS[(bias is not None, gs > 0, weight_q.dtype == torch.float8_e4m3fn)],
                    x2, weight_q, weight_scale, k, bias, gs)
            return y if flat else y.view(*xs[:-1], N)
    op = "spike_linear"
    V.tensor(op, "x", x, dtypes=V.FLOAT_DTYPES, what="[..., K]")
    if x.dim() < 1:
        raise ValueError(f"sbops.{op}: x must have at least 1 dimension [..., K], got a scalar")
    K = x.shape[-1]
    V.tensor(op, "weight_q", weight_q, ndim=2, dtypes=WEIGHT_DTYPES, device=x.device, what="[N, K] int8 or float8_e4m3fn")
    N = weight_q.shape[0]
    if weight_q.shape[1] != K:
        raise ValueError(f"sbops.{op}: weight_q must have shape [N, {K}] (K = x's last dim), got {list(weight_q.shape)}")
    _check_k(op, k)
    if group_size is None:
        V.tensor(op, "weight_scale", weight_scale, dtypes=V.FLOAT_DTYPES, device=x.device, shape=(N,),
                 what="(per output channel, group_size=None)")
        gs = 0
    else:
        group_size = _group_size(op, group_size, K)
        V.tensor(op, "weight_scale", weight_scale, dtypes=V.FLOAT_DTYPES, device=x.device,
                 shape=(N, K // group_size), what=f"(per group of {group_size} input channels)")
        gs = group_size
    if bias is not None:
        V.tensor(op, "bias", bias, dtypes=V.FLOAT_DTYPES, device=x.device, shape=(N,))
    x2 = x.reshape(-1, K)
    y = run(op, x2, _NO, ("bias" if bias is not None else None, "group" if gs else None,
                          "fp8_weight" if weight_q.dtype == torch.float8_e4m3fn else None),
            x2, weight_q, weight_scale, float(k), bias, gs)
    return y.view(*x.shape[:-1], N)
