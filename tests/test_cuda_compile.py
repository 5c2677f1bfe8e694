"""Compile checks of the CUDA C++ sources without a GPU.

Every backends/cuda/kernels/*.cu compiles alone with `nvcc -c` for sm_80 and sm_90a (torch-free:
only -I csrc/include), and every backends/cuda/bindings/*.cpp passes a syntax-only compile against
torch's headers and the CUDA headers.  Skipped when nvcc is absent.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "kernels", "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "bindings", "*.cpp")))
ARCHS = ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a"]
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def cuda_include() -> str:
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda",
             os.path.dirname(os.path.dirname(os.path.realpath(NVCC or "")))]
    for r in roots:
        if r and os.path.exists(os.path.join(r, "include", "cuda_runtime_api.h")):
            return os.path.join(r, "include")
    pytest.skip("CUDA headers not found")


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.parametrize("arch", ARCHS, ids=["sm80", "sm90a"])
@pytest.mark.parametrize("src", KERNELS, ids=[os.path.basename(k) for k in KERNELS])
def test_kernel_compiles(src, arch, tmp_path):
    run([NVCC, "-c", "-std=c++17", "-O3", f"-gencode={arch}", "-I", os.path.join(REPO, "csrc", "include"),
         "-Werror", "all-warnings", src, "-o", str(tmp_path / "k.o")])


@pytest.mark.parametrize("src", BINDINGS, ids=[os.path.basename(b) for b in BINDINGS])
def test_binding_syntax(src, tmp_path):
    torch_utils = pytest.importorskip("torch.utils.cpp_extension")
    incs = list(torch_utils.include_paths())
    # A CPU-only torch ships c10/cuda headers without the generated cuda_cmake_macros.h.
    if not any(os.path.exists(os.path.join(i, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for i in incs):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n")
        incs.append(str(tmp_path / "shim"))
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    run([cxx, "-std=c++20", "-fsyntax-only", *[f"-I{i}" for i in incs], f"-I{cuda_include()}",
         f"-I{os.path.join(REPO, 'csrc', 'include')}", src])


def test_no_literal_warp_width():
    """Only warp.cuh may spell the warp width or a full lane mask."""
    files = KERNELS + BINDINGS + glob.glob(os.path.join(REPO, "backends", "cuda", "kernels", "*.cuh")) + [
        os.path.join(REPO, "csrc", "include", "sbops", "launch.cuh")]
    bad = re.compile(r"(?<![\w.])(32|0xffffffff)(?![\w.])", re.IGNORECASE)
    for f in files:
        for n, line in enumerate(open(f), 1):
            code = line.split("//")[0]
            assert not bad.search(code), f"{f}:{n}: literal warp width / lane mask: {line.strip()}"
            assert "asm(" not in code and "asm volatile" not in code, f"{f}:{n}: inline PTX"
