"""sbops: operators for SpikingBrain-style efficient LLMs.

Linear attention (chunked prefill + decode), sliding-window attention (prefill + ring-buffer
decode), spike coding and MoE routing as torch.library custom ops, with backends cpu (C++
reference), cuda (CUDA C++ + Triton) and maca (MetaX).  See docs/SPEC.md for the contract.
"""
from __future__ import annotations

try:
    import torch
except ModuleNotFoundError as e:  # sbops leaves torch to the user (its CPU, CUDA or MetaX build)
    if e.name != "torch":
        raise
    raise ModuleNotFoundError("sbops needs PyTorch >= 2.10, which is not installed in this environment: install "
                              "your torch build first (CPU, CUDA or MetaX; e.g. pip install torch --index-url "
                              "https://download.pytorch.org/whl/cpu), then import sbops", name="torch") from None

# The native library is built on the LibTorch stable ABI of torch 2.10: it loads in that torch and
# every later one, never in an older one (whose dispatcher lacks the calls it makes).
TORCH_MIN = (2, 10)


def _torch_version(v: str) -> tuple[int, int]:
    parts = v.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):  # pragma: no cover - an unusual version string: let the load decide
        return TORCH_MIN


if _torch_version(torch.__version__) < TORCH_MIN:
    raise ImportError(f"sbops needs torch >= {TORCH_MIN[0]}.{TORCH_MIN[1]} (its native library targets the LibTorch "
                      f"stable ABI of torch {TORCH_MIN[0]}.{TORCH_MIN[1]}), but torch {torch.__version__} is installed: "
                      f"upgrade torch")

try:
    from . import _C  # noqa: F401  (loads the op schemas and the compiled kernels)
except ImportError as _e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "sbops: the native library sbops/libsbops.so failed to load. Install a wheel for your platform "
        "(see README.md, Install) or build it: pip install --no-build-isolation . (from the sbops source tree). "
        "Cause: " + str(_e)) from _e

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

__version__ = "0.1.1"
__all__ = [
    "linear_attn", "linear_attn_decode", "swa_attn", "swa_decode", "swa_cache_write",
    "spike_encode", "spike_quant", "spike_expand", "spike_collapse", "spike_stats", "spike_linear", "quantize_weight",
    "topk_gating", "moe_permute", "moe_unpermute", "moe_align_block_size", "expert_counts",
    "backends", "explain", "use_backend", "register_backend", "Backend", "OpCaps", "Request",
    "NoBackendError", "data_checks", "set_data_checks",
]

_SUBPACKAGES = ("nn", "models", "distributed", "compat", "bench")


def __getattr__(name):
    # `import sbops` then `sbops.models.X` works as in SPEC's snippets: subpackages load on first use
    # (not at import: sbops.models and sbops.distributed pull in more of torch)
    if name in _SUBPACKAGES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sbops' has no attribute {name!r}")
