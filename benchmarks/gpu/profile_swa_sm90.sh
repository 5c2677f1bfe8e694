#!/usr/bin/env bash
# Nsight Compute on one launch of the sm_90 SWA forward (T=16k, SpikingBrain heads, window 4096) and, for
# comparison, the Triton forward.  Diagnosis aid; needs an installed sbops (benchmarks/gpu_check.sh build).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && { echo "no ncu on this machine"; exit 0; }
cat > /tmp/swa_one.py <<'PY'
import sys, torch, sbops
from sbops._backends.cuda import sm90
from sbops._backends.cuda.triton import swa
T = 16384
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, T, 28, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k = torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
v = torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
for _ in range(2):
    sm90.swa_fwd(q, k, v, 4096, None)
    swa.swa_attn_fwd(q, k, v, 4096, None, None, None, None)
torch.cuda.synchronize()
PY
for kern in swa_fwd_sm90_kernel _fwd_kernel; do
  echo "== ncu $kern"
  timeout 240 "$NCU" -k "regex:$kern" -s 1 -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis --section Occupancy \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    python3 /tmp/swa_one.py > "$OUT/logs/ncu_$kern.txt" 2>&1
  grep -E "stalled_|Duration|Throughput|Pipe|Issue|Stall|stall|Executed Ipc|Warp Cycles|Active Warps|Registers|Shared Memory|Bank|Tensor|Occupancy" \
    "$OUT/logs/ncu_$kern.txt" | head -80
done
