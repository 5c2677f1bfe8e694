"""The Hopper SWA forward with fewer queries than keys (sbops_native.swa_attn_fwd_sm90, q holding the last positions),
and the model's prefill chunk after a cached window on it (nn.attention._softmax_branch, SBOPS_SWA_CHUNK_QUERIES).

Runs only on an sm_90 GPU with an sm_90a build of sbops (skips cleanly otherwise). The kernel's rows against the
float64 reference's last rows on odd shapes (one query, a partial 128-row block, q as long as k, windows past the
length, GQA, batch > 1, odd H without clusters); its errors; a bf16 model's chunked prefill equals one prefill and the
packed path it replaces.
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference import rel_err  # noqa: E402


def _available():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return False
    import sbops  # noqa: F401  (loads sbops._C)
    from sbops import _platform
    return _platform.native_kernel_available("swa_attn_fwd_sm90_available", torch.cuda.current_device())


pytestmark = pytest.mark.skipif(not _available(), reason="needs an sm_90 GPU and an sm_90a build of sbops")


def _ref_last_rows(q, k, v, window, Tq):
    """float64 (o, lse) of the last Tq query rows (positions T - Tq ..) over their windows: [B, Tq, H, D], [B, Tq, H]."""
    B, T, H, D = q.shape
    G = H // k.shape[2]
    qq = q[:, T - Tq:].double().cpu()
    kk, vv = (t.double().cpu().repeat_interleave(G, dim=2) for t in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", qq, kk) * D ** -0.5
    pos, key = torch.arange(T - Tq, T)[:, None], torch.arange(T)[None, :]
    w = T if window < 0 else window
    s = s.masked_fill(~((key <= pos) & (key >= pos - w)), float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.einsum("bhqk,bkhd->bqhd", torch.exp(s - lse[..., None]), vv)
    return o, lse.transpose(1, 2)


def _inputs(B, T, H, HKV, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to("cuda", torch.bfloat16)  # noqa: E731
    return mk(B, T, H, 128), mk(B, T, HKV, 128), mk(B, T, HKV, 128)


@pytest.mark.parametrize("B,T,Tq,H,HKV,window", [
    (1, 333, 1, 4, 2, 100),       # one query (a decode-like chunk)
    (2, 333, 200, 4, 2, 100),     # a partial last 128-row block, the first one starting mid-tile
    (1, 1000, 129, 28, 4, 4096),  # window past the length: full causal; the 7B heads (clusters, multicast)
    (1, 700, 700, 3, 1, 64),      # q as long as k; odd H: no clusters
    (1, 4500, 300, 28, 4, 4096),  # the model's case: a window of cached keys, then the chunk
    (1, 4600, 400, 28, 4, 4095),  # the 7B window (4095 keys back: 4096 attended), a chunk not 128-aligned
    (2, 257, 128, 6, 6, 0),       # window 0: each query sees itself only
])
def test_queries_of_the_last_positions_match_float64(B, T, Tq, H, HKV, window):
    q, k, v = _inputs(B, T, H, HKV, seed=T + Tq)
    qt = q[:, T - Tq:]                      # a view at an offset: the binding copies it for TMA
    w = window if 0 <= window < T else T - 1
    o, lse = torch.ops.sbops_native.swa_attn_fwd_sm90(qt, k, v, w, 128 ** -0.5)
    ro, rlse = _ref_last_rows(q, k, v, window, Tq)
    assert o.shape == (B, Tq, H, 128) and lse.shape == (B, Tq, H) and lse.dtype == torch.float32
    assert rel_err(o, ro) <= 1e-2, f"o rel err {rel_err(o, ro):.2e}"
    assert rel_err(lse, rlse) <= 1e-2, f"lse rel err {rel_err(lse, rlse):.2e}"
    # every row sees the same 128-key tiles as in the whole call (masked tiles add exactly nothing): the same bits
    import sbops
    fo, flse = sbops.swa_attn(q, k, v, window, return_lse=True)
    assert torch.equal(o, fo[:, T - Tq:]) and torch.equal(lse, flse[:, T - Tq:])


def test_queries_as_long_as_keys_give_the_public_ops_bits():
    q, k, v = _inputs(1, 777, 28, 4, seed=5)
    o, lse = torch.ops.sbops_native.swa_attn_fwd_sm90(q, k, v, 300, 128 ** -0.5)
    import sbops
    ro, rlse = sbops.swa_attn(q, k, v, 300, return_lse=True)
    assert torch.equal(o, ro) and torch.equal(lse, rlse)


def test_more_queries_than_keys_is_an_error_naming_both_lengths():
    q, k, v = _inputs(1, 64, 4, 2)
    with pytest.raises(RuntimeError, match=r"q's length \(64\) must not exceed k's \(63\)"):
        torch.ops.sbops_native.swa_attn_fwd_sm90(q, k[:, :63], v[:, :63], 8, 0.1)
    with pytest.raises(RuntimeError, match="one length"):   # the backward keeps q and k of one length
        torch.ops.sbops_native.swa_attn_bwd_sm90(q[:, :32], k, v, q[:, :32], torch.zeros(1, 32, 4, device="cuda"),
                                                q[:, :32], None, 8, 0.1, True)


def _model(window=300):
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
    torch.manual_seed(0)
    cfg = SpikingBrainConfig(vocab_size=256, hidden_size=256, intermediate_size=384, num_heads=4, num_kv_heads=2,
                             head_dim=128, layer_types=("gla", "swa"), window=window)
    return SpikingBrainForCausalLM(cfg).to("cuda", torch.bfloat16).eval()


def _chunked(model, ids, size):
    cache = model.new_cache(1, max_length=ids.shape[1])
    with torch.inference_mode():
        return torch.cat([model(ids[:, a:a + size], cache=cache).logits for a in range(0, ids.shape[1], size)], 1)


@pytest.mark.parametrize("window", [300, -1])
def test_model_chunks_after_a_cached_window_equal_the_packed_path(window, monkeypatch):
    """Chunks of 257 tokens (the cached window of 300 keys never aligned to a 128-row block) on the kernel give the
    packed path's bits (zero queries for the cached rows: the same key tiles per row) and one prefill's values, in
    bf16."""
    from sbops.nn import attention
    model = _model(window)
    ids = torch.randint(0, 256, (1, 1100), device="cuda")
    calls = []
    real = attention._swa_chunk_op
    monkeypatch.setattr(attention, "_swa_chunk_op", lambda *a: calls.append(1) or real(*a))
    fast = _chunked(model, ids, 257)
    assert len(calls) == 4 and real(*[torch.empty(1, 1, 4, 128, device="cuda", dtype=torch.bfloat16)] * 3,
                                     None) is not None   # the 4 chunks after the first took the kernel
    monkeypatch.setattr(attention, "SWA_CHUNK_QUERIES", False)
    packed = _chunked(model, ids, 257)
    with torch.inference_mode():
        whole = model(ids).logits
    assert torch.equal(fast, packed) and rel_err(fast, whole) < 2e-2, (rel_err(fast, packed), rel_err(fast, whole))
