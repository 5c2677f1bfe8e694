"""Build sbops: the Python package plus the native library sbops/libsbops.so through CMake.

The library uses only the LibTorch stable ABI (TORCH_TARGET_VERSION 2.10) and no Python C API, so the
wheel is tagged cp310-abi3: one wheel per platform target (cpu, cu<major>) for every torch >= 2.10 and
Python >= 3.10.  scripts/build_wheels.sh builds and repairs the release wheels.

    pip install --no-build-isolation .        # builds against the torch already installed
    SBOPS_TARGET=cpu|cuda|maca|auto           # default auto
    SBOPS_CUDA_ARCHS="80;90a"                 # CUDA architectures
    SBOPS_MACA_SIM=1                          # compile the MACA code paths with nvcc (NVIDIA simulation)
    SBOPS_BUILD_DIR=build/xyz                 # CMake build directory (incremental rebuilds)
"""
import fnmatch
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()

# The wheel holds the package and nothing else. The backend folders also hold development tools that
# are not part of it; modules whose name matches one of these never ship (tests/test_build.py checks).
DEV_MODULES = ("test_*", "*_test", "*_dev_check", "probe_*", "diag_*", "smoke_*", "check_*")

# Data files that ship, per package; nothing else (no include_package_data sweep of the source tree).
PACKAGE_DATA = {
    "sbops._backends.cuda": ["tuning/*.json"],
    "sbops._backends.maca": ["tuning/*.json", "README.md"],
}


class BuildPy(build_py):
    """build_py that leaves out development modules (DEV_MODULES) found in the package folders, and first removes
    from the build folder the modules and data files of an earlier build that the source tree no longer has: build_py
    only adds and overwrites, and pip builds the wheel in-tree (build/lib), so a module deleted or renamed since the
    last build would otherwise still ship.  The native library and _build_info.py are build_ext's, rewritten by it."""

    def find_package_modules(self, package, package_dir):
        return [(pkg, mod, path) for pkg, mod, path in super().find_package_modules(package, package_dir)
                if not any(fnmatch.fnmatch(mod, pat) for pat in DEV_MODULES)]

    def run(self):
        self._drop_stale_files()
        super().run()

    def _drop_stale_files(self):
        root = Path(self.build_lib) / "sbops"
        if not root.is_dir():
            return
        keep = {Path(self.get_module_outfile(self.build_lib, pkg.split("."), mod)).resolve()
                for pkg, mod, _ in self.find_all_modules()}
        keep |= {(Path(build_dir) / name).resolve() for _, _, build_dir, names in self.data_files for name in names}
        # build_ext's: the native library and, next to it, _build_info.py
        native = Path(self.build_lib, *NATIVE.split(".")).with_suffix(".so").resolve()
        keep |= {native, native.with_name("_build_info.py")}
        for f in root.rglob("*"):
            # a stale extension module (sbops/_C*.so of an older layout) would shadow the _C.py of the same name
            if f.is_file() and f.suffix in (".py", ".pyc", ".so", ".json", ".md") and f.resolve() not in keep:
                f.unlink()


# the minimum torch the stable-ABI library loads in (CMakeLists.txt: SBOPS_TORCH_TARGET_VERSION)
TORCH_TARGET = "2.10"
NATIVE = "sbops.libsbops"  # sbops/libsbops.so: a plain shared library, loaded by sbops/_C.py


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[], py_limited_api=True)


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname):
        # not a Python extension module: no ABI suffix (it is loaded by torch.ops.load_library)
        if fullname == NATIVE:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def _build_info_pairs(self):
        """(built, in-place) paths of _build_info.py, which setup.py writes next to the library."""
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            yield (os.path.join(os.path.dirname(regular_file), "_build_info.py"),
                   os.path.join(os.path.dirname(inplace_file), "_build_info.py"))

    def _get_output_mapping(self):  # editable installs: _build_info.py travels with the library
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._build_info_pairs()

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for built, inplace in self._build_info_pairs():
            if os.path.exists(built):
                self.copy_file(built, inplace, level=self.verbose)

    def build_extension(self, ext):
        try:
            import torch
        except ImportError:
            sys.exit("sbops: torch must be installed before building sbops "
                     "(and build with --no-build-isolation so the installed torch is used)")
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        target = os.environ.get("SBOPS_TARGET", "auto")
        sim = os.environ.get("SBOPS_MACA_SIM", "0").strip().lower() not in ("", "0", "off", "false", "no")
        # one build folder per environment (its prefix hashed): CMake's cache records tool and torch paths
        # (ninja installed into a venv, say), which a venv made again elsewhere would not have
        env_tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
        build_dir = Path(os.environ.get(
            "SBOPS_BUILD_DIR",
            ROOT / "build" / f"cmake-{target}{'-macasim' if sim else ''}-py{sys.version_info[0]}{sys.version_info[1]}-{env_tag}"))
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DSBOPS_TARGET={target}",
            f"-DSBOPS_MACA_SIM={'ON' if sim else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if "SBOPS_CUDA_ARCHS" in os.environ:
            args.append(f"-DSBOPS_CUDA_ARCHS={os.environ['SBOPS_CUDA_ARCHS']}")
        # extra CMake arguments, e.g. SBOPS_CMAKE_ARGS="-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"
        args += shlex.split(os.environ.get("SBOPS_CMAKE_ARGS", ""))
        if shutil.which("ninja") and not (build_dir / "Makefile").exists():
            args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_dir)
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build_dir)
        # what this build was made against, checked at import time
        built_for = (build_dir / "sbops_build_target.txt").read_text().strip()
        (extdir / "_build_info.py").write_text(
            "# generated by setup.py\n"
            f"TORCH_VERSION = {torch.__version__!r}  # the torch it was built with\n"
            f"TORCH_TARGET = {TORCH_TARGET!r}  # the oldest torch it loads in (LibTorch stable ABI)\n"
            f"TARGET = {target!r}  # SBOPS_TARGET as requested\n"
            f"BUILD_TARGET = {built_for!r}  # what was built: cpu, cuda or maca\n"
            f"MACA_SIM = {sim!r}\n")


setup(
    # the Python package lives in python/; each backend folder becomes sbops._backends.<name>
    packages=find_packages(where="python") + [
        "sbops._backends.cpu", "sbops._backends.cuda", "sbops._backends.cuda.triton", "sbops._backends.maca",
    ],
    package_dir={
        "": "python",
        "sbops._backends.cpu": "backends/cpu",
        "sbops._backends.cuda": "backends/cuda",
        "sbops._backends.cuda.triton": "backends/cuda/triton",
        "sbops._backends.maca": "backends/maca",
    },
    package_data=PACKAGE_DATA,
    include_package_data=False,
    ext_modules=[CMakeExtension(NATIVE)],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
    # no Python C API in the library: one wheel for every CPython >= 3.10
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    zip_safe=False,
)
