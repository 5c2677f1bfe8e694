"""The Triton kernel modules (backends/cuda/triton/<name>.py) for the tests and the GPU scripts:
the installed copy (sbops._backends.cuda.triton.<name>) when sbops imports, else the source tree.
Loaded once per process.  Set TRITON_INTERPRET before the first load to run them on a CPU."""
import importlib
import importlib.util
import os

_TRITON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backends", "cuda", "triton")
_loaded = {}


def load(name: str):
    if name not in _loaded:
        try:
            mod = importlib.import_module(f"sbops._backends.cuda.triton.{name}")
        except Exception:  # not installed (or the package fails to load): the source tree
            spec = importlib.util.spec_from_file_location(f"_sbops_triton_{name}", os.path.join(_TRITON_DIR, f"{name}.py"))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        _loaded[name] = mod
    return _loaded[name]
