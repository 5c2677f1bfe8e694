import importlib.util
import os
import zlib
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py

# Optional packages the suite uses where present, and the extra that installs them. A test that needs
# one is skipped, with the reason shown (pytest -rs), where it is missing: mark the test with
# `requires_module("name")` (or one of the markers below), or call pytest.importorskip("name") at the top
# of a module whose module-level code imports it.
OPTIONAL = {"triton": "test", "numpy": "test", "transformers": "test", "safetensors": "test",
            "rich": "bench", "matplotlib": "bench", "fla": None, "flash_attn": None}


def has_module(name):
    """Whether `name` (a top-level package) is installed, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def requires_module(name, why=""):
    """A skipif marker: the test needs the optional package `name`; the reason says how to get it."""
    extra = OPTIONAL.get(name)
    how = f"pip install {name}" + (f" (or scripts/install.sh {extra})" if extra else "")
    reason = f"needs the optional package {name}{': ' + why if why else ''}; {how}"
    return pytest.mark.skipif(not has_module(name), reason=reason)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/MACA GPU")


def native_kernel_op(name):
    """torch.ops.sbops_native.<name> where a CUDA build registered it and its sbops_native.<name>_available says the
    kernel runs on the current GPU, else None (GPU tests of internal kernels skip on None)."""
    if not torch.cuda.is_available():
        return None
    from sbops import _platform
    if _platform.native_target() != "cuda":
        return None
    if not _platform.native_kernel_available(f"{name}_available", torch.cuda.current_device()):
        return None
    return getattr(torch.ops.sbops_native, name)


def without_host_sync(fn):
    """fn() after one warm-up call (compiles, allocates), the second call under
    torch.cuda.set_sync_debug_mode("error"): any host synchronisation in it raises.  Returns
    (warm-up result, checked result)."""
    first = fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return first, fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
requires_triton = requires_module("triton", "Triton kernels (TRITON_INTERPRET=1 on a CPU)")
requires_numpy = requires_module("numpy")
requires_transformers = requires_module("transformers")
requires_safetensors = requires_module("safetensors")


def pytest_report_header(config):
    missing = [name for name in OPTIONAL if not has_module(name)]
    return ["sbops optional packages missing (their tests skip): " + (", ".join(missing) if missing else "none")]


def pytest_runtest_logreport(report):
    """SBOPS_FAILURE_LOG=path: append each failure's report to that file the moment it happens (in the
    controlling process under xdist), so a run cut short by a time limit still tells why tests failed
    (pytest prints its summary only at the end)."""
    path = os.environ.get("SBOPS_FAILURE_LOG")
    if path and report.failed and "PYTEST_XDIST_WORKER" not in os.environ:
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} [{report.when}]\n{report.longreprtext[-6000:]}\n\n")


@pytest.fixture(autouse=True)
def _seed(request):
    # fresh but reproducible inputs per test
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
