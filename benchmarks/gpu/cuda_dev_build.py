"""Build the CUDA C++ ops as a development extension (no install), for GPU machines.

    python benchmarks/gpu/cuda_dev_build.py          # builds and loads, prints the registered ops

`load()` compiles csrc/ops.cpp (the schemas), backends/cuda/bindings/*.cpp and
backends/cuda/kernels/*.cu with torch.utils.cpp_extension.load into a plain shared library
(is_python_module=False) whose static registrations populate torch.ops.sbops.  Only for use when
the sbops package itself is not importable (its _C would register the same schemas).
"""
from __future__ import annotations

import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sources() -> list[str]:
    return ([os.path.join(REPO, "csrc", "ops.cpp")]
            + sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "bindings", "*.cpp")))
            + sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "kernels", "*.cu"))))


def load(arch: str | None = None, verbose: bool = False) -> None:
    import torch
    from torch.utils.cpp_extension import load as _load

    if arch is None:
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}" + ("a" if major == 9 else "")
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    # No --use_fast_math: spike_encode's IEEE divisions and the softmax exponentials must match
    # the float32 contract; the kernels call the fast intrinsics (exp2f) where that is safe.
    _load(name="sbops_cuda_dev", sources=sources(),
          extra_include_paths=[os.path.join(REPO, "csrc", "include")],
          # C++17 like torch itself and the CMake build (round 1 used -std=c++20 here).
          extra_cflags=["-O3", "-std=c++17"],
          extra_cuda_cflags=["-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
          is_python_module=False, verbose=verbose)


if __name__ == "__main__":
    load(verbose="-v" in sys.argv)
    import torch
    print("loaded; e.g. torch.ops.sbops.spike_encode =", torch.ops.sbops.spike_encode)
