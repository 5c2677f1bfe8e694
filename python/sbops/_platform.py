"""What this process runs on: NVIDIA CUDA, MetaX MACA (which PyTorch also reports as `cuda`), or CPU."""
from __future__ import annotations

import functools
import os

import torch


def env_switch(name: str) -> bool:
    """A default-on switch read from the environment: off when `name` is set to "", 0, false, off or no."""
    return os.environ.get(name, "1").strip().lower() not in ("", "0", "false", "off", "no")


def metax_build() -> bool:
    """A MetaX PyTorch by its version ('+metax'): no device query, safe at import."""
    return "metax" in torch.__version__.lower()


@functools.lru_cache(None)
def is_metax() -> bool:
    """MetaX PyTorch builds carry '+metax' in their version and name their devices 'MetaX ...'.
    Reads the device name when the version does not say, which initialises CUDA: call it when a
    GPU call is dispatched, never at import (a process that imports sbops and then forks must be
    able to use CUDA in the children)."""
    if metax_build():
        return True
    try:
        return torch.cuda.is_available() and torch.cuda.get_device_name(0).startswith("MetaX")
    except Exception:  # pragma: no cover - no driver
        return False


def cuda_import_reason() -> str | None:
    """What import-time registration decides on, from the build alone: no device query at all.
    torch.cuda.is_available() calls cudaGetDeviceCount, which poisons fork (a child that then uses
    CUDA fails: DataLoader workers), and so does device_count() wherever NVML cannot answer (MIG
    device ids in CUDA_VISIBLE_DEVICES, no NVML)."""
    if metax_build():
        return "this PyTorch drives MetaX GPUs: use backend 'maca'"
    if torch.version.cuda is None:
        return "this PyTorch has no CUDA"
    return None   # no device query: registering kernels needs none, the probe decides at dispatch


@functools.lru_cache(None)
def cuda_device_reason() -> str | None:
    """None when an NVIDIA CUDA device is usable, else why not (at dispatch: may initialise CUDA)."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if is_metax():
        return "this PyTorch drives MetaX GPUs: use backend 'maca'"
    return None


def native_target() -> str:
    """The target the native library (loaded by sbops._C) was compiled for: 'cpu', 'cuda' or 'maca'."""
    from . import _C
    return getattr(_C, "build_target", "cpu")


def native_op(name: str):
    """torch.ops.sbops_native.<name> -- one of the internal kernels that serve public ops from Python
    (backends/cuda/bindings) -- when this build registered it, else None."""
    ns = getattr(torch.ops, "sbops_native", None)
    return None if ns is None else getattr(ns, name, None)


@functools.lru_cache(None)
def native_kernel_available(probe: str, device_index: int) -> bool:
    """Whether this build registered the internal op `probe` (an sbops_native::*_available) and it says its kernel
    runs on CUDA device `device_index` (asked once per device: sm_90 kernels need an sm_90 device and sm_90a code)."""
    available = native_op(probe)
    return available is not None and bool(available(torch.empty(0, device=torch.device("cuda", device_index))))


@functools.lru_cache(None)
def triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None
