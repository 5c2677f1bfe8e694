#!/usr/bin/env bash
# One device call: build sbops for CUDA on the GPU machine, run the GPU test suite, the main report
# (python -m sbops.bench --full) and, optionally, the MACA simulation build + its tests.
#   benchmarks/gpu_check.sh [all|build|install|wheel|stablewheel|tests|suite|sanitize|cudaops|swa|fp8split|fp8sweep|fp8probe|fp8model|chunk|s28|s29|s32|s34|s36spike|s38|s39|s39b|s40|s40b|int8t|s41|s42|full|chunkab|prof|goals|bench|bench_attn|bench_rest|bench_default|macasim]...
#   (default: all; install, stablewheel, suite, sanitize, cudaops, swa, fp8split, fp8sweep, fp8probe, fp8model, chunk, s28, s29, s32, s34, s36spike, s38, s39, s39b, s40, s40b, int8t, s41, goals
#   and bench_default only when named; fp8sweep -- the fp8 prefill fix-up's launch A/B, sweep, tests and model A/B; the open checks, each about 4-5 minutes after install: fp8probe -- the decode GEMV
#   probe (fused-encode and cp.async layouts) and the GPU tests of the decode kernel and of drop_float_weights;
#   fp8model -- the model's decode with the encode's early launch (SBOPS_DECODE_PDL=all) against the default,
#   alternated, and the model with only its 8-bit weights; chunk -- TTFT at 1M with generate()'s prefill chunk of
#   16384 tokens (the default) against 65536, bf16 and fp8; s28 -- session 28's int8 / gate-up probes and fp8 model
#   A/B (about 8 minutes after install); s29 -- session 29's Triton decode sweep at M = 16 / 32 and the fp8 (int8-down)
#   model's B = 16 / 32 decode with the shipped table against the sweep's winners (about 5 minutes after install); s32 --
#   the dense decode GEMV's GPU tests, probe and bf16 / fp8 model decode A/B (about 4 minutes after install); s34 --
#   swa_decode's combine kernel, the gate GEMV and the decode kernels' programmatic launches: GPU tests,
#   bench_swa_decode and the bf16 model's decode (SBOPS_DECODE_PDL default / all), against the tree of S34_BASE
#   (about 6 minutes after install); s36spike -- the e4m3 / int8 decode GEMV's 32-row warps: probe, tests, the fp8
#   model's decode with the old 16-row default for the wide shapes (SBOPS_SPIKE_DECODE_MT=1) and the new one, alternated
#   (about 4 minutes); s38 -- the Hopper dense decode GEMM probe's variants against the GEMV (under a minute); s39 --
#   the int8 GEMM's persistent schedule: GPU tests, probes/int8_gemm_sm90_ab.py, the int8-per-channel W8ASpike model's
#   TTFT at 1M and B = 1 decode against the fp8 one (about 7 minutes after install); s39b -- the int8 GEMM's variants
#   probe (epilogues, stages), then this checkout installed, its int8 GPU tests and the two models (about 5 minutes);
#   s40 -- the int8 GEMM's SwiGLU epilogue: tests, probe, the int8-per-channel model unfused / fused, its prefill
#   profile (about 7 minutes after install); s40b -- the int8 GEMM's warpgroup-lag variants (about a minute, no install);
#   int8t -- the int8 / bf16 Hopper GEMM's GPU tests and the bf16
#   GEMM's probe against cuBLAS (about 3 minutes); s41 -- the bf16 model's gate / up on that GEMM (see the step);
#   prof -- kernel profiles of a prefill chunk and the decode steps (PROF_MODELS); full -- the model benchmark's whole
#   curve for each of FULL_MODELS (TTFT 8k-4M with the Qwen2 peer, decode at 4k / 1M, B = 1 / 32; about 3 minutes a
#   model on an H100); chunkab -- TTFT at 1M by prefill chunk size, alternated (CHUNKAB_MODELS, CHUNKAB_SIZES);
#   goals -- TTFT at 1M and the 4k-context decode, bf16 and W8ASpike (fp8, int8 per channel; about 5 minutes).  install
#   runs first, before any other step.  A second call on a warm machine needs no install.)
# Env: GPU_TEST_FILES (default: every GPU test file), GPU_TEST_JOBS (files at a time, default 3),
#      PYTEST_DESELECT (appended to -k),
#      BENCH_ARGS (extra arguments of the bench step), STEP_LIMIT (seconds per test file, default 240),
#      FP8_MODES (fp8model's decode runs, in order: default / fused / all; default "default all default all"),
#      s34: S34_BASE (a .tgz of the tree to compare against), S34_BATCHES, S34_AGAIN_BEFORE (the new tree is
#      installed and run again only while the call is younger, seconds; default 420), S34_TESTS / S34_TESTK,
#      S34_PROFILE (a SBOPS_DECODE_PDL value: then a kernel profile of the new tree with it).
# Peers: fla-core is installed from .whl/ when carried.  Every log goes to $OUT; $OUT/logs.tgz holds
# them all (the device tool brings back at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1
steps=${*:-all}
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
pack() { tar czf "$OUT/logs.tgz" -C "$OUT" logs; }
trap pack EXIT

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/logs/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/logs/device.txt"

build() {  # label, extra env...
  local label=$1; shift
  stamp "build $label"
  env "$@" SBOPS_TARGET=cuda SBOPS_CUDA_ARCHS="90a" MAX_JOBS=16 python3 -m pip install -v --no-build-isolation --no-deps . \
    > "$OUT/logs/build_$label.log" 2>&1 || { tail -50 "$OUT/logs/build_$label.log"; exit 1; }
  grep -a "sbops:" "$OUT/logs/build_$label.log" | head -5
  python3 -c "import sbops, sbops._C as c, sbops._build_info as b; print('built', c.build_target, 'maca sim:', b.MACA_SIM)"
}

# GPU tests one file per process, verbose (a killed or crashed file still leaves the names of what ran)
FILES=${GPU_TEST_FILES:-"test_triton_swa test_gpu_swa_sm90 test_maca_gpu test_triton_fake_match test_triton_linear_attn test_opcheck test_gpu_cuda_ops test_nn test_models test_build"}
gpu_tests() {  # label, extra env...
  # GPU_TEST_JOBS files at a time (default 3; the float64 references run on the CPU, so each process
  # gets 16 / jobs CPU threads), each file in its own process with its own log
  local label=$1; shift
  local jobs=${GPU_TEST_JOBS:-3} threads
  threads=$(( $(nproc) / jobs )); (( threads < 1 )) && threads=1
  stamp "GPU tests ($label, $jobs files at a time, $threads CPU threads each)"
  for f in $FILES; do
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
    (cd tests && env "$@" OMP_NUM_THREADS=$threads timeout ${STEP_LIMIT:-240} python3 -X faulthandler -m pytest -v \
       -p no:cacheprovider -p no:benchmark -rfE --tb=short --timeout=120 -o faulthandler_timeout=100 $f.py \
       -k "(gpu or cuda or triton or opcheck or maca or build) and not compile ${PYTEST_DESELECT:-}" \
       > "$OUT/logs/${label}_$f.log" 2>&1; echo "rc=$?" >> "$OUT/logs/${label}_$f.log") &
  done
  wait
  for f in $FILES; do
    echo "$f: $(tail -1 "$OUT/logs/${label}_$f.log") $(grep -a -E '^=+ .*(passed|failed|error|skipped|deselected)' "$OUT/logs/${label}_$f.log" | tail -1)"
    grep -a -E "^FAILED|^ERROR|Timeout|Fatal Python" "$OUT/logs/${label}_$f.log" | cut -c1-240 | head -12
  done
}

if want build; then build cuda; fi
if [[ " $steps " == *" install "* ]]; then
  # the README's way (scripts/install.sh test) instead of the build step: what a user gets;
  # first, before any step that imports sbops (tests, benchmarks)
  stamp "install (scripts/install.sh test)"
  MAX_JOBS=16 scripts/install.sh test > "$OUT/logs/install.log" 2>&1 || { tail -40 "$OUT/logs/install.log"; exit 1; }
  tail -2 "$OUT/logs/install.log"
fi
if want wheel; then
  # the CUDA wheel as users get it: pip wheel, then a fresh venv (torch from the image), tests run
  # from a copy of tests/ outside the source tree so only the installed wheel can be imported
  stamp "wheel + clean venv"
  rm -rf /tmp/dist /tmp/wvenv /tmp/wtests
  SBOPS_TARGET=cuda SBOPS_CUDA_ARCHS="80;90a" MAX_JOBS=16 python3 -m pip wheel -q --no-build-isolation --no-deps \
    -w /tmp/dist . > "$OUT/logs/wheel.log" 2>&1 || { tail -30 "$OUT/logs/wheel.log"; exit 1; }
  ls -la /tmp/dist | tee -a "$OUT/logs/wheel.log"
  # a fresh venv; torch and the test tools come from the image's environment through a .pth file
  # (appended after the venv's own site-packages, so the wheel's sbops wins over any other copy;
  # --ignore-installed: pip would otherwise see the build step's sbops through that .pth and skip)
  python3 -m venv /tmp/wvenv && /tmp/wvenv/bin/python -c "import site; print(site.getsitepackages()[0])" > /tmp/wsp \
    && python3 -c "import site; print(site.getsitepackages()[0])" > "$(cat /tmp/wsp)/image_env.pth" \
    && /tmp/wvenv/bin/python -m pip install -q --no-deps --no-index --ignore-installed /tmp/dist/sbops-*.whl
  cp -r tests /tmp/wtests
  (cd /tmp/wtests && /tmp/wvenv/bin/python -c "import sbops, os; print('wheel import:', sbops.__file__); assert sbops.__file__.startswith('/tmp/wvenv'), sbops.__file__" \
   && timeout ${STEP_LIMIT:-240} /tmp/wvenv/bin/python -m pytest -q -p no:cacheprovider -p no:benchmark --timeout=120 \
      test_build.py test_gpu_cuda_ops.py > "$OUT/logs/wheel_tests.log" 2>&1; echo "wheel tests rc=$? $(tail -1 "$OUT/logs/wheel_tests.log")")
fi
if [[ " $steps " == *" stablewheel "* ]]; then
  # issue 22 proof (b), the way session 11 ran it: the release wheel (scripts/build_wheels.sh, stable ABI,
  # cp310-abi3) built here, installed into this environment, the source tree's python/ hidden, nvcc off
  # PATH, then the whole suite (xdist; one CPU thread per worker: the float64 references otherwise
  # oversubscribe the host), each failure written at once to $OUT/logs/failures.txt
  stamp "stable-ABI wheel (build_wheels.sh cuda) + whole suite without nvcc"
  MAX_JOBS=16 SBOPS_CUDA_ARCHS=${SBOPS_CUDA_ARCHS:-90a} scripts/build_wheels.sh cuda > "$OUT/logs/build_wheels.log" 2>&1 \
    || { tail -30 "$OUT/logs/build_wheels.log"; exit 1; }
  whl=$(ls -t dist/sbops-*+cu*.whl | head -1); ls -l "$whl"
  python3 -m pip install -q --no-deps --force-reinstall "$whl"
  mv python python.hidden && trap 'mv python.hidden python; pack' EXIT
  nonvcc=$(echo "$PATH" | tr ':' '\n' | grep -vi cuda | paste -sd:)
  env PATH="$nonvcc" OMP_NUM_THREADS=1 SBOPS_FAILURE_LOG="$OUT/logs/failures.txt" timeout ${SUITE_LIMIT:-420} \
    python3 -m pytest -v -p no:cacheprovider -n ${SUITE_JOBS:-12} --timeout=140 tests > "$OUT/logs/suite_wheel.log" 2>&1
  echo "suite rc=$? PASSED $(grep -c 'PASSED tests' "$OUT/logs/suite_wheel.log") FAILED $(grep -c 'FAILED tests' \
    "$OUT/logs/suite_wheel.log") SKIPPED $(grep -c 'SKIPPED tests' "$OUT/logs/suite_wheel.log")"
  grep -a "^==== " "$OUT/logs/failures.txt" 2>/dev/null | head -30
fi
if want tests; then gpu_tests cuda; fi
if [[ " $steps " == *" sanitize "* ]]; then
  # compute-sanitizer (memcheck, racecheck) on a small case of every CUDA C++ kernel (bench_cuda_ops.py --smoke)
  stamp "compute-sanitizer"
  for tool in memcheck racecheck; do
    echo "$tool: $(timeout 120 compute-sanitizer --tool $tool python3 benchmarks/gpu/bench_cuda_ops.py --smoke 2>&1 \
      | tee "$OUT/logs/sanitize_$tool.log" | tail -2 | tr '\n' ' ')"
  done
fi
if [[ " $steps " == *" cudaops "* ]]; then
  stamp "bench_cuda_ops.py"
  timeout ${BENCH_LIMIT:-300} python3 benchmarks/gpu/bench_cuda_ops.py 2>&1 \
    | tee "$OUT/logs/bench_cuda_ops.log" | tail -40
fi
if [[ " $steps " == *" swa "* ]]; then
  # the sm90.cuh wgmma building blocks alone (diagnosis), then the SWA benchmark without peers
  stamp "wgmma probe"
  nvcc -std=c++17 -arch=sm_90a -O2 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/wgmma_fragment_layout.cu \
    -o /tmp/wgmma_fragment_layout > "$OUT/logs/wgmma_fragment_layout.log" 2>&1 && /tmp/wgmma_fragment_layout 2>&1 | tee -a "$OUT/logs/wgmma_fragment_layout.log"
  stamp "bench_swa.py ${SWA_ARGS:---skip-peers}"
  timeout ${BENCH_LIMIT:-300} python3 benchmarks/gpu/bench_swa.py ${SWA_ARGS:---skip-peers} 2>&1 \
    | tee "$OUT/logs/bench_swa.log" | tail -24
fi
# The main job, split in two parts that each fit one device call (the fla / FlexAttention /
# torch.compile peers compile for minutes); join them into benchmarks/RESULTS.md afterwards, here or
# on any machine:  python -m sbops.bench --merge bench_attn.json bench_rest.json \
#                    --markdown benchmarks/RESULTS.md --plots benchmarks/plots
bench_part() {  # name, ops, extra args...
  local name=$1 ops=$2; shift 2
  stamp "bench --full --ops $ops"
  timeout ${BENCH_LIMIT:-480} python3 -m sbops.bench --full --backends cuda --ops "$ops" --budget ${BENCH_BUDGET:-1} \
    --timeout 240 "$@" ${BENCH_ARGS:-} --json "$OUT/bench_$name.json" 2>&1 | tee "$OUT/logs/bench_$name.log" | tail -45
}
if want bench || want bench_attn; then bench_part attn linear_attn,swa --ttft --plots "$OUT"; fi
if want bench || want bench_rest; then bench_part rest spike,moe --no-ttft; fi
if [[ " $steps " == *" bench_default "* ]]; then
  # the newcomer's run, as the README gives it (no flags): headline rows, meant to take under 3 minutes
  stamp "bench (default run)"
  t_bench=$(date +%s)
  timeout ${BENCH_LIMIT:-480} python3 -m sbops.bench --json "$OUT/bench_default.json" 2>&1 \
    | tee "$OUT/logs/bench_default.log" | tail -40
  echo "bench default run: $(( $(date +%s) - t_bench )) s wall (process start included)"
fi
if [[ " $steps " == *" suite "* ]]; then
  # the whole suite against the installed package, from a copy of tests/ (session 19: 1678 passed in 162 s), and
  # the fork check: import sbops leaves CUDA uninitialised, a forked child then uses CUDA
  stamp "whole suite (-n 14)"
  (cd /tmp && python3 -c "import os, torch, sbops; print('CUDA initialised by import:', torch.cuda.is_initialized())
pid = os.fork()
if pid == 0:
    try: torch.ones(1, device='cuda').sum().item(); os._exit(0)
    finally: os._exit(1)
print('forked child using CUDA: exit', os.waitpid(pid, 0)[1])")
  rm -rf /tmp/suite_tests && cp -r tests /tmp/suite_tests
  (cd /tmp/suite_tests && OMP_NUM_THREADS=1 SBOPS_FAILURE_LOG="$OUT/logs/failures.txt" timeout ${SUITE_LIMIT:-400} \
     python3 -m pytest -q -p no:cacheprovider -n ${SUITE_JOBS:-14} --timeout=150 -rfE . > "$OUT/logs/suite.log" 2>&1;
   echo "suite rc=$? $(tail -1 "$OUT/logs/suite.log")")
  grep -a -E "^(FAILED|ERROR)" "$OUT/logs/suite.log" | cut -c1-240 | head -20
fi
if [[ " $steps " == *" fp8split "* ]]; then
  # spike_linear's fp8 prefill: both fix-up kernels A/B, the grouped kernel's launch sweep, the encode's (session 19),
  # and the session 24 encode (e4m3 bytes by conversion, one-instruction rint, flags only where a tile has one)
  # against session 23's, alternated; then the fp8 model's TTFT at 8k / 1M with it (sbops.bench.model)
  stamp "spike_linear_fp8_prefill_split.py"
  timeout ${BENCH_LIMIT:-300} python3 benchmarks/gpu/probes/spike_linear_fp8_prefill_split.py 2>&1 \
    | tee "$OUT/logs/fp8_prefill_split.log" | grep -v Warning | tail -60
  stamp "fp8 model TTFT 8k / 1M"
  (cd /tmp && timeout 120 python3 -m sbops.bench.model --weight-quant fp8 --lengths 8k,1m --contexts 4k --batches 1 \
     --no-peer --no-eager-decode --budget-s 100 --out "$OUT/logs/model_fp8_ttft" > "$OUT/logs/model_fp8_ttft.log" 2>&1
   echo "rc=$?"; grep -a "TTFT\|failed\|Error" "$OUT/logs/model_fp8_ttft.log" | head -6)
fi
if [[ " $steps " == *" fp8sweep "* ]]; then
  # the grouped fix-up's shipped launch against session 26's at every 7B shape (M = 16384 and 65536), alternated, and
  # its sweep over (BM, BN, FC) and programs per SM; the GPU tests of the scaled_mm path; then the fp8 model's TTFT at
  # 1M with either launch, alternated on one model
  stamp "spike_linear_fp8_fixup_ab.py fix sweep"
  timeout ${BENCH_LIMIT:-300} python3 benchmarks/gpu/probes/spike_linear_fp8_fixup_ab.py fix sweep 2>&1 \
    | tee "$OUT/logs/fp8_fixup_sweep.log" | grep -v Warning | tail -40
  stamp "GPU tests: spike_linear scaled_mm"
  (cd tests && timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout=140 test_spike_linear_scaled_mm.py \
     > "$OUT/logs/pytest_scaled_mm.log" 2>&1; echo "rc=$? $(tail -1 "$OUT/logs/pytest_scaled_mm.log")")
  stamp "fp8 model TTFT 1M, fix-up launch A/B"
  timeout 240 python3 benchmarks/gpu/probes/fp8_model_fix_ab.py 1m 2 2>&1 | tee "$OUT/logs/fp8_model_fix_ab.log" \
    | grep -a "round\|s26\|Error" | tail -8
fi
# The e4m3 / int8 decode GEMV probe (benchmarks/gpu/probes/spike_decode_vs_cublas.cu) built and run: log name prefix,
# time limit (s); its output in $OUT/logs/<prefix>.log, the build's in <prefix>_build.log; returns the run's status.
decode_probe() {
  nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -Icsrc/include -Ibackends/cuda/kernels \
    benchmarks/gpu/probes/spike_decode_vs_cublas.cu -lcublas -o /tmp/spike_decode_probe > "$OUT/logs/$1_build.log" 2>&1 \
    && timeout "$2" /tmp/spike_decode_probe > "$OUT/logs/$1.log" 2>&1
}
if [[ " $steps " == *" fp8probe "* ]]; then
  # the decode GEMV probe (every layout checked against float64, the fused ones bit for bit against the encode's, then
  # timed against cuBLAS bf16) and the GPU tests of the decode kernel and of sbops.nn.drop_float_weights
  stamp "decode GEMV probe: library layouts 0-3, fused encode 4-7, 32-row warps 8, bulk-copy 9-12, per-warp cp.async 13-16, cuBLAS"
  decode_probe decode_probe 240
  echo "rc=$? $(grep -c OK "$OUT/logs/decode_probe.log") checks OK"; grep -a "FAIL\|fails=" "$OUT/logs/decode_probe.log" | head -5
  grep -a -v "^check" "$OUT/logs/decode_probe.log" | cut -c1-220 | head -10
  stamp "GPU tests: cuda decode, drop_float_weights"
  (cd tests && timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout=180 test_spike_linear_cuda_decode.py \
     test_drop_float_weights.py > "$OUT/logs/pytest_fp8model.log" 2>&1; echo "rc=$? $(tail -1 "$OUT/logs/pytest_fp8model.log")")
  stamp "GPU tests again, the fused encode on: cuda decode, GPU models"
  (cd tests && SBOPS_DECODE_ENCODE=fused timeout 240 python3 -m pytest -q -p no:cacheprovider --timeout=200 \
     test_spike_linear_cuda_decode.py test_gpu_models.py > "$OUT/logs/pytest_fp8_fused.log" 2>&1
   echo "rc=$? $(tail -1 "$OUT/logs/pytest_fp8_fused.log")")
fi
if [[ " $steps " == *" fp8model "* ]]; then
  # the fp8 W8ASpike model (7B shape): decode with the encode's early launch (SBOPS_DECODE_PDL=all, session 23) and,
  # if FP8_MODES names it, the fused encode (SBOPS_DECODE_ENCODE=fused, session 24; slower in session 26) against the
  # default, alternated; then the model with only its 8-bit weights (--drop-float-weights: weight GiB, TTFT 8k, decode)
  i=0
  for mode in ${FP8_MODES:-default all default all}; do
    i=$((i+1)); stamp "fp8 model decode, mode $mode ($i)"
    case $mode in
      fused) menv="SBOPS_DECODE_ENCODE=fused" ;;
      all) menv="SBOPS_DECODE_PDL=all" ;;
      *) menv="" ;;
    esac
    (cd /tmp && env ${menv:+"$menv"} timeout 70 python3 -m sbops.bench.model \
      --weight-quant fp8 --lengths 8k --contexts 4k --batches 1,8 --no-peer --no-eager-decode --budget-s 50 \
      --out "$OUT/logs/model_fp8_${mode}_$i" > "$OUT/logs/model_fp8_${mode}_$i.log" 2>&1
     echo "rc=$?"; grep -a "decode B\|failed\|Error" "$OUT/logs/model_fp8_${mode}_$i.log" | head -4)
  done
  stamp "fp8 model with only its 8-bit weights"
  (cd /tmp && timeout 90 python3 -m sbops.bench.model --weight-quant fp8 --drop-float-weights --lengths 8k \
    --contexts 4k --batches 1,8 --no-peer --no-eager-decode --budget-s 70 --out "$OUT/logs/model_fp8_drop" \
    > "$OUT/logs/model_fp8_drop.log" 2>&1
   echo "rc=$?"; grep -a "dropped\|GiB of weights\|TTFT\|decode B\|failed\|Error" "$OUT/logs/model_fp8_drop.log" | head -8)
fi
if [[ " $steps " == *" chunk "* ]]; then
  # TTFT at 1M tokens with generate()'s prefill chunk (DEFAULT_PREFILL_CHUNK = 16384) against 65536 tokens, bf16 and
  # fp8, one run each (about 4 minutes; peak extra memory grows with the chunk: 2.3 / 3.0 GiB at 16384 on the H100,
  # session 26)
  i=0
  for spec in "bf16 16384" "bf16 65536" "fp8 65536" "fp8 16384"; do
    set -- $spec; i=$((i+1)); stamp "model $1: TTFT 1M, prefill chunk $2 ($i)"
    wq=(); [ "$1" = fp8 ] && wq=(--weight-quant fp8)
    (cd /tmp && timeout 90 python3 -m sbops.bench.model "${wq[@]}" --lengths 1m --contexts 1k --batches 1 --decode-steps 5 \
      --chunk "$2" --no-peer --no-eager-decode --budget-s 80 --out "$OUT/logs/chunk_$i" > "$OUT/logs/chunk_${1}_$2_$i.log" 2>&1
     echo "rc=$?"; grep -a "TTFT T=1M:\|failed\|Error" "$OUT/logs/chunk_${1}_$2_$i.log" | head -3)
  done
fi
if [[ " $steps " == *" s28 "* ]]; then
  # session 28's A/Bs (run on an H100 then): the int8 "int_mm" prefill against e4m3 and the Triton int8 GEMM, the int8
  # decode GEMV against e4m3; the unscaled gate/up product + silu_mul_scaled against the scaled one; then the fp8 model
  # TTFT 1M / decode B = 1, 8: all-e4m3, with int8 down projections, and that with SBOPS_FUSE_GATE_UP_SCALES=0
  stamp "int_mm / int8 decode probe, gate/up raw probe"
  (cd benchmarks/gpu/probes && timeout 300 python3 spike_linear_int_mm_ab.py 2>&1 | grep -v Warn | tee "$OUT/logs/s28_int_mm_ab.log"
   timeout 90 python3 gate_up_raw_ab.py 2>&1 | grep -v Warn | tee "$OUT/logs/s28_gate_up_raw_ab.log")
  i=0
  for v in fp8 int8down int8down_scaled fp8 int8down int8down_scaled; do
    i=$((i+1)); extra=(); e=""
    case $v in int8down) extra=(--down-quant int8_channel) ;; int8down_scaled) extra=(--down-quant int8_channel)
      e="SBOPS_FUSE_GATE_UP_SCALES=0" ;; esac
    stamp "fp8 model, $v ($i)"
    (cd /tmp && env $e timeout 110 python3 -m sbops.bench.model --weight-quant fp8 "${extra[@]}" --lengths 1m --contexts 4k \
      --batches 1,8,32 --no-peer --no-eager-decode --budget-s 100 --out "$OUT/logs/s28_model_$i" > "$OUT/logs/s28_model_${v}_$i.log" 2>&1
     echo "rc=$?"; grep -a "TTFT T=1M:\|decode B\|failed\|Error" "$OUT/logs/s28_model_${v}_$i.log" | head -4)
  done
fi
if [[ " $steps " == *" s29 "* ]]; then
  # session 29 (run on an H100 then): the Triton decode's launch configs at M = 16 / 32 (e4m3 and int8 per channel, the
  # 7B shapes) against spike_linear_tuning.DECODE, then the fp8 model with int8 down projections decoding B = 16 / 32
  # with the shipped table and with this machine's winners, alternated
  stamp "Triton decode sweep at M = 16 / 32 + model A/B"
  (cd benchmarks/gpu/probes && timeout 420 python3 decode_m32_sweep.py model int8down 2>&1 | grep -v Warn \
     | tee "$OUT/logs/s29_decode_m32_sweep.log" | grep -a "table\|^B=\|Error")
fi
if [[ " $steps " == *" s32 "* ]]; then
  # session 32 left unrun (no device time): the dense decode GEMV after review (waits before any load; route checks)
  # -- its GPU tests, the per-GEMV probe against cuBLAS, then the bf16 and fp8 models' decode with it on / off,
  # alternated (about 4 minutes after install)
  stamp "dense decode GEMV: tests, probe, model A/B"
  (cd tests && timeout 300 python3 -m pytest -q -p no:cacheprovider test_dense_decode.py test_spike_linear_cuda_decode.py \
     > "$OUT/logs/s32_tests.log" 2>&1; echo "rc=$? $(tail -1 "$OUT/logs/s32_tests.log")")
  timeout 300 python3 benchmarks/gpu/probes/dense_decode_ab.py 1 8 16 > "$OUT/logs/s32_probe.log" 2>&1
  grep -a "best\|Error" "$OUT/logs/s32_probe.log" | cut -c1-200
  for spec in bf16:1 bf16:0 bf16:1 bf16:0 fp8:1 fp8:0; do
    m=${spec%%:*}; on=${spec##*:}; extra=""
    [ "$m" = fp8 ] && extra="--weight-quant fp8 --down-quant int8_channel"
    SBOPS_DENSE_DECODE=$on timeout 300 python3 -m sbops.bench.model $extra --lengths 8k --contexts 4k --batches 1,8 \
      --no-peer --no-eager-decode --budget-s 80 --out "$OUT/logs/s32_${m}_$on" > "$OUT/logs/s32_decode_${m}_$on.log" 2>&1
    echo "$m dense=$on: $(grep -a 'decode B=' "$OUT/logs/s32_decode_${m}_$on.log" | sed 's/.*ours: //' | tr '\n' ' ')"
  done
fi
# The 7B model's decode at a 4k context (CUDA graphs), one run: log name, batches, time limit (s), then env
# assignments; prints its ms per step.  bf16, or what MODEL_ARGS adds (e.g. --weight-quant fp8).
model_decode() {
  local name=$1 batches=$2 limit=$3; shift 3
  env "$@" timeout "$limit" python3 -m sbops.bench.model ${MODEL_ARGS:-} --lengths 8k --contexts 4k --batches "$batches" --no-peer \
    --no-eager-decode --budget-s 60 --out "$OUT/logs/$name" > "$OUT/logs/$name.log" 2>&1
  grep -a 'decode B=' "$OUT/logs/$name.log" | sed 's/.*ours: //' | tr '\n' ' '
}
# This checkout installed again where the s34 step left $S34_BASE's tree installed (s34_tree=base): log name.
new_tree() {
  [ "${s34_tree:-new}" = base ] || return 0
  MAX_JOBS=16 scripts/install.sh test > "$OUT/logs/$1.log" 2>&1 || tail -20 "$OUT/logs/$1.log"
  s34_tree=new
}
if [[ " $steps " == *" s34 "* ]]; then
  # session 34: swa_decode's combine kernel (splits shared out over the block), GLA's low-rank gate GEMM on the
  # dense decode GEMV, and the decode step's kernels as programmatic dependents (SBOPS_DECODE_PDL) -- GPU tests,
  # bench_swa_decode by batch and the bf16 model's B = 1 / 32 decode, SBOPS_DECODE_PDL default / all; then the
  # default with the tree of $S34_BASE (a git archive .tgz of the commit before) installed, and, while the call is
  # younger than S34_AGAIN_BEFORE, the new tree again (about 7 minutes after install)
  stamp "swa_decode combine + gate GEMV + PDL: tests, bench, model decode"
  python3 -c "from sbops._backends.cuda.triton import _common as c; print('Triton kernels can launch as programmatic dependents (SBOPS_DECODE_PDL=all):', c._pdl_device(0))"
  (cd tests && SBOPS_DECODE_PDL=all timeout 120 python3 -m pytest -q -p no:cacheprovider test_decode_pdl.py test_fused_elementwise.py \
     > "$OUT/logs/s34_tests_pdl_all.log" 2>&1; echo "PDL=all: rc=$? $(tail -1 "$OUT/logs/s34_tests_pdl_all.log")"; grep -a "^FAILED" "$OUT/logs/s34_tests_pdl_all.log" | head)
  (cd tests && timeout 300 python3 -m pytest -q -p no:cacheprovider ${S34_TESTS:-test_decode_pdl.py test_fused_elementwise.py test_gpu_cuda_ops.py test_dense_decode.py test_gpu_models.py} \
     -k "${S34_TESTK:-not nothing}" > "$OUT/logs/s34_tests.log" 2>&1; echo "rc=$? $(tail -1 "$OUT/logs/s34_tests.log")"; grep -a "^FAILED" "$OUT/logs/s34_tests.log" | head)
  s34_round() {  # label, PDL settings
    for pdl in $2; do
      SBOPS_DECODE_PDL=$pdl timeout 120 python3 benchmarks/gpu/bench_swa_decode.py 1 8 32 > "$OUT/logs/s34_swa_$1_pdl$pdl.log" 2>&1
      echo "$1 swa_decode pdl=$pdl: $(grep -a '"B"' "$OUT/logs/s34_swa_$1_pdl$pdl.log" | sed -E 's/.*"B": ([0-9]+).*"us_per_call": ([0-9.]+).*/B=\1 \2 us/' | tr '\n' ' ')"
    done
    for pdl in $2; do
      echo "$1 model pdl=$pdl: $(model_decode "s34_decode_$1_pdl$pdl" "${S34_BATCHES:-1,32}" 200 SBOPS_DECODE_PDL=$pdl)"
    done
  }
  s34_round new1 "1 all"
  if [ -n "${S34_BASE:-}" ] && [ -f "$S34_BASE" ]; then
    rm -rf /tmp/s34_base && mkdir /tmp/s34_base && tar xzf "$S34_BASE" -C /tmp/s34_base
    (cd /tmp/s34_base && MAX_JOBS=16 scripts/install.sh test > "$OUT/logs/s34_install_base.log" 2>&1) || tail -20 "$OUT/logs/s34_install_base.log"
    s34_round base 1; s34_tree=base
    if (( $(date +%s) - t0 < ${S34_AGAIN_BEFORE:-420} )); then  # time left: the new tree again
      new_tree s34_install_new
      s34_round new2 1
    fi
  fi
  if [ -n "${S34_PROFILE:-}" ]; then  # kernel-by-kernel profile of a prefill chunk and the B = 1 / 32 decode steps
    new_tree s34_install_prof
    SBOPS_DECODE_PDL=${S34_PROFILE} timeout 150 python3 benchmarks/gpu/probes/model_kernel_profile.py 8192 \
      > "$OUT/logs/s34_profile_pdl${S34_PROFILE}.log" 2>&1; echo "profile rc=$?"; grep -a -A12 "=== decode step B=1:" "$OUT/logs/s34_profile_pdl${S34_PROFILE}.log"
  fi
fi
# sbops.bench.model's weight arguments for a model label: bf16 (none), fp8 (fp8 with int8 down projections), int8ch
# (int8 per channel)
quant_args() {
  case $1 in fp8) echo "--weight-quant fp8 --down-quant int8_channel" ;; int8ch) echo "--weight-quant int8_channel" ;; esac
}
# One model's goal point: TTFT at 1M and the decode step at a 4k context (CUDA graphs), one run: label, model (bf16,
# fp8 = fp8 with int8 down projections, int8ch = int8 per channel), batches; log and report in $OUT/logs/<label>*
model_point() {
  local label=$1 m=$2 b=$3 extra
  read -ra extra <<< "$(quant_args "$m")"
  stamp "$label: $m model, TTFT 1M + decode at 4k"
  (cd /tmp && timeout 170 python3 -m sbops.bench.model "${extra[@]}" --lengths 1m --contexts 4k --batches "$b" --no-peer \
    --no-eager-decode --budget-s 150 --out "$OUT/logs/$label" > "$OUT/logs/$label.log" 2>&1
   echo "rc=$?"; grep -a "TTFT T=1M:\|decode B=\|failed\|Error" "$OUT/logs/$label.log" | cut -c1-300 | head -6)
}
# the GPU tests of the Hopper int8 GEMM (with its SwiGLU epilogue) and of spike_linear's int_mm path: label
int8_tests() {
  (cd tests && timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:benchmark --timeout=120 -rfE \
     test_int8_gemm_sm90.py test_int8_swiglu.py test_spike_linear_int_mm.py test_bf16_gemm_sm90.py > "$OUT/logs/$1.log" 2>&1; echo "tests rc=$?"; tail -2 "$OUT/logs/$1.log")
  grep -a -E "^(FAILED|ERROR)" "$OUT/logs/$1.log" | cut -c1-240 | head -12
}
if [[ " $steps " == *" int8t "* ]]; then
  # the int8 GEMM's GPU tests alone (about a minute)
  stamp "int8t: int8 GEMM / SwiGLU / int_mm / bf16 GEMM GPU tests"
  int8_tests int8t_tests
  stamp "int8t: bf16 GEMM probe against cuBLAS"
  timeout 150 python3 benchmarks/gpu/probes/bf16_gemm_ab.py > "$OUT/logs/int8t_bf16_probe.log" 2>&1; echo "rc=$?"
  cut -c1-400 "$OUT/logs/int8t_bf16_probe.log"
fi
if [[ " $steps " == *" s42 "* ]]; then
  # session 42: the sm_90 SWA forward with the prefill chunk's queries only (q shorter than k) -- its GPU tests and the
  # SWA kernel's, then the models in the order of S42_MODELS (bf16 / int8ch, suffix :packed for
  # SBOPS_SWA_CHUNK_QUERIES=0, the zero-query packed layout, :dense for SBOPS_DENSE_PREFILL_SM90=1, every bf16
  # prefill projection with K >= 512 on the Hopper GEMM, :nosums for SBOPS_FUSE_DOWN_ROW_SUMS=0, the int8 down
  # projection's encode summing h itself): TTFT at 1M, B = 1 decode at 4k (about 2 minutes a model); the tests also
  # cover the down projection's row sums and the int8 / bf16 Hopper GEMMs (about 2 minutes)
  stamp "s42: SWA chunk queries -- GPU tests"
  (cd tests && timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:benchmark --timeout=120 -rfE \
     ${S42_TESTS:-test_gpu_swa_chunk_queries.py test_gpu_swa_sm90.py test_down_row_sums.py test_int8_swiglu.py \
     test_int8_gemm_sm90.py test_bf16_gemm_sm90.py} > "$OUT/logs/s42_tests.log" 2>&1; echo "tests rc=$?"; tail -2 "$OUT/logs/s42_tests.log")
  grep -a -E "^(FAILED|ERROR)" "$OUT/logs/s42_tests.log" | cut -c1-300 | head -12
  i=0
  for v in ${S42_MODELS:-bf16 bf16:packed}; do
    i=$((i + 1)); m=${v%%:*}
    case $v in
      *:packed) SBOPS_SWA_CHUNK_QUERIES=0 model_point "s42_${m}_packed_$i" "$m" 1 ;;
      *:dense) SBOPS_DENSE_PREFILL_SM90=1 model_point "s42_${m}_dense_$i" "$m" 1 ;;
      *:nosums) SBOPS_FUSE_DOWN_ROW_SUMS=0 model_point "s42_${m}_nosums_$i" "$m" 1 ;;
      *) model_point "s42_${m}_$i" "$m" 1 ;;
    esac
  done
fi
if [[ " $steps " == *" prof "* ]]; then
  # the kernel profile of a 16384-token prefill chunk (after one) and of the B = 1 / 32 decode steps, for each model
  # of PROF_MODELS (bf16, int8ch; default bf16) (about a minute each)
  for m in ${PROF_MODELS:-bf16}; do
    stamp "prof: $m model, kernel profile of a 16384-token prefill chunk and the decode steps"
    timeout 200 python3 benchmarks/gpu/probes/model_kernel_profile.py 16384 $([ "$m" = int8ch ] && echo --int8ch) \
      > "$OUT/logs/prof_$m.log" 2>&1; echo "profile rc=$?"
    grep -a -A24 "=== prefill\|=== decode" "$OUT/logs/prof_$m.log" | grep -a -v "^--$" | cut -c1-150 | head -80
  done
fi
if [[ " $steps " == *" full "* ]]; then
  # the model benchmark's whole curve for each model of FULL_MODELS (bf16, fp8 = fp8 with int8 down projections,
  # int8ch = int8 per channel; default bf16): TTFT at FULL_LENGTHS (default 8k,32k,128k,1m,4m; the 4M prefill measured)
  # next to the Qwen2 peer (measured while a call is predicted under 15 s, extrapolated beyond; FULL_PEER=0: none),
  # decode at FULL_CONTEXTS (default 4k,1m) for B = 1 / 32 (about 3 minutes a model on an H200)
  for m in ${FULL_MODELS:-bf16}; do
    read -ra extra <<< "$(quant_args "$m")"
    [ "${FULL_PEER:-1}" = 0 ] && extra+=(--no-peer)
    stamp "full: $m model, TTFT ${FULL_LENGTHS:-8k,32k,128k,1m,4m}, decode at ${FULL_CONTEXTS:-4k,1m}"
    (cd /tmp && timeout ${FULL_LIMIT:-330} python3 -m sbops.bench.model "${extra[@]}" --lengths ${FULL_LENGTHS:-8k,32k,128k,1m,4m} \
      --contexts ${FULL_CONTEXTS:-4k,1m} --batches 1,32 --no-eager-decode --budget-s ${FULL_BUDGET:-300} \
      --out "$OUT/logs/full_$m" > "$OUT/logs/full_$m.log" 2>&1
     echo "rc=$?"; grep -a "TTFT T=\|decode B=\|failed\|Error" "$OUT/logs/full_$m.log" | grep -av "predicted" | cut -c1-200 | head -20)
  done
fi
if [[ " $steps " == *" chunkab "* ]]; then
  # the prefill chunk's size: TTFT at 1M for each model of CHUNKAB_MODELS (default bf16) at each size of CHUNKAB_SIZES
  # in turn (default 16384 32768 16384 32768), one process each (about 70 s a bf16 run, 50 s an int8ch run)
  for m in ${CHUNKAB_MODELS:-bf16}; do
    read -ra extra <<< "$(quant_args "$m")"
    i=0
    for c in ${CHUNKAB_SIZES:-16384 32768 16384 32768}; do
      i=$((i + 1))
      (cd /tmp && timeout 170 python3 -m sbops.bench.model "${extra[@]}" --lengths 1m --contexts 4k --batches 1 --no-peer \
        --no-eager-decode --decode-steps 10 --chunk "$c" --budget-s 160 --out "$OUT/logs/chunkab_${m}_${c}_$i" \
        > "$OUT/logs/chunkab_${m}_${c}_$i.log" 2>&1
       echo "$m chunk $c (run $i): rc=$? $(grep -a 'TTFT T=1M:' "$OUT/logs/chunkab_${m}_${c}_$i.log" | sed 's/.*TTFT/TTFT/')")
    done
  done
fi
if [[ " $steps " == *" s41 "* ]]; then
  # session 41: the bf16 model with SwiGLU's gate / up on the Hopper GEMM's bf16 SwiGLU epilogue (default) against
  # cuBLAS + silu_mul (SBOPS_FUSE_GATE_UP_SWIGLU=0) and with every prefill projection on the Hopper GEMM
  # (SBOPS_DENSE_PREFILL_SM90=1), in the order of S41_MODELS; then the int8-per-channel model (its GEMM's staged
  # epilogue parameters): TTFT at 1M, decode at 4k, one run each (about 6 minutes)
  i=0
  for v in ${S41_MODELS:-cublas fused dense}; do
    i=$((i + 1))
    case $v in
      cublas) SBOPS_FUSE_GATE_UP_SWIGLU=0 model_point "s41_bf16_${v}_$i" bf16 1 ;;
      fused) model_point "s41_bf16_${v}_$i" bf16 1 ;;
      dense) SBOPS_DENSE_PREFILL_SM90=1 model_point "s41_bf16_${v}_$i" bf16 1 ;;
      int8ch) model_point "s41_int8ch_$i" int8ch 1 ;;
    esac
  done
fi
if [[ " $steps " == *" goals "* ]]; then
  # issues 19 / 23's goal points on this device: TTFT at 1M and the decode step at a 4k context (CUDA graphs), bf16
  # (B = 1 / 32) and the W8ASpike models (fp8 with int8 down projections; int8 per channel, session 39's faster
  # prefill; B = 1), one run each (about 5 minutes)
  new_tree goals_install
  for m in bf16 fp8 int8ch; do model_point "goals_$m" "$m" "$([ "$m" = bf16 ] && echo 1,32 || echo 1)"; done
fi
if [[ " $steps " == *" s36spike "* ]]; then
  # session 36: the e4m3 / int8 decode GEMV's 32-row warps (spike_decode layout 8, the default for N >= 16384 unless
  # SBOPS_SPIKE_DECODE_MT=1) -- the probe (every layout against float64, then timed against cuBLAS), the GPU tests, and
  # the fp8 (int8-down) model's B = 1 / 8 decode, MT 1 (the old default) / 2 alternated (about 4 minutes)
  stamp "spike_decode 32-row warps: probe, tests, fp8 model decode"
  new_tree s36s_install
  decode_probe s36s_probe 120
  echo "probe rc=$? $(grep -c OK "$OUT/logs/s36s_probe.log") checks OK"; grep -a "FAIL\|fails=" "$OUT/logs/s36s_probe.log" | head -5
  grep -a -v "^check" "$OUT/logs/s36s_probe.log" | cut -c1-400 | head -14
  (cd tests && timeout 150 python3 -m pytest -q -p no:cacheprovider test_spike_linear_cuda_decode.py \
     > "$OUT/logs/s36s_tests.log" 2>&1; echo "tests: rc=$? $(tail -1 "$OUT/logs/s36s_tests.log")"; grep -a "^FAILED" "$OUT/logs/s36s_tests.log" | head)
  i=0
  for mt in ${S36_MT:-1 2 1 2}; do
    i=$((i + 1))
    echo "fp8 model MT=$mt: $(MODEL_ARGS="--weight-quant fp8 --down-quant int8_channel" \
      model_decode "s36s_fp8_mt${mt}_$i" 1,8 150 SBOPS_SPIKE_DECODE_MT="$mt")"
  done
fi
if [[ " $steps " == *" s38 "* ]]; then
  # session 38: the Hopper dense decode GEMM probe (benchmarks/gpu/probes/dense_decode_sm90.cuh, TMA + wgmma, stream-K;
  # not in the library) with each set of its knobs (S38_VARIANTS: ";"-separated -D flag sets), timed against the
  # library's GEMV at M = 1 / 32 (under a minute; needs no install)
  stamp "s38: Hopper dense decode GEMM probe variants"
  VARIANTS=${S38_VARIANTS:-} ROWS=${S38_ROWS:-"1 32"} timeout 300 bash benchmarks/gpu/probes/dense_decode_sm90_variants.sh \
    > "$OUT/logs/s38_variants.log" 2>&1; echo "rc=$?"; cut -c1-200 "$OUT/logs/s38_variants.log"
fi
if [[ " $steps " == *" s39 "* ]]; then
  # session 39: the Hopper int8 GEMM's persistent, grouped schedule -- its GPU tests (every schedule bit for bit, the
  # int_mm path), then probes/int8_gemm_sm90_ab.py (the default launch against session 31's, group sizes, cuBLAS int8 /
  # e4m3, bf16; the whole int8 int_mm path against the fp8 scaled_mm path at every 7B shape) (about 3 minutes)
  stamp "s39: int8 GEMM schedule -- GPU tests"
  int8_tests s39_tests
  stamp "s39: int8 GEMM schedule -- probe"
  timeout 300 python3 benchmarks/gpu/probes/int8_gemm_sm90_ab.py ${S39_M:-16384 65536} > "$OUT/logs/s39_probe.log" 2>&1
  echo "rc=$?"; cut -c1-600 "$OUT/logs/s39_probe.log"
  # the W8ASpike model with every projection int8 per channel against the shipped one (fp8, int8 down), one run each
  for m in ${S39_MODELS-int8ch fp8}; do model_point "s39_$m" "$m" 1; done
fi
if [[ " $steps " == *" s39b "* ]]; then
  # session 39: where the int8 GEMM's time goes (probes/int8_gemm_sm90_variants.sh: as shipped, the stores from registers,
  # no stores, 3 / 2 stages; no install), then this checkout installed, the GPU tests of the int8 GEMM and of the
  # int_mm path, and the int8-per-channel and fp8 models (TTFT at 1M, B = 1 decode) (about 5 minutes).  Session 39's
  # call D ran it with the TMA-store epilogue still off in the source, turned on in its copy once variant 4 gave the
  # shipped checksums faster.
  stamp "s39b: int8 GEMM variants"
  timeout 300 bash benchmarks/gpu/probes/int8_gemm_sm90_variants.sh > "$OUT/logs/s39b_variants.log" 2>&1
  echo "rc=$?"; grep -a -v "^  M=" "$OUT/logs/s39b_variants.log" | cut -c1-200
  stamp "s39b: install"
  MAX_JOBS=16 scripts/install.sh test > "$OUT/logs/s39b_install.log" 2>&1 || tail -20 "$OUT/logs/s39b_install.log"
  int8_tests s39b_tests
  for m in ${S39_MODELS-int8ch fp8}; do model_point "s39b_$m" "$m" 1; done
fi
if [[ " $steps " == *" s40 "* ]]; then
  # session 40: SwiGLU's gate/up with silu(g) * u in the int8 GEMM's epilogue (int8_gemm_swiglu_sm90,
  # spike_linear_swiglu.py) -- the int8 GPU tests, probes/int8_swiglu_ab.py at M = 16384, the int8-per-channel
  # model unfused / fused (SBOPS_FUSE_GATE_UP_SWIGLU=0 / 1, in the order of S40_MODELS: TTFT at 1M, B = 1 decode), then its
  # prefill chunk's kernel profile (S40_PROFILE=0: none) (about 6-7 minutes after install)
  stamp "s40: int8 SwiGLU epilogue -- GPU tests"
  int8_tests s40_tests
  stamp "s40: int8 SwiGLU epilogue -- probe"
  timeout 200 python3 benchmarks/gpu/probes/int8_swiglu_ab.py ${S40_M:-16384} > "$OUT/logs/s40_probe.log" 2>&1
  echo "rc=$?"; cut -c1-900 "$OUT/logs/s40_probe.log" | tail -4
  i=0
  for v in ${S40_MODELS:-unfused fused}; do   # the model's runs in order, unfused / fused
    i=$((i + 1))
    SBOPS_FUSE_GATE_UP_SWIGLU=$([ "$v" = fused ] && echo 1 || echo 0) model_point "s40_int8ch_${v}_$i" int8ch 1
  done
  if [ "${S40_PROFILE:-1}" != 0 ]; then
    stamp "s40: int8ch model, kernel profile of a 16384-token prefill chunk"
    timeout 150 python3 benchmarks/gpu/probes/model_kernel_profile.py 16384 --int8ch > "$OUT/logs/s40_profile_int8ch.log" 2>&1
    echo "profile rc=$?"
    grep -a -A24 "=== prefill" "$OUT/logs/s40_profile_int8ch.log" | cut -c1-150
  fi
fi
if [[ " $steps " == *" s40b "* ]]; then
  # session 40, not run then: the int8 GEMM's kWgLag variants (MMA warpgroup 1 starting 1 / 2 / 3 stages after
  # warpgroup 0) against the shipped kernel, and (session 41) the epilogue's column parameters from global memory,
  # probes/int8_gemm_sm90_variants.sh (about a minute; needs no install)
  stamp "s40b: int8 GEMM warpgroup-lag variants"
  VARIANTS=${S40B_VARIANTS:-"0 9 10"} timeout 300 bash benchmarks/gpu/probes/int8_gemm_sm90_variants.sh \
    > "$OUT/logs/s40b_variants.log" 2>&1; echo "rc=$?"; cut -c1-200 "$OUT/logs/s40b_variants.log"
fi
if want macasim; then
  build macasim SBOPS_MACA_SIM=1
  gpu_tests macasim SBOPS_TRITON_TUNING=maca
fi
stamp "done"
