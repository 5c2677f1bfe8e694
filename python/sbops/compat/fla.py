"""fla (flash-linear-attention) API on sbops: chunk_gla, fused_recurrent_gla, fused_chunk_gla,
chunk_simple_gla and RMSNorm, with fla's signatures and semantics.

Math (per sequence and head):  S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  o_t = scale * q_t S_t;
scale defaults to K ** -0.5 (fused_chunk_gla: scale=-1 means the default).  Every function
returns `(o, final_state or None)`; o has q's layout, final_state is `[N, H, K, V]` float32 at
the query-head count H, as fla returns it (N = B, or the number of sequences with cu_seqlens).

Layouts: head_first=False (default here, as in current fla) means `[B, T, H, D]`; head_first=True
means `[B, H, T, D]` (fla <= 0.1's default; `sbops.compat.fla_v0` defaults to it).  cu_seqlens
(int32/int64 `[N+1]`, B == 1, sequence-first only) packs variable-length sequences.  Positional
arguments follow fla 0.6 (state_v_first before cu_seqlens, then cu_seqlens_cpu); head_first comes
last.  state_v_first=True: initial_state and the final state are `[N, H, V, K]`.  cu_seqlens_cpu
(fla's host copy of cu_seqlens) is accepted and checked, never needed: nothing is read back.

Grouped heads.  fla wants k, v, g at H heads, so GQA model code repeats them (SpikingBrain's
released code: `repeat_kv` over 4 KV heads to 28).  sbops.linear_attn is GQA-native: with G-fold
repeated inputs it can keep one state per KV head (G times less state and work).  Whether the
inputs are repeated is a property of their values, so:
  * mode "check" compares the heads (an exact equality test, a few reads of k/v/g; on a GPU it
    reads one flag back, i.e. synchronises once per call) and runs GQA-native only when every
    group is bitwise equal; otherwise it runs at H heads.  Results are identical either way.
    Detection is skipped (H heads) when autograd records the call (grad mode on and k, v, g or
    initial_state requiring grad): equal heads may still be separate computations, each owed its
    own gradient, which a GQA-native run cannot give.
  * mode "off" always runs at H heads (no test).
  * "auto" (default) = "check" on CPU, "off" on other devices, so a default GPU call never syncs.
  * `with kv_groups(G):` promises G-fold repetition: GQA-native without a host read; the promise
    is verified on the device with torch._assert_async (a broken promise is a device-side error,
    never a silently different result).  Under autograd the whole gradient of each group goes to
    its first head (the others get zero), which is right when the repetition comes from
    repeat_kv / repeat_interleave / expand upstream (they sum the copies' gradients).
  k/v/g may also be passed at HKV < H heads directly (an sbops extension): GQA-native as is.

Not supported (clear errors): fused_recurrent_gla's gv (per-value-channel decay), cu_seqlens
together with head_first=True (fla refuses it too).  fused_recurrent_gla's reverse=True is
exact: it runs the same op on time-reversed sequences.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Optional, Tuple

import torch

import sbops

from ..nn.common import RMSNorm as _RMSNorm

_MODES = ("auto", "check", "off")
_mode = "auto"
_promised_groups: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("sbops_fla_kv_groups", default=None)
# the same promise as a plain module value, read only while torch.compile traces: Dynamo cannot trace
# ContextVar.get, and it guards on a module value (a call compiled inside kv_groups(G) recompiles outside
# it).  Not per thread: a promise from another thread's kv_groups could show during a trace, which the
# promise's device-side check turns into an error, never a silently different result.
_traced_promise: Optional[int] = None


def _promise() -> Optional[int]:
    """kv_groups' promise in force for this call (None: none)."""
    return _traced_promise if torch.compiler.is_compiling() else _promised_groups.get()


def set_repeat_detection(mode: str) -> None:
    """How repeated k/v/g heads are detected: "auto" (default), "check" or "off" (see module doc)."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"set_repeat_detection: mode must be one of {_MODES}, got {mode!r}")
    _mode = mode


@contextlib.contextmanager
def kv_groups(groups: int):
    """Promise that k, v, g (and initial_state) arrive G-fold repeated over heads (head h is a copy
    of head G * (h // G)), as `repeat_kv` / `repeat_interleave(G, dim=head)` produce.

    The call then runs with one KV head per group; under autograd each group's whole gradient goes
    to its first head, so the repetition must come from repeat / repeat_interleave / expand
    upstream (which sum the copies' gradients), not from heads that merely hold equal values."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"kv_groups: groups must be a positive int, got {groups!r}")
    global _traced_promise
    token, before = _promised_groups.set(groups), _traced_promise
    _traced_promise = groups
    try:
        yield
    finally:
        _promised_groups.reset(token)
        _traced_promise = before


def _grouped(t: torch.Tensor, dim: int, G: int) -> torch.Tensor:
    return t.unflatten(dim, (t.shape[dim] // G, G))


def _repeat_flag(t: torch.Tensor, dim: int, G: int) -> torch.Tensor:
    """0-d bool on t's device: every group of G heads along `dim` is bitwise equal to its first."""
    s = _grouped(t, dim, G)
    return (s == s.narrow(dim + 1, 0, 1)).all()


def _divisors_desc(n: int):
    return [d for d in range(n, 1, -1) if n % d == 0]


def _find_groups(H: int, heads_at_2, states) -> int:
    """The largest G > 1 such that every tensor is G-fold repeated over its head dim, else 1."""
    promised = _promise()
    if promised is None and torch.is_grad_enabled() and any(t.requires_grad for t in (*heads_at_2, *states)):
        return 1   # not detected under autograd: equal heads may each be owed their own gradient
    if promised is not None:
        if H % promised:
            raise ValueError(f"kv_groups({promised}): the head count {H} is not a multiple of it")
        if promised > 1:
            flags = [_repeat_flag(t, 2, promised) for t in heads_at_2] + [_repeat_flag(s, 1, promised) for s in states]
            ok = torch.stack(flags).all()
            if ok.device.type == "cpu" and not torch.compiler.is_compiling():  # a host read, not traceable
                if not bool(ok):
                    raise ValueError(f"kv_groups({promised}) was promised but k/v/g/initial_state are not "
                                     f"{promised}-fold repeated over heads")
            else:
                torch._assert_async(ok, f"sbops.compat.fla: kv_groups({promised}) promised but inputs differ")
        return promised
    mode = _mode
    if mode == "auto":
        mode = "check" if all(t.device.type == "cpu" for t in heads_at_2) else "off"
    if mode == "off" or torch.compiler.is_compiling():
        return 1
    for G in _divisors_desc(H):
        # Cheap rejection on the first time step before reading everything.
        if not all(bool(_repeat_flag(t.narrow(1, 0, min(1, t.shape[1])), 2, G)) for t in heads_at_2):
            continue
        if all(bool(_repeat_flag(t, 2, G)) for t in heads_at_2) and all(bool(_repeat_flag(s, 1, G)) for s in states):
            return G
    return 1


def _reverse_index(T: int, cu_seqlens: Optional[torch.Tensor], device) -> torch.Tensor:
    """Index that reverses time inside each sequence (the whole T without cu_seqlens); no host sync."""
    i = torch.arange(T, device=device)
    if cu_seqlens is None:
        return T - 1 - i
    # clamped into [0, T] and made non-decreasing, as the kernels treat offsets, so that unchecked
    # (GPU) offsets never index out of bounds
    cu = torch.cummax(cu_seqlens.to(device=device, dtype=torch.int64).clamp(0, T), 0).values
    seg = torch.searchsorted(cu[1:], i, right=True).clamp_(max=cu.numel() - 2)
    return (cu[seg] + cu[seg + 1] - 1 - i).clamp_(0, max(T - 1, 0))


def _check_cu_seqlens_cpu(fn: str, cu_seqlens, cu_seqlens_cpu) -> None:
    """fla's cu_seqlens_cpu: a host copy of cu_seqlens (fla reads it instead of syncing).  sbops
    reads no offsets back on a GPU, so it is only checked: its shape always, its values against
    cu_seqlens where data checks run (see sbops.set_data_checks)."""
    if cu_seqlens_cpu is None:
        return
    if cu_seqlens is None:
        raise ValueError(f"{fn}: cu_seqlens_cpu is a host copy of cu_seqlens; pass cu_seqlens too")
    if not isinstance(cu_seqlens_cpu, torch.Tensor) or cu_seqlens_cpu.device.type != "cpu" \
            or cu_seqlens_cpu.shape != cu_seqlens.shape:
        got = (f"{tuple(cu_seqlens_cpu.shape)} on {cu_seqlens_cpu.device}" if isinstance(cu_seqlens_cpu, torch.Tensor)
               else type(cu_seqlens_cpu).__name__)
        raise ValueError(f"{fn}: cu_seqlens_cpu must be a CPU tensor shaped like cu_seqlens "
                         f"{tuple(cu_seqlens.shape)}, got {got}")
    if sbops._validate.checking_data(cu_seqlens) and not torch.equal(cu_seqlens_cpu.long(), cu_seqlens.long().cpu()):
        raise ValueError(f"{fn}: cu_seqlens_cpu {cu_seqlens_cpu.tolist()} differs from cu_seqlens {cu_seqlens.tolist()}")


def _gla(fn: str, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, head_first,
         reverse: bool = False, state_v_first: bool = False,
         cu_seqlens_cpu=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if cu_seqlens is not None and head_first:
        raise ValueError(f"{fn}: cu_seqlens needs the sequence-first layout [1, T, H, D]; got head_first=True")
    if not isinstance(state_v_first, bool):
        raise TypeError(f"{fn}: state_v_first must be a bool, got {type(state_v_first).__name__} (fla 0.6's "
                        f"positional order: ..., output_final_state, state_v_first, cu_seqlens, cu_seqlens_cpu; "
                        f"pass cu_seqlens by keyword)")
    _check_cu_seqlens_cpu(fn, cu_seqlens, cu_seqlens_cpu)
    if state_v_first and initial_state is not None and isinstance(initial_state, torch.Tensor):
        initial_state = initial_state.transpose(-1, -2)   # [N, H, V, K] -> [N, H, K, V]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{fn}: {name} must be a 4-D tensor "
                             f"({'[B, H, T, D]' if head_first else '[B, T, H, D]'}), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if head_first:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if g is not None:
            g = g.transpose(1, 2)
    B, T, H, K = q.shape
    HK = k.shape[2]
    if H % HK or v.shape[2] != HK or (g is not None and g.shape[2] != HK):
        raise ValueError(f"{fn}: k, v (and g) must have the same head count, dividing q's H={H}; got "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}" + ("" if g is None else f", g {tuple(g.shape)}"))
    if g is not None and g.dtype not in (torch.float32, q.dtype):
        g = g.float()
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    h0 = None
    if initial_state is not None:
        if initial_state.dim() != 4 or initial_state.shape[0] != N or initial_state.shape[1] not in (H, HK) \
                or initial_state.shape[2:] != (K, v.shape[-1]):
            want, got = (f"[N, H, V, K] = [{N}, {H}, {v.shape[-1]}, {K}] (state_v_first=True)", initial_state.transpose(-1, -2)) \
                if state_v_first else (f"[N, H, K, V] = [{N}, {H}, {K}, {v.shape[-1]}]", initial_state)
            raise ValueError(f"{fn}: initial_state must be {want}, got {tuple(got.shape)}")
        h0 = initial_state.float()
    if reverse:
        sbops._validate.cu_seqlens(f"compat.fla.{fn}", cu_seqlens, B, T, q.device)   # before indexing with it
        idx = _reverse_index(T, cu_seqlens, q.device)
        q, k, v = (t.index_select(1, idx) for t in (q, k, v))
        if g is not None:
            g = g.index_select(1, idx)
    if HK == H:
        G = _find_groups(H, [t for t in (k, v, g) if t is not None], [] if h0 is None else [h0])
        if G > 1:
            k, v = _grouped(k, 2, G).select(3, 0), _grouped(v, 2, G).select(3, 0)
            g = None if g is None else _grouped(g, 2, G).select(3, 0)
            HK = H // G
    if (h0 is not None and h0.shape[1] != HK and _promise() is None and torch.is_grad_enabled()
            and h0.requires_grad):
        # k/v/g came at HK < H heads, initial_state at H: each of its heads is owed its own gradient,
        # so run at H heads (repeat_interleave sums the k/v/g gradients back over each group)
        G = H // HK
        k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
        g = None if g is None else g.repeat_interleave(G, dim=2)
        HK = H
    if h0 is not None and h0.shape[1] != HK:
        G = h0.shape[1] // HK
        if _promise() is None and h0.device.type == "cpu" and not bool(_repeat_flag(h0, 1, G)):
            raise ValueError(f"{fn}: k/v have {HK} heads but initial_state's {h0.shape[1]} heads are not "
                             f"{G}-fold repeated, so it has no {HK}-head form")
        h0 = _grouped(h0, 1, G).select(2, 0)
    if h0 is not None:
        h0 = h0.contiguous()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = None if g is None else g.contiguous()
    o, ht = sbops.linear_attn(q, k, v, g, scale=scale, initial_state=h0,
                              output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if reverse:
        o = o.index_select(1, idx)
    if ht is not None and ht.shape[1] != H:
        ht = ht.repeat_interleave(H // ht.shape[1], dim=1)
    if ht is not None and state_v_first:
        ht = ht.transpose(-1, -2).contiguous()
    if head_first:
        o = o.transpose(1, 2).contiguous()
    return o, ht


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
              initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
              state_v_first: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
              cu_seqlens_cpu: Optional[torch.Tensor] = None, head_first: bool = False):
    """fla.ops.gla.chunk_gla: q, k [B, T, H, K], v [B, T, H, V], g [B, T, H, K] log-decays."""
    return _gla("chunk_gla", q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, head_first,
                state_v_first=state_v_first, cu_seqlens_cpu=cu_seqlens_cpu)


def fused_chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float = -1,
                    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                    state_v_first: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                    cu_seqlens_cpu: Optional[torch.Tensor] = None, head_first: bool = False):
    """fla.ops.gla.fused_chunk_gla: as chunk_gla; scale=-1 (or None) means K ** -0.5."""
    scale = None if scale is None or scale == -1 else scale
    return _gla("fused_chunk_gla", q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, head_first,
                state_v_first=state_v_first, cu_seqlens_cpu=cu_seqlens_cpu)


def fused_recurrent_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: Optional[torch.Tensor] = None,
                        gv: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                        initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                        reverse: bool = False, state_v_first: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                        cu_seqlens_cpu: Optional[torch.Tensor] = None, head_first: bool = False):
    """fla.ops.gla.fused_recurrent_gla: gk [B, T, H, K] (or None: no decay); reverse=True runs the
    recurrence from the last token to the first.  gv is not supported."""
    if gv is not None:
        raise NotImplementedError("fused_recurrent_gla: gv (a per-value-channel decay) is not supported by sbops; "
                                  "only gk (per-key-channel decay) is")
    return _gla("fused_recurrent_gla", q, k, v, gk, scale, initial_state, output_final_state, cu_seqlens,
                head_first, reverse=bool(reverse), state_v_first=state_v_first, cu_seqlens_cpu=cu_seqlens_cpu)


def chunk_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                     g_gamma: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                     initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                     state_v_first: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                     cu_seqlens_cpu: Optional[torch.Tensor] = None, head_first: bool = False):
    """fla.ops.simple_gla.chunk_simple_gla: one log-decay per head, g [B, T, H] (or g_gamma [H], a
    constant per-head log-decay; or neither: plain linear attention)."""
    if g is not None and g_gamma is not None:
        raise ValueError("chunk_simple_gla: pass g or g_gamma, not both")
    if g_gamma is not None:
        if g_gamma.dim() != 1 or g_gamma.shape[0] != q.shape[1 if head_first else 2]:
            raise ValueError(f"chunk_simple_gla: g_gamma must be [H], got {tuple(g_gamma.shape)}")
        B, T = (q.shape[0], q.shape[2]) if head_first else q.shape[:2]
        g = g_gamma.float().view(1, 1, -1).expand(B, T, -1)
        if head_first:
            g = g.transpose(1, 2)
    if g is not None and g.dim() != 3:
        raise ValueError(f"chunk_simple_gla: g must be [B, T, H] (one log-decay per head), got {tuple(g.shape)}")
    return _gla("chunk_simple_gla", q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, head_first,
                state_v_first=state_v_first, cu_seqlens_cpu=cu_seqlens_cpu)


class RMSNorm(_RMSNorm):
    """fla.modules.RMSNorm: RMSNorm(hidden_size, elementwise_affine=True, bias=False, eps=1e-5);
    forward(x, residual=None, prenorm=False, residual_in_fp32=False) (see sbops.nn.RMSNorm).

    Attributes as in fla: hidden_size, elementwise_affine, eps, and the parameters weight (ones)
    and bias (zeros; only with elementwise_affine=True and bias=True), registered as None when
    absent (elementwise_affine=False: no weight and no bias, as fla).  device and dtype are an
    sbops extension (where the parameters are created)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(hidden_size, eps, elementwise_affine=False, bias=False)
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        for name in ("weight", "bias"):   # the base class set them as plain None attributes
            delattr(self, name)
            self.register_parameter(name, None)
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
            if bias:
                self.bias = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}" + ("" if self.elementwise_affine else ", elementwise_affine=False") + \
            f", eps={self.eps}"


__all__ = ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla", "chunk_simple_gla", "RMSNorm",
           "set_repeat_detection", "kv_groups"]
