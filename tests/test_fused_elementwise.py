"""Fused inference kernels for the elementwise work of the models (issue 19):
backends/cuda/triton/fused_norm.py (RMSNorm + residual, prenorm), fused_rope_swiglu.py (silu(gate) * up,
RoPE of q and k) and fused_gla_act.py (GLA's relu(q), relu(k), logsigmoid gate), and their use by sbops.nn
(RMSNorm, SwiGLU, the attention layers' RoPE and head norms, the GLA layer).

Without a GPU the kernels run under the Triton interpreter on CPU tensors (bounds-checked: every access
must fall inside a tensor argument), against float64 references and against the torch code, which
stays the reference path (CPU, training).  bfloat16 cases install the interpreter fix that rounds
float32 -> bfloat16 to nearest even as the GPU does.  With a GPU the same tests run there, plus model
tests: logits with fusion on equal fusion off, greedy generation gives the same tokens.
"""
import os
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

_HAS_CUDA = torch.cuda.is_available()
if not _HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

pytest.importorskip("triton")
np = pytest.importorskip("numpy")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import triton_kernels  # noqa: E402
from conftest import requires_cuda, without_host_sync  # noqa: E402
from reference import rel_err  # noqa: E402

import sbops.nn.common as common  # noqa: E402
from sbops.nn.common import RMSNorm, apply_rope  # noqa: E402

if triton_kernels.interpreting():
    triton_kernels.install_interpreter_shims()

fnorm = triton_kernels.load("fused_norm")
frs = triton_kernels.load("fused_rope_swiglu")
fga = triton_kernels.load("fused_gla_act")
DEV = "cuda" if _HAS_CUDA else "cpu"


@pytest.fixture
def checked(monkeypatch):
    """Bounds-checked interpreter with round-to-nearest-even float32 -> bfloat16 casts (CPU only)."""
    if not triton_kernels.interpreting():
        yield
        return
    import triton.language as tl
    import triton.runtime.interpreter as interp
    orig = interp._convert_float

    def convert_float(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(data).view(np.float32))
            return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return orig(data, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interp, "_convert_float", convert_float)
    with triton_kernels.bounds_checked():
        yield


def _rnd(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEV, dtype=dtype)


def _ulps(a, b):
    """Largest difference of a and b in units of b's last place (a, b of one low-precision dtype)."""
    eps = torch.finfo(b.dtype).eps
    a, b = a.float(), b.float()
    return ((a - b).abs() / (b.abs().clamp_min(1e-30) * eps)).max().item()


# --------------------------------------------------------------------------- float64 references
def ref_rms_norm(x, w, b, eps, residual=None):
    h = x.double() + (0 if residual is None else residual.double())
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * w.double()
    return y + (0 if b is None else b.double()), h


def ref_rope(x, cos, sin):
    x, cos, sin = x.double(), cos.double(), sin.double()
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def _norm_module(n, affine=True, bias=False, dtype=torch.float32, seed=3):
    m = RMSNorm(n, 1e-5, elementwise_affine=affine, bias=bias).to(device=DEV, dtype=dtype)
    with torch.no_grad():
        if affine:
            m.weight.copy_(_rnd(n, seed=seed))
        if bias:
            m.bias.copy_(_rnd(n, seed=seed + 1))
    return m


# --------------------------------------------------------------------------- RMSNorm kernel
@pytest.mark.parametrize("n,rows", [(1, 3), (37, 5), (130, 7)])
@pytest.mark.parametrize("variant", ["plain", "residual", "prenorm", "prenorm_fp32", "bias_no_weight"])
def test_rms_norm_equals_float64_reference_and_torch_path_odd_rows(n, rows, variant, checked):
    x = _rnd(rows, n, seed=1, scale=3.0)
    res = _rnd(rows, n, seed=2) if variant in ("residual", "prenorm") else None
    m = _norm_module(n, affine=variant != "bias_no_weight", bias=variant == "bias_no_weight")
    prenorm = variant.startswith("prenorm")
    fp32 = variant == "prenorm_fp32"
    with torch.no_grad():
        out = fnorm.rms_norm(x, m.weight, m.eps, res, prenorm, fp32, bias=m.bias)
        torch_out = m(x, res, prenorm=prenorm, residual_in_fp32=fp32)
    y, h = out if prenorm else (out, None)
    ry, rh = ref_rms_norm(x, m.weight, m.bias, m.eps, res)
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    assert rel_err(y, ry) < 1e-6
    assert rel_err(y, torch_out[0] if prenorm else torch_out) < 1e-6
    if prenorm:
        assert h.dtype == torch_out[1].dtype == torch.float32
        assert torch.equal(h, torch_out[1])  # the sum itself: exact


def test_rms_norm_many_short_rows_of_a_head_view(checked):
    """Per-head norms: [B, T, H, D] rows of 16 (many rows per program), read from a slice of a wider buffer."""
    big = _rnd(2, 9, 5, 16, seed=4)
    x = big[:, :, 1:]  # heads 1..4: leading dims do not merge -> the launcher copies, still correct
    m = _norm_module(16)
    with torch.no_grad():
        y = fnorm.rms_norm(x, m.weight, m.eps)
    assert y.shape == x.shape
    assert rel_err(y, ref_rms_norm(x, m.weight, None, m.eps)[0]) < 1e-6
    rows = big.reshape(-1, 16)[3:3 + 70]  # a row-strided window with a storage offset: read in place
    with torch.no_grad():
        assert rel_err(fnorm.rms_norm(rows, m.weight, m.eps), ref_rms_norm(rows, m.weight, None, m.eps)[0]) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_low_precision_matches_torch_path_within_an_ulp(dtype, checked):
    """Hidden-size-like rows (300 -> 512-wide tile) in bf16/fp16 with a bf16 residual and prenorm: h is
    x + residual rounded once (bit-exact with the torch code), y differs only by the float32 sum order."""
    x = _rnd(6, 300, dtype=dtype, seed=5, scale=2.0)
    res = _rnd(6, 300, dtype=dtype, seed=6, scale=4.0)
    m = _norm_module(300, dtype=dtype)
    with torch.no_grad():
        y, h = fnorm.rms_norm(x, m.weight, m.eps, res, True)
        ty, th = m(x, res, prenorm=True)
    assert y.dtype == h.dtype == dtype
    assert torch.equal(h, th)
    assert _ulps(y, ty) <= 1.0
    assert (y == ty).float().mean().item() > 0.95
    assert rel_err(y, ref_rms_norm(x, m.weight, None, m.eps, res)[0]) < 4e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_round_sum_equals_add_then_norm_as_two_ops(dtype, checked):
    """round_sum (a block's last residual add folded into the next norm): h is residual + x as one torch
    add gives it, and y normalises that rounded sum -- the two-op chain's result, up to the sum order."""
    x = _rnd(5, 300, dtype=dtype, seed=11, scale=3.0)
    res = _rnd(5, 300, dtype=dtype, seed=12, scale=5.0)
    m = _norm_module(300, dtype=dtype)
    with torch.no_grad():
        y, h = fnorm.rms_norm(x, m.weight, m.eps, res, True, round_sum=True)
        y_only = fnorm.rms_norm(x, m.weight, m.eps, res, False, round_sum=True)
        two_ops = m(res + x)
        ty, th = m(x, res, prenorm=True, round_sum=True)   # the torch path of the same call
    assert torch.equal(h, res + x) and torch.equal(th, h) and torch.equal(y_only, y)
    tol = 4.0 if dtype == torch.float32 else 1.0   # float32: only the sum of squares' order differs
    assert _ulps(y, two_ops) <= tol and _ulps(ty, two_ops) <= tol
    # y really normalises the rounded sum: float32 x and y with a bfloat16 residual (h rounds to bfloat16)
    x32 = _rnd(5, 300, seed=13)
    res16 = _rnd(5, 300, dtype=torch.bfloat16, seed=14, scale=4.0)
    m32 = _norm_module(300)
    with torch.no_grad():
        y32, h16 = fnorm.rms_norm(x32, m32.weight, m32.eps, res16, True, round_sum=True)
        unrounded = fnorm.rms_norm(x32, m32.weight, m32.eps, res16)
    assert h16.dtype == torch.bfloat16 and torch.equal(h16, (x32 + res16.float()).to(torch.bfloat16))
    ref_rounded = ref_rms_norm(h16, m32.weight, None, m32.eps)[0]
    assert rel_err(y32, ref_rounded) < 1e-6 and rel_err(unrounded, ref_rounded) > 1e-4
    with pytest.raises(ValueError, match="round_sum.*needs a residual"):
        fnorm.rms_norm(x, m.weight, m.eps, round_sum=True)
    with pytest.raises(ValueError, match="round_sum.*needs a residual"):
        m(x, round_sum=True)


def test_rms_norm_rejects_bad_arguments():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="residual"):
        fnorm.rms_norm(x, None, 1e-6, residual=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="weight"):
        fnorm.rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="last dimension"):
        fnorm.rms_norm(torch.zeros(2, fnorm.MAX_N + 1), None, 1e-6)
    with pytest.raises(ValueError, match="x must be"):
        fnorm.rms_norm(x.double(), None, 1e-6)


# --------------------------------------------------------------------------- silu_mul kernel
@pytest.mark.parametrize("shape", [(1, 1, 7), (2, 3, 300)])
def test_silu_mul_reads_views_of_a_fused_gate_up_projection(shape, checked):
    gu = _rnd(*shape[:-1], 2 * shape[-1], seed=7, scale=3.0)
    gate, up = gu.split(shape[-1], -1)  # strided views: row stride 2 * I
    y = frs.silu_mul(gate, up)
    ref = F.silu(gate.double()) * up.double()
    assert y.shape == gate.shape and y.is_contiguous()
    assert rel_err(y, ref) < 1e-6
    assert rel_err(y, F.silu(gate) * up) < 1e-6


def test_silu_mul_bf16_is_the_float32_result_rounded_once(checked):
    gu = _rnd(64, 2 * 96, dtype=torch.bfloat16, seed=8, scale=3.0)  # 64 rows: the 1024-wide blocks
    gate, up = gu.split(96, -1)
    y = frs.silu_mul(gate, up)
    exact = (F.silu(gate.double()) * up.double()).to(torch.bfloat16)  # float32 math, one rounding
    assert _ulps(y, exact) <= 1.0
    assert (y == exact).float().mean().item() > 0.99
    assert _ulps(y, F.silu(gate) * up) <= 2.0  # torch rounds silu(gate) first


def test_silu_mul_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="up must match"):
        frs.silu_mul(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="up must match"):
        frs.silu_mul(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- GLA activations kernel
def _gla_inputs(B, T, H, HKV, D, dtype, seed):
    qkvg = _rnd(B, T, (H + 2 * HKV) * D + 16, dtype=dtype, seed=seed, scale=4.0)  # one fused projection
    q, k, _, _ = qkvg.split([H * D, HKV * D, HKV * D, 16], -1)
    gk = _rnd(B, T, HKV * D, dtype=dtype, seed=seed + 1, scale=6.0)
    return q.view(B, T, H, D), k.view(B, T, HKV, D), gk


@pytest.mark.parametrize("B,T,H,HKV,D", [(1, 1, 4, 2, 16), (2, 5, 3, 1, 24), (1, 3, 40, 4, 32)])
def test_gla_act_reads_fused_projection_views_equals_float64(B, T, H, HKV, D, checked):
    """relu of q / k views of a fused projection (read in place, heads contiguous; 40 x 32 = 1280 > one
    1024 block) and logsigmoid(gk) / 16, with gk out to +-24 (exp(-|x|) below float32's epsilon: log1p)."""
    q, k, gk = _gla_inputs(B, T, H, HKV, D, torch.float32, 30)
    gk[..., 0] = 24.0
    gk[..., 1] = -24.0
    qo, ko, g = fga.gla_act(q, k, gk, 16.0)
    assert qo.is_contiguous() and ko.is_contiguous() and g.shape == k.shape
    assert torch.equal(qo, F.relu(q)) and torch.equal(ko, F.relu(k))
    ref = F.logsigmoid(gk.double()).view(k.shape) / 16.0
    assert rel_err(g, ref) < 1e-6
    assert (g.double() - ref).abs().div(ref.abs()).max().item() < 1e-5  # elementwise, the tiny ones too


def test_gla_act_bf16_gate_is_the_float32_result_rounded_once(checked):
    q, k, gk = _gla_inputs(2, 33, 4, 2, 64, torch.bfloat16, 31)
    q[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])
    qo, ko, g = fga.gla_act(q, k, gk, 16.0)
    assert torch.equal(ko, F.relu(k)) and torch.equal(qo[0, 0, 0, 1:], F.relu(q)[0, 0, 0, 1:])
    assert torch.isnan(qo[0, 0, 0, 0]) and torch.equal(qo[:, 1:], F.relu(q)[:, 1:])  # NaN stays NaN
    exact = (F.logsigmoid(gk.double()) / 16.0).view(k.shape).to(torch.bfloat16)
    assert _ulps(g, exact) <= 1.0 and (g == exact).float().mean().item() > 0.99
    assert _ulps(g, F.logsigmoid(gk).view(k.shape) / 16.0) <= 1.0  # torch rounds logsigmoid first


def test_gla_act_rejects_what_it_cannot_read_in_place():
    q, k, gk = _gla_inputs(1, 2, 4, 2, 8, torch.float32, 32)
    assert fga.supports(q, k, gk)
    assert not fga.supports(q.transpose(2, 3), k, gk) and not fga.supports(q, k, gk[..., :8])
    padded = _rnd(1, 2, 4, 9, seed=33)[..., :8]  # q's shape, heads not contiguous (stride(-2) = 9)
    assert not fga.supports(padded, k, gk) and not fga.supports(q, _rnd(1, 2, 2, 9, seed=34)[..., :8], gk)
    assert not fga.supports(q, k, _rnd(1, 2, 32, seed=35)[..., ::2])  # gk without a unit last stride
    with pytest.raises(ValueError, match="heads contiguous"):
        fga.gla_act(padded, k, gk, 16.0)


# --------------------------------------------------------------------------- RoPE kernel
def _cos_sin(B, T, D, per_batch, seed=9):
    pos = torch.arange(T)[None] + (torch.tensor([[0], [5]])[:B] if per_batch else 0)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    ang = pos.float()[..., None] * inv
    emb = torch.cat((ang, ang), -1)
    return emb.cos()[:, :, None].to(DEV), emb.sin()[:, :, None].to(DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_batch", [False, True])
def test_rope_bit_exact_with_apply_rope_on_fused_qkv_views(dtype, per_batch, checked):
    """q [2, 5, 6, 16], k [2, 5, 2, 16] split from one fused projection (read in place); cos/sin
    [1 or B, T, 1, D] float32 as the model makes them."""
    B, T, H, HKV, D = 2, 5, 6, 2, 16
    q0, k0, v0 = _rnd(B, T, H, D, dtype=dtype, seed=10), _rnd(B, T, HKV, D, dtype=dtype, seed=11), \
        _rnd(B, T, HKV, D, dtype=dtype, seed=12)
    q, k, _ = triton_kernels.fused_qkv(q0, k0, v0)
    assert not q.is_contiguous() and not k.is_contiguous()
    cos, sin = _cos_sin(B, T, D, per_batch)
    qo, ko = frs.rope(q, k, cos, sin)
    assert qo.is_contiguous() and ko.is_contiguous() and qo.dtype == dtype
    assert torch.equal(qo, apply_rope(q, cos, sin)) and torch.equal(ko, apply_rope(k, cos, sin))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(qo, ref_rope(q, cos, sin)) < tol and rel_err(ko, ref_rope(k, cos, sin)) < tol


def test_rope_many_heads_loop_and_odd_half(checked):
    """H = 40 > 32 (two head blocks) and D = 12 (half 6: masked lanes); decode-shaped T = 1."""
    q, k = _rnd(3, 1, 40, 12, seed=13), _rnd(3, 1, 5, 12, seed=14)
    cos, sin = _rnd(3, 1, 1, 12, seed=15), _rnd(3, 1, 1, 12, seed=16)
    qo, ko = frs.rope(q, k, cos, sin)
    assert torch.equal(qo, apply_rope(q, cos, sin)) and torch.equal(ko, apply_rope(k, cos, sin))


def test_rope_cos_sin_broadcast_along_the_head_dim(checked):
    """cos / sin whose last dim is 1 (stride 0 once broadcast to D) are materialised, not read as
    if unit-strided."""
    q, k = _rnd(1, 5, 2, 8, seed=40), _rnd(1, 5, 1, 8, seed=41)
    cos, sin = _rnd(1, 5, 1, 1, seed=42), _rnd(1, 5, 1, 1, seed=43)
    qo, ko = frs.rope(q, k, cos, sin)
    assert torch.equal(qo, apply_rope(q, cos, sin)) and torch.equal(ko, apply_rope(k, cos, sin))


def test_rope_rejects_bad_shapes():
    q, k = torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 2, 8)
    cos = torch.zeros(1, 2, 1, 8)
    with pytest.raises(ValueError, match="k must be"):
        frs.rope(q, torch.zeros(1, 3, 2, 8), cos, cos)
    with pytest.raises(ValueError, match="cos must broadcast"):
        frs.rope(q, k, torch.zeros(1, 3, 1, 8), cos)
    with pytest.raises(ValueError, match="even"):
        frs.rope(torch.zeros(1, 2, 4, 7), torch.zeros(1, 2, 2, 7), cos[..., :7], cos[..., :7])


# --------------------------------------------------------------------------- use in sbops.nn
def _tiny(kind, dtype, layers=2):
    from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM
    types = ("gla", "swa") if kind == "7b" else ("hybrid",) * layers
    # head dim 12 on a CPU (the reference takes any); the CUDA kernels take 64 or 128
    cfg = SpikingBrainConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_heads=4, num_kv_heads=2,
                             head_dim=64 if DEV == "cuda" else 12, layer_types=types, window=4, num_meta_tokens=2)
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(cfg).to(device=DEV, dtype=dtype).eval()


@pytest.fixture
def count_fused(monkeypatch):
    """Counts the fused kernels' calls through sbops.nn; on a CPU lets them serve CPU tensors
    (interpreted)."""
    calls = {"rms_norm": 0, "rope": 0, "silu_mul": 0, "gla_act": 0}

    class Counted:
        def __init__(self, mod):
            self._mod = mod

        def __getattr__(self, name):
            fn = getattr(self._mod, name)
            if name not in calls:
                return fn

            def wrapped(*a, **kw):
                calls[name] += 1
                return fn(*a, **kw)
            return wrapped

    monkeypatch.setattr(common, "_fused_mods", (Counted(fnorm), Counted(frs), Counted(fga)))
    if not _HAS_CUDA:
        monkeypatch.setattr(common, "_FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    return calls


def _model_logits(model, ids, fuse, cache=False):
    old, common.FUSE_ELEMENTWISE = common.FUSE_ELEMENTWISE, fuse
    try:
        with torch.no_grad():
            if not cache:
                return model(ids).logits
            c = model.new_cache(ids.shape[0])
            pre = model(ids[:, :-1], cache=c).logits
            return torch.cat([pre, model(ids[:, -1:], cache=c).logits], 1)  # prefill + one decode step
    finally:
        common.FUSE_ELEMENTWISE = old


@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_model_logits_with_fused_kernels_equal_the_torch_path(kind, count_fused):
    """Every RMSNorm (block norms with prenorm residual, per-head norms), SwiGLU and RoPE of a tiny model
    go through the fused kernels at inference (prefill and decode), and give the torch path's logits."""
    model = _tiny(kind, torch.float32)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1)).to(DEV)
    plain = _model_logits(model, ids, False, cache=True)
    assert sum(count_fused.values()) == 0  # the switch turns fusion off
    fused = _model_logits(model, ids, True, cache=True)
    assert count_fused["rms_norm"] > 0 and count_fused["rope"] > 0
    if kind == "7b":
        assert count_fused["silu_mul"] > 0 and count_fused["gla_act"] > 0
    assert rel_err(fused, plain) < 1e-5


def test_training_and_float64_keep_the_torch_code(count_fused, monkeypatch):
    monkeypatch.setattr(common, "FUSE_ELEMENTWISE", True)  # fusion on: still never taken for these
    model = _tiny("7b", torch.float32)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(2)).to(DEV)
    model(ids, labels=ids).loss.backward()  # grad enabled, parameters require grad
    assert sum(count_fused.values()) == 0
    with torch.no_grad():
        if DEV == "cpu":
            _tiny("7b", torch.float64)(ids)
        else:  # the CUDA attention kernels take no float64: ask the switch directly
            assert common.fused_kernels(torch.zeros(2, 8, device=DEV, dtype=torch.float64)) is None
    assert sum(count_fused.values()) == 0


def test_cpu_tensors_never_take_the_fused_path_by_default():
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert common.fused_kernels(x) is None


# --------------------------------------------------------------------------- GPU: the 7B-style model
@requires_cuda
def test_gpu_bf16_logits_with_fusion_equal_fusion_off():
    model = _tiny("7b", torch.bfloat16, layers=2)
    ids = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(3)).cuda()
    assert common.fused_kernels(torch.zeros(1, device="cuda", dtype=torch.bfloat16)) is not None, "the fused kernels are not available here"
    on, off = _model_logits(model, ids, True, cache=True), _model_logits(model, ids, False, cache=True)
    assert rel_err(on.float(), off.float()) < 2e-2


@requires_cuda
@pytest.mark.parametrize("kind", ["7b", "76b"])
def test_gpu_greedy_generate_same_tokens_with_and_without_fusion(kind):
    """generate() captures the decode step in CUDA graphs on a GPU: the fused kernels must be capturable."""
    from sbops.models import generate
    model = _tiny(kind, torch.float32)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4)).cuda()
    out = {}
    for fuse in (True, False):
        old, common.FUSE_ELEMENTWISE = common.FUSE_ELEMENTWISE, fuse
        try:
            with torch.inference_mode():
                out[fuse] = generate(model, ids, 12)
        finally:
            common.FUSE_ELEMENTWISE = old
    assert torch.equal(out[True], out[False])


@requires_cuda
def test_gpu_kernels_sync_free_and_capturable_in_a_cuda_graph():
    """No host sync (set_sync_debug_mode('error')); a CUDA graph of the four launches replays to the
    eager results on new inputs copied into the static buffers."""
    x, r = _rnd(3, 7, 96, dtype=torch.bfloat16, seed=20), _rnd(3, 7, 96, dtype=torch.bfloat16, seed=21)
    w = _rnd(96, seed=22)
    gu = _rnd(3, 7, 2 * 80, dtype=torch.bfloat16, seed=23)
    q, k = _rnd(3, 7, 4, 16, dtype=torch.bfloat16, seed=24), _rnd(3, 7, 2, 16, dtype=torch.bfloat16, seed=25)
    cos, sin = _cos_sin(1, 7, 16, False)
    gq, gkk, gg = _gla_inputs(3, 7, 4, 2, 16, torch.bfloat16, 26)

    def step():
        y, h = fnorm.rms_norm(x, w, 1e-6, r, True)
        return y, h, frs.silu_mul(*gu.split(80, -1)), *frs.rope(q, k, cos, sin), *fga.gla_act(gq, gkk, gg, 16.0)

    without_host_sync(step)  # also compiles outside the capture
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for t, seed in ((x, 30), (r, 31), (gu, 32), (q, 33), (k, 34), (gq, 35), (gkk, 36), (gg, 37)):
        t.copy_(_rnd(*t.shape, dtype=t.dtype, seed=seed))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(static, step()):
        assert torch.equal(a, b)
