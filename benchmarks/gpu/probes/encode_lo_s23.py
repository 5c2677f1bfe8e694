"""The fp8 prefill encode pre-pass as it was before session 24 (integer e4m3 encoding, _rint's adds, a flag address
and masked store per element), kept only to time it against the library's in one run
(spike_linear_fp8_prefill_split.py enc: "s23" rows).  Its bytes, vth and flags equal the library's; delete it once
that A/B is in RESULTS.md."""
import triton
import triton.language as tl

from sbops._backends.cuda.triton.spike_linear_fp8 import _quotient_rint, _recip, _split_counts
from sbops._backends.cuda.triton.spike_linear_kernels import _e4m3_bits, _row_vth


@triton.jit
def _encode_tile_s23(x, vth, inv, rows, cols, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM: tl.constexpr,
                     FC: tl.constexpr, PLANES: tl.constexpr):
    q = _quotient_rint(x, vth[:, None], inv[:, None])
    offs = rows.to(tl.int64)[:, None] * K + cols[None, :]
    lo, hi, r = _split_counts(q, True, PLANES)
    if PLANES == 2:
        tl.store(hi_ptr + offs, (hi * 16.0).to(hi_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + offs, _e4m3_bits(lo.to(tl.int32)).to(tl.int8), mask=m)
    out = m & (r != 0.0)
    fl = flag_ptr + (rows // BM).to(tl.int64)[:, None] * n_fc + cols[None, :] // FC
    tl.store(fl, tl.full(fl.shape, 1, tl.int8), mask=out)


@triton.jit
def encode_lo_kernel_s23(x_ptr, s_ptr, hi_ptr, vth_ptr, flag_ptr, M, K, n_fc, stride_xm, k_div,
                         R: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr, BM: tl.constexpr,
                         FC: tl.constexpr, PLANES: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rows < M
    xr = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    offs = tl.arange(0, BLOCK)
    if ONE_PASS:
        m = rmask[:, None] & (offs[None, :] < K)
        x = tl.load(xr + offs[None, :], mask=m, other=0.0).to(tl.float32)
        vth = _row_vth(tl.sum(tl.abs(x), axis=1), K, k_div)
        _encode_tile_s23(x, vth, _recip(vth), rows, offs, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM, FC, PLANES)
    else:
        acc = tl.zeros([R, BLOCK], dtype=tl.float32)
        for k0 in range(0, K, BLOCK):
            m = rmask[:, None] & (k0 + offs[None, :] < K)
            acc += tl.abs(tl.load(xr + k0 + offs[None, :], mask=m, other=0.0).to(tl.float32))
        vth = _row_vth(tl.sum(acc, axis=1), K, k_div)
        inv = _recip(vth)
        for k0 in range(0, K, BLOCK):
            cols = k0 + offs
            m = rmask[:, None] & (cols[None, :] < K)
            x = tl.load(xr + cols[None, :], mask=m, other=0.0).to(tl.float32)
            _encode_tile_s23(x, vth, inv, rows, cols, m, s_ptr, hi_ptr, flag_ptr, K, n_fc, BM, FC, PLANES)
    tl.store(vth_ptr + rows, vth, mask=rmask)
