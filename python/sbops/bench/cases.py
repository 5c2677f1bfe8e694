"""The benchmark's cases: correctness checks against the float64 references and speed cases.

This module is the registry (`checks()`, `speed_cases()`, `select()`); the cases themselves live per
op family in `cases_attn.py` (linear attention, sliding window) and `cases_routing.py` (spike
coding, MoE routing), their shared types and helpers in `casebase.py`.

Everything goes through the public API (`sbops.<op>`); the runner forces the backend with
`sbops.use_backend(name)` around each case.

A correctness `Check` builds fresh random inputs, runs the op and the float64 reference, and
returns the outputs to compare (`Compared`).  Integer outputs (ids, offsets, spike trains) must
match exactly; float outputs must meet the dtype's bound (docs/SPEC.md section 6).  Spike counts are
compared exactly except where x / vth lies within 1e-4 of a rounding tie, where either rounding is
accepted (vth differs from the reference in its last bits, which may legitimately flip a tie).

A `SpeedCase` builds its inputs and returns a `Prepared`: the call to time, the bytes it must
move and the FLOPs it must do (for GB/s, TFLOP/s and the roofline floor), and peer factories.
FLOP conventions: attention counts 4*D per (query, key) pair inside the window per query head
(backward 2.5x forward); chunked linear attention counts, per token, 2*C*(K+V) + 2*K*V per query
head (intra-chunk scores, scores x values, queries x state, C = 64) plus 2*K*V per KV head (state
update), backward 2x forward.  Bytes count each input read once and each output written once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .casebase import (D7, FAMILIES, FAMILY_OF, H7, HIDDEN7, HKV7, WINDOW7, Check, Compared, Env,  # noqa: F401
                       Prepared, SpeedCase, bound_for, linear_attn_flops, window_pairs)
from .cases_attn import (_check_linear_attn, _check_linear_attn_decode, _check_swa, _check_swa_cache_write,
                         _check_swa_decode, _speed_linear_attn, _speed_linear_attn_decode, _speed_swa,
                         _speed_swa_decode)
from .cases_routing import (_check_align, _check_counts, _check_permute, _check_spike_encode, _check_spike_linear,
                            _check_spike_quant, _check_spike_trains, _check_topk, _speed_permute, _speed_spike_encode,
                            _speed_spike_linear, _speed_topk)


def checks() -> List[Check]:
    """Every correctness check (odd sizes, GQA, both head dims; `full_only` adds 7B-sized ones)."""
    out: List[Check] = []

    def add(op, made, full_only=False):
        run, shape = made
        out.append(Check(op, shape, run, full_only))

    add("linear_attn", _check_linear_attn(2, 63, 4, 2, 64, "key", False))
    add("linear_attn", _check_linear_attn(1, 1, 4, 4, 128, None, False))
    add("linear_attn", _check_linear_attn(1, 300, 6, 2, 64, "head", True))
    add("linear_attn", _check_linear_attn(1, 300, 4, 1, 128, "key", True, seqs=(37, 200, 63)))
    add("linear_attn", _check_linear_attn(1, 1000, H7, HKV7, D7, "key", False), full_only=True)
    add("linear_attn.grad", _check_linear_attn(2, 63, 4, 2, 64, "key", True, grad=True))
    add("linear_attn.grad", _check_linear_attn(1, 300, H7, HKV7, D7, "key", False, grad=True), full_only=True)
    add("linear_attn_decode", _check_linear_attn_decode(3, 5, 4, 2, 64, "key", True))
    add("linear_attn_decode", _check_linear_attn_decode(2, 2, 8, 8, 128, "head", False))
    add("linear_attn_decode", _check_linear_attn_decode(4, 4, 4, 1, 64, None, False))
    add("linear_attn_decode", _check_linear_attn_decode(64, 64, H7, HKV7, D7, "key", False), full_only=True)

    add("swa_attn", _check_swa(2, 63, 4, 2, 64, 16))
    add("swa_attn", _check_swa(1, 1, 4, 1, 128, 0))
    add("swa_attn", _check_swa(1, 300, 4, 1, 128, -1))
    add("swa_attn", _check_swa(1, 300, 4, 2, 64, 31, sinks=5, seqs=(100, 1, 199)))
    add("swa_attn", _check_swa(1, 1000, H7, HKV7, D7, 256), full_only=True)
    add("swa_attn.grad", _check_swa(1, 63, 4, 2, 64, 7, sinks=3, grad=True))
    add("swa_attn.grad", _check_swa(1, 300, H7, HKV7, D7, 64, grad=True), full_only=True)
    add("swa_decode", _check_swa_decode(3, 4, 17, 4, 2, 64, 16, (1, 17, 40), True))
    add("swa_decode", _check_swa_decode(2, 2, 64, 8, 1, 128, -1, (64, 5), False))
    add("swa_decode", _check_swa_decode(8, 8, 4097, H7, HKV7, D7, 4096, (1, 4096, 4097, 4098, 6000, 8191, 8192, 9000),
                                        False), full_only=True)
    add("swa_cache_write", _check_swa_cache_write(3, 4, 17, 2, 64))

    add("spike_encode", _check_spike_encode((63, HIDDEN7), torch.int8))
    add("spike_encode", _check_spike_encode((2, 37, 128), torch.int16))
    add("spike_encode", _check_spike_encode((4096, HIDDEN7), torch.int8), full_only=True)
    add("spike_quant", _check_spike_quant((63, HIDDEN7)))
    for mode in ("bitwise", "ternary", "binary"):
        add("spike_expand", _check_spike_trains((63, 257), mode, "spike_expand"))
        add("spike_collapse", _check_spike_trains((63, 257), mode, "spike_collapse"))
    add("spike_linear", _check_spike_linear(63, 512, 200, None, torch.int8, True))
    add("spike_linear", _check_spike_linear(300, 512, 96, 128, torch.int8, False))
    add("spike_linear", _check_spike_linear(5, 384, 64, None, torch.float8_e4m3fn, False))   # decode path (M <= 32)
    # e4m3 prefill: on CUDA with bf16 x the "scaled_mm" path, two count planes where K > N, one where K <= N
    add("spike_linear", _check_spike_linear(300, 512, 96, None, torch.float8_e4m3fn, True))
    add("spike_linear", _check_spike_linear(100, 256, 512, None, torch.float8_e4m3fn, False))
    add("spike_linear", _check_spike_linear(1024, HIDDEN7, 1024, 128, torch.int8, False), full_only=True)

    add("topk_gating", _check_topk(63, 16, 1))
    add("topk_gating", _check_topk(300, 128, 8, "sigmoid", bias=True, groups=(8, 4), scaling=2.5))
    add("topk_gating", _check_topk(4096, 128, 8), full_only=True)
    add("topk_gating.grad", _check_topk(63, 16, 2, grad=True))
    add("moe_permute", _check_permute(63, 64, 16, 1, 0.0, "moe_permute"))
    add("moe_permute", _check_permute(300, 128, 128, 8, 0.05, "moe_permute"))
    add("moe_unpermute", _check_permute(63, 64, 16, 1, 0.0, "moe_unpermute"))
    add("moe_unpermute", _check_permute(300, 128, 128, 8, 0.05, "moe_unpermute"))
    add("moe_align_block_size", _check_align(300, 128, 8, 64, 0.05))
    add("expert_counts", _check_counts(300, 128, 8, 0.05))
    return out


def speed_cases(mode: str, long: bool = False, headline: bool = False) -> List[SpeedCase]:
    """The issue's shapes in `full` mode; small ones with the same head layout in `quick` mode.
    `headline`: only the starred cases, one representative shape per op (the default run)."""
    def star(case: SpeedCase) -> SpeedCase:
        case.headline = True
        return case

    if mode == "full":
        cases = [star(_speed_linear_attn(32768)), _speed_linear_attn(131072)]
        if long:
            cases.append(_speed_linear_attn(1 << 20))
        cases += [star(_speed_linear_attn(32768, backward=True))]
        if long:
            cases.append(_speed_linear_attn(131072, backward=True))
        cases += [
            star(_speed_linear_attn_decode(1)), _speed_linear_attn_decode(64),
            star(_speed_swa(32768, WINDOW7)), _speed_swa(131072, WINDOW7),
            _speed_swa(32768, WINDOW7, backward=True), _speed_swa(32768, -1),
            star(_speed_swa_decode(1, WINDOW7, 8192)), _speed_swa_decode(64, WINDOW7, 8192),
            star(_speed_spike_encode(16384)),
            star(_speed_spike_linear(8192, 37888, HIDDEN7)), _speed_spike_linear(8192, 37888, HIDDEN7, 128),
            _speed_spike_linear(1, 37888, HIDDEN7),
            star(_speed_topk(16384, 16, 1)), _speed_topk(16384, 128, 8),
            star(_speed_permute(16384, 3584, 16, 1, "moe_permute")), _speed_permute(16384, 4096, 128, 8, "moe_permute"),
            star(_speed_permute(16384, 3584, 16, 1, "moe_unpermute")),
            _speed_permute(16384, 4096, 128, 8, "moe_unpermute"),
        ]
    else:
        # quick: SpikingBrain-7B heads and hidden size, short sequences and few tokens (the C++
        # reference is a plain loop nest: these keep the whole quick run under 2 minutes on 2 cores)
        cases = [
            star(_speed_linear_attn(256)), star(_speed_linear_attn(128, backward=True)),
            star(_speed_linear_attn_decode(1)), _speed_linear_attn_decode(8),
            star(_speed_swa(256, 64)), _speed_swa(128, 32, backward=True),
            _speed_swa(256, -1),
            star(_speed_swa_decode(1, 512, 1024)), _speed_swa_decode(8, 512, 1024),
            star(_speed_spike_encode(512)),
            star(_speed_spike_linear(128, 512, 512)), _speed_spike_linear(1, 512, 512, 128),
            star(_speed_topk(1024, 16, 1)), _speed_topk(1024, 128, 8),
            star(_speed_permute(1024, 3584, 16, 1, "moe_permute")), _speed_permute(256, 4096, 128, 8, "moe_permute"),
            star(_speed_permute(1024, 3584, 16, 1, "moe_unpermute")),
            _speed_permute(256, 4096, 128, 8, "moe_unpermute"),
        ]
    return [c for c in cases if c.headline] if headline else cases


def select(items: Sequence, ops: Optional[Sequence[str]], shapes: Optional[Sequence[str]]) -> list:
    """Filter checks or speed cases by family/op names and by shape/name substrings."""
    out = []
    for it in items:
        op = it.op.split(".")[0]
        if ops and not any(o in (it.family, op, it.op) for o in ops):
            continue
        shape = " ".join(f"{k}={v}" for k, v in it.shape.items()) if isinstance(it.shape, dict) else it.shape
        text = f"{getattr(it, 'name', '')} {shape}".lower()
        if shapes and not any(s.lower() in text for s in shapes):
            continue
        out.append(it)
    return out
