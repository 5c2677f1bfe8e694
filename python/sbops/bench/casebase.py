"""Shared pieces of the benchmark's cases: op families, the 7B shapes, `Env`, the result types of
checks (`Check`, `Compared`) and speed cases (`SpeedCase`, `Prepared`), seeded input helpers and the
FLOP conventions (see cases.py for the conventions in words)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

FAMILIES = {
    "linear_attn": ("linear_attn", "linear_attn_decode"),
    "swa": ("swa_attn", "swa_decode", "swa_cache_write"),
    "spike": ("spike_encode", "spike_quant", "spike_expand", "spike_collapse", "spike_linear"),
    "moe": ("topk_gating", "moe_permute", "moe_unpermute", "moe_align_block_size", "expert_counts"),
}
FAMILY_OF = {op: fam for fam, ops in FAMILIES.items() for op in ops}

# SpikingBrain-7B attention heads
H7, HKV7, D7, WINDOW7, HIDDEN7 = 28, 4, 128, 4096, 3584
# tokens (or cached rows) of the small inputs that the wrapper-overhead probes use
PROBE_T = 64


@dataclass
class Env:
    """Where a case runs: backend name, torch device, floating dtype of the inputs."""
    backend: str
    device: str
    dtype: torch.dtype
    seed: int = 0


def bound_for(dtype: torch.dtype, grad: bool) -> float:
    """docs/SPEC.md section 6: 1e-5 for float32/float64 results, 1e-2 (gradients 2e-2) for 16-bit."""
    if dtype in (torch.float32, torch.float64):
        return 1e-5
    return 2e-2 if grad else 1e-2


@dataclass
class Compared:
    name: str
    out: torch.Tensor
    ref: torch.Tensor
    exact: bool = False          # integer result: must match exactly


@dataclass
class Check:
    op: str                      # reported op name; gradient checks end in ".grad"
    shape: str
    run: Callable[[Env, torch.Generator], List[Compared]]
    full_only: bool = False      # only with --full (larger shapes)

    @property
    def family(self) -> str:
        return FAMILY_OF[self.op.split(".")[0]]

    @property
    def grad(self) -> bool:
        return self.op.endswith(".grad")


# --------------------------------------------------------------------------- input helpers
def _randn(gen: torch.Generator, env: Env, *shape, scale: float = 1.0, dtype=None) -> torch.Tensor:
    """Seeded CPU draw moved to the case's device and dtype (reproducible across devices)."""
    x = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
    return x.to(device=env.device, dtype=dtype or env.dtype)


def _gate(gen, env, *shape) -> torch.Tensor:
    """SpikingBrain's gate: logsigmoid(x) / 16 (log-decays in about [-0.3, 0])."""
    return (F.logsigmoid(torch.randn(*shape, generator=gen) * 2) / 16).to(env.device, env.dtype)


def _cu_seqlens(env: Env, seqs) -> "torch.Tensor | None":
    """int32 [N+1] offsets of packed sequences of lengths `seqs` on env's device (None: not packed)."""
    if seqs is None:
        return None
    return torch.tensor([0] + list(torch.tensor(seqs).cumsum(0)), dtype=torch.int32, device=env.device)


def _leaves(grad: bool, named):
    """(tensors, their gradient names) of the (name, tensor or None) pairs that are given, each
    set to requires_grad=grad."""
    given = [(n, t) for n, t in named if t is not None]
    for _, t in given:
        t.requires_grad_(grad)
    return [t for _, t in given], [n for n, _ in given]


def _routing(gen, T: int, E: int, k: int, drop: float = 0.0) -> torch.Tensor:
    """[T, k] int32 distinct random experts per token; a `drop` fraction of slots set to -1."""
    ids = torch.rand(T, E, generator=gen).topk(k, dim=-1).indices.to(torch.int32)
    if drop:
        ids[torch.rand(T, k, generator=gen) < drop] = -1
    return ids


def _grads(outputs, grad_outputs, leaves):
    return torch.autograd.grad(outputs, leaves, grad_outputs)


@dataclass
class Prepared:
    """One speed case, ready to time."""
    ours: Callable[[], Any]
    bytes: float = 0.0
    flops: float = 0.0
    # peer name -> factory returning the callable to time (may raise peers.PeerUnavailable)
    peers: Dict[str, Callable[[], Callable[[], Any]]] = field(default_factory=dict)


@dataclass
class SpeedCase:
    name: str
    op: str
    shape: Dict[str, Any]
    setup: Callable[[Env], Prepared]
    # one public call of the op (forward only) on small inputs with the case's head layout and
    # features: the wrapper-overhead column times it against the kernel it dispatches to
    probe: Optional[Callable[[Env], Callable[[], Any]]] = None
    headline: bool = False           # one of the default run's rows (one representative shape per op)

    @property
    def family(self) -> str:
        return FAMILY_OF[self.op]


def _elt(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _dev_randn(env: Env, *shape, dtype=None) -> torch.Tensor:
    return torch.randn(*shape, device=env.device, dtype=dtype or env.dtype)


def _dev_gate(env: Env, *shape) -> torch.Tensor:
    return (F.logsigmoid(torch.randn(*shape, device=env.device) * 2) / 16).to(env.dtype)


def window_pairs(T: int, window: int) -> int:
    """(query, key) pairs inside the causal window of one head: sum_i min(i + 1, window + 1)."""
    if window < 0 or window >= T:
        return T * (T + 1) // 2
    w = window + 1
    return w * (w + 1) // 2 + (T - w) * w


def linear_attn_flops(T: int, H: int, HKV: int, K: int, V: int, chunk: int = 64) -> float:
    return T * (H * (2 * chunk * (K + V) + 2 * K * V) + HKV * 2 * K * V)


def _k(T: int) -> str:
    """32768 -> '32k', 1048576 -> '1M'."""
    if T >= 2**20 and T % 2**20 == 0:
        return f"{T >> 20}M"
    if T >= 1024 and T % 1024 == 0:
        return f"{T >> 10}k"
    return str(T)

