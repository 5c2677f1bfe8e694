"""Loads sbops' native library, libsbops.so: the op schemas (csrc/ops.cpp) and every compiled backend's
kernels, registered with the PyTorch dispatcher through the LibTorch stable ABI when it loads.

The library has no Python C API and uses only the stable ABI (built with TORCH_TARGET_VERSION 2.10),
so one build loads in every torch >= 2.10 and every Python >= 3.10 (sbops/__init__.py checks the torch
version first).  `library_path` is the file loaded; `build_target` is what it was built for.
"""
from __future__ import annotations

import os

import torch

library_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libsbops.so")
if not os.path.exists(library_path):
    raise ImportError(f"sbops: the native library {library_path} is missing (sbops was not built)")
try:
    torch.ops.load_library(library_path)
except OSError as e:  # torch wraps the dlopen error; keep the loader's own words
    raise ImportError(f"sbops: could not load {library_path}: {e.__cause__ or e}") from e

try:
    from ._build_info import BUILD_TARGET as build_target
except ImportError:  # an old _build_info.py
    build_target = "cpu"
