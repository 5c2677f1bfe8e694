#!/usr/bin/env bash
# Nsight Compute on one launch of an sm_90 SWA kernel and, for comparison, of its Triton counterpart
# (SpikingBrain heads, window 4096).  Diagnosis aid; needs an installed sbops (benchmarks/gpu_check.sh build).
#   benchmarks/gpu/probes/swa_ncu_profile.sh fwd   the wgmma forward vs the Triton forward (T=16k)
#   benchmarks/gpu/probes/swa_ncu_profile.sh bwd   the wgmma backward with the fused dQ vs the Triton dK/dV kernel (T=8k)
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && { echo "no ncu on this machine"; exit 0; }
case "${1:-fwd}" in
  fwd) T=16384; kernels="swa_fwd_sm90_kernel _fwd_kernel"
       calls='sm90.swa_fwd(q, k, v, 4096, None); swa.swa_attn_fwd(q, k, v, 4096, None, None, None, None)' ;;
  bwd) T=8192; kernels="swa_bwd_sm90_kernel _bwd_dkdv_kernel"
       calls='sm90.swa_bwd(q, k, v, o, lse, do, None, 4096, None); swa.swa_attn_bwd(q, k, v, o, lse, do, None, 4096, None, None, None, None)' ;;
  *) echo "usage: $0 fwd|bwd"; exit 2 ;;
esac
cat > /tmp/swa_one.py <<PY
import torch, sbops
from sbops._backends.cuda import sm90
from sbops._backends.cuda.triton import swa
g = torch.Generator(device="cuda").manual_seed(0)
q, do = (torch.randn(1, $T, 28, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
k, v = (torch.randn(1, $T, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
o, lse = sm90.swa_fwd(q, k, v, 4096, None)
for _ in range(2):
    $calls
torch.cuda.synchronize()
PY
for kern in $kernels; do
  echo "== ncu $kern"
  timeout 240 "$NCU" -k "regex:$kern" -s 1 -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section Occupancy \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum" \
    python3 /tmp/swa_one.py > "$OUT/logs/ncu_$kern.txt" 2>&1
  grep -E "stalled_|Duration|Throughput|Pipe|Issue|Stall|stall|Executed Ipc|Warp Cycles|Active Warps|Registers|Shared|Bank|bank|Tensor|tensor|wavefronts|Occupancy" \
    "$OUT/logs/ncu_$kern.txt" | grep -v "^ *$" | head -80
done
