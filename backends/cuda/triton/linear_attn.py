"""Chunked gated linear attention (GLA family) in Triton: forward and backward, GQA-native, varlen.

Math (SPEC section 1), per sequence and KV head, query heads h on that KV head:
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        o_t[h] = scale * q_t[h] S_t

Chunked algorithm (chunk of BT tokens, sub-blocks of SUB = 16 rows inside a chunk):
  gc_t   cumulative gate from the chunk start (float32, inclusive), G = gc at the chunk's last row.
  h_c    state before chunk c (stored per chunk and per *KV head*, never per query head).
  state pass:  h_{c+1} = diag(exp(G)) h_c + (k * exp(G - gc))^T v
  output pass: o_t = scale * [(q_t * exp(gc_t)) h_c + sum_{s<=t in chunk} (q_t . k_s exp(gc_t - gc_s)) v_s]
Every exponent used is <= 0 (a difference "later minus earlier" of a non-increasing cumulative
gate), so strong decay (g ~ -20 per step) or long sequences never overflow:
  * per-key gate, sub-block i after sub-block j: factor through the boundary row r between them,
    q_t exp(gc_t - gc_r) and k_s exp(gc_r - gc_s), both factors <= 1, then one matmul;
  * diagonal 16x16 sub-blocks: exp(gc_t - gc_s) elementwise, masked to s <= t before the exp;
  * per-head gate / no gate: the decay is one number per (t, s), applied to the [16, BT] score block.

Backward (dh pass in reverse, then one kernel per (sub-block, chunk, KV head)):
  dh_c = gradient w.r.t. the state at the end of chunk c:  dh_{c-1} = diag(exp(G_c)) dh_c + sum_h scale (q exp(gc))^T dO
  dq, dk, dv from the per-chunk h and dh plus the intra-chunk terms (same factorisation as forward).
  Gate gradient: with b_t the cumulative gate, d b_t = sum_h q_t[h] * dq_t[h] - k_t * dk_t, and
  dg_s = sum_{t >= s in its chunk} d b_t + rowsum(dh_c * S_end_c) (the chunk seen as a sequence
  of its own), so no sum of d b runs over the whole sequence.

State passes: sequential over the chunks of a sequence by default; config key "h_seg" = S > 0
selects a two-level pass (segments of S chunks in parallel from zero, a short sequential carry over
the segments, then a parallel fix-up of every chunk's state) for both h and dh, same outputs.

Everything runs on packed tokens: a batch [B, T] is treated as B sequences of length T (varlen
with cu_seqlens = 0, T, 2T, ...), so there is one code path.  Where the chunks are: without
cu_seqlens the kernels derive a chunk's sequence and tokens from the program id (constexpr VARLEN
False, no table, no per-call host work); with cu_seqlens one small kernel builds the chunk /
segment tables on the device, sized by bounds known on the host (see _Tables), and the kernels
skip the unused (empty) rows.  Nothing is ever read back to the host.  Grids keep the chunk,
segment and sequence counts in dim 0 (CUDA limits dims 1 and 2 to 65535; _la_common._tile_pid /
_sub_pid), and head indices multiply strides in int64 (head-major views pass 2^31 elements).

Layout: q, k, v, g and grad_o whose last dimension has stride 1 are read in place through their
batch / time / head strides (slices along T, splits of a fused projection, a transposed batch,
any storage offset); only an input whose last stride is not 1 is copied first (.contiguous()).
initial_state and grad_final_state are made contiguous (no copy when they already are).  Every
output and gradient is a new contiguous tensor.

cu_seqlens is never trusted (the host data checks are off by default): sequence n covers tokens
[clamp(cu[n], 0, T), clamp(cu[n+1], start, T)), so no kernel reads or writes out of bounds
whatever cu_seqlens holds; a decreasing pair is an empty sequence (its final state is the initial
state), and tokens outside every sequence get zeros (o and every gradient: with cu_seqlens the
outputs are zero-filled first).  Sequences can overlap only when cu_seqlens is invalid: the rows
they share, and through them their final states, are then unspecified (finite, in bounds; the
chunk-local gate cumsum of a shared token is written by both).  If the overlap makes more chunks
than the table bound cdiv(T, BT) + N, the chunks past it are skipped (their rows keep zeros or
the other sequence's values), still in bounds.

Files: _la_common.py (jit helpers, gate cumsum), _la_state.py (state / dh passes), _la_fwd.py
(output pass), _la_bwd.py (backward), _common.py (strides, varlen bounds); this module holds the
Python side (configs, checks, chunk tables, launchers) and re-exports every kernel.
"""
from __future__ import annotations

import torch
import triton

from . import _common, _la_bwd, _la_common, _la_fwd, _la_state
# every @triton.jit function lives here too (check_triton_configs.py finds the kernels in vars())
for _m in (_la_common, _la_state, _la_fwd, _la_bwd):
    globals().update({_n: _f for _n, _f in vars(_m).items() if isinstance(_f, triton.runtime.jit.KernelInterface)})
del _m

_SUB = _la_common._SUB
SUB = _la_common.SUB
in_place, tok_strides, flat_ok = _common.in_place, _common.tok_strides, _common.flat_ok
_SUPPORTED_DIMS = (64, 128)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_GATE_NONE, _GATE_HEAD, _GATE_KEY = 0, 1, 2
_GATE_NAMES = {_GATE_NONE: "none", _GATE_HEAD: "head", _GATE_KEY: "key"}


# ----------------------------------------------------------------------------- Python side
_MERGED: dict = {}


def _config(K: int, V: int, gate: str, dtype: torch.dtype, backend: str) -> dict:
    """load_config's dict, cached per signature and shared: read it, never change it."""
    key = (K, V, gate, dtype == torch.float32, backend)
    cfg = _MERGED.get(key)
    if cfg is None:
        table = _common.load_tuning(backend, "linear_attn")
        name = f"K{K}_V{V}_{gate}_{'fp32' if dtype == torch.float32 else '16bit'}"
        cfg = dict(table["default"])
        cfg.update(table.get("configs", {}).get(name, {}))
        _MERGED[key] = cfg
    return cfg


def load_config(K: int, V: int, gate: str, dtype: torch.dtype, backend: str = "cuda") -> dict:
    """The tuned config for (K, V, gate mode, dtype class): the json's "default" entry updated
    with the entry keyed "K{K}_V{V}_{gate}_{16bit|fp32}" when present (a new dict each call)."""
    return dict(_config(K, V, gate, dtype, backend))


def _check_inputs(q, k, v, g, initial_state, cu_seqlens):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"linear_attn: {name} must be 4-D [B, T, heads, dim], got shape {tuple(t.shape)}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"linear_attn: {name} dtype {t.dtype} not supported (float16, bfloat16, float32)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"linear_attn: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, K = q.shape
    HKV, V = k.shape[2], v.shape[3]
    if k.shape != (B, T, HKV, K):
        raise ValueError(f"linear_attn: k must be [B, T, HKV, K] = [{B}, {T}, HKV, {K}], got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, HKV):
        raise ValueError(f"linear_attn: v must be [B, T, HKV, V] with HKV = {HKV}, got {tuple(v.shape)}")
    if H % HKV != 0:
        raise ValueError(f"linear_attn: q heads ({H}) must be a multiple of k/v heads ({HKV})")
    if K not in _SUPPORTED_DIMS:
        raise ValueError(f"linear_attn (triton): key dim K (q/k last dim) = {K} not supported, expected one of {_SUPPORTED_DIMS}")
    if V not in _SUPPORTED_DIMS:
        raise ValueError(f"linear_attn (triton): value dim V (v last dim) = {V} not supported, expected one of {_SUPPORTED_DIMS}")
    gate = _GATE_NONE
    if g is not None:
        if g.shape == (B, T, HKV):
            gate = _GATE_HEAD
        elif g.shape == (B, T, HKV, K):
            gate = _GATE_KEY
        else:
            raise ValueError(f"linear_attn: g must be [B, T, HKV] or [B, T, HKV, K], got {tuple(g.shape)}")
        if g.dtype not in (torch.float32, q.dtype):
            raise ValueError(f"linear_attn: g dtype {g.dtype} must be float32 or the input dtype {q.dtype}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"linear_attn: cu_seqlens needs B == 1, got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("linear_attn: cu_seqlens must be a 1-D int32/int64 tensor")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None:
        if initial_state.shape != (N, HKV, K, V) or initial_state.dtype != torch.float32:
            raise ValueError(f"linear_attn: initial_state must be float32 [{N}, {HKV}, {K}, {V}], got "
                             f"{initial_state.dtype} {tuple(initial_state.shape)}")
    return B, T, H, HKV, K, V, N, gate


# ------------------------------------------------------------------- chunk / segment tables
class _Tables:
    """Where the chunks (and the two-level pass's segments) are.

    Without cu_seqlens nothing is built: VARLEN is False and the kernels derive a chunk's
    (seq, t0, t1) and a segment's rows from the program id (_la_common._chunk_of / _seg_of); the
    tensor fields are placeholders the kernels never read.  With cu_seqlens the tables are built
    on the device by one _la_tables_kernel launch, never read back: NT and NSEG are then upper
    bounds known on the host, NT = cdiv(T, BT) + N chunk rows (sum over sequences of
    cdiv(len, BT) <= T / BT + N when the sequences do not overlap) and NSEG = cdiv(NT, S) + N
    segment rows (enough for the segment of every chunk row), rows past the real count empty."""
    __slots__ = ("varlen", "cu", "coff", "chunks", "NT", "S", "segoff", "seg", "NSEG")


_TABLE_BLK, _TABLE_BN = 64, 64   # table rows per program, sequences per scan step


def _make_tables(cu_seqlens, B, T, BT, S, like):
    tab = _Tables()
    tab.S = S
    per = triton.cdiv(T, BT)
    if cu_seqlens is None:
        tab.varlen = False
        tab.cu = tab.coff = tab.chunks = tab.segoff = tab.seg = like
        tab.NT = B * per
        tab.NSEG = B * triton.cdiv(per, S) if S > 0 else 0
        return tab
    dev = like.device
    cu = cu_seqlens if cu_seqlens.device == dev else cu_seqlens.to(dev)
    cu = cu.contiguous()
    N = cu.numel() - 1
    NT = per + N                                   # B == 1 with cu_seqlens
    NSEG = triton.cdiv(NT, S) + N if S > 0 else 0
    buf = torch.empty(2 * (N + 1) + 3 * NT + 4 * NSEG, dtype=torch.int32, device=dev)
    a, b = 2 * (N + 1), 2 * (N + 1) + 3 * NT
    tab.varlen, tab.cu, tab.NT, tab.NSEG = True, cu, NT, NSEG
    tab.coff, tab.segoff = buf[:N + 1], buf[N + 1:a]
    tab.chunks, tab.seg = buf[a:b].view(NT, 3), buf[b:].view(NSEG, 4)
    _la_tables_kernel[(triton.cdiv(max(NT, NSEG, 1), _TABLE_BLK),)](
        cu, tab.coff, tab.chunks, tab.segoff, tab.seg, N, T, NT, NSEG, max(S, 1), BT=BT, HAS_SEG=S > 0,
        BLK=_TABLE_BLK, BN=_TABLE_BN, num_warps=4)
    return tab


def _chunk_tables(cu_seqlens, B, T, BT, device, S=0):
    """Host reference of the tables (for tests; the launchers never call it): cu [N+1] int64,
    coff [N+1] int64, chunk rows (seq, t0, t1) int32 [NT, 3] with the exact NT, and for S > 0 a
    dict of the segment tables (S, segoff, seg rows (seq, first chunk, count, first token), NSEG),
    else None.  Reads cu_seqlens on the host.  Bounds clamped as _common._seq_bounds."""
    if cu_seqlens is None:
        cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int64)[: B + 1]
    else:
        cu = cu_seqlens.detach().to("cpu", torch.int64)
    s, e = _common.sanitize_cu_host(cu, B * T)
    nch = (e - s + BT - 1) // BT
    coff = torch.zeros(len(nch) + 1, dtype=torch.int64)
    coff[1:] = torch.cumsum(nch, 0)
    NT = int(coff[-1])
    seq = torch.repeat_interleave(torch.arange(len(nch)), nch)
    t0 = s[seq] + (torch.arange(NT) - coff[seq]) * BT
    t1 = torch.minimum(t0 + BT, e[seq])
    chunks = torch.stack([seq, t0, t1], 1).to(torch.int32)
    seg = None
    if S > 0:
        nseg = (nch + S - 1) // S
        segoff = torch.zeros(len(nseg) + 1, dtype=torch.int64)
        segoff[1:] = torch.cumsum(nseg, 0)
        NSEG = int(segoff[-1])
        sq = torch.repeat_interleave(torch.arange(len(nseg)), nseg)
        first = (torch.arange(NSEG) - segoff[sq]) * S                       # chunk index in its sequence
        cnt = torch.minimum(nch[sq] - first, torch.full_like(first, S))
        rows = torch.stack([sq, coff[sq] + first, cnt, s[sq] + first * BT], 1).to(torch.int32)
        seg = {"S": S, "segoff": segoff.to(device), "seg": rows.to(device), "NSEG": NSEG}
    return cu.to(device), coff.to(device), chunks.to(device), NT, seg


# ------------------------------------------------------------------------------ launchers
def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides(prefix, t):
    """{prefix}b / {prefix}t / {prefix}h: the batch, time and head strides of t as kernel kwargs."""
    sb, st, sh = tok_strides(t)
    return {f"{prefix}b": sb, f"{prefix}t": st, f"{prefix}h": sh}


def _gate_cumsum(g, gate, tab, HKV, K, BT, aux_warps):
    """Chunk-local cumulative gate, float32 contiguous [B, T, HKV(, K)]; g read through its strides."""
    T = g.shape[1]
    gc = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    if tab.NT > 0:
        _gate_cumsum_kernel[(tab.NT, HKV)](g, gc, tab.chunks, HKV=HKV, K=K, T=T, **_strides("sg", g), BT=BT,
                                           GATE=gate, FLAT=flat_ok(T, g), VARLEN=tab.varlen, num_warps=aux_warps)
    return gc


def _states(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, device, lay):
    """Per-chunk states h [NT, HKV, K, V] (float32 for float32 inputs, else the input dtype) and
    the final states [N, HKV, K, V] float32."""
    BK, BV = min(cfg["h_BK"], K), min(cfg["h_BV"], V)
    h = torch.empty(tab.NT, HKV, K, V, dtype=k.dtype, device=device)
    ht = torch.empty(N, HKV, K, V, dtype=torch.float32, device=device)
    grid = ((K // BK) * (V // BV) * HKV * N,)
    _fwd_h_kernel[grid](k, v, gc if gc is not None else k, h, h0 if h0 is not None else ht, ht, tab.cu, tab.coff,
                        HKV=HKV, K=K, V=V, BT=cfg["BT"], BK=BK, BV=BV, GATE=gate, HAS_H0=h0 is not None,
                        PREC=_prec(k.dtype), **lay["kv"], NTC=tab.NT, VARLEN=tab.varlen,
                        num_warps=cfg["h_warps"], num_stages=cfg["num_stages"])
    return h, ht


def _seg_tiles(cfg, K, V):
    """State tiles of the two-level pass: passes 1-2 use h_BK x h_BV; the elementwise pass 3 uses
    seg_fix_BK (default 32) rows by the whole V."""
    return (min(cfg["h_BK"], K), min(cfg["h_BV"], V), min(cfg.get("seg_fix_BK", 32), K), V)


def _seg_bufs(tab, HKV, K, V, gate, device):
    """Pass-1 outputs of the two-level pass: local end states hs, segment / chunk log decays."""
    hs = torch.empty(max(tab.NSEG, 1), HKV, K, V, dtype=torch.float32, device=device)
    dseg = torch.empty(max(tab.NSEG, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    dcum = torch.empty(max(tab.NT, 1), HKV, K, dtype=torch.float32, device=device) if gate else hs
    return hs, dseg, dcum


def _states_seg(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, device, lay):
    """Two-level state pass (config "h_seg" = S > 0): same outputs as _states (h in its dtype and
    layout, ht float32), see _la_state._fwd_h_seg_kernel for the three passes."""
    BK, BV, BK3, BV3 = _seg_tiles(cfg, K, V)
    BT, T, S = cfg["BT"], lay["kv"]["T"], tab.S
    h = torch.empty(tab.NT, HKV, K, V, dtype=k.dtype, device=device)
    ht = torch.empty(N, HKV, K, V, dtype=torch.float32, device=device)
    hs, dseg, dcum = _seg_bufs(tab, HKV, K, V, gate, device)
    nw, ns = cfg["h_warps"], cfg["num_stages"]
    if tab.NSEG > 0:
        _fwd_h_seg_kernel[((K // BK) * (V // BV) * HKV * tab.NSEG,)](
            k, v, gc if gc is not None else k, h, hs, dseg, dcum, tab.cu, tab.seg,
            HKV=HKV, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate, PREC=_prec(k.dtype), **lay["kv"],
            S=S, NTC=tab.NT, VARLEN=tab.varlen, num_warps=nw, num_stages=ns)
    _seg_carry_kernel[((K // BK) * (V // BV) * HKV * N,)](
        hs, dseg, h0 if h0 is not None else ht, ht, tab.segoff, HKV=HKV, K=K, V=V, BK=BK, BV=BV,
        GATE=gate, HAS_S0=h0 is not None, STORE_ST=True, REVERSE=False, T=T, S=S, BT=BT, VARLEN=tab.varlen,
        num_warps=nw)
    if tab.NT > 0:
        _seg_fix_kernel[((K // BK3) * (V // BV3) * HKV * tab.NT,)](
            h, hs, dcum, tab.chunks, tab.coff, tab.segoff, S, HKV=HKV, K=K, V=V, BK=BK3, BV=BV3,
            GATE=gate, HAS_S0=h0 is not None, REVERSE=False, cu_ptr=tab.cu, T=T, NTOK=lay["kv"]["NTOK"], BT=BT,
            VARLEN=tab.varlen, num_warps=cfg["aux_warps"])
    return h, ht


def _dh_seg(q, do, gc, gate, dht, dh0, scale, tab, N, H, HKV, K, V, cfg, device, lay):
    """Two-level reverse dh pass: fills dh [NT, HKV, K, V] (q's dtype) and, when given, dh0."""
    BK, BV, BK3, BV3 = _seg_tiles(cfg, K, V)
    BT, T, S = cfg["BT"], lay["qdo"]["T"], tab.S
    dh = torch.empty(tab.NT, HKV, K, V, dtype=q.dtype, device=device)
    hs, dseg, dcum = _seg_bufs(tab, HKV, K, V, gate, device)
    nw, ns = cfg["h_warps"], cfg["num_stages"]
    if tab.NSEG > 0:
        _bwd_dh_seg_kernel[((K // BK) * (V // BV) * HKV * tab.NSEG,)](
            q, do, gc if gc is not None else q, dh, hs, dseg, dcum, tab.cu, tab.seg, float(scale),
            H=H, HKV=HKV, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate, PREC=_prec(q.dtype), **lay["qdo"],
            S=S, NTC=tab.NT, VARLEN=tab.varlen, num_warps=nw, num_stages=ns)
    _seg_carry_kernel[((K // BK) * (V // BV) * HKV * N,)](
        hs, dseg, dht if dht is not None else hs, dh0 if dh0 is not None else hs, tab.segoff,
        HKV=HKV, K=K, V=V, BK=BK, BV=BV, GATE=gate, HAS_S0=dht is not None, STORE_ST=dh0 is not None,
        REVERSE=True, T=T, S=S, BT=BT, VARLEN=tab.varlen, num_warps=nw)
    if tab.NT > 0:
        _seg_fix_kernel[((K // BK3) * (V // BV3) * HKV * tab.NT,)](
            dh, hs, dcum, tab.chunks, tab.coff, tab.segoff, S, HKV=HKV, K=K, V=V, BK=BK3, BV=BV3,
            GATE=gate, HAS_S0=dht is not None, REVERSE=True, cu_ptr=tab.cu, T=T, NTOK=lay["qdo"]["NTOK"], BT=BT,
            VARLEN=tab.varlen, num_warps=cfg["aux_warps"])
    return dh


def _layout(q, k, v, do=None):
    """Stride kwargs of the launches: "kv" for the state pass, "qdo" for the dh pass, "qkv" for the
    output pass, "all" for the backward main kernel (q, k, v, dO), "do" for the dq state kernel."""
    B, T = q.shape[:2]
    flat = flat_ok(T, q, k, v, do)
    base = {"T": T, "FLAT": flat}
    kv = {**_strides("sk", k), **_strides("sv", v)}
    lay = {"kv": {**base, "NTOK": B * T, **kv}, "qkv": {**base, **_strides("sq", q), **kv}}
    if do is not None:
        sd = _strides("sd", do)
        lay["qdo"] = {**base, "NTOK": B * T, **_strides("sq", q), **sd}
        lay["all"] = {**lay["qkv"], **sd}
        lay["do"] = {**base, **sd}
    return lay


def _prepare(q, k, v, g, initial_state, cu_seqlens, config, backend):
    B, T, H, HKV, K, V, N, gate = _check_inputs(q, k, v, g, initial_state, cu_seqlens)
    cfg = config if config is not None else _config(K, V, _GATE_NAMES[gate], q.dtype, backend)
    if cfg["BT"] % _SUB != 0:
        raise ValueError(f"linear_attn: config BT = {cfg['BT']} must be a multiple of {_SUB}")
    S = int(cfg.get("h_seg", 0) or 0)
    if S < 0:
        raise ValueError(f"linear_attn: config h_seg = {S} must be >= 0 (0: sequential state pass)")
    q, k, v = in_place(q), in_place(k), in_place(v)
    tab = _make_tables(cu_seqlens, B, T, cfg["BT"], S, q)
    if g is not None:   # a per-head gate [B, T, HKV] is read through all its strides, a per-key one needs a unit last stride
        gc = _gate_cumsum(g if gate == _GATE_HEAD else in_place(g), gate, tab, HKV, K, cfg["BT"], cfg["aux_warps"])
    else:
        gc = None
    h0 = initial_state.contiguous() if initial_state is not None else None
    # with cu_seqlens, tokens outside every sequence get zeros (whether there are any is not
    # known on the host without a sync)
    alloc = torch.zeros if tab.varlen else torch.empty
    return (B, T, H, HKV, K, V, N, gate, cfg, tab, q, k, v, gc, h0, alloc)


def _state_pass(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, device, lay):
    """(chunk states h, final states) by the sequential or (config h_seg > 0) the two-level pass."""
    run = _states if tab.S == 0 else _states_seg
    return run(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, device, lay)


def _output_pass(q, k, v, gc, gate, h, o, scale, tab, H, HKV, K, V, cfg, lay):
    """o of every chunk from its state h (the forward's last kernel)."""
    if tab.NT > 0:
        _fwd_o_kernel[((cfg["BT"] // _SUB) * tab.NT, HKV)](
            q, k, v, gc if gc is not None else q, h, o, tab.chunks, float(scale), H, HKV, K=K, V=V, BT=cfg["BT"],
            GATE=gate, PREC=_prec(q.dtype), **lay["qkv"], VARLEN=tab.varlen, num_warps=cfg["o_warps"],
            num_stages=cfg["num_stages"])


def linear_attn_fwd(q, k, v, g, scale, initial_state, cu_seqlens, *, config=None, backend="cuda"):
    """Forward of sbops::linear_attn. Returns (o [B,T,H,V] in q.dtype, final_state [N,HKV,K,V] float32),
    both contiguous.  q/k/v/g are read in place when their last stride is 1, else copied first."""
    (B, T, H, HKV, K, V, N, gate, cfg, tab, q, k, v, gc, h0, alloc) = _prepare(
        q, k, v, g, initial_state, cu_seqlens, config, backend)
    lay = _layout(q, k, v)
    h, ht = _state_pass(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, q.device, lay)
    o = alloc(B, T, H, V, dtype=q.dtype, device=q.device)
    _output_pass(q, k, v, gc, gate, h, o, scale, tab, H, HKV, K, V, cfg, lay)
    return o, ht


def _chunk_log_decay(gc, gate, B, T, HKV, K, BT):
    """From the chunk-local cumulative gate gc: (the log-decay of each shard chunk's predecessors
    [B * NTs, HKV, K] float32 (exclusive prefix over chunks), the shard's total [B, HKV, K] float32)."""
    per = triton.cdiv(T, BT)
    ends = (torch.arange(per, device=gc.device) * BT + BT - 1).clamp_max(T - 1)
    tot = gc.index_select(1, ends)                                  # [B, per, HKV(, K)]: each chunk's sum
    if gate == _GATE_HEAD:
        tot = tot.unsqueeze(-1).expand(B, per, HKV, K)
    # the prefix over chunks runs along the last dim (torch's scan over an outer dim took 12 ms at
    # 2M tokens on an H200; the inner-dim scan is ~100x faster)
    tot = tot.reshape(B, per, HKV * K).transpose(1, 2).contiguous()   # [B, HKV * K, per]
    incl = tot.cumsum(-1)
    before = (incl - tot).transpose(1, 2).reshape(B * per, HKV, K).contiguous()
    return before, incl[..., -1].reshape(B, HKV, K).contiguous()


def linear_attn_fwd_carry(q, k, v, g, scale, carry, *, config=None, backend="cuda"):
    """Forward of one shard of a sequence-parallel linear attention (LASP-2 style) with one output pass.

    The state pass runs from zero state, giving the shard's own end state S [B, HKV, K, V] float32 and
    its total log-decay Gamma [B, HKV, K] float32 (zeros without a gate).  ``carry(S, Gamma)`` returns
    the state entering the shard, h_in [B, HKV, K, V] float32 (sbops.distributed gathers and folds the
    ranks' (S, Gamma) there).  Every chunk state then gets exp(log-decay of the shard before it) * h_in
    (one elementwise pass over the chunk states) and the output pass runs once: o equals
    linear_attn_fwd(q, k, v, g, scale, h_in, None)[0] up to one extra rounding of the chunk states to
    the inputs' dtype.  No cu_seqlens.  Returns o [B, T, H, V] in q.dtype."""
    (B, T, H, HKV, K, V, N, gate, cfg, tab, q, k, v, gc, _h0, alloc) = _prepare(
        q, k, v, g, None, None, config, backend)
    lay = _layout(q, k, v)
    h, S = _state_pass(k, v, gc, gate, None, tab, N, HKV, K, V, cfg, q.device, lay)
    if gc is not None and tab.NT > 0:
        dec, gamma = _chunk_log_decay(gc, gate, B, T, HKV, K, cfg["BT"])
    else:
        dec, gamma = h, S.new_zeros(B, HKV, K)
    h_in = carry(S, gamma)
    if tuple(h_in.shape) != (B, HKV, K, V) or h_in.dtype != torch.float32 or h_in.device != q.device:
        raise ValueError(f"linear_attn_fwd_carry: carry must return a float32 [B, HKV, K, V] = {[B, HKV, K, V]} "
                         f"tensor on {q.device}, got {h_in.dtype} {list(h_in.shape)} on {h_in.device}")
    o = alloc(B, T, H, V, dtype=q.dtype, device=q.device)
    if tab.NT > 0:
        BKF = min(32, K)
        _carry_fix_kernel[(tab.NT, HKV, K // BKF)](h, dec, h_in.contiguous(), tab.NT // B, HKV, K=K, V=V, BK=BKF,
                                                   GATE=0 if gc is None else 1, num_warps=cfg["aux_warps"])
    _output_pass(q, k, v, gc, gate, h, o, scale, tab, H, HKV, K, V, cfg, lay)
    return o


def linear_attn_dh0(q, k, v, g, do, scale, *, config=None, backend="cuda"):
    """d sum(o * do) / d initial_state with no final-state gradient: only the reverse state pass over
    q and do, [B, HKV, K, V] float32 (sbops.distributed's backward needs it before the full one).
    Equals linear_attn_bwd(q, k, v, g, scale, <any state>, None, do, None)[4]."""
    (B, T, H, HKV, K, V, N, gate, cfg, tab, q, k, v, gc, _h0, alloc) = _prepare(
        q, k, v, g, None, None, config, backend)
    do = in_place(do)
    dh0 = torch.empty(N, HKV, K, V, dtype=torch.float32, device=q.device)
    _dh_pass(q, do, gc, gate, None, dh0, scale, tab, N, H, HKV, K, V, cfg, q.device, _layout(q, k, v, do))
    return dh0


def _dh_pass(q, do, gc, gate, dht, dh0, scale, tab, N, H, HKV, K, V, cfg, device, lay):
    """The reverse state pass, summing the query heads of each KV head: chunk state gradients dh
    [NT, HKV, K, V] (q's dtype), and dh0 filled when given; sequential or (h_seg > 0) two-level."""
    if tab.S > 0:
        return _dh_seg(q, do, gc, gate, dht, dh0, scale, tab, N, H, HKV, K, V, cfg, device, lay)
    BK, BV = min(cfg["h_BK"], K), min(cfg["h_BV"], V)
    dh = torch.empty(tab.NT, HKV, K, V, dtype=q.dtype, device=device)
    _bwd_dh_kernel[((K // BK) * (V // BV) * HKV * N,)](
        q, do, gc if gc is not None else q, dh, dht if dht is not None else dh, dh0 if dh0 is not None else dh,
        tab.cu, tab.coff, float(scale), H=H, HKV=HKV, K=K, V=V, BT=cfg["BT"], BK=BK, BV=BV, GATE=gate,
        HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, PREC=_prec(q.dtype), **lay["qdo"],
        NTC=tab.NT, VARLEN=tab.varlen, num_warps=cfg["h_warps"], num_stages=cfg["num_stages"])
    return dh


def linear_attn_bwd(q, k, v, g, scale, initial_state, cu_seqlens, grad_o, grad_final_state, *,
                    config=None, backend="cuda"):
    """Backward of sbops::linear_attn. Returns (dq, dk, dv, dg, dinitial_state), all new contiguous
    tensors; dg is empty(0) float32 without g, dinitial_state is empty(0) without initial_state.
    q/k/v/g/grad_o are read in place when their last stride is 1, else copied first."""
    (B, T, H, HKV, K, V, N, gate, cfg, tab, q, k, v, gc, h0, alloc) = _prepare(
        q, k, v, g, initial_state, cu_seqlens, config, backend)
    dev = q.device
    BT, NT, VL = cfg["BT"], tab.NT, tab.varlen
    do = in_place(grad_o)
    dht = grad_final_state.contiguous() if grad_final_state is not None else None
    lay = _layout(q, k, v, do)
    h, ht = _state_pass(k, v, gc, gate, h0, tab, N, HKV, K, V, cfg, dev, lay)

    dh0 = torch.empty(N, HKV, K, V, dtype=torch.float32, device=dev) if h0 is not None else None
    dh = _dh_pass(q, do, gc, gate, dht, dh0, scale, tab, N, H, HKV, K, V, cfg, dev, lay)

    dq = alloc(q.shape, dtype=q.dtype, device=dev)
    dk = alloc(k.shape, dtype=k.dtype, device=dev)
    dv = alloc(v.shape, dtype=v.dtype, device=dev)
    # d b is read back only inside the chunks that wrote it: never zero-filled
    db = torch.empty(gc.shape, dtype=torch.float32, device=dev) if gc is not None else None
    dq_ext = bool(cfg.get("dq_state_kernel", False))
    dqs = dq
    if dq_ext and NT > 0:
        # the dO h^T term of dq in its own kernel (V in tiles), so the main kernel holds no state tile
        dqs = torch.empty(q.shape, dtype=torch.float32, device=dev)
        _bwd_dq_state_kernel[(NT, H)](
            do, h, gc if gc is not None else q, dqs, tab.chunks, H=H, HKV=HKV, K=K, V=V, BT=BT,
            BV=min(cfg.get("dq_BV", 32), V), GATE=gate, PREC=_prec(q.dtype), **lay["do"], VARLEN=VL,
            num_warps=cfg["bwd_warps"], num_stages=cfg["num_stages"])
    try:
        if NT > 0:
            _bwd_main_kernel[((BT // _SUB) * NT, HKV)](
                q, k, v, gc if gc is not None else q, h, dh, do, dq, dk, dv, db if db is not None else dq, tab.chunks,
                dqs, float(scale), H=H, HKV=HKV, K=K, V=V, BT=BT, GATE=gate, PREC=_prec(q.dtype), **lay["all"],
                DQ_STATE_EXT=dq_ext, VARLEN=VL, num_warps=cfg["bwd_warps"], num_stages=cfg["num_stages"])
    except triton.runtime.errors.OutOfResources as e:
        # e.g. float32 inputs with K = V = 128 need more shared memory than an H100 block has
        raise RuntimeError(f"linear_attn_bwd (triton): {q.dtype} K={K} V={V} gate={_GATE_NAMES[gate]} does not "
                           f"fit this GPU ({e}); use 16-bit inputs or another backend") from e

    if gc is not None:
        dg = alloc(g.shape, dtype=g.dtype, device=dev)
        BKG = min(32, K) if gate == _GATE_KEY else K
        if NT > 0:
            _bwd_dg_kernel[(NT, HKV, K // BKG)](db, dg, h, ht, dh, tab.chunks, tab.cu, HKV=HKV, K=K, V=V, BT=BT,
                                               BK=BKG, GATE=gate, NTOK=B * T, T=T, VARLEN=VL,
                                               num_warps=cfg["aux_warps"])
    else:
        dg = torch.empty(0, dtype=torch.float32, device=dev)
    if dh0 is None:
        dh0 = torch.empty(0, dtype=torch.float32, device=dev)
    return dq, dk, dv, dg, dh0
