#!/usr/bin/env bash
# One device call: build sbops for CUDA on the GPU machine, run the GPU test suite, the main report
# (python -m sbops.bench --full) and, optionally, the MACA simulation build + its tests.
#   benchmarks/gpu_check.sh [all|build|tests|bench|macasim]...   (default: all)
# Peers: fla-core is installed from .whl/ when carried. Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-all}
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

if want build; then
  stamp "build (SBOPS_TARGET=cuda, sm_90a)"
  SBOPS_TARGET=cuda SBOPS_CUDA_ARCHS="90a" MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps . \
    > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  grep -a "sbops:" "$OUT/build.log" | head -5
  python3 -c "import sbops, sbops._C as c; print('built', c.build_target); import json; print(json.dumps({k: (v['available'], v['reason']) for k, v in sbops.backends().items()}))"
fi
if want tests; then
  stamp "GPU tests"
  (cd tests && python3 -m pytest -q -p no:cacheprovider test_build.py 2>&1 | tail -2
   python3 -m pytest -q -p no:cacheprovider -n ${PYTEST_WORKERS:-8} --timeout=300 . \
     -k "(gpu or cuda or triton or opcheck) and not compile ${PYTEST_DESELECT:-}" 2>&1 | tee "$OUT/tests.log" \
     | grep -E "^FAILED|^ERROR|passed|failed|crashed|Fatal" | head -30)
fi
if want bench; then
  stamp "bench --full"
  timeout 230 python3 -m sbops.bench --full --backends cuda --budget 2 --timeout 60 --json "$OUT/bench.json" --plots "$OUT" --markdown "$OUT/RESULTS.md" 2>&1 | tee "$OUT/bench.log" | tail -60
fi
if want macasim; then
  stamp "MACA simulation build + tests"
  SBOPS_TARGET=cuda SBOPS_MACA_SIM=1 SBOPS_CUDA_ARCHS="90a" MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps . \
    > "$OUT/build_macasim.log" 2>&1 || { tail -50 "$OUT/build_macasim.log"; exit 1; }
  python3 -c "import sbops._C as c, sbops._build_info as b; print('built', c.build_target, 'maca sim:', b.MACA_SIM)"
  (cd tests && SBOPS_TRITON_TUNING=maca python3 -m pytest -q -p no:cacheprovider -n ${PYTEST_WORKERS:-8} --timeout=300 . \
     -k "(gpu or cuda or triton or maca or opcheck) and not compile ${PYTEST_DESELECT:-}" 2>&1 | tee "$OUT/tests_macasim.log" \
     | grep -E "^FAILED|^ERROR|passed|failed|crashed|Fatal" | head -30)
fi
stamp "done"
