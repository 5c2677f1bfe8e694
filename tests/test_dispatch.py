"""The dispatcher: capabilities as data, explain, forcing, external backends, clear refusals."""
import os
import subprocess
import sys
import time

import pytest
import torch

import sbops
from sbops import Backend, NoBackendError, OpCaps


def test_backends_lists_every_builtin_with_availability_and_reason():
    info = sbops.backends()
    assert {"cpu", "cuda", "maca"} <= set(info)
    assert info["cpu"]["available"] and info["cpu"]["reason"] is None
    if not torch.cuda.is_available():
        assert not info["cuda"]["available"] and "no CUDA device" in info["cuda"]["reason"]
    assert not info["maca"]["available"] and "MetaX" in info["maca"]["reason"]
    assert "bfloat16" in info["cpu"]["ops"]["linear_attn"]["dtypes"]


def test_descriptors_list_only_what_each_op_can_be_asked_for():
    # features are per op (an attention op's list names only its own features), the same on every backend,
    # and the maca texts describe MetaX (no NVIDIA sm_90 kernels)
    info = sbops.backends()
    want = {"linear_attn": {"gate_per_head", "gate_per_key", "varlen", "initial_state"},
            "linear_attn_decode": {"gate_per_head", "gate_per_key"},
            "swa_attn": {"varlen", "sinks", "full_causal"},
            "swa_decode": {"full_causal", "sinks"}}
    for name in ("cpu", "cuda", "maca"):
        for op, feats in want.items():
            assert set(info[name]["ops"][op]["features"]) == feats, (name, op)
    for op, caps in info["maca"]["ops"].items():
        assert "sm_90" not in caps["impl"] and "sm90" not in caps["impl"], (op, caps["impl"])


def test_explain_names_the_chosen_backend_and_why_others_are_not():
    q = torch.randn(1, 4, 2, 8)
    text = sbops.explain("swa_attn", q, q[:, :, :1].contiguous(), q[:, :, :1].contiguous(), 2)
    assert "runs on backend 'cpu'" in text
    assert "- cuda:" in text and "- maca:" in text


def test_explain_validates_inputs_like_the_op():
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        sbops.explain("linear_attn", torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3))


def test_use_backend_forces_and_refuses_with_every_reason():
    x = torch.randn(3, 16)
    with sbops.use_backend("cpu"):
        sbops.spike_quant(x)
    with sbops.use_backend("cuda"):
        with pytest.raises(NoBackendError) as e:
            sbops.spike_quant(x)
    msg = str(e.value)
    assert "forced backend 'cuda'" in msg and "- cpu: can serve it" in msg and "- maca:" in msg
    with pytest.raises(ValueError, match="unknown sbops backend"):
        with sbops.use_backend("nope"):
            pass


def test_env_var_forces_a_backend_in_a_fresh_process():
    code = ("import torch, sbops\n"
            "try:\n    sbops.spike_quant(torch.randn(2, 4))\nexcept sbops.NoBackendError as e:\n"
            "    print('REFUSED', 'maca' in str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SBOPS_BACKEND": "maca"},
                         capture_output=True, text=True, timeout=120)
    assert "REFUSED True" in out.stdout, out.stderr


def test_an_external_backend_plugs_in_and_is_chosen():
    calls = []

    def toy_quant(x, k):
        calls.append(k)
        return torch.zeros_like(x)

    toy = Backend(name="toy", device_types=("cpu",), priority=100,
                  ops={"spike_quant": OpCaps((torch.float32,), impl="python")},
                  kernels={"spike_quant": toy_quant})
    sbops.register_backend(toy)
    try:
        y = sbops.spike_quant(torch.randn(2, 8), k=2.0)
        assert calls == [2.0] and (y == 0).all()
        assert "runs on backend 'toy'" in sbops.explain("spike_quant", torch.randn(2, 8))
        # dtypes it does not declare go to the next backend
        sbops.spike_quant(torch.randn(2, 8, dtype=torch.float64))
        assert calls == [2.0]
        assert "dtype float64 not supported" in sbops.explain("spike_quant", torch.randn(2, 8, dtype=torch.float64))
    finally:
        sbops._dispatch.unregister_backend("toy")
    sbops.spike_quant(torch.randn(2, 8))
    assert calls == [2.0]


def test_no_backend_error_lists_every_backend():
    only = Backend(name="narrow", device_types=("cpu",), priority=100,
                   ops={"spike_quant": OpCaps((torch.float16,))})
    sbops.register_backend(only)
    try:
        with sbops.use_backend("narrow"):
            with pytest.raises(NoBackendError, match="dtype float32 not supported"):
                sbops.spike_quant(torch.randn(2, 2))
    finally:
        sbops._dispatch.unregister_backend("narrow")


def test_registering_a_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        sbops.register_backend(Backend(name="cpu", device_types=("cpu",), ops={}))


def test_cached_dispatch_decision_is_cheap():
    from sbops._dispatch import Request, select
    req = Request("spike_quant", "cpu", torch.float32)
    select(req)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        select(req)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} us per cached decision"


def test_repeated_calls_reuse_the_cached_decision_until_the_registry_or_forcing_changes(monkeypatch):
    from sbops import _dispatch
    x = torch.randn(2, 8)
    sbops.spike_quant(x)
    calls = []
    real = _dispatch.kernel_for
    monkeypatch.setattr(_dispatch, "kernel_for", lambda req: calls.append(req) or real(req))
    for _ in range(3):
        sbops.spike_quant(x)
    assert calls == []                                     # cached: no Request built, no selection
    sbops.spike_quant(x.double())
    assert [r.dtype for r in calls] == [torch.float64]     # a new dtype is a new decision
    with sbops.use_backend("cpu"):
        sbops.spike_quant(x)
    assert len(calls) == 2                                 # forcing is part of the key
    sbops.register_backend(Backend(name="later", device_types=("cpu",), ops={}))
    try:
        sbops.spike_quant(x)
        assert len(calls) == 3                             # registering clears the cache
    finally:
        sbops._dispatch.unregister_backend("later")


def test_fp8_weights_are_a_capability_that_maca_lacks():
    """spike_linear calls with float8_e4m3fn weights ask for the "fp8_weight" feature: the cpu and cuda
    backends list it, the maca backend (int8 matrix units only) does not, so a MetaX call with fp8
    weights is refused by the dispatcher naming the feature. A CPU backend built from maca's
    capabilities shows the refusal here."""
    import dataclasses
    from sbops._backends import maca as maca_backend
    from sbops._backends import cuda as cuda_backend
    assert "fp8_weight" in cuda_backend.OPS["spike_linear"].features
    caps = maca_backend.BACKEND.ops["spike_linear"]
    assert "fp8_weight" not in caps.features and {"bias", "group"} <= caps.features
    like_maca = Backend(name="maca_like", device_types=("cpu",), priority=100,
                        ops={"spike_linear": dataclasses.replace(caps, dtypes=(torch.float32,))})
    sbops.register_backend(like_maca)
    try:
        x = torch.randn(3, 32)
        w8, s8 = sbops.quantize_weight(torch.randn(8, 32), dtype=torch.float8_e4m3fn)
        with sbops.use_backend("maca_like"):
            with pytest.raises(NoBackendError, match="feature.*fp8_weight not supported for spike_linear"):
                sbops.spike_linear(x, w8, s8)
        wi, si = sbops.quantize_weight(torch.randn(8, 32))      # int8 weights: the cpu backend serves fp8 too
        assert sbops.spike_linear(x, wi, si).shape == (3, 8)
        assert sbops.spike_linear(x, w8, s8).shape == (3, 8)
    finally:
        sbops._dispatch.unregister_backend("maca_like")


def test_a_raising_probe_is_that_backends_reason_and_the_call_falls_back():
    broken = Backend(name="broken", device_types=("cpu",), priority=100,
                     ops={"spike_quant": OpCaps((torch.float32,))}, probe=lambda op: 1 / 0)
    sbops.register_backend(broken)
    try:
        x = torch.randn(2, 8)
        with sbops.use_backend("cpu"):
            want = sbops.spike_quant(x)
        assert torch.equal(sbops.spike_quant(x), want)                     # the next backend runs it
        info = sbops.backends()
        assert not info["broken"]["available"]
        assert info["broken"]["reason"].startswith("probe raised ZeroDivisionError: ")
        assert info["broken"]["ops"]["spike_quant"]["reason"].startswith("probe raised ZeroDivisionError")
        text = sbops.explain("spike_quant", x)
        assert "runs on backend 'cpu'" in text and "- broken: not available here: probe raised ZeroDivisionError" in text
        with sbops.use_backend("broken"):
            with pytest.raises(NoBackendError, match="probe raised ZeroDivisionError"):
                sbops.spike_quant(x)
    finally:
        sbops._dispatch.unregister_backend("broken")


def test_a_backends_reason_lists_every_failing_check():
    from sbops._dispatch import Request
    b = Backend(name="narrow", device_types=("cpu",),
                ops={"linear_attn": OpCaps((torch.float32,), head_dims=(64, 128), features=frozenset({"varlen"}))},
                probe=lambda op: "no such hardware")
    why = b.reason(Request("linear_attn", "cpu", torch.float64, head_dims=(8, 64, 96),
                           features=frozenset({"gate_per_head", "varlen"})))
    parts = why.split("; ")
    assert len(parts) == 4, why
    assert parts[0] == "not available here: no such hardware"
    assert parts[1].startswith("dtype float64 not supported")
    assert parts[2].startswith("head dims 8, 96 not supported") and "(supports 64, 128)" in parts[2]
    assert parts[3].startswith("feature(s) gate_per_head not supported")
    # another device's backend: that alone, without asking its probe (which could initialise that device)
    asked = []
    b2 = Backend(name="narrow2", device_types=("cpu",), ops=b.ops, probe=lambda op: asked.append(op))
    assert b2.reason(Request("linear_attn", "cuda", torch.float64)) == "runs on cpu tensors, the inputs are on cuda"
    assert asked == []
    assert b.reason(Request("swa_attn", "cpu", torch.float64)) == "does not implement swa_attn"
    assert b.reason(Request("linear_attn", "cpu", torch.float32, head_dims=(64,))) == "not available here: no such hardware"


def test_explain_says_when_the_forced_backend_cannot_serve_and_who_could(monkeypatch):
    x = torch.randn(2, 8)
    narrow = Backend(name="narrow", device_types=("cpu",), ops={"spike_quant": OpCaps((torch.float16,))})
    sbops.register_backend(narrow)
    try:
        with sbops.use_backend("narrow"):
            text = sbops.explain("spike_quant", x)
        first = text.splitlines()[0]
        assert "the forced backend 'narrow' (use_backend) cannot serve it" in first, text
        assert "dtype float32 not supported" in first and "unforced it would run on backend 'cpu'" in first, text
        assert "cannot run on any backend" not in text and "- cpu: can serve it" in text
        with sbops.use_backend("cpu"):
            assert "runs on backend 'cpu' (forced by use_backend)" in sbops.explain("spike_quant", x)
    finally:
        sbops._dispatch.unregister_backend("narrow")
    monkeypatch.setattr(sbops._dispatch, "_ENV_BACKEND", "nope")     # as SBOPS_BACKEND=nope at import
    text = sbops.explain("spike_quant", x)
    first = text.splitlines()[0]
    assert "the forced backend 'nope' (SBOPS_BACKEND) is not registered" in first, text
    assert "registered: " in first and "unforced it would run on backend 'cpu'" in first, text
    with pytest.raises(NoBackendError, match="'nope'.*not registered"):
        sbops.spike_quant(x)


def test_use_backend_none_unforces_a_block(monkeypatch):
    x = torch.randn(2, 8)
    monkeypatch.setattr(sbops._dispatch, "_ENV_BACKEND", "maca")     # as SBOPS_BACKEND=maca at import
    with pytest.raises(NoBackendError, match="forced backend 'maca'"):
        sbops.spike_quant(x)
    with sbops.use_backend(None):
        sbops.spike_quant(x)
        assert "runs on backend 'cpu'" in sbops.explain("spike_quant", x)
        assert "forced" not in sbops.explain("spike_quant", x).splitlines()[0]
        with sbops.use_backend("maca"):
            with pytest.raises(NoBackendError, match="forced backend 'maca'"):
                sbops.spike_quant(x)
        sbops.spike_quant(x)
    with pytest.raises(NoBackendError, match="forced backend 'maca'"):
        sbops.spike_quant(x)
    monkeypatch.setattr(sbops._dispatch, "_ENV_BACKEND", None)
    with sbops.use_backend("maca"):
        with sbops.use_backend(None):
            sbops.spike_quant(x)


@pytest.mark.parametrize("bad,match", [
    ("x", "backend must be a sbops.Backend"),
    (Backend(name="", device_types=("cpu",), ops={}), "name must be a non-empty str"),
    (Backend(name="b", device_types="cpu", ops={}), "device_types must be a tuple"),
    (Backend(name="b", device_types=("cpu",), ops={"spike_quant": OpCaps(dtypes=torch.float32)}),
     r"ops\['spike_quant'\].dtypes must be a tuple of torch dtypes"),
    (Backend(name="b", device_types=("cpu",), ops={"spike_quantt": OpCaps(dtypes=(torch.float32,))}),
     "'spike_quantt', which is not an sbops op"),
    (Backend(name="b", device_types=("cpu",), ops={"spike_quant": (torch.float32,)}), "must be an OpCaps"),
    (Backend(name="b", device_types=("cpu",), ops={"spike_quant": OpCaps(dtypes=(torch.float32,), head_dims=64)}),
     "head_dims must be None or a tuple of ints"),
    (Backend(name="b", device_types=("cpu",), ops={}, kernels={"spike_quant": 3}), "kernels must be a dict"),
])
def test_a_malformed_backend_is_refused_at_registration_by_field(bad, match):
    """A backend whose OpCaps.dtypes was a bare dtype was registered, then broke every call of that op, even those the
    cpu backend serves, with a TypeError naming neither; a misspelt op was registered silently."""
    with pytest.raises((TypeError, ValueError), match=match):
        sbops.register_backend(bad)
    assert "b" not in sbops.backends()
    x = torch.randn(4, 8)
    assert torch.equal(sbops.spike_quant(x), sbops.spike_quant(x))   # the registry is intact


def test_backend_fields_may_be_any_collection_but_features_must_be_a_set():
    """Sets and ranges serve as before; a tuple of features (which the dispatcher subtracts from a frozenset) and
    features=None are refused at registration, not left to break every call of the op."""
    ok = Backend(name="fine", device_types={"cpu"}, priority=-100,
                 ops={"spike_quant": OpCaps(dtypes=frozenset({torch.float32}), head_dims=range(1, 9),
                                            features=frozenset())})
    try:
        sbops.register_backend(ok)
        x = torch.randn(4, 8)
        assert torch.equal(sbops.spike_quant(x), sbops.spike_quant(x))
    finally:
        sbops._dispatch.unregister_backend("fine")
    for features in (("varlen",), None):
        bad = Backend(name="b", device_types=("cpu",), ops={"spike_quant": OpCaps(dtypes=(torch.float32,),
                                                                                 features=features)})
        with pytest.raises(ValueError, match="features must be a set or frozenset"):
            sbops.register_backend(bad)
    assert "b" not in sbops.backends()
