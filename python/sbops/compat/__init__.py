"""Drop-in replacements for the flash-linear-attention (fla) and flash-attn Python APIs, on sbops.

Model code written against those libraries runs on every sbops backend (cpu, cuda, maca) by
changing one import line:

    from fla.ops.gla import chunk_gla               ->  from sbops.compat.fla import chunk_gla
    from fla.modules import RMSNorm                  ->  from sbops.compat.fla import RMSNorm
    from flash_attn import flash_attn_varlen_func    ->  from sbops.compat.flash_attn import flash_attn_varlen_func

`sbops.compat.fla` follows current fla (sequence-first `[B, T, H, D]` by default);
`sbops.compat.fla_v0` has the same functions with fla <= 0.1's default `head_first=True`
(`[B, H, T, D]`), the layout SpikingBrain's released Hugging Face code relies on.
Each module's docstring lists what is supported, what is refused (with an error naming the
argument) and which cases run as exact plain-torch code rather than a fused kernel.
"""
from . import fla, fla_v0, flash_attn

__all__ = ["fla", "fla_v0", "flash_attn"]
