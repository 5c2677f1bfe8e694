"""Spike coding: adaptive-threshold integer spike counts and spike trains. SPEC section 3."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .. import _validate as V
from ._common import run, run_no_grad

_NO = ()

MODES = ("binary", "ternary", "bitwise")
COUNT_DTYPES = (torch.int8, torch.int16, torch.int32)


def _check_k(op, k):
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) a k from a default argument
    # or a module attribute is a SymFloat (NaN fails k > 0).  numbers.Real takes numpy's floats and
    # ints too (float() converts them exactly); a tensor is refused: float() of a CUDA tensor is a
    # device sync the caller did not ask for
    if isinstance(k, torch.Tensor):
        raise TypeError(f"sbops.{op}: k must be a Python float (or int, or numpy scalar), got a "
                        f"{'0-d ' if k.dim() == 0 else ''}tensor on {k.device.type}; pass k.item() "
                        f"(on a GPU that is a device sync)")
    if not isinstance(k, (numbers.Real, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"sbops.{op}: k must be a Python float (a positive finite number), got "
                        f"{type(k).__name__} {k!r}")
    if isinstance(k, bool) or not 0 < k < math.inf:
        raise ValueError(f"sbops.{op}: k must be a positive finite number, got {k!r}")


def _check_mode(op, mode):
    if mode not in MODES:
        raise ValueError(f"sbops.{op}: mode must be one of {', '.join(MODES)}; got {mode!r}")


def _check_x(op, x):
    V.tensor(op, "x", x, dtypes=V.FLOAT_DTYPES, what="[..., C]")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"sbops.{op}: x must have a non-empty last (channel) dimension, got shape {tuple(x.shape)}")


def spike_encode(x: torch.Tensor, k: float = 3.0, out_dtype: torch.dtype = torch.int8):
    """Integer spike counts with SpikingBrain's adaptive per-token threshold.

    vth = clamp(mean(|x|) / k, 1e-5, 1e4) over the last dim (float32, shape x.shape[:-1] + (1,));
    counts = round_half_to_even(x / vth) saturated to out_dtype's range (int8, int16 or int32).
    Returns (counts, vth); vth is differentiable in x (counts are integers).  x may be a strided view: the CUDA kernel reads it in place when its
    last dimension is contiguous and its rows are read the way a dense copy's would be (rows whose
    length allows 16-byte vectors must also start 16-byte aligned); padded rows, odd storage
    offsets and misaligned splits are copied first, so a view gives bit-identical results.
    """
    op = "spike_encode"
    _check_x(op, x)
    _check_k(op, k)
    if out_dtype not in COUNT_DTYPES:
        raise TypeError(f"sbops.{op}: out_dtype must be one of int8, int16, int32; got {out_dtype}")
    # vth's gradient is registered (counts have none); without one needed, skip the autograd kernel
    return run_no_grad(op, x, _NO, _NO, (x,), x, float(k), out_dtype)


def spike_quant(x: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """x_hat = round(x / vth) * vth in x's dtype (no saturation), with a straight-through gradient.

    The training-time op: a linear layer fed x_hat computes vth * (s @ W) exactly.  x may be a
    strided view, read in place on CUDA under the same rule as spike_encode (else copied), so a
    view gives bit-identical results.  Rounding can step past x's dtype range: a float16 row
    [65504, 0, ...] has vth clamped at 1e4 and gives 7 * 1e4 = inf (IEEE, as the formula says).
    """
    op = "spike_quant"
    _check_x(op, x)
    _check_k(op, k)
    return run(op, x, _NO, _NO, x, float(k))


def _check_counts(op, counts, name="counts"):
    V.tensor(op, name, counts, dtypes=V.INT_DTYPES)


def _min_T(mode: str, max_abs: int) -> int:
    if mode == "bitwise":
        return max(1, int(max_abs).bit_length())   # = ceil(log2(max_abs + 1)), exact past 2^53
    return max(1, max_abs)


def _max_abs(op, counts, mode) -> int:
    if counts.numel() == 0:
        return 0
    lo, hi = (int(t) for t in torch.aminmax(counts))   # not abs() in the count dtype: |-128| is -128 in int8
    if mode == "binary" and lo < 0:
        raise ValueError(f"sbops.{op}: binary spike trains need counts >= 0, got a count of {lo} "
                         f"(use mode='ternary' or 'bitwise' for signed counts)")
    return max(-lo, hi)


_MAX_EXPAND_T = (1 << 31) - 1   # the CUDA kernel takes T as an int


def _positive_T(op, T) -> int:
    """A given step count T as a Python int (numpy ints too), or ValueError naming T."""
    t = V.as_int(T)
    if t is None or t < 1:
        raise ValueError(f"sbops.{op}: T must be a positive int, got {T!r}")
    return t


def _too_many_steps(op, T, counts, why):
    raise ValueError(f"sbops.{op}: T={T} steps{why} is too large: the trains would be [T={T}"
                     f"{''.join(', ' + str(n) for n in counts.shape)}] int8 ({T * counts.numel() / 2 ** 30:.3g} GiB); "
                     f"spike_expand serves T <= {_MAX_EXPAND_T} (counts that large suggest a clamped vth or "
                     f"unscaled input; mode='bitwise' needs only bit_length(|count|) steps)")


def spike_expand(counts: torch.Tensor, mode: str = "bitwise", T: Optional[int] = None) -> torch.Tensor:
    """Expand integer counts into spike trains [T, *counts.shape] int8.

    binary: s_t = 1 while t < c (c >= 0); ternary: s_t = sign(c) while t < |c|;
    bitwise: s_t = sign(c) * bit_{T-1-t}(|c|) (sign-magnitude, most significant bit first).
    T defaults to the fewest steps that hold every count; a T too small is an error, never a
    silent wrap.  T is at most 2**31 - 1 (a larger one, given or the default, is refused).

    Synchronisation: the output's shape depends on T, so T=None reads max|counts| back to the host
    (a GPU sync; pass T under torch.compile or CUDA graph capture).  With T given, the wrapper
    checks it against the data where data checks run (CPU tensors by default, see
    sbops.set_data_checks), and the built-in kernels check it again themselves: the CPU kernel in
    its first pass, the CUDA kernel with one device-to-host read of min/max|counts| -- so
    spike_expand on a GPU synchronises in any case.  counts may be a strided view (copied).
    """
    op = "spike_expand"
    _check_counts(op, counts)
    _check_mode(op, mode)
    if T is not None:
        T = _positive_T(op, T)
        if T > _MAX_EXPAND_T:
            _too_many_steps(op, T, counts, "")
    if T is None and counts.device.type == "meta":
        raise ValueError(f"sbops.{op}: pass T explicitly for meta tensors (its default depends on the data)")
    if V.checking_data(counts) or (T is None and V.can_sync()):
        m = _max_abs(op, counts, mode)
        need = _min_T(mode, m)
        if T is None:
            T = need
            if T > _MAX_EXPAND_T:
                _too_many_steps(op, T, counts, f" (the largest |count| is {m}, which needs T={T} in {mode} mode)")
        elif T < need:
            raise ValueError(f"sbops.{op}: T={T} steps cannot represent a count of magnitude {m} in {mode} mode "
                             f"(needs T >= {need})")
    elif T is None:
        raise ValueError(f"sbops.{op}: pass T explicitly under torch.compile, CUDA graph capture or vmap "
                         "(its default depends on the data)")
    return run(op, counts, _NO, _NO, counts, mode, int(T))


def _collapse_overflows(trains: torch.Tensor, mode: str) -> bool:
    """Whether some collapsed count falls outside int32 (the GPU kernel's unchecked case).

    int64 arithmetic, one step at a time.  Bitwise: once |acc| > 2^31 it only grows (train values
    are at most 2^31 in magnitude), so clamping to +-2^32 keeps int64 from overflowing without
    changing the answer.  Binary/ternary: a sum of T values of at most 2^31 fits int64.
    """
    if trains.numel():
        lo, hi = (int(v) for v in torch.aminmax(trains))
        if lo < -(1 << 31) or hi >= (1 << 31):   # (int64 trains) refused as the CPU kernel refuses them
            return True
    acc = torch.zeros(trains.shape[1:], dtype=torch.int64, device=trains.device)
    for t in range(trains.shape[0]):
        if mode == "bitwise":
            acc = (acc * 2 + trains[t]).clamp_(-(1 << 32), 1 << 32)
        else:
            acc = acc + trains[t]
    lo, hi = (int(v) for v in torch.aminmax(acc)) if acc.numel() else (0, 0)
    return lo < -(1 << 31) or hi >= (1 << 31)


def spike_collapse(trains: torch.Tensor, mode: str = "bitwise") -> torch.Tensor:
    """Invert spike_expand: sum_t s_t (binary/ternary) or sum_t 2^(T-1-t) s_t (bitwise). Returns int32.

    Any T works (a bitwise train of 32 steps holds spike_encode's int32 INT_MIN count; longer
    trains with leading zero steps collapse exactly).  A collapsed count outside int32 is an error
    where data checks run (CPU tensors by default, see sbops.set_data_checks); on a GPU without
    them nothing is read back and such a count wraps.  trains may be a strided view (copied
    internally where needed).  Steps need not be spike_expand's ({0, 1} binary, {-1, 0, 1} otherwise):
    any integer steps are summed by the same formula, not refused.
    """
    op = "spike_collapse"
    V.tensor(op, "trains", trains, dtypes=V.INT_DTYPES, what="[T, ...]")
    if trains.dim() < 1 or trains.shape[0] < 1:
        raise ValueError(f"sbops.{op}: trains must have a leading time dimension T >= 1, got shape {tuple(trains.shape)}")
    _check_mode(op, mode)
    # the CPU kernel checks every count itself; elsewhere the check is a host read, so opt-in
    if trains.device.type not in ("cpu", "meta") and V.checking_data(trains) and _collapse_overflows(trains, mode):
        raise ValueError(f"sbops.{op}: a collapsed count does not fit int32 (mode={mode!r}, T={trains.shape[0]})")
    return run(op, trains, _NO, _NO, trains, mode)


_MAX_HIST_BINS = 1 << 24   # spike_stats' histogram: at most 128 MiB of int64 bins


def spike_stats(counts: torch.Tensor, mode: str = "bitwise", T: Optional[int] = None) -> dict:
    """Statistics of the spike trains `counts` expand to, without materialising them.

    Returns a dict: sparsity (fraction of zero entries in the [T, ...] train), spikes_per_neuron
    (mean non-zero steps per count), silent_fraction (fraction of zero counts), T, histogram
    (list: number of counts with each |c| = 0, 1, ...), mode, numel.

    A host-side summary: it reads max|counts| and the histogram back (a GPU sync by design).
    """
    op = "spike_stats"
    _check_counts(op, counts)
    _check_mode(op, mode)
    if not V.can_sync():
        raise ValueError(f"sbops.{op} is a host-side summary (it reads the histogram back): call it outside "
                         "torch.compile, CUDA graph capture and vmap")
    if T is not None:
        T = _positive_T(op, T)
    m = _max_abs(op, counts, mode)
    need = _min_T(mode, m)
    if T is None:
        T = need
    elif T < need:
        raise ValueError(f"sbops.{op}: T={T} steps cannot represent a count of magnitude {m} in {mode} mode "
                         f"(needs T >= {need})")
    if m >= _MAX_HIST_BINS:  # one int64 bin per |c| value: refuse before allocating gigabytes
        raise ValueError(f"sbops.{op}: the largest |count| is {m}; its histogram would need {m + 1} bins "
                         f"({(m + 1) * 8 / 2 ** 30:.2f} GiB); spike_stats serves |counts| < {_MAX_HIST_BINS} "
                         f"(counts that large come from a clamped vth: check the input)")
    hist = run(op, counts, _NO, _NO, counts, m).cpu()
    n = counts.numel()
    steps = [bin(a).count("1") if mode == "bitwise" else a for a in range(m + 1)]
    spikes = sum(int(h) * s for h, s in zip(hist.tolist(), steps))
    return {
        "mode": mode,
        "T": T,
        "numel": n,
        "sparsity": 1.0 - spikes / (T * n) if n else 1.0,
        "spikes_per_neuron": spikes / n if n else 0.0,
        "silent_fraction": int(hist[0]) / n if n else 1.0,
        "histogram": hist.tolist(),
    }
