#!/usr/bin/env bash
# Nsight Compute on one launch of the sm_90 SWA backward kernel with the fused dQ (T=8k, SpikingBrain heads,
# window 4096) and of the Triton dK/dV kernel.  Diagnosis aid; needs an installed sbops.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && { echo "no ncu on this machine"; exit 0; }
cat > /tmp/swa_bwd_one.py <<'PY'
import torch, sbops
from sbops._backends.cuda import sm90
from sbops._backends.cuda.triton import swa
T = 8192
g = torch.Generator(device="cuda").manual_seed(0)
q, do = (torch.randn(1, T, 28, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
k, v = (torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
o, lse = sm90.swa_fwd(q, k, v, 4096, None)
for _ in range(2):
    sm90.swa_bwd(q, k, v, o, lse, do, None, 4096, None)
    swa.swa_attn_bwd(q, k, v, o, lse, do, None, 4096, None, None, None, None)
torch.cuda.synchronize()
PY
for kern in swa_bwd_sm90_kernel _bwd_dkdv_kernel; do
  echo "== ncu $kern"
  timeout 200 "$NCU" -k "regex:$kern" -s 1 -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum" \
    python3 /tmp/swa_bwd_one.py > "$OUT/logs/ncu_$kern.txt" 2>&1
  grep -E "stalled_|Duration|Throughput|Pipe|Issue|Stall|stall|Executed Ipc|Registers|Shared|Bank|bank|Tensor|tensor|wavefronts" \
    "$OUT/logs/ncu_$kern.txt" | grep -v "^ *$" | head -60
done
