"""Programmatic dependent launch of the decode step's kernels (sm_90+; SBOPS_DECODE_PDL unset or "all", the default
since session 36; "1" the decode GEMVs only, "0" none; pdl_launch.cuh
and backends/cuda/triton/_common.pdl_options): a kernel launched as a programmatic dependent waits for the kernel
before it before it touches memory, and lets the kernel after it launch at its own start.  So a chain of such kernels, each
reading what the one just before it wrote, must give exactly the results of the same calls made one at a time with a
device synchronisation after each, eagerly and replayed from a CUDA graph.  On other GPUs the chain runs plainly
(the same test).  CPU: the Triton launch options."""
import os
import pathlib
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernel modules load as the other tests do

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import triton_kernels  # noqa: E402
from conftest import requires_cuda  # noqa: E402

import sbops  # noqa: E402

_common = triton_kernels.load("_common")


def test_pdl_launch_options_are_off_for_cpu_tensors_and_when_switched_off(monkeypatch):
    kernel = triton_kernels.load("fused_norm")._rms_norm_kernel
    assert _common.pdl_options(kernel, torch.zeros(2)) == {"PDL": False}
    monkeypatch.setattr(_common, "PDL", False)
    if torch.cuda.is_available():
        assert _common.pdl_options(kernel, torch.zeros(2, device="cuda")) == {"PDL": False}


def test_pdl_setting_is_on_unless_set_otherwise():
    """SBOPS_DECODE_PDL for the Triton kernels, read as pdl_launch.cuh reads it: unset or "all" (any case, blanks
    ignored) on; "1" (the decode GEMVs only), "0", "" and the like off."""
    assert _common.pdl_setting(None)
    for v in ("all", " ALL ", "a ll", "All\t"):
        assert _common.pdl_setting(v), v
    for v in ("1", "0", "", "off", "no", "gemv"):
        assert not _common.pdl_setting(v), v


def _chain(a, w, cos, sin, pos, kc, vc, state, sync):
    """A long GEMM, then the decode step's kernels, each reading the previous one's output at once."""
    fn, frs, fga = (triton_kernels.load(n) for n in ("fused_norm", "fused_rope_swiglu", "fused_gla_act"))
    step = torch.cuda.synchronize if sync else (lambda: None)
    x = (a @ a)[:2, :3584] / 64                                   # a long GEMM, then a plain torch kernel
    y, h = fn.rms_norm(x, w, 1e-6, residual=x, prenorm=True)
    step()
    g = frs.silu_mul(y, h)
    step()
    q, k = frs.rope(g.view(1, 2, 28, 128), g[:, :512].view(1, 2, 4, 128), cos, sin)
    step()
    qa, ka, ga = fga.gla_act(q, k, g[:, 512:1024].view(1, 2, 512), 16.0)
    step()
    kk, vv = ka[0], ga[0]                                         # [2, 4, 128]: two sequences' new rows
    sbops.swa_cache_write(kk, vv, kc, vc, pos)
    step()
    o = sbops.swa_decode(qa[0], kc, vc, pos + 1, 4096)            # 33-ish splits at B = 2: the combine runs
    step()
    la = sbops.linear_attn_decode(o, kk, vv, ga[0], state)
    step()
    return [x, y, h, g, q, k, qa, ka, ga, o, la, kc.clone(), vc.clone(), state.clone()]


@requires_cuda
def test_a_chain_of_decode_kernels_reads_what_each_kernel_before_it_wrote():
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    a = torch.randn(4096, 4096, dtype=dt, device=dev)
    w = torch.randn(3584, dtype=dt, device=dev)
    ang = torch.rand(1, 2, 1, 128, device=dev) * 6
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    caches = [torch.randn(2, 4097, 4, 128, dtype=dt, device=dev) for _ in range(2)]
    state0 = torch.randn(2, 4, 128, 128, device=dev)
    pos = torch.tensor([5, 900], device=dev)         # the two sequences' new positions

    def fresh():
        return [c.clone() for c in caches] + [state0.clone()]

    ref = _chain(a, w, cos, sin, pos, *fresh(), sync=True)
    for _ in range(3):
        got = _chain(a, w, cos, sin, pos, *fresh(), sync=False)
        assert all(torch.equal(r, g) for r, g in zip(ref, got))

    bufs = fresh()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _chain(a, w, cos, sin, pos, *fresh(), sync=False)              # warm-up (compiles) off the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _chain(a, w, cos, sin, pos, *bufs, sync=False)
    for src, dst in zip(fresh(), bufs):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(r, g) for r, g in zip(ref, out))
