"""Properties of the installed native module (sbops._C) that the build must guarantee."""
import shutil
import subprocess

import pytest

import sbops._C as _C

needs_binutils = pytest.mark.skipif(not (shutil.which("readelf") and shutil.which("nm")), reason="needs binutils")


@needs_binutils
def test_module_uses_the_shared_cxx_runtime():
    # A module that carries a private (static) libstdc++ crashes when a TORCH_CHECK formats a number
    # (seen on the H100 image); the build must link the libstdc++.so.6 that torch runs against.
    dyn = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert any(n.startswith("libstdc++.so") for n in needed), needed
    defined = subprocess.run(["nm", "-D", "--defined-only", _C.__file__], capture_output=True, text=True,
                             check=True).stdout
    private = [s for s in ("_ZNSt6locale7classicEv", "_ZNSt8ios_base4InitC1Ev") if s in defined]
    assert not private, f"libstdc++ internals defined inside {_C.__file__}: {private}"


def test_cpp_error_with_a_number_in_its_message_is_a_runtime_error():
    # the crash above, exercised: the C++ check formats a long into the message
    import torch
    with pytest.raises(RuntimeError, match=">= 0"):
        torch.ops.sbops.spike_expand(torch.tensor([1, -1], dtype=torch.int32), "binary", 2)
