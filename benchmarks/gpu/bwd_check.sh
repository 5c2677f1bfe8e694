#!/usr/bin/env bash
# One device call for the sm_90 SWA backward: build, smoke (seconds; stops here on a miss or a hang), its GPU
# tests, then bench_swa.py --bwd-only (every backward variant at T=32k in one run).  Env: SKIP_BUILD=1, BWD_TESTS
# (test files, default test_gpu_swa_sm90), BWD_BENCH_ARGS (extra bench_swa.py arguments).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
[[ -n "${SKIP_BUILD:-}" ]] || benchmarks/gpu_check.sh build || exit 1
echo "== smoke"
timeout 90 python3 benchmarks/gpu/smoke_swa_bwd.py 2>&1 | tee "$OUT/logs/smoke_bwd.log" | tail -12
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "smoke failed"; exit 1; }
GPU_TEST_FILES=${BWD_TESTS:-test_gpu_swa_sm90} STEP_LIMIT=${STEP_LIMIT:-240} benchmarks/gpu_check.sh tests
echo "== bench_swa.py --bwd-only"
timeout ${BENCH_LIMIT:-200} python3 benchmarks/gpu/bench_swa.py --bwd-only --skip-peers ${BWD_BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/logs/bench_bwd.log" | tail -12
