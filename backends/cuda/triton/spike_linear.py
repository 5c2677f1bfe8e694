"""W8ASpike on tensor cores: y = vth * (s @ dequant(weight_q, weight_scale)^T) + bias (launcher).

Paths, picked by the weight's dtype and M (rows of x):

* prefill (M > 32): `spike_linear_kernels._encode_kernel` writes the counts once as 8-bit values
  (int8 for int8 weights, e4m3 for float8_e4m3fn weights), then `_gemm_kernel` runs them on the
  8-bit tensor cores; outlier rows (counts past 127 for int8, past 16 for e4m3) are served exactly
  by digit passes over only the K chunks that need them.
* prefill, "scaled_mm" (float8_e4m3fn weights, bf16 x, per channel; where spike_linear_tuning.FP8_PREFILL
  routes it): its own encode of the counts clamped to +-16, their GEMM on torch._scaled_mm (the vendor fp8
  GEMM, float32 accumulation, row scales vth x channel scales in its epilogue, bias too; a second e4m3
  plane and GEMM where K > N), then a sparse fix-up adds what the planes do not hold, over only the
  FC-column chunks that have such counts (spike_linear_fp8.py).
* prefill, "int_mm" (int8 weights, per channel; where spike_linear_tuning.INT8_PREFILL routes it): the same encode
  writes one int8 plane (counts to 127), torch._int_mm (cuBLASLt int8, exact int32 sums), an epilogue applies vth,
  the channel scales and the bias, and the same sparse fix-up adds counts past 127 (spike_linear_intmm.py).
* decode (M <= 32): `spike_linear_decode._decode_encode_kernel` (vth and the counts as two exact 8-bit
  planes, c = lo + F * hi) then `_decode_kernel` (y^T = W @ s^T: the 8-bit weight tile straight into the
  tensor cores against both planes, a rare exact pass for counts past them), split-K with an in-kernel
  last-arriver reduction.

Scales: `weight_scale [N]` (per output channel) or `[N, K // group_size]` (per group).  Inputs may be
strided with a unit last stride (read in place); the output is contiguous, in x's dtype.  Configs
come from spike_linear_tuning.py (measured winners per shape) or the defaults below.
"""
from __future__ import annotations

import functools

import torch
import triton

from sbops import _platform

from . import _common
from . import spike_linear_tuning as _tuning
from .spike_linear_decode import _decode_encode_kernel, _decode_kernel
from .spike_linear_fp8 import _encode_lo_kernel, _flag_list_kernel, _outlier_fix_grouped_kernel, _outlier_fix_kernel
from .spike_linear_intmm import INT_MM_MAX_K, _int_mm_epilogue_kernel
from .spike_linear_kernels import _encode_kernel, _gemm_kernel

DECODE_MAX_M = 32
NATIVE_DECODE_MAX_M = 8  # kSpikeDecodeMaxRows of backends/cuda/kernels/spike.cuh
# path=None takes the CUDA C++ decode kernel where it applies; False keeps the Triton decode (benchmarks' A/B)
NATIVE_DECODE = True


def native_decode_applies(x: torch.Tensor, weight_q: torch.Tensor, group_size, k: float) -> bool:
    """Whether the CUDA C++ decode kernel (sbops_native::spike_linear_decode, kernels/spike_decode.cu) serves
    this call: CUDA tensors, e4m3 or int8 weights with per-channel scales, 16-bit x of M <= 8 rows, K % 16 == 0,
    and an sbops build with the CUDA kernels.  It takes every count exactly (float16 planes lo + 2048 hi, and a
    float32 residual pass for counts of 2048^2 or more); both weight formats are exact in float16."""
    M, K = x.shape
    return (x.is_cuda and weight_q.dtype in (torch.float8_e4m3fn, torch.int8) and not group_size
            and 1 <= M <= NATIVE_DECODE_MAX_M
            and x.dtype in (torch.bfloat16, torch.float16) and K >= 16 and K % 16 == 0 and 0 < k
            and _native_decode_built())


def _native_decode(x, weight_q, scale, k, bias):
    return torch.ops.sbops_native.spike_linear_decode(x, weight_q, scale, k, bias)


@functools.lru_cache(None)
def _native_decode_built() -> bool:
    return _platform.native_target() == "cuda" and _platform.native_op("spike_linear_decode") is not None


# the int_mm path's GEMM + epilogue on the Hopper int8 wgmma kernel (sbops_native::int8_gemm_sm90) where it exists;
# False (or SBOPS_INT8_GEMM_SM90=0) keeps torch._int_mm + the Triton epilogue (benchmarks' A/B)
INT8_GEMM_SM90 = _platform.env_switch("SBOPS_INT8_GEMM_SM90")
# where the sm_90a kernel runs, int8 per-channel weights of every shape take the int_mm path (not only K > N: the
# kernel is faster than the Triton int8 GEMM there too); SBOPS_INT8_GEMM_SM90_ALL=0 keeps the Triton GEMM for K <= N
INT8_GEMM_SM90_ALL = _platform.env_switch("SBOPS_INT8_GEMM_SM90_ALL")


def int8_gemm_sm90_applies(x: torch.Tensor, K: int) -> bool:
    """Whether the int_mm path's GEMM runs on the sm_90a int8 kernel (kernels/int8_gemm_sm90.cu): an sm_90 device,
    16-bit x (the kernel writes y in x's dtype) and K a multiple of 16 (TMA's 16-byte row strides)."""
    return (INT8_GEMM_SM90 and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and K % 16 == 0
            and _platform.native_kernel_available(
                "int8_gemm_sm90_available", x.device.index if x.device.index is not None else torch.cuda.current_device()))


_NUM_SMS: dict = {}
_COUNTERS: dict = {}         # (device, stream) -> int32 zeros; each decode launch leaves them at zero
_FP8_CAPABLE: dict = {}      # device -> compute capability >= 8.9 (fp8 tensor cores)
# the "scaled_mm" fix-up's (BM rows, BN columns, FC-column chunks): on the H200 (session 13, M = 8192) 64 x 256 x 16
# was within 4% of the best candidate on Gaussian rows at every 7B shape (0.361 / 2.49 / 1.53 ms total)
FIX_CONFIG = (64, 256, 16)
# its warps: 4; with the three-term dot in Horner form (session 20) Triton 3.6 compiles it for sm_90 in 255 registers
# and a 216-byte stack at 4 warps, 254 and none at 8; 8 warps were slower on the H100 (session 21, gate_up at
# M = 65536: 23.90 vs 22.98 ms)
FIX_TILES_WARPS = 4
# the "grouped" fix-up (spike_linear_tuning.FP8_FIX): its (BM, BN, FC), programs per SM, columns of listed chunks
# taken at a time, warps and pipeline stages.  BN = 256 at 16 programs per SM: the best of a launch sweep on gate_up
# (H100, sessions 21 and 25: 20.94 / 20.63 ms against 22.05 / 22.17 with BN = 128 at 8 per SM), then faster at each
# 7B shape in an alternated A/B (H200, session 26, M = 65536: gate_up 1.01x, qkv 1.07x, o 1.06x; M = 8192 gate_up
# 1.06x) and in the fp8 model's TTFT at 1M (21.85 -> 21.57 s).  Session 27: BM = 16, BN = 128 the best of a
# (BM, BN, FC) x programs-per-SM sweep at M = 16384 (generate()'s prefill chunk) and 65536 (H100: gate_up 1.07-1.08x,
# qkv 1.12x against (64, 256, 16)); BM is also the encode's flag granularity, so a row block of 16 flags fewer
# chunks for the fix-up to redo
FIX_GROUPED_CONFIG = (16, 128, 16)
FIX_PROGRAMS_PER_SM = 16
FIX_BATCH_COLS = 128
FIX_WARPS, FIX_STAGES = 8, 3


_SMEM: dict = {}


def _smem_per_block(dev) -> int:
    """Shared memory a block may opt into (bytes): the device's, or the H100 / H200's 227 KiB off the GPU."""
    if dev.type != "cuda":
        return 232448
    if dev not in _SMEM:
        _SMEM[dev] = getattr(torch.cuda.get_device_properties(dev), "shared_memory_per_block_optin", 0) or 101376
    return _SMEM[dev]


def _grouped_fix_launch(BM: int, BN: int, FC: int, dev):
    """(CB, num_stages) of the grouped fix-up for a (BM, BN, FC) config: FIX_BATCH_COLS // FC chunks a batch and
    FIX_STAGES stages, fewer stages, then smaller batches, while the shared memory bound below is over the device's.
    The bound is an upper one for Triton 3.6 on sm_90 (ahead-of-time compiles, session 19-20: 61-184 KiB measured,
    the bound 1.1-1.3x): per stage the weight tile [CB * FC, BN] at 2 bytes, the float16 terms [BM, CB * FC] x 3."""
    budget = _smem_per_block(dev)
    cb, stages = max(1, FIX_BATCH_COLS // FC), FIX_STAGES
    need = lambda: stages * cb * FC * BN * 2 + 6 * BM * cb * FC + 8192  # noqa: E731
    while need() > budget and (stages > 1 or cb > 1):
        if stages > 1:
            stages -= 1
        else:
            cb //= 2
    if need() > budget:
        raise ValueError(f"spike_linear: the grouped fix-up config (BM, BN, FC) = {(BM, BN, FC)} needs about {need()} "
                         f"bytes of shared memory, the device allows {budget}; take smaller tiles")
    return cb, stages


def _sms(dev) -> int:
    if dev.type != "cuda":
        return 132
    if dev not in _NUM_SMS:
        _NUM_SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return _NUM_SMS[dev]


def _bk(group_size, fp8: bool, max_bk: int = 128) -> int:
    """K step of the Triton kernels: max_bk, or the largest of 128 / 64 / 32 (<= max_bk) dividing the group;
    8-bit tensor-core dots take K >= 32, so a group must be a multiple of 32 on CUDA."""
    if group_size is None:
        return max_bk
    for bk in (128, 64, 32):
        if bk <= max_bk and group_size % bk == 0:
            return bk
    raise ValueError(f"spike_linear: group_size must be a multiple of 32 on CUDA (8-bit tensor-core steps; "
                     f"{'float8_e4m3fn' if fp8 else 'int8'} weights), got {group_size}")


def _key(fp8, group_size, N, K, bucket):
    return ("f8" if fp8 else "i8", "ch" if group_size is None else "g", N, K, bucket)


def gemm_config(M, N, K, group_size, fp8, backend="cuda"):
    """(BM, BN, BK, GROUP_M, num_warps, num_stages): the measured table (spike_linear_tuning.py), else
    128x128 tiles on 8 warps, 4 stages.  Per group a float32 accumulator plus each group's dot result,
    and per channel with e4m3 weights a float32 accumulator plus the fp8 MMA's partial one (promoted
    every BK): 128x128 keeps both in registers (64 + 64 per thread)."""
    if backend == "maca":
        t = _common.load_tuning("maca", "spike_linear")["gemm"]
        return t["BM"], t["BN"], _bk(group_size, fp8, t["max_BK"]), t["GROUP_M"], t["num_warps"], t["num_stages"]
    bucket = "mid" if M <= 16384 else "big"
    cfg = _tuning.GEMM.get(_key(fp8, group_size, N, K, bucket))
    if cfg is not None:  # the table's K step, or the largest below it that divides this call's group
        return (cfg[0], cfg[1], _bk(group_size, fp8, cfg[2])) + tuple(cfg[3:])
    # 128x128, 4 stages on every path: on the H200 it beat 128x256 / 256x128 for int8 per channel too
    # (M = 8192: 0.85x vs 0.68x and 1.14x vs 0.84x of bf16 at N = 4608 / 37888, K = 3584)
    return 128, 128, _bk(group_size, fp8), 8, 8, 4


def decode_config(M, N, K, group_size, fp8, dev, backend="cuda"):
    """(BN, BK, SPLIT, num_warps, num_stages); SPLIT 0 = enough K slices for ~4 programs per SM.
    Default (unmeasured shapes): BN = 128 weight rows per program, 8 warps, 4 stages."""
    if backend == "maca":
        t = _common.load_tuning("maca", "spike_linear")["decode"]
        return t["BN"], _bk(group_size, fp8, t["max_BK"]), t["SPLIT"], t["num_warps"], t["num_stages"]
    cfg = _tuning.DECODE.get(_key(fp8, group_size, N, K, "m16" if M <= 16 else "m32"))
    if cfg is None:
        return 128, _bk(group_size, fp8), 0, 8, 4
    return (cfg[0], _bk(group_size, fp8, cfg[1])) + tuple(cfg[2:])


def _counters(dev, n):
    key = (dev, torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0)
    c = _COUNTERS.get(key)
    if c is None or c.numel() < n:
        c = torch.zeros(max(n, 1024), device=dev, dtype=torch.int32)
        _COUNTERS[key] = c
    return c


def _check_group(K, group_size, bk):
    if group_size is not None and group_size % bk:
        raise ValueError(f"spike_linear: group_size={group_size} must be a multiple of BK={bk}")
    return 1 if group_size is None else group_size // bk


def decode_planes(x, k, fp8):
    """The decode pre-pass: (planes [2, M, K] e4m3 or int8, vth [M] float32, rare [M, cdiv(K, 4096)] int32):
    the counts c = planes[0] + F * planes[1] (F = 16 for e4m3, 128 for int8) exactly, except in the
    4096-column chunks of rows marked rare."""
    M, K = x.shape
    block = min(4096, triton.next_power_of_2(K))
    n_ch = triton.cdiv(K, block)
    planes = torch.empty((2, M, K), device=x.device, dtype=torch.float8_e4m3fn if fp8 else torch.int8)
    vth = torch.empty((M,), device=x.device, dtype=torch.float32)
    rare = torch.empty((M, n_ch), device=x.device, dtype=torch.int32)
    _decode_encode_kernel[(M, n_ch)](x, planes[0], planes[1], vth, rare, K, n_ch, x.stride(0), float(k), FP8=fp8,
                                     BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return planes, vth, rare


def _decode(x, weight_q, scale, k, bias, group_size, fp8, y, config, backend="cuda"):
    M, K = x.shape
    N = weight_q.shape[0]
    BN, BK, split, warps, stages = config or decode_config(M, N, K, group_size, fp8, x.device, backend)
    steps = _check_group(K, group_size, BK)
    grid_n = triton.cdiv(N, BN)
    if not split:
        split = max(1, min(triton.cdiv(4 * _sms(x.device), grid_n), triton.cdiv(K, 4 * BK)))
    unit = BK * steps  # a slice never cuts a scale group
    k_per = triton.cdiv(triton.cdiv(K, split), unit) * unit
    split = triton.cdiv(K, k_per)
    planes, vth, rare = decode_planes(x, k, fp8)
    ws = torch.empty((split, M, N), device=x.device, dtype=torch.float32) if split > 1 else y
    cnt = _counters(x.device, grid_n) if split > 1 else vth
    per_channel = group_size is None
    _decode_kernel[(grid_n, split)](
        x, planes[0], planes[1], weight_q, scale, vth, rare, bias if bias is not None else y, y, ws, cnt,
        M, N, K, k_per, rare.shape[1], x.stride(0), weight_q.stride(0), scale.stride(0), 0 if per_channel else scale.stride(1),
        FP8=fp8, HAS_BIAS=bias is not None, PER_CHANNEL=per_channel, GROUP_STEPS=steps,
        SPLIT=split, USE_WS=split > 1, BM=16 if M <= 16 else 32, BN=BN, BK=BK,
        RC=triton.next_power_of_2(rare.shape[1]), num_warps=warps, num_stages=stages)
    return y


def _digit_bits(fp8: bool) -> int:
    return 4 if fp8 else 7


def encode(x, k, fp8, BK, backend="cuda"):
    """The prefill pre-pass: (s, big, vth, nd, flags).  s [M, K]: one 8-bit digit per count (int8, or
    e4m3 bits in int8 storage when fp8); big: the int32 counts of rows with nd > 1 (other rows
    unwritten); nd [M]: digits per row (-1: a count past int32); flags [M, cdiv(K, BK)]: digits per chunk."""
    M, K = x.shape
    dev = x.device
    n_chunks = triton.cdiv(K, BK)
    s = torch.empty((M, K), device=dev, dtype=torch.int8)
    big = torch.empty((M, K), device=dev, dtype=torch.int32)  # only rows with nd > 1 are written/read
    flags = torch.empty((M, n_chunks), device=dev, dtype=torch.int8)
    vth = torch.empty((M,), device=dev, dtype=torch.float32)
    nd = torch.empty((M,), device=dev, dtype=torch.int32)
    bits = _digit_bits(fp8)
    # one program per row; 1024 columns per step (4096 on 8 warps for K >= 8192 measured no faster on the
    # H200: 0.573 vs 0.54 ms at M = 8192, K = 18944, session 12)
    block, warps = (1024, 4) if K >= 1024 else (256, 4)
    _encode_kernel[(M,)](x, s, big, vth, nd, flags, K, n_chunks, x.stride(0), float(k),
                         LIMIT=16 if fp8 else 127, DIGIT_BITS=bits, MAX_DIGITS=triton.cdiv(31, bits), FP8=fp8,
                         CHUNK=BK, ROWS=max(1, block // BK), HW=backend == "cuda" and not _interpreted(_encode_kernel),
                         num_warps=warps)
    return s, big, vth, nd, flags


def _prefill(x, weight_q, scale, k, bias, group_size, fp8, y, config, scale_t=True, backend="cuda"):
    M, K = x.shape
    N = weight_q.shape[0]
    BM, BN, BK, GM, warps, stages = config or gemm_config(M, N, K, group_size, fp8, backend)
    steps = _check_group(K, group_size, BK)
    n_chunks = triton.cdiv(K, BK)
    s, big, vth, nd, flags = encode(x, k, fp8, BK, backend)
    if fp8:  # typed e4m3 operands (weight_q is float8_e4m3fn): loaded straight into the fp8 MMA
        s = s.view(torch.float8_e4m3fn)
    per_channel = group_size is None
    if per_channel:
        n_groups, st_n, st_g = n_chunks, scale.stride(0), 0
    else:
        if scale_t:  # [G, N]: each group's BN scales are one coalesced load
            scale = scale.t().contiguous()
            st_n, st_g = 1, scale.stride(0)
        else:
            st_n, st_g = scale.stride(0), scale.stride(1)
        n_groups = K // group_size
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _gemm_kernel[grid](s, big, weight_q, scale, vth, nd, flags, bias if bias is not None else y, y,
                       M, N, K, n_groups, n_chunks, weight_q.stride(0), st_n, st_g,
                       HAS_BIAS=bias is not None, PER_CHANNEL=per_channel, GROUP_STEPS=steps,
                       FP8=fp8, DIGIT_BITS=_digit_bits(fp8), EVEN_K=K % BK == 0,
                       BM=BM, BN=BN, BK=BK, GROUP_M=GM, num_warps=warps, num_stages=stages)
    return y


def scaled_mm_applies(x, weight_q, group_size, bias) -> bool:
    """The "scaled_mm" prefill path serves this call: e4m3 weights with per-channel scales, bf16 x (the
    row-wise scaled GEMM writes bf16), dims multiples of 16 (its alignment), bias None or bf16, on a
    device with fp8 tensor cores (compute capability 8.9+) or on the CPU (torch's reference GEMM)."""
    if not (weight_q.dtype == torch.float8_e4m3fn and group_size is None and x.dtype == torch.bfloat16
            and x.shape[1] % 16 == 0 and weight_q.shape[0] % 16 == 0
            and (bias is None or bias.dtype == torch.bfloat16)):
        return False
    dev = x.device
    if dev.type == "cpu":
        return True
    if dev.type != "cuda":
        return False
    if dev not in _FP8_CAPABLE:
        _FP8_CAPABLE[dev] = torch.cuda.get_device_capability(dev) >= (8, 9)
    return _FP8_CAPABLE[dev]


def _interpreted(kernel) -> bool:
    """Whether Triton's interpreter runs `kernel` (TRITON_INTERPRET set when it was defined, in any of the spellings
    Triton takes): no libdevice there.  Triton made it an InterpretedFunction then (the class is not imported: the
    interpreter module needs numpy)."""
    return type(kernel).__name__ == "InterpretedFunction"


def encode_lo(x, k, BM, FC=16, planes=1, fp8=True, row_sums=None):
    """The "scaled_mm" path's pre-pass: (s, hi, vth, flags).  s [M, K] int8 storage of the e4m3 bits of
    lo; hi [M, K] float8_e4m3fn = 16 x the second plane (planes = 2; else None): count = lo + hi, with lo =
    clamp(count, -16, 16) for one plane; vth [M] float32; flags [cdiv(M, BM), cdiv(K, FC)] int8: 1 where a
    chunk of FC columns of that row block holds a count the planes do not (or a NaN one).  fp8=False (the
    "int_mm" path, one plane): s holds lo = clamp(count, -127, 127) as int8.  row_sums [M, n] float32: partial sums
    of |x| per row (the SwiGLU epilogue's, spike_linear_swiglu.int8_swiglu), whose total gives vth: x is then read
    once, by the counts, where rows longer than one block are otherwise read twice (rows of one block are read once
    anyway, and their sums are not used)."""
    M, K = x.shape
    s = torch.empty((M, K), device=x.device, dtype=torch.int8)
    hi = torch.empty((M, K), device=x.device, dtype=torch.float8_e4m3fn) if planes == 2 else None
    vth = torch.empty((M,), device=x.device, dtype=torch.float32)
    n_fc = triton.cdiv(K, FC)
    flags = torch.zeros((triton.cdiv(M, BM), n_fc), device=x.device, dtype=torch.int8)
    rows, block, one_pass, warps = encode_lo_launch(K)
    sums = {}
    if row_sums is not None and not one_pass:
        if (row_sums.dtype != torch.float32 or row_sums.dim() != 2 or row_sums.shape[0] != M
                or row_sums.stride(1) != 1 or row_sums.device != x.device):
            raise ValueError(f"encode_lo: row_sums must be float32 [M={M}, n] with unit column stride on x's device "
                             f"{x.device}, got {row_sums.dtype} {tuple(row_sums.shape)} on {row_sums.device}")
        sums = dict(sums_ptr=row_sums, n_sums=row_sums.shape[1], stride_sm=row_sums.stride(0),
                    NS=triton.next_power_of_2(max(row_sums.shape[1], 1)))
    _encode_lo_kernel[(triton.cdiv(M, rows),)](x, s, hi if hi is not None else s, vth, flags, M, K, n_fc, x.stride(0),
                                               float(k), R=rows, BLOCK=block, ONE_PASS=one_pass, BM=BM, FC=FC,
                                               PLANES=planes, HW=not _interpreted(_encode_lo_kernel), FP8=fp8,
                                               num_warps=warps, **sums)
    return s, hi, vth, flags


def encode_lo_launch(K: int):
    """(rows per program, BLOCK, ONE_PASS, warps) of _encode_lo_kernel.  K <= 4096: whole rows (4096 // next_pow2(K)
    of them per program) in registers, x read once; longer rows in 4096-column blocks, read twice.  The best of a
    launch sweep on the H100 (session 25-26, M = 65536): K = 3584 one row of 4096 at 4 warps (0.253 ms; 8 warps
    0.301), K = 18944 with two planes 4096-column blocks at 8 warps (2.003 ms; 2048 at 4 warps 2.496)."""
    if K <= 4096:
        block = triton.next_power_of_2(K)
        return max(1, 4096 // block), block, True, 4
    return 1, 4096, False, 8


def _fix_config(fix_config, defaults, path):
    """The fix-up's (BM, BN, FC[, PLANES]): `defaults` with a benchmark's fix_config (BM, BN[, FC[, PLANES]]) over
    them, checked (BM, BN, FC powers of 2 >= 16, PLANES 1 or 2; PLANES only where defaults has it)."""
    n = len(defaults)
    cfg = tuple(fix_config)
    ok = 2 <= len(cfg) <= n and all(isinstance(v, int) for v in cfg)
    out = cfg + tuple(defaults[len(cfg):]) if ok else (0,) * n
    if not ok or not all(v >= 16 and v & (v - 1) == 0 for v in out[:3]) or (n == 4 and out[3] not in (1, 2)):
        form, planes = ("(BM, BN[, FC[, PLANES]])", " and PLANES 1 or 2") if n == 4 else ("(BM, BN[, FC])", "")
        raise ValueError(f"spike_linear: the {path} config is {form} with BM, BN, FC powers of 2 >= 16{planes}, "
                         f"got {fix_config}")
    return out


def flag_lists(flags):
    """(lst [n_bm, n_fc], cnt [n_bm]) int32 of encode_lo's flags: each row block's flagged chunks, compacted, and
    their count."""
    n_bm, n_fc = flags.shape
    lst = torch.empty((n_bm, n_fc), device=flags.device, dtype=torch.int32)
    cnt = torch.empty((n_bm,), device=flags.device, dtype=torch.int32)
    _flag_list_kernel[(n_bm,)](flags, lst, cnt, n_fc, CB=1024 if n_fc > 256 else 256, num_warps=4)
    return lst, cnt


def _fix_up(x, w, scale, vth, flags, y, BM, BN, FC, planes, grouped_launch, fp8=True, raw=False, lists=None):
    """The sparse fix-up of what the count planes do not hold: the flag lists (or `lists`, flag_lists' result),
    then the "grouped" kernel (grouped_launch = its (CB, num_stages), _grouped_fix_launch) or, with grouped_launch
    None, the "tiles" one; adds into y in place (raw: without vth and the channel scales)."""
    M, K = x.shape
    N = w.shape[0]
    n_bm, n_fc = flags.shape
    lst, cnt = lists if lists is not None else flag_lists(flags)
    if grouped_launch is None:  # "tiles": a program per (row block, BN-column tile)
        _outlier_fix_kernel[(n_bm * triton.cdiv(N, BN),)](
            x, w, scale, vth, lst, cnt, y, M, N, K, n_fc, x.stride(0), w.stride(0), BM=BM, BN=BN, FC=FC, PLANES=planes,
            FP8=fp8, RAW=raw, num_warps=FIX_TILES_WARPS, num_stages=1)
    else:  # "grouped": a program per (row block, group of tiles), about FIX_PROGRAMS_PER_SM per SM in all
        cb, stages = grouped_launch
        n_tiles = triton.cdiv(N, BN)
        groups = min(n_tiles, max(1, triton.cdiv(FIX_PROGRAMS_PER_SM * _sms(x.device), n_bm)))
        tiles_per = triton.cdiv(n_tiles, groups)
        _outlier_fix_grouped_kernel[(n_bm, triton.cdiv(n_tiles, tiles_per))](
            x, w, scale, vth, lst, cnt, y, M, N, K, n_fc, tiles_per, x.stride(0), w.stride(0), BM=BM, BN=BN, FC=FC,
            CB=cb, PLANES=planes, FP8=fp8, RAW=raw, num_warps=FIX_WARPS, num_stages=stages)


def _prefill_scaled_mm(x, weight_q, scale, k, bias, fix_config=None, raw=False):
    """encode (counts as one or two e4m3 planes, once) -> torch._scaled_mm per plane with scale_a = vth [M, 1]
    and scale_b = the channel scales [1, N] -> _outlier_fix_kernel adds vth * scale * (r @ W^T) for what the
    planes do not hold, over only the FC-column chunks of each row block that have some (spike_linear_fp8.py).
    Two planes where K > N (spike_linear_tuning.FP8_TWO_PLANES: a width-reducing projection is taken to be
    a SwiGLU down projection, whose input has ~2.6% of its counts past 16); fix_config (BM, BN[, FC[, PLANES]]).
    raw (bias None): (y_raw, vth) instead, y_raw = s @ W^T in x's dtype without vth and the channel scales, the GEMM
    run with unit tensor-wise scales (see scaled_mm_raw)."""
    M, K = x.shape
    N = weight_q.shape[0]
    BM, BN, FC = FIX_CONFIG if _tuning.FP8_FIX == "tiles" else FIX_GROUPED_CONFIG
    planes = 2 if _tuning.FP8_TWO_PLANES and K > N else 1
    if fix_config:
        BM, BN, FC, planes = _fix_config(fix_config, (BM, BN, FC, planes), "scaled_mm")
    # a config too large for the device fails here, before any work
    launch = None if _tuning.FP8_FIX == "tiles" else _grouped_fix_launch(BM, BN, FC, x.device)
    s, hi, vth, flags = encode_lo(x, k, BM, FC, planes)
    w = weight_q if weight_q.is_contiguous() else weight_q.contiguous()
    scale = scale.contiguous()  # row-wise scaled GEMMs take contiguous scales (a strided [N] view is allowed here)
    if raw:
        one = _unit_scale(x.device)
    def gemm(plane, bias=None):  # the vendor fp8 GEMM of one count plane, vth x channel scales in its epilogue
        if raw:  # unit tensor-wise scales: cuBLASLt's kernels, faster than the row-wise scaled ones
            return torch._scaled_mm(plane, w.t(), scale_a=one, scale_b=one, out_dtype=x.dtype,
                                    use_fast_accum=_tuning.FP8_FAST_ACCUM)
        return torch._scaled_mm(plane, w.t(), scale_a=vth[:, None], scale_b=scale[None, :], bias=bias,
                                out_dtype=x.dtype, use_fast_accum=_tuning.FP8_FAST_ACCUM)

    y = gemm(s.view(torch.float8_e4m3fn), bias)
    if hi is not None:
        y += gemm(hi)
    _fix_up(x, w, scale, vth, flags, y, BM, BN, FC, planes, launch, raw=raw)
    return (y, vth) if raw else y


_UNIT: dict = {}


def _unit_scale(dev):
    """A float32 1.0 on dev (scaled_mm_raw's tensor-wise scales), made once per device (CUDA-graph safe)."""
    t = _UNIT.get(dev)
    if t is None:
        t = torch.ones((), device=dev, dtype=torch.float32)
        # made during a CUDA-graph capture, its fill runs only at replay: kept for that graph alone, not cached
        if not (dev.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _UNIT[dev] = t
    return t


def scaled_mm_raw(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float):
    """The "scaled_mm" path with its output scaling left to the caller: (y_raw, vth) with y_raw [M, N] in x's dtype
    = round(s @ W^T) (float32 accumulation, every count exact as in spike_linear_fwd) and vth [M] float32, so that
    spike_linear's y = vth[:, None] * weight_scale[None, :] * y_raw up to where the rounding to x's dtype happens.
    For a consumer that reads y anyway and applies the scales itself (sbops.nn's SwiGLU: silu_mul_scaled): the
    vendor GEMM then runs with unit tensor-wise scales, faster than with row-wise ones on Hopper (H100, session 28,
    M = 16384, gate_up 37888 x 3584: 3.41 vs 3.92 ms).  Where scaled_mm_applies, M > DECODE_MAX_M, no bias."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if not (scaled_mm_applies(x, weight_q, None, None) and x.shape[0] > DECODE_MAX_M):
        raise ValueError("spike_linear: scaled_mm_raw takes float8_e4m3fn weights with per-channel scales, bfloat16 x "
                         f"of more than {DECODE_MAX_M} rows, K and N multiples of 16, on a GPU with fp8 tensor cores")
    return _prefill_scaled_mm(x, weight_q, weight_scale.to(torch.float32), k, None, raw=True)


def int_mm_applies(x: torch.Tensor, weight_q: torch.Tensor, group_size) -> bool:
    """The "int_mm" prefill path serves this call: int8 weights with per-channel scales, more than 16 rows (the
    vendor GEMM's minimum), K and N multiples of 8 (its alignment), K <= INT_MM_MAX_K (exact int32 sums), float x,
    on a CUDA device or the CPU (torch's reference int8 GEMM: the interpreter's tests)."""
    M, K = x.shape
    N = weight_q.shape[0]
    return (weight_q.dtype == torch.int8 and group_size is None and M > 16 and K % 8 == 0 and N % 8 == 0
            and K <= INT_MM_MAX_K and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and x.device.type in ("cuda", "cpu"))


def int_mm_routed(x: torch.Tensor, K: int, N: int, backend: str = "cuda") -> bool:
    """Whether spike_linear_fwd's own routing (no path, no config) sends an int8 prefill of x's rows with K input
    channels and N outputs to the "int_mm" path (int_mm_applies then says whether that path serves the call): more
    than DECODE_MAX_M rows, the cuda tuning naming "int_mm" for int8 prefill, and K > N unless the tuning takes every
    shape or the Hopper kernel serves them all (INT8_GEMM_SM90_ALL).  x gives the rows, dtype and device only."""
    return (x.numel() // max(x.shape[-1], 1) > DECODE_MAX_M and backend == "cuda" and _tuning.INT8_PREFILL == "int_mm"
            and (K > N or not _tuning.INT8_INT_MM_ONLY_K_GT_N or (INT8_GEMM_SM90_ALL and int8_gemm_sm90_applies(x, K))))


INT_MM_EPILOGUE = (32, 256, 8)  # the int_mm epilogue's (rows, columns, warps) per program


def _prefill_int_mm(x, weight_q, scale, k, bias, fix_config=None, row_sums=None):
    """encode (one int8 plane, flags of counts past 127) -> torch._int_mm (int32) -> the epilogue (vth, scales,
    bias, x's dtype) -> the grouped fix-up of what the plane does not hold (spike_linear_intmm.py);
    fix_config (BM, BN[, FC]) of the fix-up, else FIX_GROUPED_CONFIG; row_sums: encode_lo's."""
    M, K = x.shape
    N = weight_q.shape[0]
    BM, BN, FC = FIX_GROUPED_CONFIG if not fix_config else _fix_config(fix_config, FIX_GROUPED_CONFIG, "int_mm")
    launch = _grouped_fix_launch(BM, BN, FC, x.device)
    s, _, vth, flags = encode_lo(x, k, BM, FC, 1, fp8=False, row_sums=row_sums)
    w = weight_q if weight_q.is_contiguous() else weight_q.contiguous()
    scale = scale.contiguous()
    if int8_gemm_sm90_applies(x, K):   # the GEMM and the epilogue in one Hopper kernel
        y = torch.ops.sbops_native.int8_gemm_sm90(s, w, vth, scale, bias, x.dtype)
    else:
        acc = torch._int_mm(s, w.t())
        y = torch.empty((M, N), device=x.device, dtype=x.dtype)
        br, bc, ew = INT_MM_EPILOGUE
        _int_mm_epilogue_kernel[(triton.cdiv(M, br), triton.cdiv(N, bc))](
            acc, vth, scale, bias if bias is not None else y, y, M, N, HAS_BIAS=bias is not None, BR=br, BC=bc,
            num_warps=ew)
        del acc
    _fix_up(x, w, scale, vth, flags, y, BM, BN, FC, 1, launch, fp8=False)
    return y


def spike_linear_fwd(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, k: float,
                     bias, group_size, config=None, path=None, scale_t=True, backend="cuda"):
    """x [M, K] float (unit last stride; other strides read in place), weight_q [N, K] int8 or
    float8_e4m3fn (unit last stride), weight_scale [N] or [N, K // group_size]; y [M, N] in x's dtype.
    path: None (the CUDA C++ decode kernel where native_decode_applies, else decode when M <= 32, else the
    prefill path the tuning data names) | "cuda_decode" | "decode" (the Triton decode) | "prefill"
    (the Triton GEMM) | "scaled_mm" | "int_mm"; config: a tuple as gemm_config / decode_config return, or (BM, BN[, FC[,
    PLANES]]) of the fix-up kernel for "scaled_mm" ((BM, BN[, FC]) for "int_mm"; benchmarks pass candidates); scale_t: prefill reads per-group
    scales transposed ([G, N], one small copy) instead of in place; backend: whose configs ("cuda", or
    "maca": backends/maca/tuning/spike_linear.json, int8 weights only)."""
    if x.stride(-1) != 1:
        x = x.contiguous()  # the kernels need a unit last stride; this is the only copy
    if weight_q.stride(-1) != 1:
        weight_q = weight_q.contiguous()
    if weight_q.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise TypeError(f"spike_linear: weight_q must be int8 or float8_e4m3fn, got {weight_q.dtype}")
    fp8 = weight_q.dtype == torch.float8_e4m3fn
    if fp8 and backend == "maca":
        raise TypeError("spike_linear: float8_e4m3fn weights need fp8 matrix units, which MetaX C500-class GPUs "
                        "are not known to have; quantize the weight to int8 (sbops.quantize_weight) on MACA")
    M, K = x.shape
    N = weight_q.shape[0]
    if M == 0 or N == 0 or K == 0:
        y = torch.zeros((M, N), device=x.device, dtype=x.dtype)
        return y if bias is None or M == 0 or N == 0 else y.copy_(bias.to(y.dtype).expand(M, N))
    scale = weight_scale.to(torch.float32)
    if group_size == K:  # one group per row is a scale per channel: the per-channel paths serve it
        group_size, scale = None, scale.reshape(N)
    if bias is not None:
        bias = bias.contiguous()
    if path == "cuda_decode" or (path is None and NATIVE_DECODE and config is None and backend == "cuda"):
        if config is None and backend == "cuda" and native_decode_applies(x, weight_q, group_size, k):
            return _native_decode(x, weight_q, scale, k, bias)
        if path == "cuda_decode":
            raise ValueError("spike_linear: the cuda_decode path takes CUDA float8_e4m3fn or int8 weights with per-channel "
                             f"scales, bfloat16 / float16 x with M <= {NATIVE_DECODE_MAX_M} rows and K a multiple of "
                             "16, no config, the cuda tuning backend, and an sbops build with CUDA kernels")
    if path is None:
        path = "decode" if M <= DECODE_MAX_M else "prefill"
        if (path == "prefill" and fp8 and backend == "cuda" and _tuning.FP8_PREFILL == "scaled_mm"
                and scaled_mm_applies(x, weight_q, group_size, bias)):
            return _prefill_scaled_mm(x, weight_q, scale, k, bias)  # (config is the Triton GEMM's)
        if (path == "prefill" and not fp8 and config is None and int_mm_routed(x, K, N, backend)
                and int_mm_applies(x, weight_q, group_size)):
            return _prefill_int_mm(x, weight_q, scale, k, bias)
    if path == "int_mm":
        if not int_mm_applies(x, weight_q, group_size):
            raise ValueError(f"spike_linear: the int_mm path takes int8 weights with per-channel scales, more than 16 "
                             f"rows of float x, K and N multiples of 8 and K <= {INT_MM_MAX_K}, on CUDA or the CPU")
        return _prefill_int_mm(x, weight_q, scale, k, bias, config)
    if path == "scaled_mm":
        if not scaled_mm_applies(x, weight_q, group_size, bias):
            raise ValueError("spike_linear: the scaled_mm path takes float8_e4m3fn weights with per-channel "
                             "scales, bfloat16 x, K and N multiples of 16 and a bfloat16 bias (or none), on a GPU "
                             "with fp8 tensor cores")
        return _prefill_scaled_mm(x, weight_q, scale, k, bias, config)
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if path == "decode":
        if M > DECODE_MAX_M:
            raise ValueError(f"spike_linear: the decode path takes M <= {DECODE_MAX_M} rows, got {M}")
        return _decode(x, weight_q, scale, k, bias, group_size, fp8, y, config, backend)
    return _prefill(x, weight_q, scale, k, bias, group_size, fp8, y, config, scale_t, backend)
