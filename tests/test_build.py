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


# --- what the wheel ships: the package and nothing else ------------------------------------------------

import fnmatch  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# what may ship besides Python modules of the package (and the native module)
DATA_OK = ("sbops/_backends/*/tuning/*.json", "sbops/_backends/maca/README.md", "sbops/py.typed")
# development files that must never ship, whatever folder they sit in
DEV_NAMES = ("test_*", "conftest.py", "*dev_check*", "probe_*", "diag_*", "smoke_*", "check_*", "*.sh", "*.c",
             "*.cu", "*.cuh", "*.cpp", "*.h")


def _stray(files):
    """Files of a built package tree that are not the package: outside sbops/, data not declared, dev tools."""
    bad = []
    for f in files:
        name = f.rsplit("/", 1)[-1]
        if not f.startswith("sbops/"):
            bad.append(f)
        elif any(fnmatch.fnmatch(name, p) for p in DEV_NAMES):
            bad.append(f)
        elif not (f.endswith(".py") or fnmatch.fnmatch(name, "_C*.so") or fnmatch.fnmatch(name, "_C*.pyd")
                  or any(fnmatch.fnmatch(f, p) for p in DATA_OK)):
            bad.append(f)
    return bad


def _expected_modules():
    """Every runtime module of the source tree, at the path it has in the package."""
    mods = {"sbops/" + p.relative_to(ROOT / "python" / "sbops").as_posix()
            for p in (ROOT / "python" / "sbops").rglob("*.py")}
    for backend in ("cpu", "cuda", "cuda/triton", "maca"):
        for p in (ROOT / "backends" / backend).glob("*.py"):
            if not any(fnmatch.fnmatch(p.name, pat) for pat in DEV_NAMES):
                mods.add(f"sbops/_backends/{backend}/{p.name}")
    return mods


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree (setup.py)")
def test_package_build_holds_the_package_and_nothing_else(tmp_path):
    pytest.importorskip("setuptools")
    # build_py lays out exactly what the wheel gets besides the native module, without compiling it
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert not _stray(files), _stray(files)
    missing = _expected_modules() - set(files)
    assert not missing, f"runtime modules left out of the package: {sorted(missing)}"
    assert "sbops/_backends/cuda/tuning/swa.json" in files


def test_built_wheel_holds_the_package_and_nothing_else():
    wheels = sorted((ROOT / "dist").glob("sbops-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip("no wheel in dist/ (scripts/install.sh builds one)")
    names = zipfile.ZipFile(wheels[-1]).namelist()
    files = [n for n in names if not n.split("/", 1)[0].endswith(".dist-info")]
    assert not _stray(files), f"{wheels[-1].name} ships files that are not the package: {_stray(files)}"
    assert any(fnmatch.fnmatch(n, "sbops/_C*.so") for n in files), "no native module in the wheel"
