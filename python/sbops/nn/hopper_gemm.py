"""The Hopper GEMM with bfloat16 operands (sbops_native.bf16_gemm_sm90 / bf16_gemm_swiglu_sm90: the int8 W8ASpike GEMM
of backends/cuda/kernels/int8_gemm_sm90.cu with wgmma bf16, float32 accumulation, one rounding) for the bf16 model's
prefill: SwiGLU's gate / up with silu(g) * u in its epilogue (nn.common.gate_up_silu), and, opt-in, the other
projections instead of cuBLAS (SBOPS_DENSE_PREFILL_SM90=1, an A/B knob until it is measured faster: common.linear).
Only on a CUDA sm_90 device with an sm_90a build; elsewhere every helper says None."""
from __future__ import annotations

import os

import torch

from sbops import _platform

# prefill rows from which the kernel serves (below: decode and short prompts stay on cuBLAS / the decode GEMV)
MIN_ROWS = 1024
# the shortest K of the opt-in prefill projections (common._dense_prefill_applies): a few stages per 128 x 256 tile
# leave the epilogue most of the time (the GLA layers' low-rank gate up-projection has K = 16; session 41's
# all-projections A/B still ran it here)
MIN_K = 512
DENSE_PREFILL = os.environ.get("SBOPS_DENSE_PREFILL_SM90", "0").strip().lower() in ("1", "true", "on", "yes")


def _op(x: torch.Tensor, name: str):
    # sbops_native.<name> where it runs on x's device (a CUDA sm_90 device, an sm_90a build), else None
    op = _platform.native_op(name) if x.device.type == "cuda" else None
    if op is None:
        return None
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return op if _platform.native_kernel_available("int8_gemm_sm90_available", index) else None


def swiglu_op(x: torch.Tensor):
    """bf16_gemm_swiglu_sm90 where it runs on x's device, else None."""
    return _op(x, "bf16_gemm_swiglu_sm90")


def prefill_op(x: torch.Tensor):
    """bf16_gemm_sm90 where it runs on x's device, else None (common.linear asks where DENSE_PREFILL is on and its
    operands suit it: common._dense_prefill_applies)."""
    return _op(x, "bf16_gemm_sm90")
