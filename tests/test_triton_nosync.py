"""The Triton linear_attn / swa_attn launchers never read GPU data back to the host (issue 18, "no
host syncs", "cheap wrappers"), and their varlen results stay right.

Without cu_seqlens the linear-attention kernels find their chunks from the program id (no table);
with cu_seqlens one kernel builds the chunk / segment tables on the device, sized by host-known
bounds, and swa sizes its grid by T (or max_seqlen).  Checked here:
  * per-call wrapper work (CPU, kernels replaced by recorders): the launches made and the aten ops
    run, with no op that reads a tensor's value on the host (_local_scalar_dense: .item(), int(),
    bool(), .tolist()) and no host tables (arange, cumsum, repeat_interleave);
  * the device tables against the host reference (_chunk_tables), for valid and invalid cu_seqlens;
  * varlen results (forward and gradients) against float64 for empty sequences, one long sequence,
    many short ones and cu_seqlens that leave tokens uncovered (zeros there), every access
    bounds-checked and every never-written buffer NaN-poisoned (interpreter, CPU);
  * invalid (unsorted, overlapping) cu_seqlens: in bounds, finite, final states still exact on the
    sequential state pass;
  * on a GPU: fwd + bwd with cu_seqlens under torch.cuda.set_sync_debug_mode("error").
"""
import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"   # before the kernels are decorated

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402
import triton_kernels  # noqa: E402
from conftest import requires_cuda, without_host_sync  # noqa: E402

if not HAS_CUDA:
    triton_kernels.install_interpreter_shims()

LA = triton_kernels.load("linear_attn")
SWA = triton_kernels.load("swa")
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="interpreter tests run only without a GPU")
TOL = 1e-5


def rel(out, ref):
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _cfg(gate, S=0):
    """16-row chunks and 32x32 state tiles: a tiny T spans several chunks, segments and tiles."""
    return dict(LA.load_config(64, 64, gate, torch.float32), BT=16, h_BK=32, h_BV=32, h_seg=S)


_SWA_CFG = ({"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1})


# ------------------------------------------------------------------- per-call wrapper work
class _Launches:
    """Replaces every JIT kernel global of a launcher module by a recorder (no kernel runs)."""

    def __init__(self, mod, monkeypatch):
        import triton
        self.names = []
        for name, fn in list(vars(mod).items()):
            if isinstance(fn, triton.runtime.jit.KernelInterface):
                monkeypatch.setattr(mod, name, self._fake(name))

    def _fake(self, name):
        rec = self

        class Fake:
            def __getitem__(self, grid):
                return lambda *a, **kw: rec.names.append(name)
        return Fake()


class _AtenOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


_HOST_READS = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "item"}
# reads that a dispatch mode does not see on CPU tensors (.tolist(), .numpy() read the storage)
_READ_METHODS = ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


class _NoHostReads:
    """Inside: any of _READ_METHODS on a tensor raises."""

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in _READ_METHODS}

        def no_read(*a, **kw):
            raise AssertionError("a tensor value was read back to the host")
        for n in _READ_METHODS:
            setattr(torch.Tensor, n, no_read)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)
_HOST_TABLES = {"arange", "cumsum", "repeat_interleave", "stack", "clamp", "maximum", "minimum", "_to_copy"}


def _la_inputs(B, T, gate, n_seq=None, device="cpu", dtype=torch.float32, H=2, HKV=1, D=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, h, D, generator=gen) for h in (H, HKV, HKV))
    g = None if gate == "none" else torch.nn.functional.logsigmoid(
        torch.randn((B, T, HKV) if gate == "head" else (B, T, HKV, D), generator=gen)) / 4
    N = B if n_seq is None else n_seq
    h0 = torch.randn(N, HKV, D, D, generator=gen)
    cast = lambda x, dt: None if x is None else x.to(device=device, dtype=dt)  # noqa: E731
    return cast(q, dtype), cast(k, dtype), cast(v, dtype), cast(g, torch.float32), h0.to(device)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("S", [0, 2])
def test_la_wrapper_reads_nothing_back_and_builds_no_host_tables(monkeypatch, varlen, S):
    q, k, v, g, h0 = _la_inputs(1, 70, "key", n_seq=3 if varlen else None)
    cu = torch.tensor([0, 20, 20, 70], dtype=torch.int32) if varlen else None
    rec = _Launches(LA, monkeypatch)
    with _AtenOps() as mode, _NoHostReads():
        LA.linear_attn_fwd(q, k, v, g, 0.125, h0, cu, config=_cfg("key", S))
    fwd = list(rec.names)
    assert not _HOST_READS & set(mode.ops), mode.ops
    assert not _HOST_TABLES & set(mode.ops), mode.ops
    state = ["_fwd_h_kernel"] if S == 0 else ["_fwd_h_seg_kernel", "_seg_carry_kernel", "_seg_fix_kernel"]
    assert fwd == ["_la_tables_kernel"] * varlen + ["_gate_cumsum_kernel"] + state + ["_fwd_o_kernel"]
    rec.names.clear()
    dO, dF = torch.randn_like(q), torch.randn_like(h0)
    with _AtenOps() as mode, _NoHostReads():
        LA.linear_attn_bwd(q, k, v, g, 0.125, h0, cu, dO, dF, config=_cfg("key", S))
    assert not _HOST_READS & set(mode.ops), mode.ops
    assert not _HOST_TABLES & set(mode.ops), mode.ops
    assert rec.names.count("_la_tables_kernel") == int(varlen)
    # outputs are zero-filled only with cu_seqlens (uncovered tokens cannot be known on the host)
    assert ("zero_" in mode.ops or "zeros" in mode.ops or "fill_" in mode.ops) == varlen


@pytest.mark.parametrize("varlen", [False, True])
def test_swa_wrapper_reads_nothing_back(monkeypatch, varlen):
    q = torch.randn(1, 40, 2, 64)
    k = v = torch.randn(1, 40, 1, 64)
    cu = torch.tensor([0, 13, 13, 40], dtype=torch.int32) if varlen else None
    rec = _Launches(SWA, monkeypatch)
    dO = torch.randn_like(q)
    with _AtenOps() as mode, _NoHostReads():
        o, lse = SWA.swa_attn_fwd(q, k, v, -1, None, cu, None, None)
        SWA.swa_attn_bwd(q, k, v, o, lse, dO, None, 5, None, cu, None, None)
    assert not _HOST_READS & set(mode.ops), mode.ops
    tab = ["_la_tables_kernel"] * varlen   # the device block table (fwd: query blocks; bwd: key blocks)
    assert rec.names == tab + ["_fwd_kernel", "_bwd_preprocess_kernel"] + tab + ["_bwd_dkdv_kernel", "_bwd_dq_kernel"]


# ------------------------------------------------------------------------------ grid limits
class _Grids(_Launches):
    """Like _Launches, recording (kernel, grid) pairs."""

    def _fake(self, name):
        rec = self

        class Fake:
            def __getitem__(self, grid):
                return lambda *a, **kw: rec.names.append((name, tuple(grid)))
        return Fake()


def _check_grids(launches):
    assert launches
    for name, grid in launches:
        assert len(grid) <= 3 and grid[0] < 2 ** 31, (name, grid)
        assert all(d <= 65535 for d in grid[1:]), f"{name}: grid {grid} has a dim 1 / 2 over 65535 (CUDA's limit)"
    assert max(g[0] for _, g in launches) > 65535  # the sizes below would overflow dims 1 / 2


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("S", [0, 2])
def test_la_grids_keep_chunk_and_sequence_counts_out_of_dims_1_and_2(monkeypatch, varlen, S):
    """> 65535 chunks (4.5M tokens at BT 64) and, varlen, > 65535 sequences: every count that grows
    with the tokens or the sequences goes in grid dim 0 (meta tensors: nothing is allocated or run)."""
    T, N = 70000 * 64, 70000 if varlen else 1
    q, g = torch.empty(1, T, 1, 64, device="meta"), torch.empty(1, T, 1, 64, device="meta")
    h0 = torch.empty(N, 1, 64, 64, device="meta")
    cu = torch.empty(N + 1, dtype=torch.int32, device="meta") if varlen else None
    cfg = dict(LA.load_config(64, 64, "key", torch.float32), BT=64, h_seg=S)
    rec = _Grids(LA, monkeypatch)
    LA.linear_attn_fwd(q, q, q, g, 0.125, h0, cu, config=cfg)
    LA.linear_attn_bwd(q, q, q, g, 0.125, h0, cu, q, h0, config=cfg)
    _check_grids(rec.names)


@pytest.mark.parametrize("varlen", [False, True])
def test_swa_grids_keep_block_and_sequence_counts_out_of_dims_1_and_2(monkeypatch, varlen):
    T, N = 70000 * 16, 70000
    q, kv = torch.empty(1, T, 2, 64, device="meta"), torch.empty(1, T, 1, 64, device="meta")
    sk = torch.empty(3, 1, 64, device="meta")
    cu = torch.empty(N + 1, dtype=torch.int32, device="meta") if varlen else None
    lse = torch.empty(1, T, 2, device="meta")
    rec = _Grids(SWA, monkeypatch)
    SWA.swa_attn_fwd(q, kv, kv, 64, None, cu, sk, sk, config=_SWA_CFG[0])
    SWA.swa_attn_bwd(q, kv, kv, q, lse, q, None, 64, None, cu, sk, sk, config=_SWA_CFG[1])
    _check_grids(rec.names)
    if varlen:   # the block table bounds the grid by the tokens, not by N * T
        fwd = dict(rec.names)["_fwd_kernel"]
        assert fwd == (2 * (triton_cdiv(T, 16) + N),)


def triton_cdiv(a, b):
    return -(-a // b)


# -------------------------------------------------------------- device tables vs host reference
TABLE_CASES = {
    # name: (cu, T, BT, S)
    "empty_and_partial": ([0, 5, 5, 85], 85, 16, 2),
    "many_short": ([0, 1, 2, 4, 7, 11, 16, 22, 29, 37], 37, 16, 1),
    "uncovered_edges": ([5, 17, 30], 40, 16, 3),
    "no_sequences": ([0], 10, 16, 2),
    "decreasing_overlap": ([0, 20, 9, 33], 33, 16, 2),
    "out_of_range": ([-7, 17, 25, 480], 40, 16, 2),
    "overlap_past_the_bound": ([0, 64, 0, 64], 64, 16, 1),
}


@cpu_only
@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_device_tables_match_the_host_reference(case):
    cu, T, BT, S = TABLE_CASES[case]
    cu = torch.tensor(cu, dtype=torch.int32)
    with triton_kernels.bounds_checked():
        tab = LA._make_tables(cu, 1, T, BT, S, torch.zeros(1, T, 1, 1))
    _, coff, chunks, NT, seg = LA._chunk_tables(cu, 1, T, BT, "cpu", S)
    N = cu.numel() - 1
    assert tab.varlen and tab.NT == triton_cdiv(T, BT) + N and tab.NSEG == triton_cdiv(tab.NT, S) + N
    n, ns = min(NT, tab.NT), min(seg["NSEG"], tab.NSEG)
    assert torch.equal(tab.chunks[:n], chunks[:n]) and not tab.chunks[n:].any()
    assert torch.equal(tab.seg[:ns], seg["seg"][:ns]) and not tab.seg[ns:].any()
    assert torch.equal(tab.coff.long(), coff.clamp(max=tab.NT))
    assert torch.equal(tab.segoff.long(), seg["segoff"].clamp(max=tab.NSEG))
    if case != "overlap_past_the_bound":     # valid or mildly overlapping cu: everything fits
        assert NT <= tab.NT and seg["NSEG"] <= tab.NSEG


def test_no_cu_seqlens_means_no_table():
    tab = LA._make_tables(None, 3, 37, 16, 2, torch.zeros(1))
    assert not tab.varlen and tab.NT == 3 * 3 and tab.NSEG == 3 * 2


# ------------------------------------------------------------------ varlen results (interpreter)
@pytest.fixture
def poison_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled float tensors: reading a never-written buffer row
    (an empty table row's state, say) shows up as a NaN in the results."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(x):
        return x.fill_(float("nan")) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


LA_PATTERNS = {
    # name: (T, cu, gate)
    "empty_sequences": (30, [0, 0, 7, 7, 30, 30], "key"),
    "single_long": (50, [0, 50], "head"),
    "many_short": (37, [0, 1, 2, 4, 7, 11, 16, 22, 29, 37], "key"),
    "uncovered_tokens": (40, [5, 17, 30], "key"),
}


def _la_run(q, k, v, g, h0, cu, do, dF, cfg):
    o, ht = LA.linear_attn_fwd(q, k, v, g, 0.125, h0, cu, config=cfg)
    return (o, ht) + tuple(LA.linear_attn_bwd(q, k, v, g, 0.125, h0, cu, do, dF, config=cfg))


def _pad(x, a, T):
    """x [1, b - a, ...] placed at tokens [a, b) of a zero [1, T, ...]."""
    return torch.cat([x.new_zeros((1, a) + x.shape[2:]), x, x.new_zeros((1, T - a - x.shape[1]) + x.shape[2:])], 1)


def _la_ref_covered(q, k, v, g, h0, cu, do, dF):
    """float64 (o, final state, dq, dk, dv, dg, dh0) for sorted cu_seqlens covering the tokens
    [cu[0], cu[-1]); zeros at the other tokens; dg None without g."""
    a, b, T = int(cu[0]), int(cu[-1]), q.shape[1]
    cut = lambda x: None if x is None else x[:, a:b].detach().cpu().double().requires_grad_()  # noqa: E731
    leaves = [cut(q), cut(k), cut(v), cut(g), h0.detach().cpu().double().requires_grad_()]
    ro, rht = R.ref_linear_attn(*leaves[:4], 0.125, leaves[4], (cu - a).cpu())
    loss = (ro * do[:, a:b].cpu().double()).sum() + (rht * dF.cpu().double()).sum()
    grads = iter(torch.autograd.grad(loss, [x for x in leaves if x is not None]))
    dq, dk, dv = (_pad(next(grads), a, T) for _ in range(3))
    dg = _pad(next(grads), a, T) if g is not None else None
    return [_pad(ro.detach(), a, T), rht.detach(), dq, dk, dv, dg, next(grads)]


@cpu_only
@pytest.mark.parametrize("S", [0, 2])
@pytest.mark.parametrize("pattern", list(LA_PATTERNS))
def test_la_varlen_patterns_match_float64(pattern, S, poison_empty):
    T, cu, gate = LA_PATTERNS[pattern]
    cu = torch.tensor(cu, dtype=torch.int32)
    q, k, v, g, h0 = _la_inputs(1, T, gate, n_seq=cu.numel() - 1, seed=1)
    gen = torch.Generator().manual_seed(2)
    do, dF = torch.randn(q.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    with triton_kernels.bounds_checked():
        got = _la_run(q, k, v, g, h0, cu, do, dF, _cfg(gate, S))
    ref = _la_ref_covered(q, k, v, g, h0, cu, do, dF)
    for name, a, r in zip(["o", "final_state", "dq", "dk", "dv", "dg", "dinitial_state"], got, ref):
        assert a.is_contiguous() and torch.isfinite(a).all(), name
        assert rel(a, r) <= TOL, f"{name} rel err {rel(a, r)}"
        if name != "final_state" and name != "dinitial_state" and int(cu[0]) > 0:
            assert not a[:, :int(cu[0])].any() and not a[:, int(cu[-1]):].any(), f"{name}: uncovered rows not zero"


@cpu_only
@pytest.mark.parametrize("S", [0, 2])
def test_la_batched_arithmetic_chunks_match_float64(S, poison_empty):
    # no cu_seqlens: chunks and segments come from the program id (B = 2, partial last chunk)
    q, k, v, g, h0 = _la_inputs(2, 37, "key", seed=3)
    gen = torch.Generator().manual_seed(4)
    do, dF = torch.randn(q.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    got = _la_run(q, k, v, g, h0, None, do, dF, _cfg("key", S))
    leaves = [x.double().requires_grad_() for x in (q, k, v, g, h0)]
    ro, rht = R.ref_linear_attn(*leaves[:4], 0.125, leaves[4])
    loss = (ro * do.double()).sum() + (rht * dF.double()).sum()
    for name, a, r in zip(["o", "final_state", "dq", "dk", "dv", "dg", "dh0"], got,
                          [ro, rht] + list(torch.autograd.grad(loss, leaves))):
        assert rel(a, r) <= TOL, f"{name} rel err {rel(a, r)}"


@cpu_only
@pytest.mark.parametrize("S", [0, 2])
@pytest.mark.parametrize("cu", [[0, 64, 0, 64], [40, 10, 64, 0, 30]], ids=["overlap_past_bound", "unsorted"])
def test_la_invalid_cu_in_bounds_and_finite(cu, S):
    cu = torch.tensor(cu, dtype=torch.int32)
    N = cu.numel() - 1
    q, k, v, g, h0 = _la_inputs(1, 64, "key", n_seq=N, seed=5)
    gen = torch.Generator().manual_seed(6)
    do, dF = torch.randn(q.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    with triton_kernels.bounds_checked():
        got = _la_run(q, k, v, g, h0, cu, do, dF, _cfg("key", S))
    for x in got:
        assert torch.isfinite(x).all()
    if S == 0 and int(cu[0]) == 0 and int(cu[2]) == 0:
        # the two sequences overlap chunk-aligned (so they share the chunk-local gate cumsum) and
        # need more chunks than the table holds: the sequential pass still walks every chunk of
        # each sequence, so the final states are exact (unaligned overlaps are unspecified)
        lo = cu.clamp(0, 64)
        for n in range(N):
            s, e = int(lo[n]), max(int(lo[n + 1]), int(lo[n]))
            if e == s:
                want = h0[n:n + 1]
            else:
                _, want = R.ref_linear_attn(q[:, s:e].double(), k[:, s:e].double(), v[:, s:e].double(),
                                            g[:, s:e].double(), 0.125, h0[n:n + 1].double())
            assert rel(got[1][n:n + 1], want) <= TOL, f"final state {n}"


SWA_PATTERNS = {
    # name: (T, cu, window, sinks)
    "empty_sequences": (30, [0, 0, 7, 7, 30, 30], 4, 0),
    "single_long_full_causal": (50, [0, 50], -1, 2),
    "many_short": (37, [0, 1, 2, 4, 7, 11, 16, 22, 29, 37], 3, 0),
    "uncovered_tokens": (40, [5, 17, 30], -1, 0),
}


@cpu_only
@pytest.mark.parametrize("max_seqlen", [None, "exact"])
@pytest.mark.parametrize("pattern", list(SWA_PATTERNS))
def test_swa_varlen_patterns_match_float64(pattern, max_seqlen):
    T, cu, window, M = SWA_PATTERNS[pattern]
    a, b = cu[0], cu[-1]
    mx = None if max_seqlen is None else max(e - s for s, e in zip(cu[:-1], cu[1:]))
    cu = torch.tensor(cu, dtype=torch.int32)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, T, h, 64, generator=gen) for h in (2, 1, 1))
    sk, sv = (torch.randn(M, 1, 64, generator=gen) for _ in range(2)) if M else (None, None)
    do, dlse = torch.randn(q.shape, generator=gen), torch.randn(q.shape[:3], generator=gen)
    with triton_kernels.bounds_checked():
        o, lse = SWA.swa_attn_fwd(q, k, v, window, None, cu, sk, sv, config=_SWA_CFG[0], max_seqlen=mx)
        grads = SWA.swa_attn_bwd(q, k, v, o, lse, do, dlse, window, None, cu, sk, sv, config=_SWA_CFG[1],
                                 max_seqlen=mx)
    leaves = [x[:, a:b].double().requires_grad_() for x in (q, k, v)]
    sinks = [x.double().requires_grad_() for x in (sk, sv)] if M else [None, None]
    ro, rlse = R.ref_swa_attn(*leaves, window, None, cu - a, *sinks)
    loss = (ro * do[:, a:b].double()).sum() + (rlse * dlse[:, a:b].double()).sum()
    rg = torch.autograd.grad(loss, leaves + (sinks if M else []))
    for name, x, r in zip(["o", "lse", "dq", "dk", "dv"], (o, lse) + tuple(grads[:3]), (ro, rlse) + rg[:3]):
        assert torch.isfinite(x).all() and not x[:, :a].any() and not x[:, b:].any(), f"{name}: uncovered rows"
        assert rel(x[:, a:b], r) <= TOL, f"{name} rel err {rel(x[:, a:b], r)}"
    if M:
        assert rel(grads[3], rg[3]) <= TOL and rel(grads[4], rg[4]) <= TOL


@cpu_only
def test_swa_unsorted_cu_in_bounds_and_finite():
    cu = torch.tensor([40, 10, 64, 0, 30], dtype=torch.int32)
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 64, h, 64, generator=gen) for h in (2, 1, 1))
    sk = torch.randn(2, 1, 64, generator=gen)
    with triton_kernels.bounds_checked():
        o, lse = SWA.swa_attn_fwd(q, k, v, 6, None, cu, sk, sk, config=_SWA_CFG[0])
        grads = SWA.swa_attn_bwd(q, k, v, o, lse, torch.randn_like(q), None, 6, None, cu, sk, sk, config=_SWA_CFG[1])
    for x in (o, lse) + tuple(grads):
        assert torch.isfinite(x).all()


# --------------------------------------------------------------------------------------- GPU
def _gpu_varlen_inputs():
    T, cu = 300, [0, 0, 17, 140, 141, 300]
    q, k, v, g, h0 = _la_inputs(1, T, "key", n_seq=len(cu) - 1, device="cuda", dtype=torch.bfloat16,
                                H=4, HKV=2, D=128, seed=9)
    return q, k, v, g, h0, torch.tensor(cu, dtype=torch.int32, device="cuda")


@requires_cuda
@pytest.mark.parametrize("S", [0, 2])
def test_gpu_linear_attn_varlen_no_sync(S):
    q, k, v, g, h0, cu = _gpu_varlen_inputs()
    do, dF = torch.randn_like(q), torch.randn_like(h0)
    cfg = dict(LA.load_config(128, 128, "key", torch.bfloat16), h_seg=S)
    results = {}
    for args in ((cu, cfg), (None, cfg)):
        want, got = without_host_sync(lambda: _la_run(q, k, v, g, h0[:1] if args[0] is None else h0, args[0], do,
                                                      dF[:1] if args[0] is None else dF, args[1]))
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        results["varlen" if args[0] is not None else "dense"] = want
    ref = _la_ref_covered(q.float(), k.float(), v.float(), g, h0, cu.cpu(), do.float(), dF)
    # the packed run against the per-sequence float64 reference (the dense run is one sequence)
    for name, a, r in zip(["o", "final_state", "dq", "dk", "dv", "dg", "dh0"], results["varlen"], ref):
        assert rel(a, r) <= 2e-2, f"{name} rel err {rel(a, r)}"


@requires_cuda
def test_gpu_swa_varlen_no_sync():
    q, k, v, _, _, cu = _gpu_varlen_inputs()
    sk = torch.randn(3, 2, 128, device="cuda", dtype=torch.bfloat16)
    do = torch.randn_like(q)

    def run():
        o, lse = SWA.swa_attn_fwd(q, k, v, 64, None, cu, sk, sk)
        return (o, lse) + tuple(SWA.swa_attn_bwd(q, k, v, o, lse, do, None, 64, None, cu, sk, sk))
    want, got = without_host_sync(run)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ro, _ = R.ref_swa_attn(*leaves, 64, None, cu.cpu(), sk.cpu().double(), sk.cpu().double())
    assert rel(want[0], ro) <= 1e-2


@requires_cuda
def test_gpu_public_ops_varlen_fwd_bwd_no_sync():
    """sbops.linear_attn / sbops.swa_attn end to end (validation, dispatch, autograd, whichever
    backend serves them): no host sync with cu_seqlens on the GPU and the default data checks."""
    import sbops
    q, k, v, g, h0, cu = _gpu_varlen_inputs()
    leaves = [x.detach().requires_grad_() for x in (q, k, v, g)]

    def run():
        o, ht = sbops.linear_attn(*leaves, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        o2 = sbops.swa_attn(leaves[0], leaves[1], leaves[2], 64, cu_seqlens=cu)
        (o.float().sum() + ht.sum() + o2.float().sum()).backward()
    without_host_sync(run)


# ------------------------------------------------------- GPU: grid limits and 64-bit offsets
@requires_cuda
def test_gpu_linear_attn_more_than_65535_chunks_matches_each_batch_entry_alone():
    """B * cdiv(T, BT) > 65535 chunks (4.2M tokens): entry 1 of the batch equals its own B = 1 run
    (same kernels, no atomics: bit for bit), forward and backward."""
    B, T, D = 2, 33000 * 64, 128
    gen = torch.Generator(device="cuda").manual_seed(11)
    q, k, v, do = (torch.randn(B, T, 1, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, 1, D, device="cuda", generator=gen)) / 16
    cfg = LA.load_config(D, D, "key", torch.bfloat16)
    both = _la_run(q, k, v, g, None, None, do, None, cfg)
    one = _la_run(q[1:], k[1:], v[1:], g[1:], None, None, do[1:], None, cfg)
    for name, a, b in zip(["o", "final_state", "dq", "dk", "dv", "dg"], both, one):
        assert torch.equal(a[1:], b), name


@requires_cuda
def test_gpu_head_major_views_past_2_31_elements_give_the_contiguous_results():
    """q viewed from a head-major [1, H, T, D] buffer: head index * head stride > 2^31 for the last
    heads (int32 products would wrap); linear_attn and swa outputs equal those from a contiguous q."""
    T, H, HKV, D = 640 * 1024, 28, 4, 128
    gen = torch.Generator(device="cuda").manual_seed(12)
    qh = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
    assert (H - 1) * qh.stride(2) >= 2 ** 31
    k, v = (torch.randn(1, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    o1, s1 = LA.linear_attn_fwd(qh, k, v, None, D ** -0.5, None, None)
    o2, s2 = LA.linear_attn_fwd(qh.contiguous(), k, v, None, D ** -0.5, None, None)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    del o1, o2
    a1 = SWA.swa_attn_fwd(qh, k, v, 4096, None, None, None, None)
    a2 = SWA.swa_attn_fwd(qh.contiguous(), k, v, 4096, None, None, None, None)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])


@requires_cuda
def test_gpu_swa_more_than_65535_blocks_of_one_sequence():
    """float32 (32-row dQ / dK blocks) over 2.2M tokens: > 65535 blocks of one sequence.  With window
    w, the last rows depend only on the w keys before them: equal (to float32 rounding of another
    block alignment) to the run on a suffix."""
    T, w, tail = 2200 * 1024, 256, 4096
    gen = torch.Generator(device="cuda").manual_seed(13)
    q, k, v, do = (torch.randn(1, T, 1, 128, device="cuda", generator=gen) for _ in range(4))
    o, lse = SWA.swa_attn_fwd(q, k, v, w, None, None, None, None)
    dq, dk, dv = SWA.swa_attn_bwd(q, k, v, o, lse, do, None, w, None, None, None, None)[:3]
    s = T - tail - w
    o2, lse2 = SWA.swa_attn_fwd(q[:, s:], k[:, s:], v[:, s:], w, None, None, None, None)
    dq2 = SWA.swa_attn_bwd(q[:, s:], k[:, s:], v[:, s:], o2, lse2, do[:, s:], None, w, None, None, None, None)[0]
    assert rel(o[:, -tail:], o2[:, -tail:]) < 1e-5 and rel(lse[:, -tail:], lse2[:, -tail:]) < 1e-5
    assert rel(dq[:, -tail:], dq2[:, -tail:]) < 1e-5
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()
