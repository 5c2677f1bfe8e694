"""sbops.compat.fla's GLA calls compile fullgraph (Dynamo cannot trace ContextVar.get: kv_groups' promise is
read from a module value while tracing) and give the eager results, with and without a kv_groups promise."""
import pytest
import torch
import torch.nn.functional as F

from sbops.compat import fla

B, T, H, K, V = 1, 13, 4, 8, 8


def _inputs(repeat=1):
    torch.manual_seed(0)
    q = torch.randn(B, T, H, K)
    k, v = torch.randn(B, T, H // repeat, K) / 3, torch.randn(B, T, H // repeat, V)
    g = F.logsigmoid(torch.randn(B, T, H // repeat, K))
    if repeat > 1:
        k, v, g = (t.repeat_interleave(repeat, 2) for t in (k, v, g))
    return q, k, v, g


CALLS = {
    "chunk_gla": lambda q, k, v, g: fla.chunk_gla(q, k, v, g, output_final_state=True),
    "fused_chunk_gla": lambda q, k, v, g: fla.fused_chunk_gla(q, k, v, g, output_final_state=True),
    "fused_recurrent_gla": lambda q, k, v, g: fla.fused_recurrent_gla(q, k, v, g, output_final_state=True),
    "fused_recurrent_gla_reverse": lambda q, k, v, g: fla.fused_recurrent_gla(q, k, v, g, reverse=True,
                                                                              output_final_state=True),
    "chunk_simple_gla": lambda q, k, v, g: fla.chunk_simple_gla(q, k, v, g[..., 0], output_final_state=True),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_fla_calls_compile_fullgraph_and_match_eager(name):
    fn = CALLS[name]
    args = _inputs()
    ref = fn(*args)
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fla_compiled_call_keeps_a_kv_groups_promise_and_checks_it():
    fn = CALLS["chunk_gla"]
    args = _inputs(repeat=2)
    ref = fn(*args)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with fla.kv_groups(2):
        out = compiled(*args)
        torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="kv_groups"):  # a broken promise: the traced device-side check
            compiled(*_inputs(repeat=1))
    assert fla._traced_promise is None  # the context restored it
