"""fla <= 0.1 flavour of sbops.compat.fla: the same functions, but head_first defaults to True
(`[B, H, T, D]`), the layout SpikingBrain's released code passes (it calls chunk_gla(q, k, v, gk,
initial_state=..., output_final_state=...) on `b h l d` tensors).  RMSNorm is fla's.  Arguments
after output_final_state follow fla 0.6's order (state_v_first, cu_seqlens, ...): pass them by keyword."""
from __future__ import annotations

import functools
import inspect

from . import fla as _fla
from .fla import RMSNorm, kv_groups, set_repeat_detection  # noqa: F401


def _head_first(fn):
    @functools.wraps(fn)
    def wrapper(*args, head_first: bool = True, **kwargs):
        return fn(*args, head_first=head_first, **kwargs)
    wrapper.__doc__ = f"{fn.__doc__}\n\n(sbops.compat.fla_v0: head_first defaults to True.)"
    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[
        p.replace(default=True) if p.name == "head_first" else p for p in sig.parameters.values()])
    del wrapper.__wrapped__   # help() / inspect.signature show __signature__, not fn's head_first=False
    return wrapper


chunk_gla = _head_first(_fla.chunk_gla)
fused_chunk_gla = _head_first(_fla.fused_chunk_gla)
fused_recurrent_gla = _head_first(_fla.fused_recurrent_gla)
chunk_simple_gla = _head_first(_fla.chunk_simple_gla)

__all__ = ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla", "chunk_simple_gla", "RMSNorm",
           "set_repeat_detection", "kv_groups"]
