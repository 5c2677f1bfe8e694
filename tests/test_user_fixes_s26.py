"""Session 26 audit of the command lines and the model API, as a new user meets them; each test fails on the code
before it.

- python -m sbops.bench checked --markdown / --plots / --json paths only after the whole run (then lost the report
  in a traceback), ran the whole benchmark before failing on a --compare file that is not JSON, let --merge ignore
  --ops / --compare and count a file named twice twice, and dropped an explicit --ttft without a word;
- python -m sbops.bench.model gave tracebacks for a bad --device or --out;
- SpikingBrainConfig accepted num_experts < 0 (a dense model), num_meta_tokens < 0, top_k > num_experts (failing at
  the first forward, naming topk_gating's k) and rms_norm_eps <= 0 (non-finite logits);
- a token id >= vocab_size gave embedding's bare "index out of range in self";
- generate took negative eos / pad token ids;
- torch.compile(fullgraph=True) of a decode step through a hybrid layer with meta tokens failed in a fresh process
  (only an earlier eager decode step made it work), and torch.compile(dynamic=True) of the model recompiled for
  every new batch size (the 10th a hard error under fullgraph).
"""
import json

import pytest
import torch

from sbops.bench import __main__ as cli
from sbops.bench import model_args
from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, generate


def _usage_error(argv, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    for n in needles:
        assert n in err, err
    return err


def test_bench_output_paths_are_checked_before_the_run(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    _usage_error(["--markdown", str(f / "x.md"), "--ops", "topk_gating"], capsys, "--markdown", "is a file")
    _usage_error(["--plots", str(f / "plots"), "--ops", "topk_gating"], capsys, "--plots", "is a file")
    _usage_error(["--plots", str(f), "--ops", "topk_gating"], capsys, "--plots", "not a folder")
    _usage_error(["--json", str(tmp_path), "--ops", "topk_gating"], capsys, "--json", "is a folder")


def test_bench_compare_and_merge_files_are_read_before_the_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    _usage_error(["--compare", str(bad)], capsys, "bad.json", "not a result file")
    _usage_error(["--merge", str(bad)], capsys, "bad.json", "not a result file")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([1, 2]))
    _usage_error(["--merge", str(other)], capsys, "no 'meta' object")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"meta": {}, "correctness": [], "speed": []}))
    _usage_error(["--merge", str(good), str(good)], capsys, "names a file twice")
    _usage_error(["--merge", str(good), "--ops", "moe"], capsys, "runs nothing")


def test_bench_explicit_ttft_that_cannot_run_says_why_on_the_console(tmp_path, capsys):
    rc = cli.main(["--ttft", "--only", "correctness", "--ops", "topk_gating", "--backends", "cpu", "--quiet",
                   "--json", str(tmp_path / "x.json")])
    assert rc == 0
    assert "time-to-first-token curve skipped: --only correctness runs no timing" in capsys.readouterr().err
    assert json.loads((tmp_path / "x.json").read_text())["ttft_note"].endswith("--only correctness runs no timing")


@pytest.mark.parametrize("argv, needle", [(["--device", "nosuch"], "not a device name"),
                                          (["--device", "meta"], "runs on cpu or cuda")])
def test_model_bench_bad_device_is_a_usage_error(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        model_args.parse_args(argv, "doc")
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_model_bench_out_under_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(SystemExit) as e:
        model_args.parse_args(["--tiny", "--out", str(f / "x")], "doc")
    assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
            layer_types=("gla", "swa"), window=5)


@pytest.mark.parametrize("bad, needle", [
    (dict(num_experts=-3), "num_experts must be an int >= 0"),
    (dict(num_meta_tokens=-2), "num_meta_tokens must be an int >= 0"),
    (dict(num_experts=4, top_k=9), "top_k=9 must be at most num_experts=4"),
    (dict(top_k=0), "top_k must be an int >= 1"),
    (dict(rms_norm_eps=-1.0), "rms_norm_eps must be a positive finite number"),
    (dict(rope_theta=0.0), "rope_theta must be a positive finite number"),
    (dict(num_experts=2.0), "num_experts must be an int"),
])
def test_config_refuses_values_that_build_a_wrong_model(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        SpikingBrainConfig(**dict(BASE, **bad))


def test_config_takes_numpy_integers_for_the_counts():
    np = pytest.importorskip("numpy")
    cfg = SpikingBrainConfig(**dict(BASE, num_experts=np.int64(4), top_k=np.int32(2), num_meta_tokens=np.int64(1)))
    assert (cfg.num_experts, cfg.top_k, cfg.num_meta_tokens) == (4, 2, 1)
    assert all(type(v) is int for v in (cfg.num_experts, cfg.top_k, cfg.num_meta_tokens))


def test_token_id_past_the_vocabulary_names_input_ids_and_vocab_size():
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**BASE)).eval()
    for ids in (torch.tensor([[1, 97]]), torch.tensor([[-1, 3]])):
        with pytest.raises(IndexError, match=r"input_ids must be token ids in \[0, vocab_size=97\)"):
            model(ids)
    with pytest.raises(IndexError, match="vocab_size=97"):
        generate(model, torch.tensor([[5, 200]]), 2)
    assert model(torch.tensor([[0, 96]])).logits.shape == (1, 2, 97)


def test_generate_refuses_negative_eos_and_pad_ids():
    torch.manual_seed(0)
    model = SpikingBrainForCausalLM(SpikingBrainConfig(**BASE)).eval()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"eos_token_id must hold token ids >= 0, got \[-1\]"):
        generate(model, ids, 2, eos_token_id=-1)
    with pytest.raises(ValueError, match="pad_token_id must be a token id >= 0, got -5"):
        generate(model, ids, 2, eos_token_id=4, pad_token_id=-5)
    assert generate(model, ids, 2, eos_token_id=[4, 5], pad_token_id=0).shape[0] == 1


def _in_fresh_process(body: str):
    """Run tests/test_user_fixes_s26.py's `body` in a new interpreter: a fresh process is what the first check is
    about, and a model compiled on the CPU leaves Triton's interpreter unable to run kernels later in the same
    process (its later tests would fail)."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", f"import test_user_fixes_s26 as t; t.{body}()"], cwd=here,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_compiled_hybrid_decode_step_does_not_need_an_eager_one_first():
    _in_fresh_process("_body_compiled_hybrid_decode")


def test_compiled_model_with_dynamic_shapes_does_not_recompile_per_batch_size():
    _in_fresh_process("_body_compiled_dynamic_batch")


def _compile_model(**kw):
    torch._dynamo.reset()
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**dict(BASE, **kw))).eval()


def _body_compiled_hybrid_decode():
    model = _compile_model(layer_types=("hybrid",), num_meta_tokens=2)
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():   # a fresh process (_in_fresh_process): no decode step has run before the compiled one
        c_eager, c_comp = model.new_cache(2), model.new_cache(2)
        model(ids[:, :6], cache=c_eager)
        model(ids[:, :6], cache=c_comp)
        step = torch.compile(lambda tok, cache: model(tok, cache=cache).logits, backend="aot_eager", fullgraph=True)
        out = step(ids[:, 6:7], c_comp)
        ref = model(ids[:, 6:7], cache=c_eager).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def _body_compiled_dynamic_batch():
    model = _compile_model(layer_types=("gla", "swa"))
    fn = torch.compile(lambda ids: model(ids).logits, backend="aot_eager", fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        fn(torch.randint(0, 97, (2, 9), generator=gen))
        try:
            torch.compiler.set_stance("fail_on_recompile")
            for B in (3, 4, 5):
                ids = torch.randint(0, 97, (B, 9), generator=gen)
                torch.testing.assert_close(fn(ids), model(ids).logits, rtol=1e-5, atol=1e-5)
        finally:
            torch.compiler.set_stance("default")
