"""Which F.linear operands sbops' native GEMM kernels (the dense decode GEMV, the Hopper GEMM) may take in place:
the check both of nn.common.linear's kernel paths make before their own row and shape conditions."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

PLAIN = (torch.Tensor, nn.Parameter)
IS_BATCHED = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)   # vmap's wrapped tensors


def native_gemm_operands(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtypes,
                         bias_dtypes) -> bool:
    """Whether a native kernel may compute F.linear(x, weight, bias) on these operands (the dense decode GEMV, the
    Hopper GEMM): plain tensors of `dtypes` on one device, not under vmap, autograd or torch.compile; a 2-D weight
    with x's K (a multiple of 8) whose rows it reads in place (a weight it would have to copy per call, e.g. a
    transposed view, stays on cuBLAS); a 1-D bias of `bias_dtypes`."""
    if type(x) not in PLAIN or type(weight) not in PLAIN or (bias is not None and type(bias) not in PLAIN):
        return False   # tensor subclasses (quantised, DTensor, ...) keep their own F.linear
    if IS_BATCHED is not None and (IS_BATCHED(x) or IS_BATCHED(weight)):
        return False   # under vmap: the ops have no batching rule
    if x.dtype not in dtypes or weight.dtype != x.dtype or weight.dim() != 2 or x.dim() == 0:
        return False
    K = x.shape[-1]
    if K % 8 or weight.shape[1] != K or weight.shape[0] == 0 or weight.device != x.device:
        return False
    if weight.stride(1) != 1 or weight.stride(0) % 8 or weight.data_ptr() % 16:
        return False
    if bias is not None and (bias.device != x.device or bias.dim() != 1 or bias.dtype not in bias_dtypes):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    return not torch.compiler.is_compiling()
