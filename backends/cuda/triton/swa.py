"""Triton sliding-window attention (flash-attention style), forward and backward.

Implements the CUDA kernels of ``sbops::swa_attn`` and ``sbops::swa_attn_bwd`` (see
docs/DESIGN.md): q [B,T,H,D], k/v [B,T,HKV,D] (GQA: query head h reads KV head h // (H//HKV)),
query i attends keys j with ``i - window <= j <= i`` (window < 0: full causal), never across a
``cu_seqlens`` boundary, plus M sink keys/values [M,HKV,D] merged in the same softmax.

Design
------
* Rows are addressed as flattened tokens ``bos + i`` of a ``[B*T]`` token axis; a program gets
  its sequence's ``bos`` (start row) and length ``L`` from ``n*T, T`` or from ``cu_seqlens``.
* Forward: one program per (query head, query block, sequence). It visits only the key blocks
  that intersect the window of its query block, in three phases: the left edge of the window
  (masked), the blocks every row sees completely (no mask), the diagonal (causal mask). Sinks
  are a fourth, first phase over the sink rows. Online softmax in float32 with exp2.
  ``window < 0`` (or a window >= every sequence's length bound: T, or max_seqlen when given) is
  run as ``window = `` that bound.
* Backward (three launches, a fourth with sinks; no atomics, deterministic):
  1. ``delta = rowsum(dO * O) - grad_lse`` (float32, [B,T,H]);
  2. dK/dV: one program per (KV head, key block, sequence) loops over the G query heads of its
     group and over the query blocks whose window covers its keys; dk/dv of the KV head are
     accumulated in registers, so no races and no float32 side buffers;
  3. dQ: one program per (query head, query block, sequence), visiting key blocks like the
     forward (sinks included);
  4. with sinks, dsink_k/dsink_v: one program per (sink block, KV head, chunk of query rows)
     writes float32 partial sums; the chunks are summed with torch.
  Scores/probabilities are recomputed from the saved lse (natural log) as in FlashAttention-2.
* Configs (block sizes, warps, stages) are data: ``<root>/<backend>/tuning/swa.json`` with
  root = two directories above this file. The dQ kernel uses the backward config with
  BLOCK_M and BLOCK_N swapped (long query block, short key block), like the dK/dV kernel's
  transpose.
* Opt-in config keys (absent/false = the path above, unchanged):
  - ``split_masks`` (fwd and bwd configs): the edge phases apply only the mask they need:
    the window's far edge only ``j >= i - window`` with unmasked loads (forward and dQ); in
    the dK/dV kernel the far edge only window + row bound. The diagonal keeps the full mask:
    a runtime choice between two masked loops made Triton pipeline both, 416 KB of shared
    memory at D=128 (over the H100's 227 KB).
  - ``bwd_atomic_dq`` (bwd config): the dK/dV kernel also computes each tile's dq =
    dS^T K and adds it with float32 atomics into a zeroed [B,T,H,D] buffer (the sink kernel adds
    the sinks' terms); the dQ kernel is skipped (5 matmuls per tile instead of 7), the buffer is
    scaled and cast at the end. Not deterministic (atomic order).
* Runtime sizes (T, window, M, R) are not specialized (``do_not_specialize``): one compiled
  kernel serves every length; alignment comes from the strides, which Triton specializes on
  divisibility by 16.

Layout: q, k, v, o and grad_o whose last dimension has stride 1 are read in place through their
batch / time / head strides (slices along T, splits of a fused projection, a transposed batch,
any storage offset); an input whose last stride is not 1 is copied first (.contiguous()).  lse,
grad_lse and the sinks are made contiguous (no copy when they already are).  Every output and
gradient is a new contiguous tensor.

cu_seqlens is never trusted (the host data checks are off by default): the kernels clamp
sequence n to tokens [clamp(cu[n], 0, T), clamp(cu[n+1], start, T)), so nothing is read or
written out of bounds whatever cu_seqlens holds; a decreasing pair is an empty sequence,
overlapping sequences write their shared rows twice (either result), tokens outside every
sequence get zeros (o, lse, dq, dk, dv).  Nothing is read back to the host: one small kernel
builds a table of each sequence's blocks on the device (_blocks: cdiv(T, block) + N rows, unused
rows exit at once), so the grid grows with the tokens, not with N * T.  max_seqlen, when the
caller passes it, must be >= the longest sequence (blocks past it are skipped: their rows get
zeros).  ``window < 0`` (or a window >= max_seqlen, else T) runs as window = that bound.
Every grid is 1-D (head fastest): CUDA limits grid dims 1 and 2 to 65535.

Files: _swa_fwd.py (forward kernel), _swa_bwd.py (backward kernels), _common.py (varlen bounds,
stride rules); this module holds the configs and launchers and re-exports every kernel.
"""
from __future__ import annotations

import torch
import triton

from . import _common, _la_common, _swa_bwd, _swa_fwd
# every @triton.jit function lives here too (check_triton_configs.py finds the kernels in vars())
for _m in (_swa_fwd, _swa_bwd):
    globals().update({_n: _f for _n, _f in vars(_m).items() if isinstance(_f, triton.runtime.jit.KernelInterface)})
del _m
_la_tables_kernel = _la_common._la_tables_kernel   # the varlen block table (see _blocks)
in_place, tok_strides = _common.in_place, _common.tok_strides

_LOG2E = 1.4426950408889634
_SUPPORTED_HEAD_DIMS = (64, 128)
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Query rows per program of the sink-gradient kernel (a multiple of every BLOCK_M we use).
_SINK_CHUNK = 1024


# ------------------------------------------------------------------------------------ configs
def default_config(kind: str, head_dim: int, dtype: torch.dtype, backend: str = "cuda") -> dict:
    """The tuned config for ``kind`` ("fwd" or "bwd"): the entry ``d<D>_<dtype>`` if present,
    else ``d<D>``, else ``default``, from ``<root>/<backend>/tuning/swa.json``."""
    table = _common.load_tuning(backend, "swa")[kind]
    dt = str(dtype).replace("torch.", "")
    for key in (f"d{head_dim}_{dt}", f"d{head_dim}", "default"):
        if key in table:
            return dict(table[key])
    raise KeyError(f"swa.json ({backend}) has no {kind} config for head dim {head_dim}")


_RESOLVED: dict = {}


def _merged_config(config, kind, head_dim, dtype, backend):
    cfg = default_config(kind, head_dim, dtype, backend)
    if config:
        cfg.update(config)
    for key in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"):
        if key not in cfg:
            raise KeyError(f"swa {kind} config lacks {key}: {cfg}")
    return cfg


def _resolve_config(config, kind, head_dim, dtype, backend):
    """The launch config: the tuned one updated with ``config``.  Without ``config`` it is cached
    per signature and shared (read it, never change it)."""
    if config:
        return _merged_config(config, kind, head_dim, dtype, backend)
    key = (kind, head_dim, dtype, backend)
    cfg = _RESOLVED.get(key)
    if cfg is None:
        cfg = _RESOLVED[key] = _merged_config(None, kind, head_dim, dtype, backend)
    return cfg


# ---------------------------------------------------------------------------------- launchers
def _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"swa_attn: q, k, v must be 4-D [B,T,H,D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    HKV = k.shape[2]
    if D not in _SUPPORTED_HEAD_DIMS:
        raise ValueError(f"swa_attn (triton): head dim {D} is not supported; "
                         f"supported head dims: {_SUPPORTED_HEAD_DIMS}")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"swa_attn (triton): dtype {q.dtype} is not supported; "
                         f"supported: {_SUPPORTED_DTYPES}")
    if k.shape != (B, T, HKV, D) or v.shape != k.shape or HKV == 0 or H % HKV != 0:
        raise ValueError(f"swa_attn: k and v must be [B,T,HKV,D] with H % HKV == 0; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"swa_attn: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if (sink_k is None) != (sink_v is None):
        raise ValueError("swa_attn: sink_k and sink_v must be given together")
    if sink_k is not None:
        if sink_k.dim() != 3 or sink_k.shape[1:] != (HKV, D) or sink_v.shape != sink_k.shape:
            raise ValueError(f"swa_attn: sink_k/sink_v must be [M,HKV,D] = [M,{HKV},{D}], got "
                             f"{tuple(sink_k.shape)}, {tuple(sink_v.shape)}")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"swa_attn: cu_seqlens requires B == 1, got B = {B}")




def _strides(prefix, t):
    """{prefix}b / {prefix}t / {prefix}h: the batch, time and head strides of t as kernel kwargs."""
    sb, st, sh = tok_strides(t)
    return {f"{prefix}b": sb, f"{prefix}t": st, f"{prefix}h": sh}


def _prepare(q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen):
    """Common launch parameters: (N, max_len, window_eff, scale, cu, sinks, M, PREC)."""
    B, T, H, D = q.shape
    if cu_seqlens is not None:
        cu = cu_seqlens if cu_seqlens.device == q.device else cu_seqlens.to(q.device)
        cu = cu.contiguous()                               # int32 or int64: the kernels clamp either
        N = cu.numel() - 1
        # no host sync: the grid is sized by max_seqlen when the caller passes it, else by T (no
        # clamped sequence is longer); blocks past their sequence's end exit at once
        max_len = T if max_seqlen is None else max(0, min(int(max_seqlen), T))
    else:
        cu = None
        N, max_len = B, T
    # full causal, or a window no sequence can exceed, is the same as window = max_len
    window_eff = max_len if (window < 0 or window > max_len) else int(window)
    scale = D ** -0.5 if scale is None else float(scale)
    if sink_k is not None and sink_k.shape[0] > 0:
        sk, sv, M = sink_k.to(q.dtype).contiguous(), sink_v.to(q.dtype).contiguous(), sink_k.shape[0]
    else:
        sk, sv, M = None, None, 0
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return N, max_len, window_eff, scale, cu, sk, sv, M, prec


_TABLE_BLK, _TABLE_BN = 64, 64   # block-table rows per program, sequences per scan step


def _blocks(cu, B, T, max_len, block, like):
    """(table, NJ, NB) of the 1-D grids (grid dims 1 and 2 hold at most 65535: no token or sequence
    count goes there).  NB = cdiv(max_len, block) blocks per sequence.  Without cu_seqlens the NJ =
    B * NB block slots come from the program id (table: a placeholder never read).  With cu_seqlens
    one _la_tables_kernel launch builds the block rows (seq, t0, t1) on the device, no host sync:
    NJ = cdiv(T, block) + N rows bound the blocks of non-overlapping sequences (rows past the real
    count are empty and exit at once), so the grid grows with the tokens, not with N * T."""
    NB = triton.cdiv(max_len, block)
    if cu is None:
        return like, B * NB, NB
    N = cu.numel() - 1
    NJ = triton.cdiv(T, block) + N
    buf = torch.empty(N + 1 + 3 * NJ, dtype=torch.int32, device=like.device)
    coff, rows = buf[:N + 1], buf[N + 1:].view(NJ, 3)
    _la_tables_kernel[(triton.cdiv(NJ, _TABLE_BLK),)](
        cu, coff, rows, coff, rows, N, T, NJ, 0, 1, BT=block, HAS_SEG=False, BLK=_TABLE_BLK, BN=_TABLE_BN,
        num_warps=4)
    return rows, NJ, NB


def swa_attn_fwd(q, k, v, window, scale, cu_seqlens, sink_k, sink_v, *, config=None,
                 backend="cuda", max_seqlen=None):
    """Forward of ``sbops::swa_attn``: returns (o [B,T,H,D] in q.dtype, lse [B,T,H] float32),
    both contiguous.  q/k/v are read in place when their last stride is 1, else copied first."""
    _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens)
    q, k, v = in_place(q), in_place(k), in_place(v)
    B, T, H, D = q.shape
    HKV = k.shape[2]
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen)
    # with cu_seqlens, tokens outside every sequence get zeros
    alloc = torch.zeros if cu is not None else torch.empty
    o = alloc(q.shape, device=q.device, dtype=q.dtype)
    lse = alloc((B, T, H), device=q.device, dtype=torch.float32)
    if q.numel() == 0 or N == 0 or max_len == 0:
        return o, lse
    cfg = _resolve_config(config, "fwd", D, q.dtype, backend)
    tab, NJ, NB = _blocks(cu, B, T, max_len, cfg["BLOCK_M"], q)
    _fwd_kernel[(H * NJ,)](
        q, k, v, sk if sk is not None else k, sv if sv is not None else v, o, lse,
        cu if cu is not None else q, tab, T, NB, M, window_eff, scale * _LOG2E,
        **_strides("sq", q), **_strides("sk", k), **_strides("sv", v),
        H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        IS_VARLEN=cu is not None, HAS_SINK=M > 0, PREC=prec,
        FAR_MASK=3 if cfg.get("split_masks", False) else 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o, lse


def _bwd_delta(o, grad_o, grad_lse):
    """delta = rowsum(dO * O) - grad_lse, float32 [B,T,H] (o, grad_o [B,T,H,D] with unit last stride)."""
    B, T, H, D = o.shape
    R = B * T * H
    delta = torch.empty((B, T, H), device=o.device, dtype=torch.float32)
    glse = grad_lse.to(torch.float32).contiguous() if grad_lse is not None else None
    BLOCK_R = 64
    if R > 0:
        _bwd_preprocess_kernel[(triton.cdiv(R, BLOCK_R),)](
            o, grad_o, glse if glse is not None else delta, delta, R, T, H,
            *tok_strides(o), *tok_strides(grad_o), HEAD_DIM=D, BLOCK_R=BLOCK_R, HAS_GLSE=glse is not None)
    return delta


def _launch_dq(q, k, v, sk, sv, grad_o, lse, delta, dq, cu, blocks, M, window_eff, scale, prec, cfg):
    """dQ kernel: long query block, short key block (the dK/dV config transposed); writes dq.
    blocks: _blocks(...) of BLOCK_N-token blocks (the dQ kernel's query blocks)."""
    B, T, H, D = q.shape
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    tab, NJ, NB = blocks
    _bwd_dq_kernel[(H * NJ,)](
        q, k, v, sk if sk is not None else k, sv if sv is not None else v, grad_o, lse,
        delta, dq, cu if cu is not None else q, tab, T, NB, M, window_eff, scale * _LOG2E, scale,
        **_strides("sq", q), **_strides("sk", k), **_strides("sv", v), **_strides("sd", grad_o),
        H=H, HKV=k.shape[2], HEAD_DIM=D, BLOCK_M=BN, BLOCK_N=BM, IS_VARLEN=cu is not None,
        HAS_SINK=M > 0, PREC=prec, FAR_MASK=3 if cfg.get("split_masks", False) else 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _bwd_inputs(q, k, v, o, lse, grad_o):
    """The backward's tensors as the kernels read them: unit last stride (copied only otherwise),
    lse contiguous, grad_o in q's dtype."""
    return (in_place(q), in_place(k), in_place(v), in_place(o), lse.contiguous(),
            in_place(grad_o.to(q.dtype)))


def swa_attn_bwd_dq(q, k, v, o, lse, grad_o, grad_lse, window, scale, *, backend="cuda"):
    """dq of ``sbops::swa_attn`` alone (no varlen, no sinks): the dQ half of ``swa_attn_bwd``,
    for a backward whose dK/dV come from elsewhere (the sm_90 kernel without its fused dQ)."""
    q, k, v, o, lse, grad_o = _bwd_inputs(q, k, v, o, lse, grad_o)
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, None, None, None, None)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if q.numel() == 0:
        return dq
    cfg = _resolve_config(None, "bwd", q.shape[-1], q.dtype, backend)
    _launch_dq(q, k, v, sk, sv, grad_o, lse, _bwd_delta(o, grad_o, grad_lse), dq, cu,
               _blocks(cu, q.shape[0], q.shape[1], max_len, cfg["BLOCK_N"], q), M, window_eff, scale, prec, cfg)
    return dq


def swa_attn_bwd(q, k, v, o, lse, grad_o, grad_lse, window, scale, cu_seqlens, sink_k, sink_v,
                 *, config=None, backend="cuda", max_seqlen=None):
    """Backward of ``sbops::swa_attn``: returns (dq, dk, dv, dsink_k, dsink_v), new contiguous tensors.

    dq/dk/dv in the dtypes of q/k/v; dsink_k/dsink_v [M,HKV,D] in the sinks' dtype, or
    ``torch.empty(0)`` without sinks. grad_lse (None = zero) enters through
    ``delta_i = rowsum(dO_i * O_i) - grad_lse_i``.  q/k/v/o/grad_o are read in place when their
    last stride is 1, else copied first.
    """
    _check_inputs(q, k, v, sink_k, sink_v, cu_seqlens)
    q, k, v, o, lse, grad_o = _bwd_inputs(q, k, v, o, lse, grad_o)
    B, T, H, D = q.shape
    HKV = k.shape[2]
    N, max_len, window_eff, scale, cu, sk, sv, M, prec = _prepare(
        q, k, v, window, scale, cu_seqlens, sink_k, sink_v, max_seqlen)
    # with cu_seqlens, tokens outside every sequence get no gradient (zeros)
    alloc = torch.zeros if cu is not None else torch.empty
    dq, dk, dv = (alloc(x.shape, device=x.device, dtype=x.dtype) for x in (q, k, v))
    if sink_k is not None:
        dsk = torch.zeros_like(sink_k, memory_format=torch.contiguous_format)
        dsv = torch.zeros_like(sink_v, memory_format=torch.contiguous_format)
    else:
        dsk = torch.empty(0, device=q.device, dtype=torch.float32)
        dsv = torch.empty(0, device=q.device, dtype=torch.float32)
    if q.numel() == 0 or N == 0 or max_len == 0:
        return dq, dk.zero_(), dv.zero_(), dsk, dsv
    cfg = _resolve_config(config, "bwd", D, q.dtype, backend)
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    split = bool(cfg.get("split_masks", False))
    atomic_dq = bool(cfg.get("bwd_atomic_dq", False))
    # bwd_atomic_dq: dq accumulates unscaled in float32 (zeros: rows outside every sequence
    # stay 0) through atomics of the dK/dV (and sink) kernels; no dQ kernel
    dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic_dq else dq

    delta = _bwd_delta(o, grad_o, grad_lse)
    qk_scale = scale * _LOG2E
    cu_arg = cu if cu is not None else q
    blocks = _blocks(cu, B, T, max_len, BN, q)   # key blocks of dK/dV = query blocks of dQ
    _bwd_dkdv_kernel[(HKV * blocks[1],)](
        q, k, v, grad_o, lse, delta, dk, dv, cu_arg, blocks[0], T, blocks[2], window_eff, qk_scale, scale, dq_acc,
        **_strides("sq", q), **_strides("sk", k), **_strides("sv", v), **_strides("sd", grad_o),
        H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, IS_VARLEN=cu is not None,
        PREC=prec, FAR_MASK=4 if split else 1, ATOMIC_DQ=atomic_dq, **launch)
    if not atomic_dq:
        _launch_dq(q, k, v, sk, sv, grad_o, lse, delta, dq, cu, blocks, M, window_eff, scale, prec, cfg)
    if M > 0:
        n_chunks = B * triton.cdiv(T, _SINK_CHUNK)
        part_k = torch.empty((n_chunks, M, HKV, D), device=q.device, dtype=torch.float32)
        part_v = torch.empty_like(part_k)
        # rows outside every sequence (past cu[N]) must not contribute: the kernel bounds the
        # rows by clamp(cu[N], 0, T) on the device (no host sync); sink rows play the keys of
        # the dK/dV kernel: same block shapes
        _bwd_sink_kernel[(n_chunks, HKV, triton.cdiv(M, BN))](
            q, sk, sv, grad_o, lse, delta, part_k, part_v, cu_arg, T, N, M, qk_scale, scale,
            dq_acc, *tok_strides(q), *tok_strides(grad_o), H=H, HKV=HKV, HEAD_DIM=D, BLOCK_M=BM,
            BLOCK_N=BN, CHUNK=_SINK_CHUNK, PREC=prec, ATOMIC_DQ=atomic_dq, IS_VARLEN=cu is not None,
            **launch)
        dsk = part_k.sum(0).to(sink_k.dtype)
        dsv = part_v.sum(0).to(sink_v.dtype)
    if atomic_dq:
        dq = dq_acc.mul_(scale).to(q.dtype)
    return dq, dk, dv, dsk, dsv
