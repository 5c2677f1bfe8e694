"""Import-time behaviour and the benchmark CLI's argument handling (session 18 audit)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, timeout=120, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_import_does_not_initialise_cuda_on_a_gpu_machine():
    # a GPU machine, mocked: anything that touches the CUDA runtime (device count through CUDA, device
    # name, properties) raises; forked DataLoader workers cannot use CUDA once the parent has done so
    code = """
import torch, traceback
torch.version.cuda = torch.version.cuda or "13.0"
calls = []
def spy(*a, **k):
    calls.append("".join(traceback.format_stack(limit=6)))
    raise RuntimeError("CUDA initialised")
torch.cuda._lazy_init = spy
torch.cuda.is_available = spy              # cudaGetDeviceCount: poisons fork for CUDA in the children
torch.cuda.device_count = spy              # the same where NVML cannot answer (MIG ids, MetaX)
torch.cuda.get_device_name = spy
torch.cuda.get_device_properties = spy
import sbops
print("CALLS", len(calls))
for c in calls: print(c)
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CALLS 0" in r.stdout, r.stdout[-3000:]


def _bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sbops.bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.environ.get("TMPDIR", "/tmp"),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args", [["--mod", "--help"], ["--mod", "--tiny"], ["--model=--tiny"], ["--mo"]])
def test_bench_model_option_is_not_abbreviated_into_the_op_benchmark(args):
    r = _bench(*args)
    assert "Correctness vs float64" not in r.stdout + r.stderr    # the op benchmark did not run
    assert r.returncode == (0 if "--help" in args else 2), (r.returncode, r.stdout[-1500:], r.stderr[-1500:])


@pytest.mark.parametrize("args,what", [(["--ops", "bogus"], "bogus"),
                                       (["--compare", "nope_a.json", "nope_b.json"], "nope_a.json"),
                                       (["--merge", "nope.json"], "nope.json"),
                                       (["--ops", "topk_gating", "--compare", "typo.json"], "typo.json")])
def test_bench_bad_arguments_exit_2_before_running(args, what):
    r = _bench(*args)
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert what in r.stderr and "Correctness vs float64" not in r.stdout
