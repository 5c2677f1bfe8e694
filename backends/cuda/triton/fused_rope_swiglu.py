"""Fused SwiGLU activation and rotary embedding for inference (one launch each).

silu_mul(gate, up) = silu(gate) * up, computed in float32 and rounded once to the inputs' dtype.
silu_mul_scaled(y_raw, vth, scale): the same of a fused gate/up spike_linear's raw product, its per-row vth and
    per-channel scales applied in float32 on the way (sbops.nn's SwiGLU, spike_linear.scaled_mm_raw).
    The torch code (F.silu(gate) * up) rounds silu(gate) to the input dtype before the product:
    in bfloat16 the two differ by at most an ulp of the result (the fused one is the more accurate).
    gate / up may be strided views of one fused [..., 2 * I] projection output (read in place: the
    leading dimensions must merge into one row axis, the last stride must be 1; else copied).

rope(q, k, cos, sin) = (apply_rope(q, cos, sin), apply_rope(k, cos, sin)) of sbops.nn.common:
    Qwen2 rotary, non-interleaved halves, x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(-x2, x1).  q [B, T, H, D] and k [B, T, HKV, D] are rotated in one launch
    (one program per token: cos / sin are read once for all heads of q and k); views of a fused qkv
    projection are read in place through their batch / time / head strides (last stride 1).
    cos / sin broadcast to [B, T, 1, D] (the model passes [1 or B, T, 1, D] float32).  The numerics
    are apply_rope's: cos / sin are rounded to x's dtype, each product and the sum are rounded to
    x's dtype as torch does, no FMA contraction (enable_fp_fusion=False): bit-exact with the torch
    code in float16 / bfloat16 (products of two 8- or 11-bit mantissas are exact in float32) and
    in float32.  Outputs are new contiguous tensors.

Nothing is read back to the host; allocations depend only on shapes (CUDA-graph safe).
Kernel code is torch-free; only the launchers below use torch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import pdl_options


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, sg, su, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (_common.pdl_options): wait for the kernel before, let the next launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(g_ptr + row * sg + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * su + cols, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_scaled_kernel(y_ptr, vth_ptr, sc_ptr, h_ptr, N, sy, BLOCK: tl.constexpr):
    # h = silu(g * vth * sg) * (u * vth * su) of one row of a raw gate/up product y = [g | u] (scaled_mm_raw)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    v = tl.load(vth_ptr + row)
    g = tl.load(y_ptr + row * sy + cols, mask=mask, other=0.0).to(tl.float32) * (tl.load(sc_ptr + cols, mask=mask,
                                                                                          other=0.0) * v)
    u = tl.load(y_ptr + row * sy + N + cols, mask=mask, other=0.0).to(tl.float32) * (
        tl.load(sc_ptr + N + cols, mask=mask, other=0.0) * v)
    h = g / (1.0 + tl.exp(-g)) * u
    tl.store(h_ptr + row * N + cols, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _round(v, ROUND: tl.constexpr, DT: tl.constexpr):
    """v rounded to the output dtype DT and back to float32 (nothing when DT is float32)."""
    if ROUND:
        v = v.to(DT).to(tl.float32)
    return v


@triton.jit
def _rope_heads(x_ptr, o_ptr, xoff, ooff, nh, sh, c1, c2, s1, s2, d, dmask,
                HALF: tl.constexpr, BLOCK_H: tl.constexpr, ROUND: tl.constexpr):
    """Rotate the nh heads of one token: x at x_ptr + xoff + head * sh, out at o_ptr + ooff (contiguous)."""
    DT = o_ptr.dtype.element_ty
    for h0 in range(0, nh, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)
        mask = (heads < nh)[:, None] & dmask[None, :]
        src = x_ptr + xoff + heads.to(tl.int64)[:, None] * sh + d[None, :]
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        y1 = _round(_round(x1 * c1[None, :], ROUND, DT) + _round(-x2 * s1[None, :], ROUND, DT), ROUND, DT)
        y2 = _round(_round(x2 * c2[None, :], ROUND, DT) + _round(x1 * s2[None, :], ROUND, DT), ROUND, DT)
        dst = o_ptr + ooff + heads.to(tl.int64)[:, None] * (2 * HALF) + d[None, :]
        tl.store(dst, y1.to(DT), mask=mask)
        tl.store(dst + HALF, y2.to(DT), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, T, H, HKV,
                 sqb, sqt, sqh, skb, skt, skh, scb, sct, ssb, sst,
                 HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 ROUND: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (_common.pdl_options): wait for the kernel before, let the next launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    r = tl.program_id(0).to(tl.int64)  # token b * T + t
    b = r // T
    t = r % T
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    DT = qo_ptr.dtype.element_ty
    cp = cos_ptr + b * scb + t * sct + d
    sp = sin_ptr + b * ssb + t * sst + d
    c1 = _round(tl.load(cp, mask=dmask, other=0.0).to(tl.float32), ROUND, DT)
    c2 = _round(tl.load(cp + HALF, mask=dmask, other=0.0).to(tl.float32), ROUND, DT)
    s1 = _round(tl.load(sp, mask=dmask, other=0.0).to(tl.float32), ROUND, DT)
    s2 = _round(tl.load(sp + HALF, mask=dmask, other=0.0).to(tl.float32), ROUND, DT)
    _rope_heads(q_ptr, qo_ptr, b * sqb + t * sqt, r * H * (2 * HALF), H, sqh, c1, c2, s1, s2, d, dmask,
                HALF, BLOCK_HQ, ROUND)
    _rope_heads(k_ptr, ko_ptr, b * skb + t * skt, r * HKV * (2 * HALF), HKV, skh, c1, c2, s1, s2, d, dmask,
                HALF, BLOCK_HK, ROUND)


# ---------------------------------------------------------------------------------------- launchers
import torch  # noqa: E402  (launchers only)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rows(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    t2 = t.reshape(-1, n)
    if t2.stride(-1) != 1 and n > 1:
        t2 = t2.contiguous()
    return t2


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in gate's dtype (float32 math, one rounding); see the module docstring."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"silu_mul: up must match gate's shape, dtype and device {tuple(gate.shape)}, "
                         f"{gate.dtype}, {gate.device}; got {tuple(up.shape)}, {up.dtype}, {up.device}")
    if gate.dtype not in _DTYPES or gate.dim() == 0:
        raise ValueError(f"silu_mul: gate must be a float16/bfloat16/float32 tensor of >= 1 dims, "
                         f"got {gate.dtype} of shape {tuple(gate.shape)}")
    n = gate.shape[-1]
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if y.numel() == 0:
        return y
    g2, u2 = _rows(gate, "gate", n), _rows(up, "up", n)
    m = g2.shape[0]
    block = 1024 if m >= 64 else 256  # decode: more, smaller programs
    grid = (m, triton.cdiv(n, block))
    _silu_mul_kernel[grid](g2, u2, y, n, g2.stride(0), u2.stride(0), BLOCK=block, num_warps=4,
                           enable_fp_fusion=True, **pdl_options(_silu_mul_kernel, y))
    return y


def silu_mul_scaled(y_raw: torch.Tensor, vth: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """silu(g) * u for the gate / up halves of y = vth[:, None] * scale[None, :] * y_raw, y_raw [M, 2 I] (the raw
    product of a fused gate/up spike_linear, scaled_mm_raw), vth [M] and scale [2 I] float32: float32 math, one
    rounding to y_raw's dtype; h [M, I]."""
    M, two_i = y_raw.shape
    n = two_i // 2
    if two_i % 2 or y_raw.stride(-1) != 1 or vth.shape != (M,) or scale.shape != (two_i,) \
            or vth.dtype != torch.float32 or scale.dtype != torch.float32:
        raise ValueError(f"silu_mul_scaled: y_raw [M, 2 I] (unit last stride), vth [M] and scale [2 I] float32 "
                         f"expected, got {tuple(y_raw.shape)}, {tuple(vth.shape)} {vth.dtype}, "
                         f"{tuple(scale.shape)} {scale.dtype}")
    if vth.device != y_raw.device or scale.device != y_raw.device:
        raise ValueError(f"silu_mul_scaled: vth and scale must be on y_raw's device {y_raw.device}, got {vth.device} "
                         f"and {scale.device}")
    vth, scale = vth.contiguous(), scale.contiguous()
    h = torch.empty((M, n), dtype=y_raw.dtype, device=y_raw.device)
    if h.numel() == 0:
        return h
    block = 1024 if M >= 64 else 256
    _silu_mul_scaled_kernel[(M, triton.cdiv(n, block))](y_raw, vth, scale, h, n, y_raw.stride(0),
                                                         BLOCK=block, num_warps=4, enable_fp_fusion=True)
    return h


def _heads_view(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"rope: {name} must be [B, T, heads, D], got shape {tuple(x.shape)}")
    return x if x.stride(-1) == 1 else x.contiguous()


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """(apply_rope(q, cos, sin), apply_rope(k, cos, sin)) in one launch; see the module docstring."""
    q, k = _heads_view(q, "q"), _heads_view(k, "k")
    B, T, H, D = q.shape
    if k.shape[:2] != (B, T) or k.shape[3] != D or k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"rope: k must be [B, T, HKV, D] = [{B}, {T}, *, {D}] with q's dtype {q.dtype} on "
                         f"{q.device}, got {tuple(k.shape)} {k.dtype} on {k.device}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"rope: q must be float16, bfloat16 or float32, got {q.dtype}")
    if D % 2:
        raise ValueError(f"rope: the head dim must be even, got {D}")
    cs = []
    for name, c in (("cos", cos), ("sin", sin)):
        if c.device != q.device or c.dim() > 4:
            raise ValueError(f"rope: {name} must be on {q.device} and broadcast to [B, T, 1, D] = "
                             f"[{B}, {T}, 1, {D}], got {tuple(c.shape)} on {c.device}")
        try:
            c = c.broadcast_to((B, T, 1, D))
        except RuntimeError:
            raise ValueError(f"rope: {name} must broadcast to [B, T, 1, D] = [{B}, {T}, 1, {D}], "
                             f"got {tuple(c.shape)}") from None
        if c.stride(-1) != 1 and D > 1:   # the kernel reads the head dim with unit stride (a size-1
            c = c.contiguous()            # last dim broadcast to D has stride 0): materialise it
        cs.append(c)
    cos, sin = cs
    qo = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((B, T, k.shape[2], D), dtype=k.dtype, device=k.device)
    if B * T == 0:
        return qo, ko
    half = D // 2
    _rope_kernel[(B * T,)](
        q, k, cos, sin, qo, ko, T, H, k.shape[2],
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        HALF=half, BLOCK_D=triton.next_power_of_2(half),
        BLOCK_HQ=min(triton.next_power_of_2(max(H, 1)), 32), BLOCK_HK=min(triton.next_power_of_2(max(k.shape[2], 1)), 32),
        ROUND=q.dtype != torch.float32, num_warps=4, enable_fp_fusion=False, **pdl_options(_rope_kernel, qo))
    return qo, ko
