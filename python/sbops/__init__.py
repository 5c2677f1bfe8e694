"""sbops: operators for SpikingBrain-style efficient LLMs.

Linear attention (chunked prefill + decode), sliding-window attention (prefill + ring-buffer
decode), spike coding and MoE routing as torch.library custom ops, with backends cpu (C++
reference), cuda (CUDA C++ + Triton) and maca (MetaX).  See SPEC.md for the contract.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loads the op schemas and the compiled kernels)
except ImportError as _e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "sbops: the native library sbops._C failed to load. It must be built against the installed torch: "
        "pip install --no-build-isolation . (from the sbops source tree). Cause: " + str(_e)) from _e

try:
    from . import _build_info
except ImportError:  # pragma: no cover
    _build_info = None
if _build_info is not None:
    _built, _have = _build_info.TORCH_VERSION.split("+")[0], torch.__version__.split("+")[0]
    if _built.split(".")[:2] != _have.split(".")[:2]:
        raise ImportError(f"sbops was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
                          f"is installed; rebuild sbops (pip install --no-build-isolation .)")

from . import _registration  # noqa: E402,F401  (fake kernels + autograd, once)
from ._dispatch import (Backend, NoBackendError, OpCaps, Request, backends, explain,  # noqa: E402
                        register_backend, use_backend)
from ._validate import data_checks, set_data_checks  # noqa: E402
from .ops import (expert_counts, linear_attn, linear_attn_decode, moe_align_block_size,  # noqa: E402
                  moe_permute, moe_unpermute, spike_collapse, spike_encode, spike_expand, spike_quant,
                  spike_stats, swa_attn, swa_cache_write, swa_decode, topk_gating,
                  spike_linear, quantize_weight)
from ._backends import load_builtin as _load_builtin  # noqa: E402

_load_builtin()

__version__ = "0.1.0"
__all__ = [
    "linear_attn", "linear_attn_decode", "swa_attn", "swa_decode", "swa_cache_write",
    "spike_encode", "spike_quant", "spike_expand", "spike_collapse", "spike_stats", "spike_linear", "quantize_weight",
    "topk_gating", "moe_permute", "moe_unpermute", "moe_align_block_size", "expert_counts",
    "backends", "explain", "use_backend", "register_backend", "Backend", "OpCaps", "Request",
    "NoBackendError", "data_checks", "set_data_checks",
]
