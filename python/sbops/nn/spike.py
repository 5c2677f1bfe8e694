"""SpikeLinear: a linear layer whose input is spike-coded (SpikingBrain's adaptive-threshold scheme)."""
from __future__ import annotations

import math
import numbers

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import sbops

WEIGHT_QUANTS = ("int8", "int8_static", "fp8")


class WeightQuantizer(nn.Module):
    """Fixed (checkpoint) int8 weight scales, as SpikingBrain's released W8ASpike `Quantizer`.

    `scales` [out, in / group_size, 1] (buffer; the state-dict name `<linear>.weight_quantizer.scales`
    matches the release).  forward(w) = round(w / s) * s per group of `group_size` input channels,
    computed in the weight's dtype exactly as the released code does (no clamp: the scales are
    whatever the checkpoint holds, e.g. GPTQ's, and are never recomputed).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"WeightQuantizer: in_features={in_features} must be a multiple of "
                             f"group_size={group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size, 1))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.reshape(self.out_features, -1, self.group_size)
        w = (w / self.scales).round() * self.scales
        return w.reshape(self.out_features, self.in_features).to(weight.dtype)


def weight_key(w: torch.Tensor):
    """What identifies a weight's current values for the caches of its 8-bit copy: storage, in-place
    version and device.  Inference tensors (made under torch.inference_mode) keep no version counter,
    and `p.data.copy_(...)` does not bump it: load_state_dict invalidates the caches itself
    (SpikeLinear's epoch), other such writes need sbops.nn.clear_weight_caches(model)."""
    try:
        version = w._version
    except RuntimeError:
        version = -1
    return (w.data_ptr(), version, w.device)


def clear_weight_caches(model: torch.nn.Module) -> None:
    """Drop the cached 8-bit weight copies of every SpikeLinear in `model` (and the fused copies of
    their owners); the next forward rebuilds them.  load_state_dict does this by itself; call it
    after writing weights in a way that leaves no trace in the tensor's version counter
    (`p.data.copy_(...)`, in-place writes under torch.inference_mode)."""
    for m in model.modules():
        if isinstance(m, SpikeLinear):
            m._weights_epoch += 1
        m.__dict__.pop("_sbops_fused_spike", None)


def drop_float_weights(model: torch.nn.Module) -> int:
    """For inference only: every SpikeLinear in `model` that runs on its 8-bit weight at inference (k set,
    weight_quant "fp8", or "int8" over whole groups) keeps that weight and its scales as the buffers
    `weight_q` / `weight_scale` and drops its float weight (`weight` becomes None).  For the 7B fp8 model
    the weights shrink from the bf16 masters plus their 8-bit copies (20.3 GiB) to 8.1 GiB.  Returns the bytes
    of float weights dropped (the caching allocator keeps them until torch.cuda.empty_cache()).

    Afterwards those layers have no weight to train or to export: the forward runs sbops.spike_linear on the
    8-bit weight (a float64 input, or one that needs a gradient, multiplies its dequantised values instead),
    the state dict holds weight_q / weight_scale in place of weight, and save_pretrained refuses the model.
    Load checkpoints (and convert dtypes) first; `.to(device)` moves the 8-bit buffers, a dtype conversion
    leaves them as they are.  Other layers (plain nn.Linear, "int8_static", group-misaligned "int8") keep
    their float weights."""
    freed = 0
    for m in model.modules():
        if isinstance(m, SpikeLinear):
            freed += m.drop_float_weight()
        m.__dict__.pop("_sbops_fused_spike", None)  # fused copies are rebuilt from the 8-bit buffers
    return freed


def _straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """x_hat's values exactly (x - x.detach() is an exact zero), with d/dx = identity."""
    return x_hat.detach() + (x - x.detach())


def spike_fake_quant_released(x: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """W8ASpike's `dynamic_spikes` coding over the last dim, in the released order: vth =
    clamp(mean|x| (in x's dtype) / k, 1e-5, 1e4) in float32, x_hat = round(x / vth) * vth cast to
    x's dtype.  (sbops.spike_quant takes the mean in float32; the two differ only when x is
    bfloat16/float16.)  The gradient passes straight through."""
    vth = (x.abs().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
    x_hat = ((x / vth).round() * vth).to(x.dtype)
    return _straight_through(x, x_hat)


def int8_fake_quant_per_row(x: torch.Tensor) -> torch.Tensor:
    """W8ASpike's `quantize_sym(x, 8)` over the last dim (per token and head for [.., H, D] k/v):
    scale = clamp(amax|x| / 127, 1e-5, 1e4) in float32, x_hat = clamp(round(x / scale), -128, 127)
    * scale cast to x's dtype.  Straight-through gradient."""
    scale = (x.abs().amax(-1, keepdim=True).float() / 127.0).clamp(1e-5, 1e4)
    x_hat = ((x / scale).round().clamp(-128, 127) * scale).to(x.dtype)
    return _straight_through(x, x_hat)


def _check_group_size(fn: str, group_size) -> None:
    if not (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 1):
        raise ValueError(f"{fn}: group_size must be an int >= 1, got {group_size!r}")


def quantize_weight_int8(weight: torch.Tensor, group_size: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of `weight` [out, in] in groups of `group_size` input channels.

    Each (row, group) gets scale = max|w| / 127 (a last, shorter group when in % group_size != 0).
    Returns (q int8 [out, in], scales float32 [out, ceil(in / group_size)]); w ~= q * scale.
    """
    _check_group_size("quantize_weight_int8", group_size)
    out_f, in_f = weight.shape
    groups = -(-in_f // group_size)
    w = F.pad(weight.detach().float(), (0, groups * group_size - in_f)).view(out_f, groups, group_size)
    scales = (w.abs().amax(dim=-1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.view(out_f, groups * group_size)[:, :in_f].contiguous(), scales


def dequantize_weight_int8(q: torch.Tensor, scales: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Inverse of quantize_weight_int8: float32 [out, in]."""
    _check_group_size("dequantize_weight_int8", group_size)
    out_f, in_f = q.shape
    groups = scales.shape[1]
    if scales.dim() != 2 or scales.shape[0] != out_f or groups != -(-in_f // group_size):
        raise ValueError(f"dequantize_weight_int8: scales must be [out={out_f}, ceil(in / group_size) = "
                         f"{-(-in_f // group_size)}] for q {tuple(q.shape)} and group_size={group_size}, got "
                         f"{tuple(scales.shape)} (the group_size the weight was quantised with?)")
    w = F.pad(q.float(), (0, groups * group_size - in_f)).view(out_f, groups, group_size) * scales[..., None]
    return w.view(out_f, groups * group_size)[:, :in_f]


class SpikeLinear(nn.Linear):
    """y = vth * (s @ W^T) + b, with s = round(x / vth) the integer spike counts of the input.

    The input is coded with `sbops.spike_quant(x, k)`: per token (over the channel dim)
    vth = clamp(mean|x| / k, 1e-5, 1e4) and x_hat = round(x / vth) * vth, so F.linear(x_hat, W)
    equals vth * (s @ W^T) exactly; training passes the gradient straight through the rounding.
    `k=None` leaves the input uncoded (then only weight quantisation applies).

    weight_quant="int8": the weight is fake-quantised on the fly to symmetric int8 with one scale
    per `group_size` input channels of each output row (quantize_weight_int8); the gradient passes
    straight through to the float weight, so the layer stays trainable. `int8_weight()` gives the
    int8 tensor and scales for export.
    weight_quant="int8_static": the scales are fixed buffers loaded with the weights
    (`weight_quantizer.scales` [out, in / group_size, 1], SpikingBrain's W8ASpike checkpoints) and
    applied as round(w / s) * s (WeightQuantizer); never recomputed from the weight.  The input is
    then coded exactly as W8ASpike's QuantLinear does (spike_fake_quant_released: the mean |x| is
    taken in x's dtype before going to float32; sbops.spike_quant averages in float32, which
    differs in bfloat16 by the rounding of vth).

    weight_quant="fp8": float8_e4m3fn weights with one float32 scale per output channel
    (sbops.quantize_weight(w, dtype=torch.float8_e4m3fn)), fake-quantised in training like "int8".  At
    inference it runs `sbops.spike_linear` on them: on Hopper the fp8 tensor cores (counts |c| <= 16 are
    exact in e4m3; a second e4m3 plane holds counts to 264, an exact fix-up the rare rest).

    At inference (no gradient needed) with k set and weight_quant="int8", the layer runs
    `sbops.spike_linear` on the cached int8 weight: the counts are encoded once to int8 and multiplied on
    the int8 tensor cores on CUDA; it equals the fake-quant path up to float rounding.

    Subclasses nn.Linear: same parameters (`weight`, `bias`), so checkpoints load either way.
    """

    _weights_epoch = 0   # bumped where a weight write leaves no trace in its version counter (keys the 8-bit copies)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, k: Optional[float] = 3.0,
                 weight_quant: Optional[str] = None, group_size: int = 128, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if weight_quant is not None and weight_quant not in WEIGHT_QUANTS:
            raise ValueError(f"SpikeLinear: weight_quant must be None or one of {WEIGHT_QUANTS}, got {weight_quant!r}")
        if k is not None and not (isinstance(k, numbers.Real) and not isinstance(k, bool) and 0 < k < math.inf):
            raise ValueError(f"SpikeLinear: k must be a positive finite number (or None to disable spike coding), "
                             f"got {k!r}")
        _check_group_size("SpikeLinear", group_size)
        self.k = k
        self.weight_quant = weight_quant
        self.group_size = group_size
        if weight_quant == "int8_static":
            self.weight_quantizer = WeightQuantizer(in_features, out_features, group_size)

    def int8_weight(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(q int8 [out, in], scales float32 [out, groups]) of the current weight; with weight_quant="fp8",
        (q float8_e4m3fn [out, in], scales float32 [out]).  After drop_float_weight: the kept buffers."""
        if self.weight is None:
            return self.weight_q, self.weight_scale
        if self.weight_quant == "fp8":
            return sbops.quantize_weight(self.weight.detach(), None, dtype=torch.float8_e4m3fn)
        if self.weight_quant == "int8_static":
            s = self.weight_quantizer.scales
            w = self.weight.detach().reshape(self.out_features, -1, self.group_size)
            q = (w / s).round()
            if bool(((q > 127) | (q < -128)).any()):  # one host read: an export, not the forward
                raise ValueError("SpikeLinear.int8_weight: the weight is outside the int8 range of its fixed "
                                 "(int8_static) scales; the forward, which does not clamp, cannot be exported")
            return q.to(torch.int8).reshape(self.out_features, self.in_features), s[..., 0].float()
        return quantize_weight_int8(self.weight, self.group_size)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses: the float weight, or its int8 round trip (straight-through)."""
        if self.weight_quant is None:
            return self.weight
        if self.weight is None:  # only the 8-bit weight is left (drop_float_weight): float32, no gradient
            q, sc = self.weight_q, self.weight_scale
            if self.weight_quant == "fp8":
                return q.float() * sc[:, None]
            return dequantize_weight_int8(q, sc, self.group_size)
        if self.weight_quant == "int8_static":
            w_q = self.weight_quantizer(self.weight)
        elif self.weight_quant == "fp8":
            q, sc = self.int8_weight()
            w_q = (q.float() * sc[:, None]).to(self.weight.dtype)
        else:
            w_q = dequantize_weight_int8(*self.int8_weight(), self.group_size).to(self.weight.dtype)
        return _straight_through(self.weight, w_q)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.weight is None and prefix + "weight" in state_dict:  # not silently ignored, even when not strict
            error_msgs.append(f"{prefix}weight: this SpikeLinear's float weight was dropped (sbops.nn."
                              "drop_float_weights) and it holds weight_q / weight_scale; load float checkpoints "
                              "before dropping")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # a load under torch.inference_mode leaves no trace in the weight's version counter
        self._weights_epoch += 1

    def drop_float_weight(self) -> int:
        """Keep only the 8-bit weight and scales (buffers weight_q, weight_scale) and drop the float weight, where
        this layer runs on its 8-bit weight at inference (see sbops.nn.drop_float_weights); returns the bytes
        dropped (0 when there is nothing to drop)."""
        if self.weight is None or not self._has_8bit_path():
            return 0
        with torch.inference_mode(False), torch.no_grad():  # plain tensors (the cached copy may be an inference one)
            q, sc = self._int8_operands()
            q, sc = (t.clone() if t.is_inference() else t for t in (q, sc))
        freed = self.weight.numel() * self.weight.element_size()
        self._float_dtype = self.weight.dtype
        del self.weight
        self.register_parameter("weight", None)
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", sc)
        self.__dict__.pop("_w8", None)
        self.__dict__.pop("_w8_key", None)
        self._weights_epoch += 1
        return freed

    @property
    def float_dtype(self) -> torch.dtype:
        """The dtype of the float weight, or of the one dropped (following later dtype conversions)."""
        return self.weight.dtype if self.weight is not None else self._float_dtype

    def _weight_key(self):
        return weight_key(self.weight if self.weight is not None else self.weight_q)

    def _apply(self, fn, recurse=True):
        # after drop_float_weight: device moves apply to the 8-bit buffers, dtype conversions do not (they would
        # turn float8 weights and float32 scales into the model's dtype)
        if self.weight is not None:
            return super()._apply(fn, recurse)
        kept = {n: self._buffers.pop(n) for n in ("weight_q", "weight_scale")}
        try:
            super()._apply(fn, recurse)
        finally:
            for n, t in kept.items():
                probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
                self._buffers[n] = fn(t) if probe.dtype == t.dtype else t.to(device=probe.device)
            self._float_dtype = fn(torch.empty(0, dtype=self._float_dtype)).dtype
        return self

    def reset_parameters(self) -> None:
        if getattr(self, "weight", 0) is None:
            raise ValueError("SpikeLinear.reset_parameters: the float weight was dropped "
                             "(sbops.nn.drop_float_weights); only its 8-bit copy is left")
        super().reset_parameters()

    def _int8_operands(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight and scales for sbops.spike_linear, cached until the weight changes."""
        if self.weight is None:
            return self.weight_q, self.weight_scale
        def make():
            q, s = self.int8_weight()
            return q.contiguous(), s.to(torch.float32).contiguous()

        if torch.compiler.is_compiling():
            # a graph cannot key a cache on data pointers: the 8-bit copy is made inside it on every call
            # (sbops.nn.drop_float_weights keeps only the 8-bit weights and avoids that)
            return make()
        key = weight_key(self.weight) + (self._weights_epoch,)
        if getattr(self, "_w8_key", None) != key:
            self._w8, self._w8_key = make(), key
        return self._w8

    def _has_8bit_path(self) -> bool:
        # sbops' own coding with an 8-bit format whose groups are whole: inference may run the W8ASpike op
        return self.k is not None and (self.weight_quant == "fp8" or (self.weight_quant == "int8" and
                                                                       self.in_features % self.group_size == 0))

    def __getstate__(self):
        # the cached 8-bit copy is rebuilt on the next inference call; pickling / deepcopy leave it out
        # (torch cannot pickle a float8 tensor)
        state = dict(self.__dict__)
        state.pop("_w8", None)
        state.pop("_w8_key", None)
        return state

    def _runs_on_int8(self, x: torch.Tensor) -> bool:
        # inference with sbops' own coding and whole groups: the W8ASpike op (int8 tensor cores on CUDA).
        # Training keeps the fake-quant path, whose gradient reaches the float weight.
        # float64 inputs keep the float64 fake-quant path (the kernel codes and accumulates in float32)
        return (self._has_8bit_path() and x.dtype != torch.float64
                and (self.weight is None or x.dtype == self.weight.dtype)
                and not (torch.is_grad_enabled() and (x.requires_grad or (self.weight is not None
                                                                           and self.weight.requires_grad))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"SpikeLinear: x must be [..., in_features={self.in_features}], got {tuple(x.shape)}")
        if self.weight is not None and x.dtype != self.weight.dtype:  # as nn.Linear (the 8-bit path would not say)
            raise TypeError(f"SpikeLinear: x is {x.dtype} but the layer's weight is {self.weight.dtype}; convert "
                            f"one to the other (e.g. model.to({x.dtype}))")
        if self._runs_on_int8(x):
            q, s = self._int8_operands()
            return sbops.spike_linear(x, q, s, self.k, self.bias, None if self.weight_quant == "fp8" else self.group_size)
        if self.k is not None and self.weight_quant == "int8_static":
            x = spike_fake_quant_released(x, self.k)  # W8ASpike's QuantLinear: vth from mean|x| in x's dtype
        elif self.k is not None:
            x = sbops.spike_quant(x, self.k)
        if self.weight is None:  # the dequantised 8-bit weight, in x's dtype
            b = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.effective_weight().to(x.dtype), b)
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, weight_quant={self.weight_quant}"
