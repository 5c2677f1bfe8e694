"""Properties of the installed native library (sbops/libsbops.so, loaded by sbops._C) that the build must
guarantee: the shared C++ runtime, only LibTorch stable-ABI symbols, and wheels that hold the package only,
tagged cp310-abi3 (one wheel per platform target for every torch >= 2.10 and Python >= 3.10)."""
import shutil
import subprocess

import pytest

import sbops._C as _C

LIB = _C.library_path

needs_binutils = pytest.mark.skipif(not (shutil.which("readelf") and shutil.which("nm")), reason="needs binutils")


@needs_binutils
def test_module_uses_the_shared_cxx_runtime():
    # A module that carries a private (static) libstdc++ crashes when a TORCH_CHECK formats a number
    # (seen on the H100 image); the build must link the libstdc++.so.6 that torch runs against.
    dyn = subprocess.run(["readelf", "-d", LIB], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert any(n.startswith("libstdc++.so") for n in needed), needed
    defined = subprocess.run(["nm", "-D", "--defined-only", LIB], capture_output=True, text=True,
                             check=True).stdout
    private = [s for s in ("_ZNSt6locale7classicEv", "_ZNSt8ios_base4InitC1Ev") if s in defined]
    assert not private, f"libstdc++ internals defined inside {LIB}: {private}"


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
        elif not (f.endswith(".py") or f == "sbops/libsbops.so"
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


def _build_package(build_lib):
    """setup.py build_py into build_lib (what the wheel gets besides the native module, without compiling it): the
    files there afterwards, checked to hold every runtime module and the tuning data."""
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build_lib)], cwd=ROOT,
                   check=True, capture_output=True)
    files = sorted(p.relative_to(build_lib).as_posix() for p in build_lib.rglob("*") if p.is_file())
    missing = _expected_modules() - set(files)
    assert not missing, f"runtime modules left out of the package: {sorted(missing)}"
    assert "sbops/_backends/cuda/tuning/swa.json" in files
    return files


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree (setup.py)")
def test_package_build_holds_the_package_and_nothing_else(tmp_path):
    files = _build_package(tmp_path)
    assert not _stray(files), _stray(files)


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree (setup.py)")
def test_package_build_drops_what_the_source_tree_no_longer_has(tmp_path):
    """A module or data file left in the build folder by an earlier build, since deleted or renamed in the source
    tree (pip builds in-tree, in build/lib), does not ship again; what build_ext writes there stays."""
    stale = ["sbops/_backends/cuda/triton/removed_kernels.py", "sbops/nn/removed.py",
             "sbops/_backends/cuda/tuning/removed.json", "sbops/_backends/cuda/probe_removed.py",
             "sbops/_C.abi3.so", "sbops/nn/__pycache__/removed.cpython-311.pyc"]
    kept = ["sbops/_build_info.py", "sbops/libsbops.so"]
    for rel in stale + kept:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# an earlier build's\n")
    files = set(_build_package(tmp_path))
    assert not files & set(stale), sorted(files & set(stale))
    assert set(kept) <= files


def _installed_wheel_files():
    """The files pip installed from sbops' wheel (its RECORD, less the dist-info, the console script and
    the .pyc files pip compiled), or None where sbops is not installed from a wheel (editable, source tree)."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        dist = distribution("sbops")
    except PackageNotFoundError:
        return None
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable") or not dist.files:
        return None
    files = [f.as_posix() for f in dist.files]
    return [f for f in files if not f.startswith("..") and ".dist-info/" not in f and "__pycache__/" not in f]


def test_installed_wheel_holds_the_package_and_nothing_else():
    # what scripts/install.sh installed (it builds the wheel in a temporary folder, not in dist/)
    files = _installed_wheel_files()
    if files is None:
        pytest.skip("sbops is not installed from a wheel here (editable install or source tree)")
    assert not _stray(files), f"the installed sbops wheel shipped files that are not the package: {_stray(files)}"
    assert "sbops/libsbops.so" in files, "no native library in the installed wheel"


def test_built_wheel_holds_the_package_and_nothing_else():
    wheels = sorted((ROOT / "dist").glob("sbops-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip("no wheel in dist/ (scripts/build_wheels.sh or `pip wheel --no-build-isolation -w dist .` "
                    "builds one)")
    names = zipfile.ZipFile(wheels[-1]).namelist()
    # (auditwheel's repaired zip also lists the folders: entries ending in "/")
    files = [n for n in names if not n.split("/", 1)[0].endswith(".dist-info") and not n.endswith("/")]
    assert not _stray(files), f"{wheels[-1].name} ships files that are not the package: {_stray(files)}"
    assert "sbops/libsbops.so" in files, "no native library in the wheel"


# --- the LibTorch stable ABI: one binary for every torch >= 2.10 ------------------------------------------

# What the library may import from libtorch: the stable C shim (C symbols, unmangled).  Any mangled
# libtorch/c10 symbol (at::, c10::, torch:: C++ API) ties the binary to one torch build.
STABLE_PREFIXES = ("aoti_torch_", "torch_")
UNSTABLE_MANGLED = ("_ZN2at", "_ZNK2at", "_ZN3c10", "_ZNK3c10", "_ZN5torch", "_ZNK5torch", "_ZN6caffe2")


def unstable_symbols(undefined):
    """The undefined symbols of `nm -D --undefined-only` output that are not in the stable ABI."""
    bad = []
    for line in undefined.splitlines():
        sym = line.split()[-1].split("@")[0] if line.split() else ""
        if sym.startswith(UNSTABLE_MANGLED):
            bad.append(sym)
    return bad


def test_unstable_symbol_audit_flags_aten_and_c10_symbols():
    # the audit itself: a c10/at:: import is caught, the stable shim and libstdc++ are not
    out = ("                 U aoti_torch_get_sizes\n                 U torch_parallel_for\n"
           "                 U _ZNSt6chrono3_V212system_clock3nowEv@GLIBCXX_3.4.19\n"
           "                 U _ZN3c1019UndefinedTensorImpl10_singletonE\n"
           "                 U _ZNK2at10TensorBase21__dispatch_contiguousEN3c1012MemoryFormatE\n")
    assert unstable_symbols(out) == ["_ZN3c1019UndefinedTensorImpl10_singletonE",
                                     "_ZNK2at10TensorBase21__dispatch_contiguousEN3c1012MemoryFormatE"]


@pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree (csrc/)")
def test_sources_use_only_the_stable_registration_api():
    # docs/DESIGN.md's rule, checked where a new kernel would break it first: the STABLE_TORCH_LIBRARY*
    # macros, never TORCH_LIBRARY / TORCH_LIBRARY_IMPL or an ATen / c10 / torch C++ API header
    import re
    macro = re.compile(r"(?<![A-Z_])TORCH_LIBRARY(_IMPL|_FRAGMENT)?\s*\(")
    header = re.compile(r'#\s*include\s*[<"](ATen/|c10/|torch/extension\.h|torch/torch\.h|torch/library\.h|Python\.h)')
    bad = []
    for folder in ("csrc", "backends"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".cpp", ".h", ".cu", ".cuh"):
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if macro.search(line) or header.search(line):
                        bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "unstable torch API in the native sources:\n" + "\n".join(bad)


@needs_binutils
def test_library_uses_only_the_stable_abi():
    out = subprocess.run(["nm", "-D", "--undefined-only", LIB], capture_output=True, text=True, check=True).stdout
    bad = unstable_symbols(out)
    assert not bad, f"{LIB} imports {len(bad)} libtorch symbols outside the stable ABI, e.g. {bad[:5]}"
    torch_syms = [ln.split()[-1] for ln in out.splitlines() if ln.split() and ln.split()[-1].startswith(STABLE_PREFIXES)]
    assert torch_syms, "no stable-shim symbol imported: is this the sbops library?"


@needs_binutils
def test_library_needs_no_python():
    dyn = subprocess.run(["readelf", "-d", LIB], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert not [n for n in needed if n.startswith("libpython")], needed
    out = subprocess.run(["nm", "-D", "--undefined-only", LIB], capture_output=True, text=True, check=True).stdout
    py = [ln.split()[-1] for ln in out.splitlines() if ln.split() and ln.split()[-1].startswith(("Py", "_Py"))]
    assert not py, f"the library uses the Python C API: {py[:5]}"


def test_built_wheel_is_tagged_abi3_for_python_3_10_and_later():
    wheels = sorted((ROOT / "dist").glob("sbops-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip("no wheel in dist/ (scripts/build_wheels.sh builds them)")
    name = wheels[-1].name  # sbops-<version>[+local]-<python>-<abi>-<platform>.whl
    python_tag, abi_tag, platform_tag = name[:-len(".whl")].split("-")[-3:]
    assert (python_tag, abi_tag) == ("cp310", "abi3"), name
    assert platform_tag.startswith(("linux_", "manylinux")), name
    meta = zipfile.ZipFile(wheels[-1]).read(
        next(n for n in zipfile.ZipFile(wheels[-1]).namelist() if n.endswith(".dist-info/WHEEL"))).decode()
    assert f"Tag: cp310-abi3-{platform_tag}" in meta, meta


def test_installed_wheel_is_tagged_abi3_for_python_3_10_and_later():
    # what CI and the README's commands install (install.sh builds in a temporary folder, not dist/)
    if _installed_wheel_files() is None:
        pytest.skip("sbops is not installed from a wheel here (editable install or source tree)")
    import importlib.metadata
    tags = [ln.split(":", 1)[1].strip() for ln in importlib.metadata.distribution("sbops").read_text("WHEEL").splitlines()
            if ln.startswith("Tag:")]
    assert tags and all(t.startswith(("cp310-abi3-linux_", "cp310-abi3-manylinux")) for t in tags), tags


def test_torch_older_than_the_stable_abi_floor_is_refused_naming_both_versions():
    code = ("import torch; torch.__version__ = '2.9.1+cpu'\n"
            "try:\n    import sbops\nexcept ImportError as e:\n    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "REFUSED" in out and "2.10" in out and "2.9.1+cpu" in out, out


def test_import_without_torch_says_to_install_torch_first():
    """torch is the user's (never a dependency of the wheel): importing sbops without it says what to do."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError('No module named torch', name='torch')\n"
            "sys.meta_path.insert(0, Block())\n"
            "try:\n    import sbops\nexcept ModuleNotFoundError as e:\n    print('REFUSED', e.name, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "REFUSED torch sbops needs PyTorch >= 2.10" in out and "install your torch build first" in out, out


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree (pyproject.toml)")
def test_package_version_matches_pyproject():
    """sbops.__version__ is the version the wheel's metadata carries (pyproject.toml)."""
    import re
    want = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    got = re.search(r'^__version__ = "([^"]+)"', (ROOT / "python" / "sbops" / "__init__.py").read_text(), re.M).group(1)
    assert got == want
