"""Helpers shared by the Triton kernel modules: strided token addressing, sanitised varlen bounds,
and the Python rules for which inputs are read in place.

Strided inputs.  A [B, T, heads, dim] input whose last dimension has stride 1 is read in place:
the kernels take its batch, time and head strides (sb, st, sh) and address token r of the packed
[B*T] token axis at (r // T) * sb + (r % T) * st (just r * st when the batch and time dimensions
merge, FLAT).  Views therefore cost no copy: slices along T, q/k/v split from one fused projection,
a transposed batch, odd storage offsets.  Only an input whose last stride is not 1 is copied.

Bad cu_seqlens.  The host data checks are off by default, so a kernel must stay in bounds whatever
cu_seqlens holds.  Sequence n covers the tokens [s_n, e_n) with
    s_n = clamp(cu[n], 0, T),   e_n = clamp(cu[n + 1], s_n, T)      (T: the packed token count)
a decreasing pair gives an empty sequence; sequences may then overlap (rows written twice hold
either result).  For valid cu_seqlens this is cu itself.
"""
from __future__ import annotations

import functools
import json
import os

import torch
import triton
import triton.language as tl

# backends/ in the source tree, sbops/_backends in an installed wheel: <root>/<backend>/tuning/*.json
_BACKENDS_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=None)
def load_tuning(backend: str, name: str) -> dict:
    """The tuning data ``<root>/<backend>/tuning/<name>.json`` (e.g. backend "cuda" or "maca", name
    "swa"), read once per process and shared: read it, never change it."""
    with open(os.path.join(_BACKENDS_ROOT, backend, "tuning", f"{name}.json")) as f:
        return json.load(f)


@triton.jit
def _seq_bounds(cu_ptr, n, T):
    """(s_n, e_n) of sequence n as int32, clamped as in the module docstring (T: token count)."""
    a = tl.load(cu_ptr + n)
    b = tl.load(cu_ptr + n + 1)
    s = tl.minimum(tl.maximum(a, 0), T)
    e = tl.minimum(tl.maximum(b, s), T)
    return s.to(tl.int32), e.to(tl.int32)


@triton.jit
def _block_of(cu_ptr, tab_ptr, j, NJ, NB, T, BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr,
              REV: tl.constexpr):
    """(n, bos, L, b0) of block slot j of NJ in a 1-D grid (grid dims 1 and 2 are limited to 65535,
    so neither blocks nor sequences go there): sequence n, its first packed token bos and length L,
    and the block's first token b0 inside it; b0 >= L means no work.  REV visits the slots last
    first (the heaviest causal query blocks start first).  Without cu_seqlens slot j is block
    j % NB of batch entry j // NB (NB = cdiv(T, BLOCK) blocks each).  With cu_seqlens it is row
    j of the device block table (seq, t0, t1) of BLOCK-token blocks (_la_tables_kernel, rows past
    the real count empty); blocks at or past NB (max_seqlen's block count) are skipped."""
    if REV:
        j = NJ - 1 - j
    if IS_VARLEN:
        n = tl.load(tab_ptr + j * 3)
        t0 = tl.load(tab_ptr + j * 3 + 1)
        t1 = tl.load(tab_ptr + j * 3 + 2)
        bos, eos = _seq_bounds(cu_ptr, n, T)
        L = eos - bos
        b0 = t0 - bos
        b0 = tl.where((t1 > t0) & (b0 < NB * BLOCK), b0, L)
    else:
        n = j // NB
        bos = n * T
        L = T
        b0 = (j - n * NB) * BLOCK
    return n, bos, L, b0


@triton.jit
def _toff(rows, T, sb, st, FLAT: tl.constexpr):
    """int64 element offset of packed tokens `rows` (b * T + t) in a tensor of batch stride sb and
    time stride st; FLAT: the batch and time dimensions merge (B == 1 or sb == T * st)."""
    r = rows.to(tl.int64)
    if FLAT:
        off = r * st
    else:
        off = (r // T) * sb + (r % T) * st
    return off


def in_place(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has stride 1 (or holds at most one element), else a
    contiguous copy: the kernels read every other layout through its strides."""
    if t.dim() == 0 or t.stride(-1) == 1 or t.shape[-1] <= 1:
        return t
    return t.contiguous()


def tok_strides(t: torch.Tensor):
    """(batch, time, head) strides of a [B, T, heads, ...] or [B, T, heads] tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


def flat_ok(T: int, *tensors) -> bool:
    """True when every tensor's batch and time dimensions merge into one token axis of stride
    t.stride(1): then the kernels skip the per-row division by T."""
    return all(t.shape[0] <= 1 or t.stride(0) == T * t.stride(1) for t in tensors if t is not None)


def sanitize_cu_host(cu: torch.Tensor, T: int):
    """Host copy of the sequence bounds (starts, ends) int64 [N] under the clamping rule above."""
    s = cu[:-1].clamp(0, T)
    e = torch.maximum(cu[1:].clamp(0, T), s)
    return s, e


# Programmatic dependent launch (sm_90+, NVIDIA): the decode step's elementwise kernels (fused_norm, fused_rope_swiglu,
# fused_gla_act) take a PDL constexpr and begin with
#     if PDL:
#         tl.extra.cuda.gdc_wait()
#         tl.extra.cuda.gdc_launch_dependents()
# (inline, not a shared @triton.jit helper: a helper compiled before TRITON_INTERPRET is set cannot be called from
# interpreted kernels).  With it a kernel waits for the kernel before it (gdc_wait: that grid done,
# its writes visible) before it touches memory, lets the kernel after it launch at once (gdc_launch_dependents), and
# is launched with launch_pdl=True, so launches overlap the work before them, as the CUDA C++ decode kernels do
# (backends/cuda/kernels/pdl_launch.cuh).  On with the step's other non-GEMV kernels where SBOPS_DECODE_PDL is unset
# or "all" (read at import, any case, blanks ignored, as pdl_launch.cuh reads it; the default since session 36: bf16
# 7B B = 1 decode 5.415 -> 5.230 ms per step on an H100); "1" keeps the early launch to the decode GEMVs, "0" none.
def pdl_setting(value) -> bool:
    """Whether SBOPS_DECODE_PDL's value (None: unset) launches the Triton decode kernels as programmatic dependents."""
    return value is None or "".join(value.split()).lower() == "all"


PDL = pdl_setting(os.environ.get("SBOPS_DECODE_PDL"))


def _triton_has_pdl() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except Exception:   # an older Triton, or one without the NVIDIA backend (mcTriton)
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@functools.lru_cache(maxsize=None)
def _pdl_device(index: int) -> bool:
    if torch.version.cuda is None or "metax" in torch.__version__.lower():
        return False
    if torch.cuda.get_device_name(index).startswith("MetaX") or torch.cuda.get_device_capability(index)[0] < 9:
        return False
    return _triton_has_pdl()


def pdl_options(kernel, t: torch.Tensor) -> dict:
    """Launch keywords of `kernel` (a PDL-taking kernel) for data on t's device: {"PDL": True, "launch_pdl": True}
    on an sm_90+ NVIDIA device with PDL on and a compiled (not interpreted) kernel, else {"PDL": False}."""
    if PDL and t.is_cuda and type(kernel).__name__ != "InterpretedFunction":
        if _pdl_device(t.device.index if t.device.index is not None else torch.cuda.current_device()):
            return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
