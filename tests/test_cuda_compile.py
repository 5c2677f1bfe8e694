"""Compile checks of the CUDA C++ sources without a GPU.

Every backends/cuda/kernels/*.cu compiles alone with `nvcc -c` for sm_80 and sm_90a (torch-free:
only -I csrc/include), and every backends/cuda/bindings/*.cpp passes a syntax-only compile against
torch's headers and the CUDA headers.  test_cuda_kernels_register_beside_cpu loads the CUDA bindings
next to the CPU backend (as in sbops._C) so torch checks that every op's kernels share one C++
signature.  Skipped when nvcc is absent.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "kernels", "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(REPO, "backends", "cuda", "bindings", "*.cpp")))
ARCHS = ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a"]
# the LibTorch stable ABI version the native library targets (CMakeLists.txt: SBOPS_TORCH_TARGET_VERSION)
STABLE = "-DTORCH_TARGET_VERSION=0x020a000000000000"
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
    run([cxx, "-std=c++20", "-fsyntax-only", STABLE, *[f"-I{i}" for i in incs], f"-I{cuda_include()}",
         f"-I{os.path.join(REPO, 'csrc', 'include')}", src])


def _torch_compile_flags(tmp_path):
    torch_utils = pytest.importorskip("torch.utils.cpp_extension")
    import torch
    incs = list(torch_utils.include_paths())
    # A CPU-only torch ships c10/cuda headers without the generated cuda_cmake_macros.h.
    if not any(os.path.exists(os.path.join(i, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for i in incs):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n")
        incs.append(str(tmp_path / "shim"))
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-I{i}" for i in incs] + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"], os.path.join(os.path.dirname(torch.__file__), "lib")


def test_cuda_kernels_register_beside_cpu(tmp_path):
    """sbops._C holds the CPU backend and the CUDA bindings; torch aborts the import when two kernels
    of one op have different C++ signatures (round 2 on the H100: `str` as c10::string_view vs
    const std::string&).  Build both into one library without a GPU -- the CUDA-side functions the
    bindings call become abort() stubs, never called -- and load it: registration runs the check."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    flags, torch_lib = _torch_compile_flags(tmp_path)
    srcs = ([os.path.join(REPO, "csrc", "ops.cpp")] + sorted(glob.glob(os.path.join(REPO, "backends", "cpu", "*.cpp")))
            + BINDINGS)
    common = [cxx, "-std=c++20", "-O0", "-fPIC", STABLE, *flags, f"-I{cuda_include()}", f"-I{os.path.join(REPO, 'csrc', 'include')}"]
    objs, procs = [], []
    for i, src in enumerate(srcs):
        obj = str(tmp_path / f"o{i}.o")
        objs.append(obj)
        procs.append(subprocess.Popen(common + ["-c", src, "-o", obj], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p, src in zip(procs, srcs):
        out = p.communicate(timeout=900)[0]
        assert p.returncode == 0, f"{src}\n{out.decode()[-3000:]}"
    link = ["-shared", f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    lib = str(tmp_path / "libsbops_regcheck.so")
    run([cxx, *objs, "-o", lib, *link])
    # Stub every symbol still undefined that torch and the C/C++ runtime do not provide: the CUDA
    # runtime, the stable shim's CUDA part (libtorch_cuda) and the torch-free launchers (none of them
    # runs during registration).
    undefined = run(["nm", "-D", "--undefined-only", lib]).stdout.split()
    needed = [sym for sym in undefined
              if sym.startswith(("cuda", "aoti_torch_get_current_cuda_stream", "_ZN5sbops"))]
    stub = tmp_path / "stubs.c"
    stub.write_text("#include <stdlib.h>\n" + "".join(f"void {sym}(void) {{ abort(); }}\n" for sym in needed))
    run([shutil.which("gcc") or cxx, "-x", "c", "-c", "-fPIC", str(stub), "-o", str(tmp_path / "stubs.o")])
    run([cxx, *objs, str(tmp_path / "stubs.o"), "-o", lib, *link])
    code = ("import torch; torch.ops.load_library(%r); "
            "print(sorted(torch._C._dispatch_get_registrations_for_dispatch_key('CUDA')))" % lib)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"loading the CPU + CUDA kernels failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert "sbops::spike_expand" in p.stdout and "sbops::swa_cache_write" in p.stdout, p.stdout[-2000:]


def test_no_literal_warp_width():
    """Only warp.cuh may spell the warp width or a full lane mask, and no portable code has inline PTX.
    NVIDIA-only regions (compiled out under USE_MACA: the sm_90a wgmma kernels) are exempt: MACA never
    compiles them, PTX is their only way to reach wgmma, and their asm operand lists count past 32."""
    from test_maca_compile import _code_lines, _excluded_under_maca
    files = KERNELS + BINDINGS + glob.glob(os.path.join(REPO, "backends", "cuda", "kernels", "*.cuh")) + [
        os.path.join(REPO, "csrc", "include", "sbops", "launch.cuh")]
    bad = re.compile(r"(?<![\w.])(32|0xffffffff)(?![\w.])", re.IGNORECASE)
    for f in files:
        lines = _code_lines(f)
        nvidia_only = _excluded_under_maca(lines)
        for n, code in lines:
            if n in nvidia_only:
                continue
            assert not bad.search(code), f"{f}:{n}: literal warp width / lane mask: {code.strip()}"
            assert "asm(" not in code and "asm volatile" not in code, f"{f}:{n}: inline PTX"
