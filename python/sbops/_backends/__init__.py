"""Built-in backends.  Each lives in its own folder of the source tree (backends/<name>/, installed
as sbops._backends.<name>) whose __init__.py is a small descriptor: capabilities as data, a probe,
and a `register()` that wires its kernels.  Adding a backend = adding a folder and its name here;
a backend from outside sbops calls sbops.register_backend(...) instead.
"""
from __future__ import annotations

import importlib
import warnings

BUILTIN = ("cpu", "cuda", "maca")


def load_builtin() -> None:
    from .._dispatch import register_backend
    for name in BUILTIN:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:  # a broken backend folder must not break the others
            warnings.warn(f"sbops: backend {name!r} could not be loaded: {e}")
            continue
        register_backend(mod.BACKEND, replace=True)
        mod.register()
