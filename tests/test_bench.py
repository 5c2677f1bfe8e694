"""`python -m sbops.bench`: JSON schema, --compare, exit status, robustness, the default run's rows,
the wrapper-overhead and data-checks columns, --model, and running without rich / matplotlib (CPU,
small filtered runs).  Imports without the optional packages (rich, matplotlib, numpy)."""
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import sbops
from conftest import requires_cuda
from sbops.bench import __main__ as cli
from sbops.bench import cases, overhead, reference, report, runner

# a filtered quick run: cheap checks and speed cases of three families, short timing budget; the CPU
# backend only, so that the run (and its case names) is the same on a machine with a GPU; a per-case
# limit that a loaded machine's first calls stay inside
CPU_ONLY = ["--backends", "cpu", "--timeout", "60"]
SMALL = ["--quick", "--ops", "spike_encode,expert_counts,linear_attn_decode", "--shapes", "63,T=300,B=1,N=3,[512",
         "--budget", "0.1", "--quiet", "--peers", "torch.eager", *CPU_ONLY]


def _run(tmp_path, *extra, name="out.json"):
    path = tmp_path / name
    rc = cli.main(SMALL + ["--json", str(path), *extra])
    return rc, json.loads(path.read_text())


def _check_schema(res):
    assert {"device", "torch", "triton", "sbops", "date", "backends"} <= set(res["meta"])
    assert res["meta"]["backends"]["cpu"]["available"] is True
    assert res["correctness"] and res["speed"]
    for r in res["correctness"]:
        assert {"op", "backend", "dtype", "shape", "max_abs", "rel", "bound", "passed"} <= set(r)
        assert isinstance(r["passed"], bool) or (r["passed"] is None and r.get("skipped"))
        if r["passed"]:
            assert 0 <= r["rel"] <= r["bound"] and r["max_abs"] >= 0
    for r in res["speed"]:
        assert {"case", "op", "backend", "shape", "median_ms", "floor_ms", "peers", "ratios"} <= set(r)
        if r["median_ms"] is not None:
            assert r["median_ms"] > 0 and ("gbps" in r or "tflops" in r)
            assert r["floor_ms"] > 0
            for name, ms in r["peers"].items():
                assert math.isclose(r["ratios"][name], ms / r["median_ms"])


def test_quick_run_writes_json_matching_the_schema(tmp_path):
    rc, res = _run(tmp_path)
    assert rc == 0
    _check_schema(res)
    ops = {r["op"] for r in res["correctness"]}
    assert ops == {"spike_encode", "expert_counts", "linear_attn_decode"}
    assert all(r["passed"] for r in res["correctness"])
    speed = {r["case"]: r for r in res["speed"]}
    assert set(speed) == {"spike_encode [512,3584]", "linear_attn_decode B=1"}
    assert "torch.eager" in speed["spike_encode [512,3584]"]["peers"]


def test_markdown_and_plain_tables(tmp_path, capsys):
    md = tmp_path / "R.md"
    rc, res = _run(tmp_path, "--markdown", str(md), "--no-ttft", "--only", "correctness")
    assert rc == 0
    text = md.read_text()
    assert "CPU run" in text and "| spike_encode | cpu | float32 |" in text
    out = capsys.readouterr().out
    assert "Correctness vs float64 reference" in out and "passed, 0 failed" in out


def test_compare_two_files(tmp_path, capsys):
    old = {"meta": {}, "correctness": [{"op": "spike_encode", "backend": "cpu", "dtype": "float32", "shape": "s",
                                        "max_abs": 0, "rel": 0, "bound": 1e-5, "passed": True}],
           "speed": [{"case": "a", "backend": "cpu", "median_ms": 2.0}, {"case": "b", "backend": "cpu",
                                                                         "median_ms": 1.0},
                     {"case": "gone", "backend": "cpu", "median_ms": 1.0}]}
    new = json.loads(json.dumps(old))
    new["speed"] = [{"case": "a", "backend": "cpu", "median_ms": 1.0}, {"case": "b", "backend": "cpu",
                                                                        "median_ms": 1.5},
                    {"case": "c", "backend": "cpu", "median_ms": 1.0}]
    new["correctness"][0].update(passed=False, rel=1.0)
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    assert cli.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "-50.0% (faster)" in out and "+50.0% (slower)" in out
    assert "new case" in out and "not in new run" in out
    assert "Correctness changes" in out


def test_merge_makes_one_report_from_split_runs(tmp_path, capsys):
    _, a = _run(tmp_path, "--ops", "spike_encode", name="a.json")
    _, b = _run(tmp_path, "--ops", "expert_counts,linear_attn_decode", name="b.json")
    md, out = tmp_path / "R.md", tmp_path / "merged.json"
    rc = cli.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(out),
                   "--markdown", str(md)])
    assert rc == 0
    merged = json.loads(out.read_text())
    _check_schema(merged)
    assert merged["correctness"] == a["correctness"] + b["correctness"]
    assert [r["case"] for r in merged["speed"]] == [r["case"] for r in a["speed"] + b["speed"]]
    assert [m["file"] for m in merged["meta"]["merged_from"]] == ["a.json", "b.json"]
    text = md.read_text()
    assert "| spike_encode | cpu |" in text and "| expert_counts | cpu |" in text


def test_compare_with_the_current_run(tmp_path, capsys):
    _, first = _run(tmp_path, "--only", "speed", name="first.json")
    capsys.readouterr()
    rc, _ = _run(tmp_path, "--only", "speed", "--compare", str(tmp_path / "first.json"), name="second.json")
    assert rc == 0
    assert "Speed change vs earlier run" in capsys.readouterr().out


def test_failing_check_makes_the_exit_status_nonzero(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "expert_counts", lambda ids, E: torch.ones(E, dtype=torch.int64))
    rc, res = _run(tmp_path, "--only", "correctness")
    assert rc == 1
    bad = [r for r in res["correctness"] if not r["passed"]]
    assert [r["op"] for r in bad] == ["expert_counts"]
    assert bad[0]["outputs"]["counts"]["mismatches"] > 0


def test_a_crashing_speed_case_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = cases.speed_cases

    def broken(mode, long=False, headline=False):
        out = real(mode, long, headline)
        for c in out:
            if c.op == "spike_encode":
                c.setup = lambda env: (_ for _ in ()).throw(RuntimeError("kernel exploded"))
        return out
    monkeypatch.setattr(cases, "speed_cases", broken)
    rc, res = _run(tmp_path, "--only", "speed")
    assert rc == 0
    rows = {r["case"]: r for r in res["speed"]}
    assert "kernel exploded" in rows["spike_encode [512,3584]"]["error"]
    assert rows["linear_attn_decode B=1"]["median_ms"] > 0


def test_nan_never_passes():
    c = cases.Compared("o", torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    row = runner.compare(c, bound=1e30)
    assert row["passed"] is False and row["rel"] is None
    ok = runner.compare(cases.Compared("o", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7])), 1e-5)
    assert ok["passed"] and ok["rel"] < 1e-7


def test_json_is_strict(tmp_path):
    path = tmp_path / "x.json"
    report.write_json({"a": [float("nan"), 1.0, {"b": float("inf")}]}, str(path))
    assert json.loads(path.read_text()) == {"a": [None, 1.0, {"b": None}]}


def test_unknown_backend_is_a_usage_error(tmp_path):
    assert cli.main(["--backends", "nope", "--json", str(tmp_path / "x.json"), "--quiet"]) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="console entry point check on Linux only")
def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "sbops.bench", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for text in ("--compare", "--full", "--model", "Default run", "headline"):
        assert text in r.stdout, text


# --------------------------------------------------------------------------- default run, new columns
def test_default_run_has_one_headline_row_per_timed_op():
    for shapes in ("full", "quick"):
        every = cases.speed_cases(shapes)
        head = cases.speed_cases(shapes, headline=True)
        assert len(head) < len(every)
        ops = [c.op for c in head]
        assert sorted(ops) == sorted([*{c.op for c in every}, "linear_attn"]), shapes   # linear_attn: fwd, fwd+bwd
    names = {c.name for c in cases.speed_cases("full", headline=True)}
    assert {"linear_attn fwd T=32k", "linear_attn fwd+bwd T=32k", "swa fwd T=32k w=4096",
            "swa_decode B=1 w=4096", "linear_attn_decode B=1"} <= names


def test_default_cli_run_times_only_the_headline_cases(tmp_path):
    path = tmp_path / "d.json"
    rc = cli.main(["--ops", "topk_gating,moe_permute", "--only", "speed", "--budget", "0.05", "--peers", "none",
                   "--quiet", "--json", str(path), *CPU_ONLY])
    res = json.loads(path.read_text())
    assert rc == 0 and res["meta"]["mode"] == "default" and res["meta"]["wall_s"] > 0
    assert [r["case"] for r in res["speed"]] == ["topk_gating T=1k E=16 k=1", "moe_permute T=1k Hd=3584 E=16 k=1"]


def test_speed_rows_report_checks_on_off_and_wrapper_overhead(tmp_path, capsys):
    path = tmp_path / "w.json"
    rc = cli.main(["--quick", "--ops", "topk_gating,spike_encode", "--shapes", "E=16,[512", "--only", "speed",
                   "--budget", "0.05", "--peers", "none", "--quiet", "--json", str(path), *CPU_ONLY])
    assert rc == 0
    res = json.loads(path.read_text())
    assert len(res["speed"]) == 2
    for r in res["speed"]:
        assert r["checks_default"] == "on"                      # CPU tensors: host checks by default
        assert r["checks_on_ms"] == r["median_ms"] and r["checks_off_ms"] > 0
        w = r["wrapper"]
        assert w["public_us"] > 0 and w["direct_us"] > 0
        assert math.isfinite(w["overhead_us"]) and math.isfinite(w["overhead_min_block_us"])
    header = capsys.readouterr().out
    assert "checks off" in header and "checks on" in header and "wrapper" in header


def test_direct_call_runs_the_kernel_the_wrapper_dispatches_to():
    x = torch.randn(9, 16)
    public = lambda: sbops.topk_gating(x, 2)  # noqa: E731
    op, direct = overhead.direct_call(public)
    assert op == "topk_gating"
    for a, b in zip(public(), direct()):
        assert torch.equal(a, b)
    assert sbops.ops.moe.run is sbops.ops._common.run            # the recording hook is removed again


def test_wrapper_overhead_sees_extra_host_work():
    x = torch.randn(9, 16)
    direct = overhead.direct_call(lambda: sbops.topk_gating(x, 2))[1]

    def slow_public():
        t = time.perf_counter() + 5e-4                          # 500 us of busy host work per call
        while time.perf_counter() < t:
            pass
        return direct()
    w = overhead.measure_overhead(slow_public, direct, "cpu", budget_s=0.05)
    assert 400 < w["overhead_us"] < 5000
    same = overhead.measure_overhead(direct, direct, "cpu", budget_s=0.05)
    assert abs(same["overhead_us"]) < 400
    stalls = iter(range(10 ** 6))

    def stalling_public():                                      # a 20 ms stall on every 40th call
        if next(stalls) % 40 == 39:
            time.sleep(0.02)
        return direct()
    w = overhead.measure_overhead(stalling_public, direct, "cpu", budget_s=0.05)
    assert abs(w["overhead_us"]) < 400                          # the paired median ignores the stalls


def test_wrapper_column_counts_host_work_of_the_wrapper_not_of_the_kernel():
    """measure_wrapper replaces the dispatched kernel by a no-op returning its result: host work added by
    the wrapper shows in full, a slow kernel does not widen the difference, and the cache is restored."""
    x = torch.randn(4096, 64)
    fast = lambda: sbops.topk_gating(x, 2)  # noqa: E731
    w = overhead.measure_wrapper(fast, "cpu", budget_s=0.1)
    assert 0 < w["public_us"] and abs(w["overhead_us"]) < 200 and "overhead_with_kernel_us" in w
    assert w["public_us"] < w["public_with_kernel_us"]                # the kernel really was left out
    spin = {"on": True}

    def busy_public():
        t = time.perf_counter() + 3e-4                             # 300 us of host work in the wrapper
        while spin["on"] and time.perf_counter() < t:
            pass
        return sbops.topk_gating(x, 2)
    w = overhead.measure_wrapper(busy_public, "cpu", budget_s=0.1)
    assert 250 < w["overhead_us"] < 3000
    real_measure, runs = overhead.measure_overhead, []

    def interrupted(*args, **kw):                                  # Ctrl-C while the no-op is in place
        runs.append(1)
        if len(runs) == 2:
            raise KeyboardInterrupt
        return real_measure(*args, **kw)
    overhead.measure_overhead = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            overhead.measure_wrapper(fast, "cpu", budget_s=0.05)
    finally:
        overhead.measure_overhead = real_measure
    a, b = sbops.topk_gating(x, 2), overhead.direct_call(fast)[1]()   # dispatch works again afterwards
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@requires_cuda
def test_gpu_headline_probes_dispatch_and_time_on_the_gpu():
    """Every headline case's wrapper probe reaches a kernel on the GPU, the direct call gives the
    public call's result, and the overhead measurement returns finite host times."""
    env = cases.Env("cuda", "cuda", torch.bfloat16)
    for case in cases.speed_cases("full", headline=True):
        with sbops.use_backend("cuda"):
            public = case.probe(env)
            op, direct = overhead.direct_call(public)
            a, b = public(), direct()
            torch.cuda.synchronize()
            w = overhead.measure_wrapper(public, "cuda", budget_s=0.05)
        assert op == case.op, case.name
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            if x is None:   # an output the public call drops (linear_attn's final state without
                continue    # output_final_state); the kernel call returns it
            assert x.shape == y.shape, case.name
        assert w["public_us"] > 0 and w["direct_us"] > 0 and math.isfinite(w["overhead_us"]), case.name


def test_model_flag_hands_the_rest_to_the_model_benchmark(monkeypatch, capsys):
    from sbops.bench import model
    seen = []
    monkeypatch.setattr(model, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["--model", "--tiny", "--device", "cpu"]) == 7
    assert seen == [["--tiny", "--device", "cpu"]]
    assert cli.main(["--quick", "--model", "--tiny"]) == 2 and len(seen) == 1
    assert "nothing before it" in capsys.readouterr().err


_BLOCKED = """
import sys
for name in ("rich", "matplotlib", "numpy"):
    sys.modules[name] = None          # import rich / matplotlib / numpy now raises ImportError
from sbops.bench.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_runs_without_rich_and_matplotlib(tmp_path):
    plots = tmp_path / "plots"
    r = subprocess.run([sys.executable, "-c", _BLOCKED, "--quick", "--ops", "topk_gating", "--shapes", "E=16",
                        "--budget", "0.05", "--peers", "none", "--plots", str(plots), "--no-ttft",
                        "--json", str(tmp_path / "x.json"), *CPU_ONLY],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "Correctness vs float64 reference" in out and "checks on" in out      # plain-text tables
    notes = [line for line in out.splitlines() if "matplotlib is not installed, so plots were skipped" in line]
    assert len(notes) == 1 and "rich is not installed" in notes[0]
    assert not list(plots.glob("*.png"))


def test_bench_sources_stay_under_600_lines():
    folder = os.path.dirname(cli.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                assert sum(1 for _ in f) <= 600, name


def test_unknown_peer_is_a_usage_error_and_none_is_recorded_as_none(tmp_path):
    """A misspelt --peers ran no peer and exited 0; --peers none was recorded as "all"."""
    assert cli.main(["--peers", "sdpaa", "--json", str(tmp_path / "x.json"), "--quiet"]) == 2
    assert cli.main(["--peers", "none,torch", "--json", str(tmp_path / "x.json"), "--quiet"]) == 2
    path = tmp_path / "n.json"
    rc = cli.main(["--ops", "topk_gating", "--only", "speed", "--budget", "0.05", "--peers", "none",
                   "--quiet", "--json", str(path), *CPU_ONLY])
    runs = json.loads(path.read_text())["meta"]["peers_run"]
    assert rc == 0 and runs and all(v == [] for v in runs.values()), runs


def test_peer_names_list_every_peer_a_case_names():
    """--peers accepts only PEER_NAMES (and their prefixes): every peer of every case, built on the CPU, is one."""
    from sbops.bench import cases as C
    named = set()
    for case in C.speed_cases("quick", long=True):
        named |= set(case.setup(C.Env("cpu", "cpu", torch.float32, 0)).peers)
    assert named and named <= set(cli.PEER_NAMES), named - set(cli.PEER_NAMES)


@pytest.mark.parametrize("argv,word", [(["--decode-steps", "0"], "--decode-steps"), (["--batches", "x"], "--batches"),
                                      (["--batches", "0,2"], "--batches"), (["--chunk", "0"], "--chunk"),
                                      (["--budget-s", "-1"], "--budget-s"), (["--peer-limit-s", "nan"], "--peer-limit-s")])
def test_model_benchmark_flags_are_checked(argv, word, capsys):
    from sbops.bench import model
    with pytest.raises(SystemExit) as e:
        model.parse_args(argv)
    assert e.value.code == 2 and word in capsys.readouterr().err


def test_the_footer_says_what_this_machine_could_not_run_and_why(tmp_path, capsys):
    """Backends that are not available (cuda on a CPU-only machine) and skipped peers were only in the JSON."""
    rc = cli.main(["--quick", "--ops", "linear_attn_decode", "--shapes", "B=1", "--budget", "0.05", "--only", "speed",
                   "--peers", "fla,torch.eager", "--json", str(tmp_path / "f.json"), *CPU_ONLY])
    out = capsys.readouterr().out
    assert rc == 0
    for name, d in sbops.backends().items():
        if not d["available"]:
            assert f"backend {name} not available here: {d['reason']}" in out
    res = json.loads((tmp_path / "f.json").read_text())
    for row in res["speed"]:
        for peer, why in (row.get("peers_skipped") or {}).items():
            assert peer in out and f"not timed: {why}" in out
    assert any(row.get("peers_skipped") for row in res["speed"]) or torch.cuda.is_available()
