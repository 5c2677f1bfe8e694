#!/usr/bin/env bash
# One device call for the CUDA C++ ops, round 2 (see NOTES_cuda_ops.md):
#   1. build sbops through CMake (SBOPS_TARGET=cuda, sm_90a) -- what ships, not the dev module;
#   2. throw-path probes, each in its own process under faulthandler (gdb backtrace on a crash):
#      a TORCH_CHECK from the CPU backend, from the CUDA binding before any CUDA call, from the
#      CUDA binding after a device reduction + copy (round 1's crash), and a torch builtin error;
#   3. the round-1 crashing test alone, then all of tests/test_gpu_cuda_ops.py;
#   4. benchmarks/gpu/bench_cuda_ops.py (table last), then compute-sanitizer on the smoke run.
# Logs go to $OUT.  Run from the repository root.
set -uo pipefail
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"

stamp "build"
SBOPS_TARGET=cuda SBOPS_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps . \
  > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
python3 -c "import sbops, torch; print('sbops ok; torch', torch.__version__, '; cuda backend:', sbops.backends().get('cuda'))" 2>&1 | tail -2
so=$(python3 -c "import sbops._C as c; print(c.__file__)")
{ echo "$so"; ldd "$so" | grep -Ei "cudart|c10|torch|stdc|gcc"; nm -D --defined-only "$so" | grep -c " cuda" ; } > "$OUT/linkage.txt" 2>&1

stamp "throw-path probes"
probe() {  # name, python source
  local name=$1 src=$2
  timeout 60 python3 -X faulthandler -c "$src" > "$OUT/probe_$name.log" 2>&1; local rc=$?
  echo "probe $name: rc=$rc  $(grep -E 'RAISED|Fatal|Segmentation' "$OUT/probe_$name.log" | head -2 | tr '\n' ' ')"
  if [ $rc -ne 0 ] && command -v gdb >/dev/null; then
    timeout 90 gdb -q -batch -ex run -ex bt --args python3 -c "$src" > "$OUT/gdb_$name.log" 2>&1
    grep -E "^#" "$OUT/gdb_$name.log" | head -25
  fi
}
pre='import torch, sbops
def expect(f):
    try:
        f()
    except Exception as e:
        print("RAISED", type(e).__name__, str(e).splitlines()[0][:100])
    else:
        print("NO ERROR")
'
probe cpu_binding "$pre
expect(lambda: torch.ops.sbops.spike_expand(torch.tensor([1, -1], dtype=torch.int32), 'binary', 2))"
probe cuda_early "$pre
expect(lambda: torch.ops.sbops.spike_expand(torch.tensor([1], device='cuda', dtype=torch.int32), 'nonsense', 2))"
probe cuda_after_sync "$pre
expect(lambda: torch.ops.sbops.spike_expand(torch.tensor([1, -1], device='cuda', dtype=torch.int32), 'binary', 2))"
probe torch_builtin "$pre
expect(lambda: torch.ones(2, device='cuda').view(3))"

stamp "test_spike_errors alone"
timeout 120 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/test_gpu_cuda_ops.py -k test_spike_errors \
  2>&1 | tee "$OUT/test_spike_errors.log" | tail -4

stamp "tests/test_gpu_cuda_ops.py"
timeout 150 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/test_gpu_cuda_ops.py 2>&1 \
  | tee "$OUT/tests.log" | grep -E "FAILED|Error|passed|failed|Fatal" | head -30

stamp "benchmark"
OUT=$OUT timeout 120 python3 benchmarks/gpu/bench_cuda_ops.py > "$OUT/bench.log" 2>&1; echo "bench rc=$?"

if command -v compute-sanitizer >/dev/null; then
  stamp "compute-sanitizer memcheck (smoke)"
  timeout 60 compute-sanitizer --tool memcheck python3 benchmarks/gpu/bench_cuda_ops.py --smoke 2>&1 | tail -3
fi
stamp "done"
tail -16 "$OUT/bench.log"
