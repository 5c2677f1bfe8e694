"""Backend `maca`: MetaX GPUs (C500/C550) through the MACA toolchain.

The same CUDA C++ sources compiled by cu-bridge with USE_MACA (64-lane warps; see
backends/maca/README.md for every difference) and the same Triton kernels run through MetaX's
Triton backend with the configs in backends/maca/tuning/*.json.  MetaX PyTorch reports its devices
as `cuda`, so NVIDIA and MetaX kernels never share one process: exactly one of the backends
`cuda` and `maca` is available.
"""
from __future__ import annotations

import dataclasses

from sbops import _platform
from sbops._dispatch import Backend

from ..cuda import OPS, TRITON_OPS, register_triton

_triton_error: str | None = None


def _probe(op: str) -> str | None:
    if not _platform.is_metax():
        return "not a MetaX PyTorch (torch.__version__ has no '+metax' and no 'MetaX' device is present)"
    import torch
    if not torch.cuda.is_available():
        return "no MetaX device visible"
    if op in TRITON_OPS:
        if not _platform.metax_build():
            return ("the MACA Triton kernels are registered at import only for a MetaX PyTorch that says so "
                    "in its version ('+metax'); this one does not")
        return _platform.triton_reason() or _triton_error
    target = _platform.native_target()
    if target != "maca":
        return f"sbops._C was built for '{target}', not for MACA (rebuild with SBOPS_TARGET=maca)"
    return None


# What differs from the cuda backend's capabilities (README.md, "What is different on MACA"):
# spike_linear takes int8 weights only (no fp8 matrix units known on C500-class parts); the
# implementation texts name what runs on MetaX (no sm_90 kernels, MACA tuning data, cu-bridge).
_TUNED = {"linear_attn": "linear_attn", "swa_attn": "swa", "spike_linear": "spike_linear"}
_OPS = {op: dataclasses.replace(caps, impl=(f"triton (MACA configs, tuning/{_TUNED[op]}.json)" if op in TRITON_OPS
                                            else "cuda c++ built with cu-bridge (USE_MACA, 64-lane warps)"))
        for op, caps in OPS.items()}
_OPS["spike_linear"] = dataclasses.replace(
    OPS["spike_linear"], features=OPS["spike_linear"].features - {"fp8_weight"},
    impl="triton (MACA configs, tuning/spike_linear.json): int8 weights only")

BACKEND = Backend(
    name="maca",
    device_types=("cuda",),   # MetaX PyTorch uses the CUDA device type and dispatch key
    priority=10,
    probe=_probe,
    ops=_OPS,
    description="MetaX GPUs: the CUDA C++ kernels built with cu-bridge (64-lane warps) and the Triton "
                "kernels with MACA tuning",
)


def register() -> None:
    global _triton_error
    if not _platform.metax_build() or _platform.triton_reason():   # at import: no device query
        return
    try:
        register_triton("maca", BACKEND)
    except Exception as e:
        _triton_error = f"the Triton kernels failed to load: {type(e).__name__}: {e}"
