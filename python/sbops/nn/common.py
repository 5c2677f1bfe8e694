"""Building blocks shared by the attention and FFN layers: RMSNorm (fla order), rotary embeddings, SwiGLU."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

import sbops
from sbops import _platform

from . import hopper_gemm as _hopper_gemm
from .linear_operands import PLAIN as _PLAIN, native_gemm_operands as _native_gemm_operands

from .spike import SpikeLinear, weight_key


DOWN_WEIGHT_QUANTS = (None, "int8_channel")   # SwiGLU's down_weight_quant


def make_linear(in_features: int, out_features: int, bias: bool, spike_k: Optional[float] = None,
                weight_quant: Optional[str] = None, group_size: int = 128) -> nn.Linear:
    """A plain nn.Linear, or a SpikeLinear when spiking or weight quantisation is asked for.
    weight_quant="int8_channel": a SpikeLinear with int8 weights and one scale per output channel
    (weight_quant="int8", group_size=in_features; group_size is then not used).

    Both keep the parameter names `weight` / `bias`, so state dicts (and Qwen2 conversion) are the
    same whichever is chosen.
    """
    if spike_k is None and weight_quant is None:
        return nn.Linear(in_features, out_features, bias=bias)
    if weight_quant == "int8_channel":
        weight_quant, group_size = "int8", in_features
    return SpikeLinear(in_features, out_features, bias=bias, k=spike_k, weight_quant=weight_quant,
                       group_size=group_size)


# Inference-time fusion of projections that read the same input (q/k/v(/gate), gate/up): one GEMM
# instead of several.  Set to False to compare (benchmarks).
FUSE_PROJECTIONS = True


# Decode-sized linears -- at most DENSE_DECODE_MAX_ROWS rows of float16 / bfloat16 x and weight on an sm_80+ CUDA
# device, no autograd -- run sbops' weight-streaming GEMV (sbops_native::dense_decode, kernels/dense_decode.cu)
# instead of F.linear's cuBLAS call; everything else runs F.linear.  SBOPS_DENSE_DECODE=0 keeps F.linear (read at
# import; set the module attribute to compare in one process).
DENSE_DECODE = _platform.env_switch("SBOPS_DENSE_DECODE")
DENSE_DECODE_MAX_ROWS = 16   # past 16 rows cuBLAS is as fast or faster (H100, session 32)
_DENSE_DTYPES = (torch.bfloat16, torch.float16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias); on the dense decode GEMV where it applies (see DENSE_DECODE)."""
    if DENSE_DECODE and x.is_cuda and _dense_decode_applies(x, weight, bias):
        K = x.shape[-1]
        y = _dense_op()(x.reshape(-1, K), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])
    op = (_hopper_gemm.prefill_op(x) if _hopper_gemm.DENSE_PREFILL and _dense_prefill_applies(x, weight, bias)
          else None)
    if op is not None:  # the Hopper GEMM at prefill (opt-in, SBOPS_DENSE_PREFILL_SM90=1)
        return op(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])
    if (bias is not None and x.dim() > 2 and not x.is_contiguous() and type(x) in _PLAIN and weight.dim() == 2
            and weight.shape[1] == x.shape[-1]):
        # F.linear takes its one-GEMM bias epilogue (addmm) only for 2-D or contiguous input: a strided view such as
        # GLA's low-rank gate (a split of the fused q/k/v GEMM's output) would get a GEMM and a separate bias add
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # a view where the leading dims merge
        return F.linear(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def _dense_op():
    return torch.ops.sbops_native.dense_decode


def linear_module(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x); a plain nn.Linear without hooks or a replaced forward goes through linear() (the dense decode GEMV
    where it applies)."""
    if type(mod) is nn.Linear and "forward" not in mod.__dict__ and not _hooked((mod,)):
        return linear(x, mod.weight, mod.bias)
    return mod(x)


def _dense_decode_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether linear(x, weight, bias) runs the dense decode GEMV: operands it reads in place (_native_gemm_operands),
    at most DENSE_DECODE_MAX_ROWS rows."""
    if not _native_gemm_operands(x, weight, bias, _DENSE_DTYPES, (x.dtype,)):
        return False
    if not 0 < x.numel() <= DENSE_DECODE_MAX_ROWS * x.shape[-1]:
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return _platform.native_kernel_available("dense_decode_available", index)


def _dense_prefill_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether linear(x, weight, bias) may run on the Hopper GEMM (opt-in: hopper_gemm.DENSE_PREFILL): bfloat16
    operands it reads in place (_native_gemm_operands), at least hopper_gemm.MIN_ROWS rows of K >= hopper_gemm.MIN_K,
    N a multiple of 8, a bias of [N] in bfloat16 or float32."""
    if not _native_gemm_operands(x, weight, bias, (torch.bfloat16,), (torch.bfloat16, torch.float32)):
        return False
    K, N = x.shape[-1], weight.shape[0]
    return (x.dim() >= 2 and K >= _hopper_gemm.MIN_K and N % 8 == 0 and x.numel() >= _hopper_gemm.MIN_ROWS * K
            and (bias is None or bias.shape[0] == N))


def check_arg(owner: str, name: str, v, *, integer: bool = False, lo=None, lo_open: bool = False, hi_open=None):
    """Raise ValueError naming `name` unless v is a real number (an integer if `integer`; never a bool), finite,
    >= lo (> lo if lo_open) and < hi_open where given; returns v as an int or float."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(v, kind) and not isinstance(v, bool) and -math.inf < v < math.inf
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi_open is None or v < hi_open)
    if not ok:
        rng = "" if lo is None else f" {'>' if lo_open else '>='} {lo}"
        rng += "" if hi_open is None else f"{' and' if rng else ''} < {hi_open}"
        raise ValueError(f"{owner}: {name} must be {'an int' if integer else 'a finite number'}{rng}, got {v!r}")
    return int(v) if integer else float(v)


def fused_linears(owner: nn.Module, mods, x: torch.Tensor):
    """[mod(x) for mod in mods] computed as one F.linear over the concatenated weights, or None when
    fusion does not apply: autograd on, torch.compile tracing, FUSE_PROJECTIONS off, or a module
    that is not a plain nn.Linear (SpikeLinear codes its input / quantises its weight per module).

    The weights stay the modules' own parameters (state dicts, optimisers and loading see no change):
    on first use their storage is moved into one [sum(out), in] tensor of which each parameter's
    .data becomes a row-block view, so the fused weight costs no extra memory and follows in-place
    updates (load_state_dict, optimiser steps).  Anything that replaces a parameter's storage
    (model.to(...), .data = ...) is noticed by pointer and fused again on the next call.
    Biases likewise; a module without bias contributes a zero block."""
    if not FUSE_PROJECTIONS or torch.is_grad_enabled() or torch.compiler.is_compiling() or _hooked(mods):
        return None
    if all(isinstance(m, SpikeLinear) for m in mods):
        return _fused_spike_linears(owner, mods, x)
    if any(type(m) is not nn.Linear for m in mods):
        return None
    _, w, b, sizes = _fused_state(owner, mods)
    return linear(x, w, b).split(sizes, dim=-1)


def _fused_state(owner: nn.Module, mods):
    # (pointers, fused weight, fused bias or None, sizes) of plain nn.Linears `mods`, fused on first use (fused_linears)
    ptrs = tuple(m.weight.data_ptr() for m in mods) + tuple(0 if m.bias is None else m.bias.data_ptr() for m in mods)
    state = owner.__dict__.get("_sbops_fused")
    if state is None or state[0] != ptrs:
        state = _fuse(mods)
        owner.__dict__["_sbops_fused"] = state
        _hook_unfuse(owner)
    return state


def _hooked(mods) -> bool:
    """A forward (pre-)hook on any of mods, or a global module hook: the modules then run one by one, so
    that the hooks see (and may change) each one's input and output as they do with autograd on."""
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in mods))


def getstate_without_fused(self) -> dict:
    """__getstate__ of a module that owns fused projections: the fused copies are caches, rebuilt on the
    next inference call, so pickling / deepcopy leave them out (a float8 copy cannot be pickled)."""
    state = dict(self.__dict__)
    state.pop("_sbops_fused", None)
    state.pop("_sbops_fused_spike", None)
    return state


def _fused_spike_linears(owner: nn.Module, mods, x: torch.Tensor):
    """[mod(x) for mod in mods] of SpikeLinears as one sbops.spike_linear over their concatenated 8-bit weights
    (_fused_spike_operands), or None."""
    ops = _fused_spike_operands(owner, mods, x)
    if ops is None:
        return None
    q, sc, b, sizes, m0 = ops
    gs = None if m0.weight_quant == "fp8" else m0.group_size
    return sbops.spike_linear(x, q, sc, m0.k, None if b is None else b.to(x.dtype), gs).split(sizes, dim=-1)


def _fused_spike_operands(owner: nn.Module, mods, x: torch.Tensor):
    """(q, scales, bias, sizes, first module) for SpikeLinears that all run sbops.spike_linear at inference with
    the same k, weight format and group size: one encode of x and one GEMM over their concatenated 8-bit weights
    (scales are per output row, so they concatenate too).  The concatenated operands are the only cached copy (rebuilt when a
    weight changes); None when the modules do not all qualify.  Modules whose float weights were dropped
    (sbops.nn.drop_float_weights) get their 8-bit buffers re-pointed to row blocks of that copy; when every
    module of the group is such, the owner keeps no tensor of it and views it whole through the first
    module's buffers (a device move of the model then leaves no copy behind)."""
    m0 = mods[0]
    if not all(m._runs_on_int8(x) and m.k == m0.k and m.weight_quant == m0.weight_quant
               and (m.weight_quant == "fp8" or m.group_size == m0.group_size) for m in mods):
        return None

    # everything the concatenated copies are made of: weights, biases (a copy too), format and group size
    def key_of():
        return tuple((m._weight_key(), None if m.bias is None else weight_key(m.bias), m.weight_quant, m.group_size,
                      m._weights_epoch) for m in mods)

    key = key_of()
    state = owner.__dict__.get("_sbops_fused_spike")
    if state is None or state[0] != key:
        owner.__dict__.pop("_sbops_fused_spike", None)
        with torch.inference_mode(False), torch.no_grad():  # plain tensors: buffers of the modules below
            ops = [m.int8_weight() for m in mods]
            q = torch.cat([o[0] for o in ops]).contiguous()
            sc = torch.cat([o[1].to(torch.float32) for o in ops]).contiguous()
            o = 0
            for m in mods:
                if m.weight is None:
                    m.weight_q, m.weight_scale = q[o:o + m.out_features], sc[o:o + m.out_features]
                o += m.out_features
            b = None
            if any(m.bias is not None for m in mods):
                like = next(m.bias for m in mods if m.bias is not None)
                b = torch.cat([m.bias if m.bias is not None else like.new_zeros(m.out_features) for m in mods])
        kept = None if all(m.weight is None for m in mods) else (q, sc)
        state = (key_of(), kept, b, [m.out_features for m in mods])
        owner.__dict__["_sbops_fused_spike"] = state
        _hook_unfuse(owner)
    _, kept, b, sizes = state
    if kept is None:  # the buffers are consecutive row blocks of one copy (the key holds their addresses)
        q0, s0 = m0.weight_q, m0.weight_scale
        rows = sum(sizes)
        q, sc = q0.as_strided((rows,) + q0.shape[1:], q0.stride()), s0.as_strided((rows,) + s0.shape[1:], s0.stride())
    else:
        q, sc = kept
    return q, sc, b, sizes, m0


# SwiGLU's gate/up at prefill on CUDA with e4m3 weights: the fused product is left unscaled by the fp8 GEMM (unit
# tensor-wise scales: cuBLASLt's faster kernels) and the silu * up kernel applies vth and the channel scales as it
# reads it (spike_linear.scaled_mm_raw, fused_rope_swiglu.silu_mul_scaled).  SBOPS_FUSE_GATE_UP_SCALES=0 (read at
# import) or False here: the scaled product, then silu_mul (benchmarks' A/B).
FUSE_GATE_UP_SCALES = _platform.env_switch("SBOPS_FUSE_GATE_UP_SCALES")
# ... and with int8 per-channel weights (weight_quant "int8_channel") on Hopper: silu(g) * u in the int8 GEMM's
# epilogue, h written once (spike_linear_swiglu.int8_swiglu).  SBOPS_FUSE_GATE_UP_SWIGLU=0 (read at import) or False
# here: the product, then silu_mul (benchmarks' A/B).
FUSE_GATE_UP_SWIGLU = _platform.env_switch("SBOPS_FUSE_GATE_UP_SWIGLU")
# ... and its down projection (int8 per channel) takes its thresholds from that epilogue's sums of |h| per tile, so its
# encode reads h once (spike_linear_swiglu.down_from_row_sums; SBOPS_FUSE_DOWN_ROW_SUMS=0 or False here: off)
FUSE_DOWN_ROW_SUMS = _platform.env_switch("SBOPS_FUSE_DOWN_ROW_SUMS")
# ... and with bfloat16 nn.Linear gate / up on Hopper (session 41): the same GEMM with bfloat16 operands
# (sbops_native.bf16_gemm_swiglu_sm90) past this many rows, under the same switch
BF16_SWIGLU_MIN_M = _hopper_gemm.MIN_ROWS
_bf16_swiglu_op = _hopper_gemm.swiglu_op


def _spike_linear_triton(x: torch.Tensor, module: str = "spike_linear", fp8: bool = True):
    """The Triton module `module` (spike_linear, or spike_linear_swiglu) when sbops' dispatcher gives a spike_linear
    with x's device and dtype (and fp8 weights) to the built-in cuda backend (which runs it), else None."""
    import importlib
    from .. import _dispatch
    from ..ops._common import request
    try:  # (int8: one scale per channel is a group per row, as SpikeLinear calls spike_linear)
        if _dispatch.select(request("spike_linear", x, (), ("fp8_weight" if fp8 else "group",))).name != "cuda":
            return None
    except _dispatch.NoBackendError:  # the unfused path raises it, naming the call
        return None
    try:
        return importlib.import_module(f"{__package__.rsplit('.', 1)[0]}._backends.cuda.triton.{module}")
    except ImportError:
        return None


def _unfused(x: torch.Tensor, mods) -> bool:
    # the projections `mods` run one by one at this call: fusion off, autograd, torch.compile, another device, hooks
    return (not FUSE_PROJECTIONS or torch.is_grad_enabled() or torch.compiler.is_compiling()
            or x.device.type not in _FUSED_DEVICE_TYPES or _hooked(mods))


def gate_up_silu(owner: nn.Module, gate: nn.Module, up: nn.Module, x: torch.Tensor, row_sums: bool = False):
    """silu(gate(x)) * up(x) for SpikeLinears gate / up at a CUDA prefill (more than DECODE_MAX_M rows), or None
    where that does not apply (then the caller runs the projections and silu_mul): e4m3 weights with bfloat16 x
    through their fused unscaled product (see FUSE_GATE_UP_SCALES); int8 weights with a scale per channel through
    the Hopper int8 GEMM with silu(g) * u in its epilogue (FUSE_GATE_UP_SWIGLU; with row_sums, as (h, the sums of
    |h| per 128-column tile) for down_from_row_sums)."""
    if _unfused(x, (gate, up)):
        return None
    if all(type(m) is nn.Linear for m in (gate, up)):
        return _gate_up_silu_bf16(owner, gate, up, x)
    if not all(isinstance(m, SpikeLinear) and m.bias is None for m in (gate, up)):
        return None
    if x.dim() < 2 or x.shape[-1] != gate.in_features:   # the projections' own call then names the mismatch
        return None
    if (all(m.weight_quant == "int8" and m.group_size == m.in_features for m in (gate, up))
            and gate.out_features == up.out_features):
        return _gate_up_silu_int8(owner, gate, up, x, row_sums)
    if not (FUSE_GATE_UP_SCALES and x.dtype == torch.bfloat16 and all(m.weight_quant == "fp8" for m in (gate, up))):
        return None
    kern = fused_kernels(x)
    sl = _spike_linear_triton(x) if kern is not None else None
    K = x.shape[-1]
    if sl is None or x.numel() // max(K, 1) <= sl.DECODE_MAX_M or sl._tuning.FP8_PREFILL != "scaled_mm":
        return None
    ops = _fused_spike_operands(owner, (gate, up), x)
    if ops is None:
        return None
    q, sc, _, _, m0 = ops
    x2 = x.reshape(-1, K)
    if not sl.scaled_mm_applies(x2, q, None, None):
        return None
    y_raw, vth = sl.scaled_mm_raw(x2, q, sc, m0.k)
    h = kern[1].silu_mul_scaled(y_raw, vth, sc)
    return h.view(*x.shape[:-1], h.shape[-1])


def _gate_up_silu_int8(owner: nn.Module, gate: nn.Module, up: nn.Module, x: torch.Tensor, row_sums: bool = False):
    # gate_up_silu's int8 per-channel branch (spike_linear_swiglu.int8_swiglu), or None
    if not FUSE_GATE_UP_SWIGLU or x.dtype not in (torch.bfloat16, torch.float16) or fused_kernels(x) is None:
        return None
    sw = _spike_linear_triton(x, "spike_linear_swiglu", fp8=False)
    if sw is None or x.numel() // max(x.shape[-1], 1) <= sw.sl.DECODE_MAX_M:   # decode: the projections' GEMV
        return None
    ops = _fused_spike_operands(owner, (gate, up), x)
    if ops is None:
        return None
    q, sc, _, _, m0 = ops
    x2 = x.reshape(-1, x.shape[-1])
    if m0.k is None or not sw.applies(x2, q):
        return None
    if row_sums:
        h, sums = sw.int8_swiglu(x2, q, sc.reshape(-1), m0.k, row_sums=True)
        return h.view(*x.shape[:-1], h.shape[-1]), sums
    h = sw.int8_swiglu(x2, q, sc.reshape(-1), m0.k)
    return h.view(*x.shape[:-1], h.shape[-1])


def _cuda_tuning():
    # the tuning the cuda backend's kernels run (spike_linear_fwd's `backend`: its int_mm path only under "cuda")
    try:
        from .._backends import cuda
    except ImportError:
        return None
    return cuda.tuning("cuda")


def _down_row_sums(mlp: nn.Module, x: torch.Tensor):
    """spike_linear_swiglu where SwiGLU mlp's down projection (a SpikeLinear, int8 per channel) at this prefill would
    run the int_mm path on the Hopper kernel with rows the encode reads twice: then gate / up hand it their sums of |h|
    (FUSE_DOWN_ROW_SUMS).  Else None."""
    d = mlp.down_proj
    if not FUSE_DOWN_ROW_SUMS or not FUSE_GATE_UP_SWIGLU or _unfused(x, (d,)):
        return None
    if (type(d) is not SpikeLinear or "forward" in d.__dict__ or d.weight_quant != "int8"
            or d.group_size != d.in_features or not d._runs_on_int8(x)):
        return None
    sw = _spike_linear_triton(x, "spike_linear_swiglu", fp8=False)
    sl, K = None if sw is None else sw.sl, d.in_features
    # h has x's rows, dtype and device: spike_linear's own int_mm routing for it, on the Hopper kernel
    if (sl is None or _cuda_tuning() != "cuda" or not sl.int_mm_routed(x, K, d.out_features)
            or not sw.down_takes_row_sums(K) or not sl.int8_gemm_sm90_applies(x, K)):
        return None
    return sw


def _gate_up_silu_bf16(owner: nn.Module, gate: nn.Module, up: nn.Module, x: torch.Tensor):
    # gate_up_silu's bfloat16 nn.Linear branch: the fused [gate; up] weight (fused_linears' storage) through the Hopper
    # GEMM with silu(g) * u in its epilogue, or None
    K, I = x.shape[-1], gate.out_features
    if (not FUSE_GATE_UP_SWIGLU or x.dtype != torch.bfloat16 or x.numel() // max(K, 1) <= BF16_SWIGLU_MIN_M
            or gate.bias is not None or up.bias is not None or up.out_features != I or I % 128 or K % 8
            or K != gate.in_features or up.in_features != K
            or any(m.weight.dtype != torch.bfloat16 or m.weight.device != x.device for m in (gate, up))):
        return None
    op = _bf16_swiglu_op(x)  # (hopper_gemm.swiglu_op)
    if op is None:
        return None
    w = _fused_state(owner, (gate, up))[1]
    x2 = x.reshape(-1, K)
    return op(x2, w).view(*x.shape[:-1], I)


def _hook_unfuse(owner: nn.Module) -> None:
    if not owner.__dict__.get("_sbops_unfuse_hooked"):
        owner.register_state_dict_pre_hook(_unfuse)
        owner.__dict__["_sbops_unfuse_hooked"] = True


def _unfuse(owner: nn.Module, prefix: str = "", keep_vars: bool = False) -> None:
    """state_dict pre-hook of a module whose projections were fused: every weight, bias and 8-bit buffer of its
    linears that is a row block of a fused tensor gets its own storage again (one group's copy at a time), and the
    fused copies are dropped; the next inference call fuses again.  So a state dict holds tensors that each cover
    their whole storage, as safetensors' save_model / load_model require, and saving one tensor writes only it."""
    dropped = [owner.__dict__.pop(key, None) for key in ("_sbops_fused", "_sbops_fused_spike")]
    if all(d is None for d in dropped):
        return
    del dropped   # the fused copies go as their last views get storage of their own
    with torch.inference_mode(False), torch.no_grad():
        for m in owner.modules():
            if m is owner or not isinstance(m, nn.Linear):
                continue
            for name in ("weight", "bias", "weight_q", "weight_scale"):
                t = m._parameters.get(name, m._buffers.get(name))
                if t is None or t.untyped_storage().nbytes() <= t.numel() * t.element_size():
                    continue
                if isinstance(t, nn.Parameter):
                    t.data = t.data.clone()
                else:
                    m._buffers[name] = t.clone()


# Inference-time fused Triton kernels for the elementwise work around the GEMMs (RMSNorm with its
# residual add, SwiGLU's silu(gate) * up, RoPE of q and k, GLA's relu feature maps and log-decay gate):
# one launch and one pass over memory each
# instead of several torch ops.  Used only on NVIDIA CUDA tensors with Triton present, when no input
# needs a gradient and outside torch.compile tracing; anything else runs the torch code below, which
# is the reference (training, CPU, float64).
# On by default (measured on the H200: an 8192-token prefill chunk of the 7B shape 244 -> 187 ms of GPU
# time, a B=1 decode step 5.97 -> 4.62 ms); SBOPS_FUSE_ELEMENTWISE=0, or setting this to False, turns
# them off.
FUSE_ELEMENTWISE = _platform.env_switch("SBOPS_FUSE_ELEMENTWISE")
_FUSED_DEVICE_TYPES = ("cuda",)  # the tests add "cpu" to run the kernels under the Triton interpreter
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_fused_mods = None  # (fused_norm, fused_rope_swiglu, fused_gla_act) once loaded, False when unavailable


def _load_fused():
    global _fused_mods
    if _fused_mods is None:
        _fused_mods = False
        if _platform.cuda_device_reason() is None and _platform.triton_reason() is None:
            try:
                from .._backends.cuda.triton import fused_gla_act, fused_norm, fused_rope_swiglu
                _fused_mods = (fused_norm, fused_rope_swiglu, fused_gla_act)
            except Exception as e:  # noqa: BLE001  (a broken Triton install must not break the model)
                import warnings
                warnings.warn(f"sbops: fused elementwise kernels unavailable, using torch ops: {type(e).__name__}: {e}")
    return _fused_mods or None


def fused_kernels(*tensors):
    """(fused_norm, fused_rope_swiglu, fused_gla_act) when the fused Triton kernels may serve these tensors (the first
    one decides the device; None entries are ignored), else None: see FUSE_ELEMENTWISE."""
    x = tensors[0]
    if not FUSE_ELEMENTWISE or x.device.type not in _FUSED_DEVICE_TYPES or x.dtype not in _FUSED_DTYPES:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return None
    if torch.compiler.is_compiling():
        return None
    return _fused_mods or _load_fused()


def _fuse(mods):
    sizes = [m.out_features for m in mods]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: the parameters may train later
        w = torch.cat([m.weight.detach() for m in mods])
        for m, view in zip(mods, w.split(sizes)):
            m.weight.data = view
        b = None
        if any(m.bias is not None for m in mods):
            b = torch.cat([m.weight.new_zeros(n) if m.bias is None else m.bias.detach() for m, n in zip(mods, sizes)])
            for m, view in zip(mods, b.split(sizes)):
                if m.bias is not None:
                    m.bias.data = view
    ptrs = tuple(m.weight.data_ptr() for m in mods) + tuple(0 if m.bias is None else m.bias.data_ptr() for m in mods)
    return ptrs, w, b, sizes


class RMSNorm(nn.Module):
    """RMSNorm over the last dim in fla's order (fla.modules.RMSNorm, SpikingBrain's released code).

    forward(x, residual=None, prenorm=False, residual_in_fp32=False):
      h = float32(x) (+ float32(residual));  y = h / sqrt(mean(h^2) + eps) * float32(weight) (+ bias),
      computed in float32 and cast to x's dtype once at the end (Qwen2/HF casts before the weight
      multiply; in bfloat16 that differs by an ulp on about a quarter of the elements).
      prenorm=True returns (y, h) with h in residual's dtype (float32 if residual is None and
      residual_in_fp32, else x's dtype): the pre-norm residual stream of a block.  y is normalised
      from the float32 sum, not from its rounded copy.
    forward(x, residual, round_sum=True): h is rounded to residual's dtype first and y normalises that
      rounded sum, as `norm(residual + x)` in two torch ops would (same-dtype operands): a decoder
      block's last residual add folded into the next block's input norm, one launch instead of two.
    At inference on a GPU (see FUSE_ELEMENTWISE) this runs as one fused Triton launch with the same
    semantics (backends/cuda/triton/fused_norm.py: only the float32 sum-of-squares order differs).
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True, bias: bool = False):
        super().__init__()
        self.dim = dim
        check_arg("RMSNorm", "eps", eps, lo=0, lo_open=True)
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0 (as built), e.g. after to_empty() of a model made on the meta device."""
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, prenorm: bool = False,
                residual_in_fp32: bool = False, round_sum: bool = False):
        dim = getattr(self, "dim", None)  # (None: a module pickled before dim was stored)
        if x.dim() == 0 or (dim is not None and x.shape[-1] != dim):
            raise ValueError(f"RMSNorm: x must be [..., dim={dim}], got {tuple(x.shape)}")
        k = fused_kernels(x, residual, self.weight, self.bias)
        if (k is not None and k[0].supports(x.shape[-1] if x.dim() else 0)
                and (residual is None or (residual.shape == x.shape and residual.dtype in _FUSED_DTYPES))):
            return k[0].rms_norm(x, self.weight, self.eps, residual, prenorm, residual_in_fp32, bias=self.bias,
                                 round_sum=round_sum)
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # float32, or float64 for references
        h = x.to(ct)
        if residual is not None:
            if residual.shape != x.shape:
                raise ValueError(f"RMSNorm: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
            h = h + residual.to(ct)
            if round_sum:
                h = h.to(residual.dtype).to(ct)
        elif round_sum:
            raise ValueError("RMSNorm: round_sum=True rounds x + residual to residual's dtype: it needs a residual")
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(ct)
        if self.bias is not None:
            y = y + self.bias.to(ct)
        y = y.to(x.dtype)
        if not prenorm:
            return y
        res_dtype = residual.dtype if residual is not None else (ct if residual_in_fp32 else x.dtype)
        return y, h.to(res_dtype)

    def extra_repr(self) -> str:
        return f"{getattr(self, 'dim', '')}, eps={self.eps}"


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """(apply_rope(q, cos, sin), apply_rope(k, cos, sin)); at inference on a GPU one fused launch
    (bit-exact with the torch code) when q [B, T, H, D], k [B, T, HKV, D] and cos / sin [.., T, 1, D]."""
    kern = fused_kernels(q, k, cos, sin)
    if (kern is not None and q.dim() == 4 and k.dim() == 4 and q.dtype == k.dtype and q.shape[-1] % 2 == 0
            and cos.dim() == 4 and cos.shape[2] == 1 and sin.shape == cos.shape):
        return kern[1].rope(q, k, cos, sin)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """F.silu(gate) * up; at inference on a GPU one fused launch reading gate / up in place (float32
    math rounded once: within an ulp of the torch code, which rounds silu(gate) first)."""
    kern = fused_kernels(gate, up)
    if kern is not None and gate.shape == up.shape and gate.dtype == up.dtype and gate.dim() > 0:
        return kern[1].silu_mul(gate, up)
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """Qwen2's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases.

    down_quant=False keeps down_proj a plain nn.Linear even when spike_k / weight_quant apply to
    gate/up (SpikingBrain's W8ASpike: its swiglu_linear reads down_proj's float weight directly).
    down_weight_quant="int8_channel" makes down_proj a SpikeLinear with int8 weights and one scale per output
    channel (weight_quant="int8", group_size=intermediate_size) whatever weight_quant is.  With spike_k set its
    inference runs sbops.spike_linear: its input, a SwiGLU product, has ~2.6% of its counts past e4m3's exact 16
    at k = 3 but ~2e-7 past int8's 127, so on CUDA its prefill takes one int8 count plane on the vendor int8 GEMM
    instead of two e4m3 planes (without spike_k the layer fake-quantises its weight, as weight_quant="int8").
    """

    __getstate__ = getstate_without_fused

    def __init__(self, hidden_size: int, intermediate_size: int, spike_k: Optional[float] = None,
                 weight_quant: Optional[str] = None, down_quant: bool = True,
                 down_weight_quant: Optional[str] = None):
        super().__init__()
        if down_weight_quant not in DOWN_WEIGHT_QUANTS:
            raise ValueError(f"SwiGLU: down_weight_quant must be one of {DOWN_WEIGHT_QUANTS}, got {down_weight_quant!r}")
        if down_weight_quant is not None and not down_quant:
            raise ValueError("SwiGLU: down_weight_quant needs down_quant=True (down_quant=False keeps down_proj a "
                             "plain nn.Linear)")
        self.gate_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        self.up_proj = make_linear(hidden_size, intermediate_size, False, spike_k, weight_quant)
        if down_weight_quant == "int8_channel":
            self.down_proj = make_linear(intermediate_size, hidden_size, False, spike_k, "int8_channel")
        else:
            self.down_proj = (make_linear(intermediate_size, hidden_size, False, spike_k, weight_quant) if down_quant
                              else nn.Linear(intermediate_size, hidden_size, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sw = _down_row_sums(self, x)
        h = gate_up_silu(self, self.gate_proj, self.up_proj, x, row_sums=sw is not None)
        if isinstance(h, tuple):   # h and its sums of |h| per tile: down's thresholds from them
            h, sums = h
            d = self.down_proj
            y = sw.down_from_row_sums(h.reshape(-1, h.shape[-1]), *d._int8_operands(), d.k, d.bias, sums)
            if y is not None:
                return y.view(*h.shape[:-1], y.shape[-1])
        if h is None:
            gu = fused_linears(self, (self.gate_proj, self.up_proj), x)
            gate, up = gu if gu is not None else (self.gate_proj(x), self.up_proj(x))
            h = silu_mul(gate, up)
        return linear_module(self.down_proj, h)


# RoPE lives in rope.py (imported here last: it uses check_arg); these names stay importable from common
from .rope import RotaryEmbedding, apply_rope  # noqa: E402,F401
