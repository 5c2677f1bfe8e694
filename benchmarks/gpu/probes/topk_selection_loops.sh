#!/usr/bin/env bash
# Build and run benchmarks/gpu/probes/topk_selection_loops.cu on the GPU machine, then Nsight Compute on two of its kernels
# (variant A, the session-5 loop, and moe_gating.cu's kernel).  Diagnosis aid.
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
nvcc -std=c++17 -arch=sm_90a -O3 -Icsrc/include -Ibackends/cuda/kernels benchmarks/gpu/probes/topk_selection_loops.cu -o /tmp/topk_selection_loops \
  > "$OUT/logs/topk_selection_loops_build.log" 2>&1 || { tail -20 "$OUT/logs/topk_selection_loops_build.log"; exit 1; }
/tmp/topk_selection_loops 2>&1 | tee "$OUT/logs/topk_selection_loops.log"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && exit 0
for kern in "regex:^tk" "regex:topk_gating_kernel"; do
  echo "== ncu $kern"
  timeout 120 "$NCU" -k "$kern" -s 5 -c 1 --section SpeedOfLight --section WarpStateStats --section InstructionStats \
    --section Occupancy --section LaunchStats --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    /tmp/topk_selection_loops > "$OUT/logs/ncu_topk.txt" 2>&1
  grep -E "stalled_.*(barrier|long_score|short_score|wait|math|mio|lg_|not_sel|selected|no_inst|dispatch|branch)|Duration|Executed Ipc|Issue Slots|Issued Instructions |Warp Cycles Per Issued|Achieved Active Warps|Registers Per|Local Memory|Waves Per SM" \
    "$OUT/logs/ncu_topk.txt" | head -40
done
