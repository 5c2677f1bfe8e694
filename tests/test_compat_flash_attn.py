"""sbops.compat.flash_attn vs naive float64 references of flash-attn 2's documented semantics."""
import pytest
import torch

from sbops.compat.flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

torch.manual_seed(0)
F64 = torch.float64


def ref_attn(q, k, v, scale=None, causal=False, window=(-1, -1)):
    """One sequence: q [Sq, H, D], k, v [Sk, HKV, D] -> (o [Sq, H, D], lse [H, Sq]).
    Mask (flash-attn): key j is kept for query i iff, with d = i + Sk - Sq,
    j <= d (causal or right == 0), j <= d + right (right >= 0), j >= d - left (left >= 0)."""
    Sq, H, D = q.shape
    Sk, HKV = k.shape[:2]
    scale = D ** -0.5 if scale is None else scale
    left, right = window
    if causal:
        right = 0
    o = torch.zeros(Sq, H, D, dtype=F64)
    lse = torch.full((H, Sq), float("inf"), dtype=F64)
    for i in range(Sq):
        d = i + Sk - Sq
        keep = [j for j in range(Sk) if (right < 0 or j <= d + right) and (left < 0 or j >= d - left)]
        if not keep:
            continue
        for h in range(H):
            kk = k[keep, h // (H // HKV)].double()
            s = kk @ q[i, h].double() * scale
            lse[h, i] = torch.logsumexp(s, 0)
            o[i, h] = torch.softmax(s, 0) @ v[keep, h // (H // HKV)].double()
    return o, lse


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def rand(*shape):
    return torch.randn(*shape, dtype=F64)


@pytest.mark.parametrize("Sq,Sk,causal,window", [
    (9, 9, True, (-1, -1)), (9, 9, True, (3, 0)), (9, 9, False, (2, 0)), (9, 9, False, (-1, -1)),
    (4, 11, True, (-1, -1)), (4, 11, True, (5, 0)), (11, 4, True, (-1, -1)), (3, 7, False, (-1, -1)),
])
def test_flash_attn_func_matches_reference(Sq, Sk, causal, window):
    B, H, HKV, D = 2, 4, 2, 8
    q, k, v = rand(B, Sq, H, D), rand(B, Sk, HKV, D), rand(B, Sk, HKV, D)
    o, lse, none = flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)
    assert none is None and o.shape == q.shape and lse.shape == (B, H, Sq) and lse.dtype == torch.float32
    for b in range(B):
        o_ref, lse_ref = ref_attn(q[b], k[b], v[b], causal=causal, window=window)
        assert rel(o[b], o_ref) < 1e-10
        finite = torch.isfinite(lse_ref)
        assert torch.equal(torch.isfinite(lse[b]), finite)  # empty rows: +inf, as flash-attn
        assert rel(lse[b][finite], lse_ref[finite]) < 1e-6
    assert torch.equal(flash_attn_func(q, k, v, causal=causal, window_size=window), o)


def test_window_left_means_left_plus_one_keys():
    q, k = rand(1, 6, 1, 4), rand(1, 6, 1, 4)
    v = torch.eye(6, dtype=F64)[None, :, None, :4].contiguous() * 0 + torch.arange(6, dtype=F64)[None, :, None, None]
    o = flash_attn_func(q, k, v, causal=True, window_size=(2, 0), softmax_scale=0.0)
    # equal scores: the output is the mean of the attended positions i-2..i (3 keys)
    expect = torch.tensor([0, 0.5, 1, 2, 3, 4], dtype=F64)
    assert torch.allclose(o[0, :, 0, 0], expect)


def test_softmax_scale_is_used():
    q, k, v = rand(1, 5, 2, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4)
    o = flash_attn_func(q, k, v, softmax_scale=0.7, causal=True)
    assert rel(o[0], ref_attn(q[0], k[0], v[0], 0.7, True)[0]) < 1e-10


@pytest.mark.parametrize("same_object", [True, False])
def test_varlen_matches_per_sequence_reference(same_object):
    lens = [5, 1, 8]
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    H, HKV, D = 4, 1, 8
    q, k, v = rand(14, H, D), rand(14, HKV, D), rand(14, HKV, D)
    cu_k = cu if same_object else cu.clone()
    o, lse, _ = flash_attn_varlen_func(q, k, v, cu, cu_k, max(lens), max(lens), causal=True, window_size=(3, 0),
                                       return_attn_probs=True)
    assert lse.shape == (H, 14)
    for b in range(3):
        sl = slice(int(cu[b]), int(cu[b + 1]))
        o_ref, lse_ref = ref_attn(q[sl], k[sl], v[sl], causal=True, window=(3, 0))
        assert rel(o[sl], o_ref) < 1e-10 and rel(lse[:, sl], lse_ref) < 1e-6


def test_varlen_with_different_q_and_k_lengths():
    cu_q = torch.tensor([0, 2, 3], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 10], dtype=torch.int32)
    q, k, v = rand(3, 2, 4), rand(10, 2, 4), rand(10, 2, 4)
    o = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 2, 6, causal=True)
    assert rel(o[:2], ref_attn(q[:2], k[:6], v[:6], causal=True)[0]) < 1e-10
    assert rel(o[2:], ref_attn(q[2:], k[6:], v[6:], causal=True)[0]) < 1e-10


@pytest.mark.parametrize("window", [(-1, -1), (3, 0)])
@pytest.mark.parametrize("use_batch_idx", [False, True])
def test_kvcache_decode_writes_cache_and_matches_reference(window, use_batch_idx):
    B, H, HKV, D, C = 3, 4, 2, 8, 16
    lens = torch.tensor([0, 5, 9], dtype=torch.int32)
    k_cache = torch.full((B + 1, C, HKV, D), float("nan"), dtype=F64)  # unwritten rows must not matter
    v_cache = k_cache.clone()
    hist_k, hist_v = rand(B, C, HKV, D), rand(B, C, HKV, D)
    slots = torch.tensor([2, 0, 3], dtype=torch.int32) if use_batch_idx else None
    rows = slots.long() if use_batch_idx else torch.arange(B)
    for b in range(B):
        k_cache[rows[b], :lens[b]] = hist_k[b, :lens[b]]
        v_cache[rows[b], :lens[b]] = hist_v[b, :lens[b]]
    for step in range(3):
        q, kn, vn = rand(B, 1, H, D), rand(B, 1, HKV, D), rand(B, 1, HKV, D)
        o = flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=lens, cache_batch_idx=slots,
                                    causal=True, window_size=window)
        for b in range(B):
            L = int(lens[b]) + 1
            hist_k[b, L - 1], hist_v[b, L - 1] = kn[b, 0], vn[b, 0]
            assert torch.equal(k_cache[rows[b], L - 1], kn[b, 0])
            o_ref, _ = ref_attn(q[b], hist_k[b, :L], hist_v[b, :L], causal=True, window=window)
            assert rel(o[b], o_ref) < 1e-10
        lens = lens + 1


def test_kvcache_several_queries_and_lse():
    B, H, D, C = 2, 2, 4, 12
    k_cache, v_cache = rand(B, C, H, D), rand(B, C, H, D)
    lens = torch.tensor([3, 7])
    q, kn, vn = rand(B, 3, H, D), rand(B, 3, H, D), rand(B, 3, H, D)
    o, lse = flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=lens, causal=True,
                                     return_softmax_lse=True)
    for b in range(B):
        L = int(lens[b]) + 3
        o_ref, lse_ref = ref_attn(q[b], k_cache[b, :L], v_cache[b, :L], causal=True)
        assert torch.equal(k_cache[b, L - 3:L], kn[b])
        assert rel(o[b], o_ref) < 1e-10 and rel(lse[b], lse_ref) < 1e-6


def released_swa_layer(x, w, ops, window, mask=None):
    """The released FlashAttention layer's inference path (no RoPE here): unpad with the attention
    mask, flash_attn_varlen_func(causal=True, window_size=(window, 0)), pad back."""
    B, T, _ = x.shape
    H, HKV, D = w["H"], w["HKV"], w["D"]
    q = (x @ w["q"]).view(B, T, H, D)
    k = (x @ w["k"]).view(B, T, HKV, D)
    v = (x @ w["v"]).view(B, T, HKV, D)
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    lens = mask.sum(1)
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    idx = mask.flatten().nonzero()[:, 0]
    o_unpad = ops(q.flatten(0, 1)[idx], k.flatten(0, 1)[idx], v.flatten(0, 1)[idx], cu, cu, int(lens.max()),
                  int(lens.max()), softmax_scale=D ** -0.5, causal=True, window_size=(window, 0))
    out = torch.zeros(B * T, H, D, dtype=x.dtype)
    out[idx] = o_unpad
    return out.view(B, T, H * D)


def _ref_varlen(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=None, causal=False, window_size=(-1, -1)):
    cu = cu_q.tolist()
    return torch.cat([ref_attn(q[a:b], k[a:b], v[a:b], softmax_scale, causal, window_size)[0]
                      for a, b in zip(cu[:-1], cu[1:])])


def test_released_style_left_padded_swa_layer_matches_reference():
    B, T, HID, H, HKV, D = 3, 9, 12, 4, 2, 4
    w = dict(H=H, HKV=HKV, D=D, q=rand(HID, H * D) * 0.3, k=rand(HID, HKV * D) * 0.3, v=rand(HID, HKV * D) * 0.3)
    x = rand(B, T, HID)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    mask[2, :8] = False
    o = released_swa_layer(x, w, flash_attn_varlen_func, 3, mask)
    o_ref = released_swa_layer(x, w, _ref_varlen, 3, mask)
    assert rel(o, o_ref) < 1e-10


def test_unsupported_arguments_are_refused_by_name():
    q = rand(1, 4, 2, 4)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    cases = [
        (lambda: flash_attn_func(q, q, q, dropout_p=0.1), NotImplementedError, "dropout_p"),
        (lambda: flash_attn_func(q, q, q, softcap=30.0), NotImplementedError, "softcap"),
        (lambda: flash_attn_func(q, q, q, alibi_slopes=torch.ones(2)), NotImplementedError, "alibi_slopes"),
        (lambda: flash_attn_func(q, q, q, window_size=(2, 2)), NotImplementedError, "window_size"),
        (lambda: flash_attn_func(q, q, q, window_size=(2, -1)), NotImplementedError, "window_size"),
        (lambda: flash_attn_func(q, q, q, window_size=(-3, 0)), ValueError, "window_size"),
        (lambda: flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 4, 4, block_table=cu), NotImplementedError,
         "block_table"),
        (lambda: flash_attn_with_kvcache(q, q, q, rotary_cos=q), NotImplementedError, "rotary_cos"),
        (lambda: flash_attn_with_kvcache(q, q, q, cache_leftpad=cu), NotImplementedError, "cache_leftpad"),
        (lambda: flash_attn_with_kvcache(q[:, :1], q, q, q[:, :1], q[:, :1], cache_seqlens=4), ValueError,
         "cache_seqlens"),
        (lambda: flash_attn_with_kvcache(q[:, :1], q, q, q[:, :1]), ValueError, "k and v"),
        (lambda: flash_attn_func(q, q[:, :, :1, :3], q[:, :, :1, :3]), ValueError, "head dim"),
    ]
    for call, exc, word in cases:
        with pytest.raises(exc, match=word):
            call()


# ---------------------------------------------------------------- GPU (skipped without CUDA/MACA)
from conftest import requires_cuda  # noqa: E402


@requires_cuda
@pytest.mark.parametrize("window", [(-1, -1), (64, 0)])
def test_gpu_bf16_prefill_varlen_and_decode_match_reference(window):
    H, HKV, D = 8, 2, 128
    lens = [100, 1, 257]
    cu = torch.tensor([0, 100, 101, 358], dtype=torch.int32)
    q, k, v = rand(358, H, D), rand(358, HKV, D), rand(358, HKV, D)
    bf = [t.to("cuda", torch.bfloat16) for t in (q, k, v)]
    o = flash_attn_varlen_func(*bf, cu.cuda(), cu.cuda(), max(lens), max(lens), causal=True, window_size=window)
    of = flash_attn_func(bf[0][None, 101:], bf[1][None, 101:], bf[2][None, 101:], causal=True, window_size=window)
    for b in range(3):
        sl = slice(int(cu[b]), int(cu[b + 1]))
        assert rel(o[sl].cpu(), ref_attn(q[sl], k[sl], v[sl], causal=True, window=window)[0]) < 1e-2
    assert rel(of[0].cpu(), ref_attn(q[101:], k[101:], v[101:], causal=True, window=window)[0]) < 1e-2
    # decode: 3 sequences continue with one token each on a contiguous cache of 512 rows
    C = 512
    kc = torch.zeros(3, C, HKV, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    for b in range(3):
        sl = slice(int(cu[b]), int(cu[b + 1]))
        kc[b, :lens[b]], vc[b, :lens[b]] = bf[1][sl], bf[2][sl]
    qn, kn, vn = rand(3, 1, H, D), rand(3, 1, HKV, D), rand(3, 1, HKV, D)
    od = flash_attn_with_kvcache(qn.to("cuda", torch.bfloat16), kc, vc, kn.to("cuda", torch.bfloat16),
                                 vn.to("cuda", torch.bfloat16), cache_seqlens=torch.tensor(lens, dtype=torch.int32,
                                                                                          device="cuda"),
                                 causal=True, window_size=window)
    for b in range(3):
        sl = slice(int(cu[b]), int(cu[b + 1]))
        kk, vv = torch.cat([k[sl], kn[b]]), torch.cat([v[sl], vn[b]])
        assert rel(od[b].cpu(), ref_attn(qn[b], kk, vv, causal=True, window=window)[0]) < 1e-2
