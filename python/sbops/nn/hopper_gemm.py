"""The Hopper GEMM with bfloat16 operands (sbops_native.bf16_gemm_sm90 / bf16_gemm_swiglu_sm90: the int8 W8ASpike GEMM
of backends/cuda/kernels/int8_gemm_sm90.cu with wgmma bf16, float32 accumulation, one rounding) for the bf16 model's
prefill: SwiGLU's gate / up with silu(g) * u in its epilogue (nn.common.gate_up_silu), and, opt-in, the other
projections instead of cuBLAS (SBOPS_DENSE_PREFILL_SM90=1, an A/B knob until it is measured faster: common.linear).
Only on a CUDA sm_90 device with an sm_90a build; elsewhere every helper says None."""
from __future__ import annotations

import os
from typing import Optional

import torch

from sbops import _platform

# prefill rows from which the kernel serves (below: decode and short prompts stay on cuBLAS / the decode GEMV)
MIN_ROWS = 1024
# prefill_linear's shortest K: a few stages per 128 x 256 tile leave the epilogue most of the time (the GLA layers'
# low-rank gate up-projection has K = 16; session 41's all-projections A/B still ran it here)
MIN_K = 512
DENSE_PREFILL = os.environ.get("SBOPS_DENSE_PREFILL_SM90", "0").strip().lower() in ("1", "true", "on", "yes")
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _op(x: torch.Tensor, name: str):
    # sbops_native.<name> where it runs on x's device (a CUDA sm_90 device, an sm_90a build), else None
    op = _platform.native_op(name) if x.device.type == "cuda" else None
    ok = op is not None and _platform.native_kernel_available("int8_gemm_sm90_available", x.device.index or 0)
    return op if ok else None


def swiglu_op(x: torch.Tensor):
    """bf16_gemm_swiglu_sm90 where it runs on x's device, else None."""
    return _op(x, "bf16_gemm_swiglu_sm90")


def prefill_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """F.linear(x, weight, bias) through bf16_gemm_sm90 where DENSE_PREFILL is on and it applies (bfloat16 plain
    tensors on one CUDA device, at least MIN_ROWS rows, K >= MIN_K, K and N multiples of 8, a weight whose rows TMA reads in place,
    a [N] bias of bfloat16 or float32), else None (the caller keeps F.linear)."""
    if not DENSE_PREFILL or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16:
        return None
    if type(x) not in _PLAIN or type(weight) not in _PLAIN or weight.dim() != 2 or x.dim() < 2:
        return None
    K, N = x.shape[-1], weight.shape[0]
    if K < MIN_K or K % 8 or N % 8 or weight.shape[1] != K or x.numel() < MIN_ROWS * K or weight.device != x.device:
        return None
    if weight.stride(1) != 1 or weight.stride(0) % 8 or weight.data_ptr() % 16:
        return None
    if bias is not None and (type(bias) not in _PLAIN or bias.shape != (N,) or bias.device != x.device
                             or bias.dtype not in (torch.bfloat16, torch.float32)):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return None  # no autograd through the kernel
    op = _op(x, "bf16_gemm_sm90")
    if op is None:
        return None
    return op(x.reshape(-1, K), weight, bias).view(*x.shape[:-1], N)
