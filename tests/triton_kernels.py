"""The Triton kernel modules (backends/cuda/triton/<name>.py) for the tests and the GPU scripts:
the installed copy (sbops._backends.cuda.triton.<name>) when sbops imports, else the source tree.
Loaded once per process.  Set TRITON_INTERPRET before the first load to run them on a CPU.

Importing this module needs no triton (callers run pytest.importorskip("triton") first); the
interpreter helpers below import it when called:
  * install_interpreter_shims(): test-only fixes of Triton interpreter bugs (loop bounds under
    NumPy >= 2.4; masks that Triton 3.9 builds as int32 from `block & scalar-compare`);
  * rint_keeping_zero_sign(): the GPU's rint (sign of zero kept) as an interpreter function;
  * bounds_checked(): a context manager that fails any interpreted load / store / atomic whose
    active address lies outside every tensor argument of its launch (the interpreter itself
    dereferences raw pointers with no bounds check)."""
import contextlib
import importlib
import importlib.util
import os
import sys

import torch

_TRITON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backends", "cuda", "triton")
_loaded = {}


def load(name: str):
    if name not in _loaded:
        try:
            mod = importlib.import_module(f"sbops._backends.cuda.triton.{name}")
        except Exception:  # not installed (or the package fails to load): the source tree, as a package
            pkg = "_sbops_triton_src"
            if pkg not in sys.modules:
                spec = importlib.util.spec_from_file_location(pkg, os.path.join(_TRITON_DIR, "__init__.py"),
                                                              submodule_search_locations=[_TRITON_DIR])
                sys.modules[pkg] = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(sys.modules[pkg])
            mod = importlib.import_module(f"{pkg}.{name}")
        _loaded[name] = mod
    return _loaded[name]


# ------------------------------------------------------------------ non-contiguous test inputs
def view_of(x, layout, gen):
    """x (contiguous [B, T, heads(, dim)]) copied into a non-contiguous view of the given layout."""
    if layout == "slice_T":          # a window of a longer sequence: odd storage offset, batch stride != T * time stride
        big = torch.randn((x.shape[0], x.shape[1] + 5) + x.shape[2:], generator=gen).to(x)
        view = big[:, 3:3 + x.shape[1]]
    elif layout == "transposed":     # [T, B, ...] storage seen as [B, T, ...]
        view = torch.empty((x.shape[1], x.shape[0]) + x.shape[2:], dtype=x.dtype, device=x.device).transpose(0, 1)
    elif layout == "slice_heads":    # the last heads of a wider [B, T, heads + 1, ...] buffer
        big = torch.randn(x.shape[:2] + (x.shape[2] + 1,) + x.shape[3:], generator=gen).to(x)
        view = big[:, :, 1:]
    elif layout == "strided_last":   # last stride 2: the one layout that is copied
        view = torch.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype, device=x.device)[..., ::2]
    else:
        raise ValueError(layout)
    view.copy_(x)
    assert not view.is_contiguous() or view.storage_offset() > 0
    return view


def fused_qkv(q, k, v):
    """q, k, v as the model makes them: split from one fused projection, then viewed as heads."""
    B, T = q.shape[:2]
    parts = [x.reshape(B, T, -1) for x in (q, k, v)]
    qkv = torch.cat(parts + [torch.zeros(B, T, 3, dtype=q.dtype, device=q.device)], -1)[..., :-3]
    qs, ks, vs = qkv.split([p.shape[-1] for p in parts], -1)
    return qs.view(q.shape), ks.view(k.shape), vs.view(v.shape)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rint_keeping_zero_sign():
    """A Triton function for the interpreter that rounds half to even as the GPU's one-instruction rint
    (libdevice.rint, cvt.rni) does, keeping the sign of a zero result (-0.3 -> -0); the library's
    interpreter rint (_rint) gives +0 there.  Imports triton when called."""
    global tl                      # a jit'd function must see triton.language among its module's globals
    import triton
    import triton.language as tl

    @triton.jit
    def rint(q):
        m = tl.where(q < 0, -8388608.0, 8388608.0)
        r = tl.where(tl.abs(q) < 8388608.0, (q + m) - m, q)
        return tl.where(r == 0.0, q * 0.0, r)

    return rint


def install_interpreter_shims():
    """Idempotent; only call while interpreting."""
    import numpy as np
    import triton.runtime.interpreter as interp

    orig = interp._patch_lang_tensor
    if not getattr(orig, "_sbops_shim", False):
        def patched(tensor, scope):
            orig(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        patched._sbops_shim = True
        interp._patch_lang_tensor = patched

    B = interp.InterpreterBuilder
    if getattr(B, "_sbops_mask_shim", False):
        return

    def as_bool(mask):
        if mask.data.dtype != np.bool_:
            mask = interp.TensorHandle(mask.data != 0, mask.dtype)
        return mask

    load, store, rmw = B.create_masked_load, B.create_masked_store, B.create_atomic_rmw

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        _check(ptrs, mask)
        return load(self, ptrs, as_bool(mask), other, cache_policy, is_volatile)

    def create_masked_store(self, ptrs, value, mask, cache_policy):
        _check(ptrs, mask)
        return store(self, ptrs, value, as_bool(mask), cache_policy)

    def create_atomic_rmw(self, rmwOp, ptr, val, mask, sem, scope):
        _check(ptr, mask)
        return rmw(self, rmwOp, ptr, val, as_bool(mask), sem, scope)

    B.create_masked_load, B.create_masked_store, B.create_atomic_rmw = (
        create_masked_load, create_masked_store, create_atomic_rmw)
    B._sbops_mask_shim = True

    call = interp.GridExecutor.__call__

    def grid_call(self, *args, **kwargs):
        if _ranges is None:
            return call(self, *args, **kwargs)
        _ranges.append([_extent(a) for a in list(args) + list(kwargs.values()) if hasattr(a, "data_ptr")])
        try:
            return call(self, *args, **kwargs)
        finally:
            _ranges.pop()

    interp.GridExecutor.__call__ = grid_call


_ranges = None  # a stack of launches' [(first byte, end byte)] while bounds_checked() is active


def _extent(t):
    """[first byte, end byte) that a tensor view can address (empty for a tensor without elements)."""
    if t.numel() == 0:
        return (0, 0)
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (t.data_ptr(), t.data_ptr() + span * t.element_size())


def _check(ptrs, mask):
    if not _ranges:
        return
    import numpy as np
    import triton.runtime.interpreter as interp

    size = interp._get_np_dtype(ptrs.get_element_ty()).itemsize
    p = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
    active = p[np.broadcast_to(mask.data != 0, p.shape)].astype(np.uint64)
    if active.size == 0:
        return
    ok = np.zeros(active.shape, dtype=bool)
    for lo, hi in _ranges[-1]:
        ok |= (active >= lo) & (active + size <= hi)
    if not ok.all():
        raise AssertionError(f"out-of-bounds access: {int((~ok).sum())} of {active.size} active addresses "
                             f"outside every tensor argument of the launch")


@contextlib.contextmanager
def bounds_checked():
    """Every interpreted load / store / atomic inside must address a tensor argument of its launch."""
    global _ranges
    install_interpreter_shims()
    prev, _ranges = _ranges, []
    try:
        yield
    finally:
        _ranges = prev


def run_in_bounds(fn):
    """fn() with every interpreted access bounds-checked (CPU); on a GPU, fn() and a sync that
    surfaces an illegal address."""
    if torch.cuda.is_available():
        out = fn()
        torch.cuda.synchronize()
        return out
    with bounds_checked():
        return fn()
